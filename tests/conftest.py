"""Fixtures shared by every tier."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port free on loopback right now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        if load_image(dest).stale:
            build_tiny_image(dest)
    except Exception:
        build_tiny_image(dest)
    return dest
