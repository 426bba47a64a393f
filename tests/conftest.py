"""Fixtures shared by every tier."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port free on loopback right now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def qemu_img_pids(marker: str | Path, command: bytes | None = None) -> list[int]:
    """Live qemu-img processes (running `command`, if given) whose arguments mention `marker` (by /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if (len(argv) > 1 and argv[0].endswith(b"qemu-img") and command in (None, argv[1])
                and str(marker).encode() in b" ".join(argv) and state != "Z"):
            found.append(int(entry.name))
    return found


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask of a login shell (022), so that private modes a test sees come from virtfleet, not from its umask."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vf", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny guest image, built once per session (or reused from VIRTFLEET_TEST_IMAGE_DIR)."""
    from virtfleet.images.tiny import build_tiny_image, load_image

    cache = os.environ.get("VIRTFLEET_TEST_IMAGE_DIR")
    dest = Path(cache) if cache else tmp_path_factory.mktemp("images") / "tiny"
    try:
        built = load_image(dest)
        if built.stale or built.efi_kernel is None:  # a cached image from before UEFI boot lacks its PE kernel
            build_tiny_image(dest)
    except Exception:
        build_tiny_image(dest)
    return dest


def _libvirtd_answers() -> bool:
    import subprocess

    probe = subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                           capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def libvirtd() -> str:
    """The host's libvirtd (qemu:///system): the running one, or one started here (virtlogd first: it keeps the
    consoles' logs). Never restarted or reconfigured: other users share it."""
    import subprocess

    if shutil.which("libvirtd") is None or shutil.which("virsh") is None:
        pytest.skip("libvirt is not installed")
    if not _libvirtd_answers():
        for daemon in ("virtlogd", "libvirtd"):
            subprocess.run([daemon, "-d"], check=False, timeout=30)
        if not wait_until(_libvirtd_answers, timeout=30):
            pytest.fail("libvirtd did not answer on qemu:///system within 30s of starting it")
    return "qemu:///system"
