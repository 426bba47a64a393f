"""Unpacking OVA archives of unknown origin without letting them write anywhere we did not choose.

An OVA is a plain tar of an .ovf descriptor, an optional .mf manifest and the disk images. A hostile one can carry
`../` or absolute names, links, devices or a flood of members, so every member is checked before anything is
written, and the disks are streamed out by hand into names we build (only the basename, opened with O_EXCL):
tarfile's own extract is never used. Nothing here opens a disk with qemu-img; the caller runs
`qemu_img.inspect_untrusted(disk.path, disk.format, ...)` on each result before trusting it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from virtfleet.errors import Conflict, InvalidSpec, NotFound
from virtfleet.private_files import create_private
from virtfleet.storage.transfer import CHUNK, TransferError

MAX_MEMBERS = 64
MAX_MANIFEST_BYTES = 1 << 20

# Extension -> qemu format name (the format is named, never probed: see qemu_img).
DISK_FORMATS = {".vmdk": "vmdk", ".qcow2": "qcow2", ".img": "raw", ".raw": "raw", ".vhd": "vpc", ".vhdx": "vhdx"}

# Compressed tars open fine with tarfile's "r:*"; an OVA is never compressed, so say what it is instead.
_COMPRESSION_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_MANIFEST_LINE = re.compile(r"(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)")
# Manifest algorithm -> (hashlib name, hex digest length).
_DIGESTS = {"SHA1": ("sha1", 40), "SHA256": ("sha256", 64), "SHA512": ("sha512", 128)}


@dataclass(frozen=True)
class OvaDisk:
    """One extracted disk: `name` is its path inside the archive (what the .ovf's File href names)."""

    name: str
    path: Path
    format: str


def _refuse(name: str, why: str) -> InvalidSpec:
    return InvalidSpec("archive", f"member {name!r}: {why}")


def _normalized(name: str) -> str:
    """The member's relative path without leading './'; raises if the name could land outside the destination."""
    if not name:
        raise _refuse(name, "has an empty name")
    if "\x00" in name:
        raise _refuse(name, "contains a NUL byte")
    if "\\" in name:
        # Harmless on Linux, but a Windows-made path separator means the name is not what it looks like.
        raise _refuse(name, "contains a backslash")
    if not name.isprintable():
        # Control characters (and undecodable bytes, kept as surrogates) have no place in a file name we create.
        raise _refuse(name, "contains control or undecodable characters")
    if name.startswith("/"):
        raise _refuse(name, "is an absolute path")
    if ".." in name.split("/"):
        raise _refuse(name, "has a '..' component")
    relative = name
    while relative.startswith("./"):
        relative = relative[2:]
    # Anything normpath would rewrite ('a//b', 'a/./b', trailing '/') is ambiguous: refuse rather than guess.
    if not relative or posixpath.normpath(relative) != relative:
        raise _refuse(name, "is not a normalized relative path")
    return relative


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "is a device node"
    if member.isfifo():
        return "is a FIFO"
    return f"is not a regular file (tar type {member.type!r})"


def safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's regular files, after checking every member; directories are skipped, anything else refused.

    Raises InvalidSpec("archive", ...) for a link, device, FIFO, sparse file, unsafe or duplicate name, or more
    than MAX_MEMBERS members. Nothing is extracted; the caller extracts only what this returns.
    """
    files: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    count = 0
    try:
        # Iterate lazily so a flood of members is refused after MAX_MEMBERS + 1 headers, not after reading them all.
        for member in tar:
            count += 1
            if count > MAX_MEMBERS:
                raise InvalidSpec("archive", f"has more than {MAX_MEMBERS} members")
            relative = _normalized(member.name)
            if member.isdir():
                continue
            if not member.isreg():
                raise _refuse(member.name, _kind(member))
            if member.size < 0:
                raise _refuse(member.name, f"has a negative size ({member.size})")
            if member.issparse():
                # OVA writers never make GNU sparse members, and their stored size is not the file's size.
                raise _refuse(member.name, "is a sparse file")
            if relative in seen:
                # Two members with one name: which one the .ovf and the manifest mean would be anyone's guess.
                raise _refuse(member.name, "appears more than once")
            seen.add(relative)
            files.append(member)
    except tarfile.TarError as exc:
        raise InvalidSpec("archive", f"is not a valid tar archive: {exc}") from exc
    return files


# --- OVA ----------------------------------------------------------------------------------------------------------


@contextmanager
def _open_ova(ova: Path) -> Iterator[IO[bytes]]:
    try:
        f = open(ova, "rb")  # noqa: SIM115 - closed below; only the open's own errors are mapped here
    except FileNotFoundError:
        raise NotFound("file", str(ova)) from None
    except OSError as exc:
        raise TransferError(f"cannot read {ova}: {exc.strerror or exc}") from exc
    with f:
        yield f


def _open_tar(f: IO[bytes], ova: Path) -> tarfile.TarFile:
    head = f.read(8)
    for magic, kind in _COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            raise InvalidSpec("archive", f"{ova.name} is {kind}-compressed; an OVA must be a plain tar")
    f.seek(0)
    try:
        # "r:" and not "r:*": transparent decompression is exactly what an OVA must not need.
        return tarfile.open(fileobj=f, mode="r:", encoding="utf-8")
    except tarfile.TarError as exc:
        raise InvalidSpec("archive", f"{ova.name} is not a tar archive: {exc}") from exc


def _top_level(members: dict[str, tarfile.TarInfo], suffix: str) -> list[str]:
    return [name for name in members if "/" not in name and name.lower().endswith(suffix)]


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise _refuse(member.name, f"is {member.size} bytes, more than the limit of {limit}")
    stream = tar.extractfile(member)
    assert stream is not None  # noqa: S101 - safe_members only returns regular files
    with stream:
        return stream.read(limit)


def _parse_manifest(name: str, data: bytes) -> dict[str, list[tuple[str, str]]]:
    """File name -> [(algorithm, hex digest)] from lines like `SHA256(disk.vmdk)= 0123...`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(name, "manifest is not UTF-8 text") from None
    digests: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        match = _MANIFEST_LINE.fullmatch(line)
        # A line we cannot read might be the one entry that should have caught a tampered disk.
        if match is None or len(match.group(3)) != _DIGESTS[match.group(1)][1]:
            raise _refuse(name, f"manifest line {line[:200]!r} is not 'SHA256(file)= hex'")
        algorithm, file, digest = match.groups()
        file = file.removeprefix("./")
        digests.setdefault(file, []).append((algorithm, digest.lower()))
    return digests


def _disk_format(name: str) -> str | None:
    return DISK_FORMATS.get(posixpath.splitext(name)[1].lower())


def _copy_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, dst: Path, algorithms: set[str], budget: int | None
) -> dict[str, str]:
    """Stream one member into the new file `dst`; returns its digests. On any failure `dst` is removed."""
    hashes = {algorithm: hashlib.new(_DIGESTS[algorithm][0]) for algorithm in algorithms}
    stream = tar.extractfile(member)
    assert stream is not None  # noqa: S101 - safe_members only returns regular files
    try:
        # O_EXCL: never write through a symlink or over a file someone put at this name.
        fd = create_private(dst)
    except FileExistsError:
        stream.close()
        raise Conflict(f"{dst} already exists") from None
    written = 0
    try:
        with stream, open(fd, "wb") as out:
            while True:
                try:
                    chunk = stream.read(CHUNK)
                except tarfile.TarError as exc:
                    raise _refuse(member.name, f"cannot be read: {exc}") from exc
                if not chunk:
                    break
                written += len(chunk)
                if budget is not None and written > budget:
                    raise _refuse(member.name, "makes the disks larger than the size limit")
                for digest in hashes.values():
                    digest.update(chunk)
                out.write(chunk)
            if written != member.size:
                raise _refuse(member.name, f"holds {written} bytes, its header says {member.size}")
            out.flush()
            # Data reaches the disk before anyone is told it is there.
            os.fsync(out.fileno())
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return {algorithm: digest.hexdigest() for algorithm, digest in hashes.items()}


