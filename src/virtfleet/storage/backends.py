"""Pool backends: how volumes are made and measured in each kind of pool.

Sync on purpose: every call is file-system or qemu-img work that the service runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import shutil
from pathlib import Path
from typing import Protocol

from virtfleet.model.storage import PoolSpec, PoolUsage, VolumeFormat
from virtfleet.storage import qemu_img

STAGING_DIR = ".incoming"  # where uploads and imports wait inside a pool while they are checked


class PoolBackend(Protocol):
    spec: PoolSpec
    mount_path: Path  # where volumes are reachable as files or block devices
    supports_backing_files: bool  # qcow2 linked clones need a file system that holds the chain
    formats: tuple[VolumeFormat, ...]

    def activate(self) -> None:
        """Make the pool usable (create the directory, mount the export, check the volume group); idempotent."""
        ...

    def deactivate(self) -> None:
        """Undo activate() where that means something (unmount); volumes are kept."""
        ...

    def destroy(self, *, owns_directory: bool) -> None:
        """Remove what virtfleet made for the pool, once it is empty: its staging area, and its directory only when
        virtfleet created it (`owns_directory`) and nothing else is in it."""
        ...

    def usage(self) -> PoolUsage: ...

    def volume_path(self, name: str) -> Path: ...

    def create_volume(self, name: str, fmt: VolumeFormat, size: int, *, backing: Path | None = None,
                      backing_format: VolumeFormat | None = None) -> Path: ...

    def resize_volume(self, name: str, fmt: VolumeFormat, size: int, *, shrink: bool = False) -> None: ...

    def delete_volume(self, name: str) -> None: ...


class DirBackend:
    """Volumes are files in a directory: the first-class pool type, also the base of nfs."""

    supports_backing_files = True
    formats: tuple[VolumeFormat, ...] = ("qcow2", "raw")

    def __init__(self, spec: PoolSpec, mount_path: Path) -> None:
        self.spec = spec
        self.mount_path = mount_path

    def activate(self) -> None:
        # Private if we make it; a directory the admin made keeps its rights (its volumes are 0600 anyway).
        self.mount_path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def deactivate(self) -> None:
        return None

    def destroy(self, *, owns_directory: bool) -> None:
        staging = self.mount_path / STAGING_DIR
        with contextlib.suppress(OSError):
            if owns_directory:
                shutil.rmtree(staging)  # all ours: the directory was made by us, and so was everything in .incoming
            else:
                staging.rmdir()  # in a directory we were lent, only if empty: it may have been there before us
        if owns_directory:
            # Only an empty directory goes: a pool never deletes files it does not know about.
            with contextlib.suppress(OSError):
                self.mount_path.rmdir()

    def usage(self) -> PoolUsage:
        stat = os.statvfs(self.mount_path)
        capacity = stat.f_blocks * stat.f_frsize
        available = stat.f_bavail * stat.f_frsize
        allocated = sum(p.stat().st_blocks * 512 for p in self.mount_path.iterdir() if p.is_file())
        # Files start sparse but may fill up: a volume must fit in what is free now (no overcommit), unlike an
        # lvm thin pool, which is built to overcommit.
        return PoolUsage(capacity=capacity, allocation=allocated, available=available, thin=False)

    def volume_path(self, name: str) -> Path:
        return self.mount_path / name

    def create_volume(self, name: str, fmt: VolumeFormat, size: int, *, backing: Path | None = None,
                      backing_format: VolumeFormat | None = None) -> Path:
        path = self.volume_path(name)
        if path.exists():
            raise FileExistsError(f"{path} already exists")
        try:
            qemu_img.create(path, fmt, size, backing=backing, backing_fmt=backing_format)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def resize_volume(self, name: str, fmt: VolumeFormat, size: int, *, shrink: bool = False) -> None:
        qemu_img.resize(self.volume_path(name), fmt, size, shrink=shrink)

    def delete_volume(self, name: str) -> None:
        # Snapshots of a VM's disk live beside it as NAME@ID overlays: they belong to the volume.
        for layer in self.mount_path.glob(f"{glob.escape(name)}@*"):
            layer.unlink(missing_ok=True)
        self.volume_path(name).unlink(missing_ok=True)


# name -> "module:class"; lvm and nfs live in their own modules (they shell out to lvm2 and mount).
_BACKENDS = {
    "dir": "virtfleet.storage.backends:DirBackend",
    "lvm": "virtfleet.storage.lvm:LvmBackend",
    "nfs": "virtfleet.storage.nfs:NfsBackend",
}


def create_backend(spec: PoolSpec, mount_path: Path) -> PoolBackend:
    module_name, _, attr = _BACKENDS[spec.type].partition(":")
    backend: PoolBackend = getattr(importlib.import_module(module_name), attr)(spec, mount_path)
    return backend


def default_mount_path(spec: PoolSpec, data_dir: Path) -> Path:
    if spec.type == "dir":
        assert spec.path is not None  # noqa: S101 - PoolSpec requires it for dir pools
        return Path(spec.path)
    if spec.type == "nfs":
        return Path(spec.path) if spec.path else data_dir / "mnt" / spec.name
    assert spec.source is not None  # noqa: S101 - PoolSpec requires a source for lvm pools
    return Path("/dev") / spec.source.split("/", 1)[0]  # LVM: /dev/VG/LV
