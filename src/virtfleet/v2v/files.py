"""Opening what an imported file names, and nothing else.

Every name a VM description holds (a disk in a .vmx, an extent in a VMDK descriptor, a File href in an OVF, a parent
in a snapshot chain) is resolved inside the import directory: absolute paths, `..`, protocols (nbd:, json:),
control characters, symbolic links anywhere on the way, device nodes, FIFOs and sockets are refused with the reason.
Files are opened component by component below a directory descriptor with O_NOFOLLOW, so a link swapped in after
the check is refused too; qemu-img then reads the file we opened (through /proc/<pid>/fd), never a path again.

Configuration formats that name disks by their path on the old host (/vmfs/volumes/..., C:\\Hyper-V\\...,
/var/lib/xen/images/...) may be relocated: the disk is looked for beside the configuration file, under its own
name, and the plan says so. Host block devices (Xen phy:, libvirt type='block') are read only when an admin listed
them (VIRTFLEET_IMPORT_DEVICES); everything else on the host stays out of reach.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from virtfleet.storage.qemu_img import has_protocol
from virtfleet.v2v.errors import SourceError

MAX_NAME = 4096
MAX_DEPTH = 32


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "a device node"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def proc_path(fd: int) -> Path:
    """A name for an open file that a child process (qemu-img) can open: it reaches our file, not a path."""
    return Path(f"/proc/{os.getpid()}/fd/{fd}")


class ImportDir:
    """The admin-set directory imports are read from. Paths inside it are relative POSIX strings ("" = the root)."""

    def __init__(self, root: Path, *, devices: Sequence[str] = ()) -> None:
        self.root = Path(os.path.realpath(root))
        self.devices = tuple(devices)  # glob patterns of host block devices an admin allowed (Xen phy:)

    # --- names ----------------------------------------------------------------------------------------------
    def entry(self, user_path: str, *, field: str = "path") -> str:
        """What a user asked to import: a path relative to the import directory, or an absolute one inside it."""
        if not user_path or "\0" in user_path or not user_path.isprintable():
            raise SourceError(user_path[:200] or "(empty)", field, "is not a usable path")
        path = Path(user_path)
        if path.is_absolute():
            lexical = Path(os.path.normpath(path))
            if lexical != self.root and not lexical.is_relative_to(self.root):
                raise SourceError(user_path, field, f"is outside the import directory {self.root}")
            relative = lexical.relative_to(self.root).as_posix()
        else:
            relative = user_path
        return self._checked("", relative.strip("/") if relative != "." else "", file=user_path, field=field)

    def _checked(self, base: str, name: str, *, file: str, field: str) -> str:
        if ".." in name.split("/"):
            raise SourceError(file, field, f"{name!r} has a '..' component")
        joined = posixpath.normpath(posixpath.join(base, name)) if name else base
        return "" if joined == "." else joined

    def join(self, base_file: str, name: str, *, file: str, field: str, relocate: bool = False
             ) -> tuple[str, str | None]:
        """Resolve `name`, found in `base_file`, to a path inside the import directory.

        Returns (relative path, warning or None). With `relocate`, an absolute or Windows path (the disk's place on
        the old host) becomes the file of the same name beside `base_file`, and the warning says so."""
        if not name or len(name) > MAX_NAME:
            raise SourceError(file, field, "is empty" if not name else "is too long")
        if "\0" in name or not name.isprintable():
            raise SourceError(file, field, f"{name[:200]!r} contains control characters")
        base_dir = posixpath.dirname(base_file)
        windows = (len(name) > 2 and name[1] == ":" and name[2] in "\\/") or name.startswith("\\\\")
        if name.startswith("/") or windows:
            if not relocate:
                raise SourceError(file, field, f"{name!r} is an absolute path; only files beside {file} are read")
            basename = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
            if not basename or basename in (".", ".."):
                raise SourceError(file, field, f"{name!r} names no file")
            local = self._checked(base_dir, basename, file=file, field=field)
            return local, f"{field}: {name} is a path on the old host; using {local or '.'} from the import directory"
        if has_protocol(name):
            raise SourceError(file, field, f"{name[:200]!r} names a protocol, not a file")
        if "\\" in name:
            raise SourceError(file, field, f"{name[:200]!r} contains a backslash")
        return self._checked(base_dir, name, file=file, field=field), None

    def display(self, rel: str) -> str:
        return rel or "."

    # --- opening --------------------------------------------------------------------------------------------
    def _walk(self, rel: str, *, file: str, field: str) -> tuple[int, str]:
        """(descriptor of the directory holding `rel`, last component); every directory opened without links."""
        parts = [part for part in rel.split("/") if part] if rel else []
        if len(parts) > MAX_DEPTH:
            raise SourceError(file, field, f"{rel!r} is nested too deep")
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(file, field, f"the import directory {self.root} cannot be read: {exc.strerror}") from None
        if not parts:
            return fd, ""
        try:
            for part in parts[:-1]:
                try:
                    next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    raise self._open_error(rel, part, exc, file, field) from None
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def _open_error(self, rel: str, part: str, exc: OSError, file: str, field: str) -> SourceError:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return SourceError(file, field, f"{rel}: {part!r} is a symbolic link or not a directory; refused")
        if exc.errno == errno.ENOENT:
            return SourceError(file, field, f"{rel} does not exist in the import directory")
        return SourceError(file, field, f"{rel} cannot be opened: {exc.strerror}")

    def open(self, rel: str, *, file: str, field: str) -> int:
        """Open a regular file inside the import directory for reading; refuse links, devices, FIFOs, sockets."""
        dir_fd, last = self._walk(rel, file=file, field=field)
        try:
            if not last:
                raise SourceError(file, field, "names the import directory itself, not a file")
            try:
                before = os.stat(last, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as exc:
                raise self._open_error(rel, last, exc, file, field) from None
            if not stat.S_ISREG(before.st_mode):
                # Checked before opening: opening a device or FIFO can block or have side effects.
                raise SourceError(file, field, f"{rel} is {_kind(before.st_mode)}; only regular files are read")
            try:
                fd = os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
                             dir_fd=dir_fd)
            except OSError as exc:
                raise self._open_error(rel, last, exc, file, field) from None
            after = os.fstat(fd)
            if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(after.st_mode):
                os.close(fd)
                raise SourceError(file, field, f"{rel} changed while it was being opened; refused")
            return fd
        finally:
            os.close(dir_fd)

    @contextmanager
    def opened(self, rel: str, *, file: str, field: str) -> Iterator[int]:
        fd = self.open(rel, file=file, field=field)
        try:
            yield fd
        finally:
            os.close(fd)

    def read(self, rel: str, *, limit: int, file: str, field: str) -> bytes:
        """The whole file; one larger than `limit` is refused (descriptions are small, disks are not read here)."""
        with self.opened(rel, file=file, field=field) as fd:
            size = os.fstat(fd).st_size
            if size > limit:
                raise SourceError(file, field, f"{rel} is {size} bytes, more than the {limit} a description may have")
            return os.pread(fd, limit, 0)

    def size(self, rel: str, *, file: str, field: str) -> int:
        with self.opened(rel, file=file, field=field) as fd:
            return os.fstat(fd).st_size

    def kind(self, rel: str) -> str:
        """'dir', 'file', or what else it is ('missing' when absent); links are never followed."""
        dir_fd, last = self._walk(rel, file=rel or ".", field="path")
        try:
            if not last:
                return "dir"
            try:
                mode = os.stat(last, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                return "missing"
            except OSError as exc:  # a name too long, a permission: said about the path, not a server error
                raise self._open_error(rel, last, exc, rel or ".", "path") from None
            if stat.S_ISDIR(mode):
                return "dir"
            return "file" if stat.S_ISREG(mode) else _kind(mode)
        finally:
            os.close(dir_fd)

    def listdir(self, rel: str) -> list[str]:
        """Names in a directory inside the import directory (sorted; kinds are checked when they are opened)."""
        dir_fd, last = self._walk(rel, file=rel or ".", field="path")
        try:
            if last:
                try:
                    fd = os.open(last, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                except OSError as exc:
                    raise self._open_error(rel, last, exc, rel, "path") from None
                try:
                    return sorted(os.listdir(fd))
                finally:
                    os.close(fd)
            return sorted(os.listdir(dir_fd))
        finally:
            os.close(dir_fd)

    # --- host block devices ---------------------------------------------------------------------------------
    def device_allowed(self, path: str) -> bool:
        return path.startswith("/") and any(fnmatch.fnmatchcase(path, pattern) for pattern in self.devices)

    def open_device(self, path: str, *, file: str, field: str) -> int:
        """A host block device an admin allowed (VIRTFLEET_IMPORT_DEVICES), opened read-only."""
        if not self.device_allowed(path):
            raise SourceError(file, field, f"{path} is a host device; an admin must allow it "
                                           "(VIRTFLEET_IMPORT_DEVICES) before it is read")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise SourceError(file, field, f"{path} cannot be opened: {exc.strerror}") from None
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            os.close(fd)
            raise SourceError(file, field, f"{path} is not a block device")
        return fd
