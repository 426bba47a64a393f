"""lvm and nfs pools for real: a volume group on a loop device, and a kernel NFS export mounted over 127.0.0.1.

Root only. What the kernel cannot do (no device-mapper thin target, no NFS client or server) skips with the exact
error found, so a skip here says what the host lacks. Needs lvm2 (and thin-provisioning-tools), nfs-kernel-server and
nfs-common, qemu-utils.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtfleet.errors import DriverError, InvalidSpec, Unsupported
from virtfleet.model.storage import PoolSpec
from virtfleet.storage import lvm, nfs, qemu_img
from virtfleet.storage.lvm import LvmBackend
from virtfleet.storage.nfs import NfsBackend

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, lvm, mount, nfsd)"),
]

MiB = 1 << 20
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def tool(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def sh(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a host command (never raises on failure: callers decide what a failure means)."""
    path = tool(argv[0]) or argv[0]
    env = {**os.environ, "LC_ALL": "C", "LVM_SUPPRESS_FD_WARNINGS": "1"}
    try:
        return subprocess.run([path, *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=env, timeout=timeout)
    except OSError as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


def must(*argv: str) -> str:
    done = sh(*argv)
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}"
    return done.stdout


def failure(done: subprocess.CompletedProcess[str]) -> str:
    return f"`{' '.join(map(str, done.args))}` exited {done.returncode}: {lvm.one_line(done.stderr)}"


# --- lvm ----------------------------------------------------------------------------------------------------------


@dataclass
class LoopVg:
    vg: str
    loop: str
    thin_error: str | None  # why `lvcreate -T` failed, when this kernel cannot hold a thin pool


@pytest.fixture
def loop_vg(tmp_path: Path) -> Iterator[LoopVg]:
    """A throw-away VG on a 512 MiB loop device, with the thin pool VG/thin when the kernel can hold one."""
    if tool("lvcreate") is None:
        pytest.skip("lvm2 is not installed (apt-get install lvm2)")
    image = tmp_path / "pv.img"
    with image.open("wb") as f:
        f.truncate(512 * MiB)
    attached = sh("losetup", "-f", "--show", str(image))
    if attached.returncode != 0:
        pytest.skip(f"no loop device: {failure(attached)}")
    loop = attached.stdout.strip()
    vg = f"vftest{secrets.token_hex(4)}"
    try:
        must("pvcreate", "-y", loop)
        must("vgcreate", vg, loop)
        thin = sh("lvcreate", "-T", "-L", "400M", f"{vg}/thin", "-y")
        yield LoopVg(vg, loop, None if thin.returncode == 0 else failure(thin))
    finally:
        # Whatever happened: the VG, the PV label and the loop device go, in that order.
        sh("vgremove", "-f", "-y", vg)
        sh("pvremove", "-y", "-ff", loop)
        sh("losetup", "-d", loop)


def thin_backend(loop_vg: LoopVg) -> LvmBackend:
    if loop_vg.thin_error is not None:
        pytest.skip(f"this kernel cannot hold an lvm thin pool: {loop_vg.thin_error}")
    backend = LvmBackend(PoolSpec(name="fast", type="lvm", source=f"{loop_vg.vg}/thin"), Path("/dev") / loop_vg.vg)
    backend.activate()
    return backend


def size_of(device: Path) -> int:
    return int(must("blockdev", "--getsize64", str(device)))


def test_lvm_activate_names_a_missing_volume_group() -> None:
    if tool("lvs") is None:
        pytest.skip("lvm2 is not installed (apt-get install lvm2)")
    vg = f"vfmissing{secrets.token_hex(4)}"
    backend = LvmBackend(PoolSpec(name="fast", type="lvm", source=f"{vg}/thin"), Path("/dev") / vg)
    with pytest.raises(InvalidSpec, match=f"volume group '{vg}' not found"):
        backend.activate()


def test_lvm_activate_names_a_missing_thin_pool(loop_vg: LoopVg) -> None:
    backend = LvmBackend(PoolSpec(name="fast", type="lvm", source=f"{loop_vg.vg}/nosuch"), Path("/dev") / loop_vg.vg)
    with pytest.raises(InvalidSpec, match=f"thin pool '{loop_vg.vg}/nosuch' not found"):
        backend.activate()


