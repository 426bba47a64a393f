"""NFS pools: a dir pool on an NFS export that virtfleet mounts itself (so it survives reboots via activate())."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from virtfleet.errors import Conflict, DriverError
from virtfleet.hostcmd import find_tool, run_tool
from virtfleet.model.storage import PoolSpec, PoolUsage, VolumeFormat
from virtfleet.storage.backends import DirBackend

APT_HINT = "install it with: apt-get install nfs-common"
# soft + timeo (tenths of a second): a dead server fails I/O instead of hanging the host's processes forever.
# retry=0: mount tries once instead of for 2 minutes, so one dead export does not stall the daemon's start-up.
MOUNT_OPTIONS = "vers=4,soft,timeo=50,retry=0"
MOUNT_TIMEOUT = 60.0
NFS_TYPES = frozenset({"nfs", "nfs4"})
MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str


# --- pure helpers (unit-tested without root) ----------------------------------------------------------------------


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/self/mountinfo -> mounts, in mount order (the last one on a mount point is the visible one)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)  # optional fields end with a lone "-"
        if len(fields) < sep + 3:
            continue
        mounts.append(Mount(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
    return mounts


def _normal_source(source: str) -> str:
    host, _, export = source.partition(":/")
    return f"{host}:/{export.rstrip('/')}"


def same_source(a: str, b: str) -> bool:
    """The kernel shows the source as given, but "host:/x/" and "host:/x" are one export."""
    return _normal_source(a) == _normal_source(b)


def mounted_at(mounts: Sequence[Mount], path: str) -> Mount | None:
    found = [m for m in mounts if m.mount_point == path]
    return found[-1] if found else None


def mount_args(source: str, path: Path) -> list[str]:
    return ["-t", "nfs", "-o", MOUNT_OPTIONS, source, str(path)]


def mount_error_hint(stderr: str) -> str:
    """mount.nfs's reason, plus what it means when the message alone would puzzle."""
    reason = " ".join(line.strip() for line in stderr.splitlines() if line.strip()) or "no error message"
    if "No such device" in reason or "unknown filesystem type" in reason:
        return f"{reason} (this kernel has no NFS client: it needs the nfs/nfs4 file system)"
    if "bad option" in reason or "helper program" in reason:
        return f"{reason} ({APT_HINT})"
    return reason


# --- the backend --------------------------------------------------------------------------------------------------


def _tool(name: str, hint: str) -> str:
    return find_tool(name, missing=f"{name} not found", hint=hint)


def _run(argv: Sequence[str], what: str, *, hint: bool = False) -> None:
    run_tool(argv, what=what, timeout=MOUNT_TIMEOUT,
             condense=mount_error_hint if hint else lambda stderr: " ".join(stderr.split()))


class NfsBackend(DirBackend):
    """A DirBackend whose directory is the mount point of `source` (HOST:/EXPORT)."""

    def __init__(self, spec: PoolSpec, mount_path: Path) -> None:
        super().__init__(spec, mount_path)
        assert spec.source is not None  # noqa: S101 - the model requires it for nfs pools
        self.source = spec.source

    def _mount(self) -> Mount | None:
        # realpath: the kernel lists the resolved mount point.
        return mounted_at(parse_mountinfo(MOUNTINFO.read_text()), os.path.realpath(self.mount_path))

    def _ours(self) -> bool:
        mount = self._mount()
        if mount is None:
            return False
        if mount.fstype not in NFS_TYPES or not same_source(mount.source, self.source):
            raise Conflict(f"{self.mount_path} already has {mount.source} ({mount.fstype}) mounted, not {self.source}")
        return True

    def _require_mounted(self) -> None:
        # Unmounted, the mount point is a plain local directory: writing there would silently miss the export.
        if not self._ours():
            raise DriverError(f"nfs pool '{self.spec.name}' is not mounted", f"{self.source} at {self.mount_path}")

    def activate(self) -> None:
        if self._ours():
            return
        _tool("mount.nfs", APT_HINT)  # without it mount(8) says only "bad option": name the package instead
        self.mount_path.mkdir(parents=True, exist_ok=True)
        _run([_tool("mount", "install it with: apt-get install mount"), *mount_args(self.source, self.mount_path)],
             f"cannot mount {self.source} at {self.mount_path}", hint=True)

    def deactivate(self) -> None:
        if self._ours():
            _run([_tool("umount", "install it with: apt-get install mount"), str(self.mount_path)],
                 f"cannot unmount {self.mount_path}")

    def destroy(self, *, owns_directory: bool) -> None:
        if self._mount() is None:  # never rmdir through a mount: only the empty local mount point goes
            super().destroy(owns_directory=owns_directory)

    def usage(self) -> PoolUsage:
        self._require_mounted()
        return super().usage()

    def create_volume(self, name: str, fmt: VolumeFormat, size: int, *, backing: Path | None = None,
                      backing_format: VolumeFormat | None = None) -> Path:
        self._require_mounted()
        return super().create_volume(name, fmt, size, backing=backing, backing_format=backing_format)

    def resize_volume(self, name: str, fmt: VolumeFormat, size: int, *, shrink: bool = False) -> None:
        self._require_mounted()
        super().resize_volume(name, fmt, size, shrink=shrink)

    def delete_volume(self, name: str) -> None:
        self._require_mounted()  # else a missing file would read as "already deleted" and the record would go
        super().delete_volume(name)