def _verify(name: str, expected: list[tuple[str, str]], actual: dict[str, str]) -> None:
    for algorithm, digest in expected:
        if not hmac.compare_digest(actual[algorithm], digest):
            raise _refuse(name, f"checksum mismatch: manifest says {algorithm} {digest}, got {actual[algorithm]}")


def _extract(
    tar: tarfile.TarFile, ova: Path, dest_dir: Path, max_bytes: int | None, created: list[Path]
) -> list[OvaDisk]:
    members = {_normalized(member.name): member for member in safe_members(tar)}
    descriptors = _top_level(members, ".ovf")
    if len(descriptors) != 1:
        found = ", ".join(repr(name) for name in descriptors) or "none"
        raise InvalidSpec("archive", f"{ova.name} must hold exactly one .ovf descriptor at the top level ({found})")
    manifests = _top_level(members, ".mf")
    if len(manifests) > 1:
        raise InvalidSpec("archive", f"{ova.name} holds more than one .mf manifest")
    manifest = (
        _parse_manifest(manifests[0], _read_member(tar, members[manifests[0]], MAX_MANIFEST_BYTES))
        if manifests
        else None
    )

    disks = [(name, member, fmt) for name, member in members.items() if (fmt := _disk_format(name)) is not None]
    if not disks:
        raise InvalidSpec("archive", f"{ova.name} holds no disk image ({', '.join(sorted(DISK_FORMATS))})")
    basenames = [posixpath.basename(name) for name, _, _ in disks]
    for basename in basenames:
        # Only the basename is kept on extraction, so a/disk.vmdk and b/disk.vmdk would collide.
        if basenames.count(basename) > 1:
            raise InvalidSpec("archive", f"{ova.name} holds two disks named {basename!r} (in different directories)")
    total = sum(member.size for _, member, _ in disks)
    if max_bytes is not None and total > max_bytes:
        raise InvalidSpec("archive", f"{ova.name} holds {total} bytes of disks, more than the limit of {max_bytes}")
    if manifest is not None:
        for name, _, _ in disks:
            if name not in manifest:
                # A manifest that skips a disk protects nothing for it: treat it as tampering.
                raise _refuse(name, "is not listed in the manifest")

    result: list[OvaDisk] = []
    done = 0
    for (name, member, fmt), basename in zip(disks, basenames, strict=True):
        dst = dest_dir / basename
        expected = manifest[name] if manifest is not None else []
        actual = _copy_member(
            tar, member, dst, {algorithm for algorithm, _ in expected}, None if max_bytes is None else max_bytes - done
        )
        created.append(dst)
        done += member.size
        _verify(name, expected, actual)
        result.append(OvaDisk(name=name, path=dst, format=fmt))
    return result


def extract_ova_disks(ova: Path, dest_dir: Path, *, max_bytes: int | None = None) -> list[OvaDisk]:
    """Extract the disk images of the OVA `ova` into `dest_dir` (which must exist), in archive order.

    Every member is checked first (see safe_members); exactly one top-level .ovf is required; disks (by extension:
    .vmdk, .qcow2, .img/.raw, .vhd, .vhdx) are written as `dest_dir / <basename>`, at most `max_bytes` in total,
    and checked against the .mf manifest when there is one. Any failure removes every file written.
    Raises InvalidSpec("archive", ...) for a bad archive, Conflict if a disk's name is taken in `dest_dir`,
    NotFound if `ova` does not exist and TransferError for other I/O errors.
    """
    created: list[Path] = []
    try:
        with _open_ova(ova) as f, _open_tar(f, ova) as tar:
            return _extract(tar, ova, dest_dir, max_bytes, created)
    except BaseException as exc:
        for path in created:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise TransferError(f"cannot extract {ova.name}: {exc.strerror or exc}") from exc
        raise