def test_lvm_activate_refuses_a_plain_lv(loop_vg: LoopVg) -> None:
    # Metadata only (--driverloaded n, inactive, not zeroed): works with or without device-mapper.
    must("lvcreate", "--driverloaded", "n", "-an", "-Zn", "-Wn", "-L", "8M", "-n", "plain", loop_vg.vg, "-y")
    backend = LvmBackend(PoolSpec(name="fast", type="lvm", source=f"{loop_vg.vg}/plain"), Path("/dev") / loop_vg.vg)
    with pytest.raises(InvalidSpec, match="is a linear LV, not a thin pool"):
        backend.activate()


def test_lvm_volume_lifecycle(loop_vg: LoopVg) -> None:
    backend = thin_backend(loop_vg)
    empty = backend.usage()
    assert empty.thin and empty.capacity == 400 * MiB
    assert empty.allocation + empty.available == empty.capacity

    path = backend.create_volume("disk1", "raw", 64 * MiB)
    assert path == Path(f"/dev/{loop_vg.vg}/vf-disk1") and path.is_block_device()
    assert size_of(path) == 64 * MiB
    with pytest.raises(Unsupported, match="thin snapshot"):
        backend.create_volume("clone", "raw", 64 * MiB, backing=path, backing_format="raw")

    # Written blocks are what a thin pool allocates.
    pattern = b"\xab" * (8 * MiB)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, pattern)
        os.fsync(fd)
    finally:
        os.close(fd)
    used = backend.usage()
    assert used.allocation >= 8 * MiB and used.available == used.capacity - used.allocation

    backend.resize_volume("disk1", "raw", 96 * MiB)
    assert size_of(path) == 96 * MiB
    with pytest.raises(InvalidSpec, match="would shrink"):
        backend.resize_volume("disk1", "raw", 32 * MiB)

    clone = backend.snapshot_volume("clone", "disk1")
    assert clone.is_block_device() and size_of(clone) == 96 * MiB
    with clone.open("rb") as f:
        assert f.read(len(pattern)) == pattern  # shares the origin's blocks

    backend.delete_volume("disk1")  # thin snapshots do not depend on their origin
    assert not path.exists() and clone.exists()
    backend.delete_volume("clone")
    backend.delete_volume("clone")  # already gone: no error
    assert not clone.exists()
    assert "vf-" not in must("lvs", "--noheadings", "-o", "lv_name", loop_vg.vg)


# --- nfs ----------------------------------------------------------------------------------------------------------


def _kernel_has(fs: str, module: str) -> str | None:
    """None when /proc/filesystems lists `fs` (after trying to load `module`), else why not."""
    if fs not in Path("/proc/filesystems").read_text().split():
        probe = sh("modprobe", module)
        if fs not in Path("/proc/filesystems").read_text().split():
            return f"the kernel has no {fs} file system ({failure(probe)})"
    return None


