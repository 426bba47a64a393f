"""OVF packages: a directory (.ovf beside its disks and .mf manifest) or an OVA (the same in one plain tar).

The OVA is never extracted to be read: its members are checked (storage.archive.safe_members refuses links, devices,
absolute and '..' names, duplicates), the one top-level .ovf and .mf are read in memory, and every disk the OVF names
must be a member. convert.py takes the disks out only when the import runs.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager

from virtfleet.errors import InvalidSpec
from virtfleet.storage.archive import safe_members
from virtfleet.storage.qemu_img import has_protocol
from virtfleet.v2v import disks, xmlsafe
from virtfleet.v2v.errors import SourceError
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import ImageFormat, Layer, SourceDisk, SourceVm
from virtfleet.v2v.ovf import MAX_OVF, check_digest, parse_manifest, read_descriptor

MAX_MANIFEST = 1 << 20
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def read_ovf(root: ImportDir, rel: str) -> SourceVm:
    data = root.read(rel, limit=MAX_OVF, file=rel, field="ovf")
    manifest_rel = posixpath.splitext(rel)[0] + ".mf"
    digests = None
    if root.kind(manifest_rel) != "missing":
        digests = parse_manifest(root.read(manifest_rel, limit=MAX_MANIFEST, file=manifest_rel, field="manifest"),
                                 manifest_rel)
        check_digest(data, digests.get(posixpath.basename(rel)), posixpath.basename(rel), manifest_rel)

    def disk_source(href: str, fmt: ImageFormat, label: str, checksum: str | None) -> SourceDisk:
        disk_rel, _ = root.join(rel, href, file=rel, field=f"href {href[:100]!r}")
        return disks.from_file(root, disk_rel, label=label, controller="", fmt=fmt, checksum=checksum, file=rel)

    return read_descriptor(data, rel, kind="ovf", disk_source=disk_source, digests=digests, parse=xmlsafe.parse)


def member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


@contextmanager
def open_tar(root: ImportDir, rel: str) -> Iterator[tuple[tarfile.TarFile, dict[str, tarfile.TarInfo], int]]:
    """The OVA as a tar (plain only), its checked regular members by name, and the descriptor it was read through."""
    fd = root.open(rel, file=rel, field="ova")
    try:
        with os.fdopen(os.dup(fd), "rb") as stream:
            head = stream.read(8)
            for magic, kind in _COMPRESSED.items():
                if head.startswith(magic):
                    raise SourceError(rel, "archive", f"is {kind}-compressed; an OVA is a plain tar")
            stream.seek(0)
            try:
                tar = tarfile.open(fileobj=stream, mode="r:", encoding="utf-8")  # noqa: SIM115 - closed just below
            except (tarfile.TarError, EOFError) as exc:
                raise SourceError(rel, "archive", f"is not a tar archive: {exc}") from None
            with tar:
                try:
                    members = {member_name(m.name): m for m in safe_members(tar)}
                except InvalidSpec as exc:  # safe_members says what is wrong; name the file too
                    raise SourceError(rel, "archive", exc.problem) from None
                yield tar, members, fd
    finally:
        os.close(fd)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, rel: str) -> bytes:
    if member.size > limit:
        raise SourceError(rel, member.name, f"is {member.size} bytes, more than the {limit} allowed")
    stream = tar.extractfile(member)
    if stream is None:
        raise SourceError(rel, member.name, "cannot be read")
    with stream:
        try:
            data = stream.read(limit)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(rel, member.name, f"cannot be read: {exc}") from None
    if len(data) != member.size:
        raise SourceError(rel, member.name, "is truncated")
    return data


def read_ova(root: ImportDir, rel: str) -> SourceVm:
    with open_tar(root, rel) as (tar, members, _):
        top = [name for name in members if "/" not in name]
        descriptors = [name for name in top if name.lower().endswith(".ovf")]
        if len(descriptors) != 1:
            raise SourceError(rel, "archive", f"must hold exactly one .ovf at the top level (found "
                                              f"{', '.join(descriptors) or 'none'})")
        manifests = [name for name in top if name.lower().endswith(".mf")]
        if len(manifests) > 1:
            raise SourceError(rel, "archive", "holds more than one .mf manifest")
        ovf_name = descriptors[0]
        data = _read_member(tar, members[ovf_name], MAX_OVF, rel)
        digests = None
        if manifests:
            digests = parse_manifest(_read_member(tar, members[manifests[0]], MAX_MANIFEST, rel),
                                     f"{rel}:{manifests[0]}")
            check_digest(data, digests.get(ovf_name), ovf_name, f"{rel}:{manifests[0]}")

    def disk_source(href: str, fmt: ImageFormat, label: str, checksum: str | None) -> SourceDisk:
        field = f"href {href[:100]!r}"
        if not href or href.startswith("/") or "\\" in href or has_protocol(href) or not href.isprintable():
            raise SourceError(rel, field, "is not a relative name inside the OVA")
        if ".." in href.split("/"):
            raise SourceError(rel, field, "has a '..' component")
        name = member_name(posixpath.normpath(href))
        if name not in members:
            raise SourceError(rel, field, "is not a member of the OVA")
        return SourceDisk(label=label, layers=[Layer(file=name, format=fmt)], layout=f"{fmt} (in the OVA)",
                          controller="", size=None, checksum=checksum, archive=rel)

    source = read_descriptor(data, f"{rel}:{ovf_name}", kind="ova", disk_source=disk_source, digests=digests,
                             parse=xmlsafe.parse)
    return source.model_copy(update={"file": rel})