@dataclass
class NfsServer:
    """The kernel NFS server, v4 only, bound to 127.0.0.1; stop() undoes exactly what start() did."""

    mounted_nfsd: bool = False
    started_nfsd: bool = False
    started_unit: bool = False
    mountd: subprocess.Popen[bytes] | None = None
    exports: list[str] | None = None

    def start(self) -> None:
        if Path("/run/systemd/system").is_dir():
            if sh("systemctl", "is-active", "nfs-server").returncode != 0:
                done = sh("systemctl", "start", "nfs-server")
                if done.returncode != 0:
                    raise RuntimeError(failure(done))
                self.started_unit = True
            return
        if not Path("/proc/fs/nfsd/threads").exists():
            sh("modprobe", "nfsd")
            done = sh("mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd")
            if done.returncode != 0:
                raise RuntimeError(failure(done))
            self.mounted_nfsd = True
        if Path("/proc/fs/nfsd/threads").read_text().strip() in ("", "0"):
            # v4 only needs neither rpcbind nor statd; -H keeps the server on loopback.
            done = sh("rpc.nfsd", "-H", "127.0.0.1", "-N", "3", "--no-udp", "4")
            if done.returncode != 0:
                raise RuntimeError(failure(done))
            self.started_nfsd = True
        mountd = tool("rpc.mountd")
        assert mountd is not None
        # mountd answers the kernel's export-cache upcalls, which v4 needs too.
        self.mountd = subprocess.Popen([mountd, "-F", "-N", "2", "-N", "3", "--no-udp"],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        if self.mountd.poll() is not None:
            assert self.mountd.stderr is not None
            raise RuntimeError(f"rpc.mountd exited {self.mountd.returncode}: {self.mountd.stderr.read().decode()}")

    def export(self, directory: Path) -> str:
        # fsid: exports of file systems without a UUID (tmpfs, overlay) need one.
        options = f"rw,no_root_squash,sync,insecure,no_subtree_check,fsid={secrets.randbelow(1 << 30) + 1}"
        done = sh("exportfs", "-o", options, f"127.0.0.1:{directory}")
        if done.returncode != 0:
            raise RuntimeError(failure(done))
        self.exports = [*(self.exports or []), f"127.0.0.1:{directory}"]
        return f"127.0.0.1:{directory}"

    def stop(self) -> None:
        for export in self.exports or []:
            sh("exportfs", "-u", export)
        if self.mountd is not None:
            self.mountd.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.mountd.wait(10)
            if self.mountd.returncode is None:
                self.mountd.kill()
                self.mountd.wait()
        if self.started_nfsd:
            sh("rpc.nfsd", "0")
        if self.started_unit:
            sh("systemctl", "stop", "nfs-server")
        if self.mounted_nfsd:
            sh("umount", "/proc/fs/nfsd")


@pytest.fixture
def nfs_export(tmp_path: Path) -> Iterator[str]:
    """HOST:/EXPORT of a fresh directory, served by this host's kernel NFS server to 127.0.0.1 only."""
    missing = [name for name in ("exportfs", "rpc.nfsd", "rpc.mountd", "mount.nfs") if tool(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install nfs-kernel-server nfs-common)")
    problems = [p for p in (_kernel_has("nfs4", "nfs"), _kernel_has("nfsd", "nfsd")) if p]
    if problems:
        pytest.skip("; ".join(problems))
    directory = tmp_path / "export"
    directory.mkdir()
    server = NfsServer()
    try:
        try:
            server.start()
            source = server.export(directory)
        except RuntimeError as exc:
            pytest.skip(f"the kernel NFS server does not start here: {exc}")
        yield source
    finally:
        server.stop()


def nfs_mounted(path: Path) -> nfs.Mount | None:
    return nfs.mounted_at(nfs.parse_mountinfo(nfs.MOUNTINFO.read_text()), os.path.realpath(path))


def test_nfs_pool_mounts_holds_volumes_and_unmounts(nfs_export: str, tmp_path: Path) -> None:
    mount_path = tmp_path / "mnt"
    backend = NfsBackend(PoolSpec(name="shared", type="nfs", source=nfs_export, path=str(mount_path)), mount_path)
    try:
        backend.activate()
        mount = nfs_mounted(mount_path)
        assert mount is not None and mount.fstype == "nfs4" and nfs.same_source(mount.source, nfs_export)
        backend.activate()  # idempotent: already mounted from the same source

        path = backend.create_volume("disk1", "qcow2", 64 * MiB)
        assert qemu_img.info(path, "qcow2").virtual_size == 64 * MiB
        exported = Path(nfs_export.split(":", 1)[1]) / "disk1"
        assert exported.is_file()  # the volume really is on the export
        usage = backend.usage()
        assert usage.thin and usage.capacity > 0 and usage.allocation > 0 and usage.available > 0

        backend.deactivate()
        assert nfs_mounted(mount_path) is None
        with pytest.raises(DriverError, match="is not mounted"):
            backend.usage()
        assert exported.is_file()  # unmounting keeps the volumes
        backend.destroy(owns_directory=True)  # the mount point was made by activate()
        assert not mount_path.exists()
    finally:
        if nfs_mounted(mount_path) is not None:
            sh("umount", "-l", str(mount_path))


def test_nfs_activate_reports_a_failed_mount(tmp_path: Path) -> None:
    if tool("mount.nfs") is None:
        pytest.skip("nfs-common is not installed (apt-get install nfs-common)")
    source = f"127.0.0.1:/vf-no-such-export-{secrets.token_hex(4)}"
    mount_path = tmp_path / "mnt"
    backend = NfsBackend(PoolSpec(name="shared", type="nfs", source=source, path=str(mount_path)), mount_path)
    started = time.monotonic()
    try:
        with pytest.raises(DriverError, match=re.escape(f"cannot mount {source}")) as caught:
            backend.activate()
    finally:
        if nfs_mounted(mount_path) is not None:
            sh("umount", "-l", str(mount_path))
    assert caught.value.cause
    assert time.monotonic() - started < 60  # retry=0: one try, not mount.nfs's default two minutes
    assert nfs_mounted(mount_path) is None
