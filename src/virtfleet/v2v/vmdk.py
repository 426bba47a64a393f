"""VMDK: descriptors, sparse headers and snapshot chains, read without trusting a byte of them.

A VMDK disk is a descriptor (a small text file, or text embedded in a sparse file) listing extents: FLAT files,
SPARSE grain files, ZERO ranges; monolithicSparse and streamOptimized disks carry their descriptor inside their one
extent, twoGbMaxExtent* disks split the data into 2 GB files. A snapshot is a delta disk whose descriptor names its
parent (parentFileNameHint) and the parent's content id (parentCID). The current state is the disk the VM names; the
chain under it is followed to the base and checked link by link.

Every extent and parent must be a regular file inside the import directory (files.ImportDir); a sparse file whose
header says "capacity 0" is refused because qemu would read it as a descriptor of yet more files. Conversion never
lets qemu read a descriptor written by someone else: convert.py writes its own from what is parsed here.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from virtfleet.v2v.errors import SourceError
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import Extent, Layer

SECTOR = 512
MAX_DESCRIPTOR = 1 << 20
MAX_EXTENTS = 4096
MAX_CHAIN = 32
NO_PARENT = "ffffffff"
VMDK4_MAGIC = b"KDMV"
VMDK3_MAGIC = b"COWD"
SESPARSE_MAGIC = 0x00000000CAFEBABE
CREATE_TYPES = frozenset({
    "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "streamOptimized",
    "vmfs", "vmfsThin", "vmfsSparse", "seSparse", "vmfsPreallocated", "vmfsEagerZeroedThick",
})
_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_KEY_VALUE = re.compile(r'^([A-Za-z0-9_.\-]+)\s*=\s*(?:"([^"]*)"|(\S*))\s*$')
_CID = re.compile(r"^[0-9a-fA-F]{1,8}$")
# VMDK4 sparse header: magic, version, flags, capacity, grain size, descriptor offset and size (sectors).
_HEADER = struct.Struct("<4sIIQQQQ")


@dataclass(frozen=True)
class Descriptor:
    create_type: str
    cid: str
    parent_cid: str
    parent_hint: str | None
    extents: list[tuple[str, int, str, str | None, int]]  # access, sectors, type, file name, offset
    adapter_type: str | None


def _decode(data: bytes, file: str) -> str:
    data = data.rstrip(b"\0")
    if b"\0" in data:
        raise SourceError(file, "descriptor", "is binary data, not a VMDK descriptor or sparse extent")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older VMware wrote the host's code page; names are checked anyway


def parse_descriptor(text: str, file: str) -> Descriptor:
    """The fields of a descriptor; every line must be a comment, a key = value, or an extent."""
    values: dict[str, str] = {}
    extents: list[tuple[str, int, str, str | None, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        extent = _EXTENT.match(line)
        if extent:
            access, sectors, kind, name, offset = extent.groups()
            if len(extents) >= MAX_EXTENTS:
                raise SourceError(file, "extents", f"more than {MAX_EXTENTS}")
            extents.append((access, int(sectors), kind, name, int(offset or 0)))
            continue
        pair = _KEY_VALUE.match(line)
        if pair is None:
            raise SourceError(file, f"line {number}", f"{line[:80]!r} is not a descriptor line")
        values[pair.group(1).lower()] = pair.group(2) if pair.group(2) is not None else pair.group(3)
    create_type = values.get("createtype")
    if create_type is None:
        raise SourceError(file, "createType", "is missing: this is not a VMDK descriptor")
    if create_type not in CREATE_TYPES:
        raise SourceError(file, "createType", f"{create_type[:80]!r} is not a VMDK disk type this import reads")
    cid = values.get("cid", NO_PARENT)
    parent_cid = values.get("parentcid", NO_PARENT)
    for key, value in (("CID", cid), ("parentCID", parent_cid)):
        if not _CID.match(value):
            raise SourceError(file, key, f"{value[:40]!r} is not a content id (8 hex digits)")
    if not extents:
        raise SourceError(file, "extents", "the descriptor lists no extent")
    hint = values.get("parentfilenamehint") or None
    return Descriptor(create_type, cid.lower().zfill(8), parent_cid.lower().zfill(8), hint, extents,
                      values.get("ddb.adaptertype"))


def sparse_header(head: bytes, file: str) -> tuple[int, int, int]:
    """(capacity, descriptor offset, descriptor size), all in sectors, of a VMDK4 sparse file."""
    if len(head) < _HEADER.size:
        raise SourceError(file, "header", "is truncated")
    _, version, _, capacity, grain, desc_offset, desc_size = _HEADER.unpack_from(head)
    if version not in (1, 2, 3):
        raise SourceError(file, "header.version", f"{version} is not a VMDK4 sparse version")
    if capacity == 0:
        # qemu would read such a file as a descriptor naming other files: exactly what must not happen.
        raise SourceError(file, "header.capacity", "is 0: a sparse file that hides a descriptor is refused")
    if grain == 0 or grain & (grain - 1) or grain > 1 << 16:
        raise SourceError(file, "header.grainSize", f"{grain} is not a power of two of at most 65536 sectors")
    if capacity > (1 << 47):
        raise SourceError(file, "header.capacity", f"{capacity} sectors is beyond any real disk")
    return capacity, desc_offset, desc_size


class VmdkReader:
    def __init__(self, root: ImportDir) -> None:
        self.root = root

    def _head(self, fd: int) -> bytes:
        return os.pread(fd, SECTOR, 0)

    def _check_extent_file(self, rel: str, kind: str, sectors: int, offset: int, descriptor: str, field: str) -> None:
        with self.root.opened(rel, file=descriptor, field=field) as fd:
            head = self._head(fd)
            size = os.fstat(fd).st_size
        if kind in ("FLAT", "VMFS"):
            if size < (offset + sectors) * SECTOR:
                raise SourceError(descriptor, field, f"{rel} is {size} bytes, shorter than the "
                                                     f"{(offset + sectors) * SECTOR} the descriptor says")
            return
        if kind == "SESPARSE":
            if len(head) < 8 or struct.unpack_from("<Q", head)[0] != SESPARSE_MAGIC:
                raise SourceError(descriptor, field, f"{rel} is not a seSparse extent")
            return
        if head[:4] == VMDK3_MAGIC:
            return  # ESX delta (vmfsSparse): header only, names no file
        if head[:4] != VMDK4_MAGIC:
            raise SourceError(descriptor, field, f"{rel} is not a sparse extent (no VMDK header)")
        capacity, _, _ = sparse_header(head, rel)
        if capacity < sectors:
            raise SourceError(descriptor, field, f"{rel} holds {capacity} sectors, fewer than the {sectors} listed")

    def _extents(self, desc: Descriptor, rel: str) -> list[Extent]:
        extents = []
        for index, (access, sectors, kind, name, offset) in enumerate(desc.extents):
            field = f"extent {index + 1}"
            if access == "NOACCESS":
                raise SourceError(rel, field, "is NOACCESS: the disk cannot be read")
            if kind == "ZERO":
                extents.append(Extent.model_validate({"type": "ZERO", "sectors": sectors, "access": access}))
                continue
            if kind not in ("FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE"):
                raise SourceError(rel, field, f"extent type {kind!r} is not read by this import")
            if name is None:
                raise SourceError(rel, field, "names no file")
            extent_rel, _ = self.root.join(rel, name, file=rel, field=field)
            self._check_extent_file(extent_rel, kind, sectors, offset, rel, field)
            extents.append(Extent.model_validate({"type": kind, "sectors": sectors, "file": extent_rel,
                                                  "offset": offset, "access": access}))
        return extents

    def layer(self, rel: str) -> tuple[Layer, Descriptor]:
        """One VMDK file: a text descriptor, or a sparse file with its descriptor inside."""
        with self.root.opened(rel, file=rel, field="vmdk") as fd:
            head = self._head(fd)
            size = os.fstat(fd).st_size
            if head[:4] == VMDK4_MAGIC:
                capacity, desc_offset, desc_size = sparse_header(head, rel)
                if desc_offset == 0 or desc_size == 0:
                    desc = Descriptor("monolithicSparse", NO_PARENT, NO_PARENT, None, [], None)
                else:
                    length = desc_size * SECTOR
                    if length > MAX_DESCRIPTOR or desc_offset * SECTOR + length > size:
                        raise SourceError(rel, "header.descriptorSize", "the embedded descriptor is out of bounds")
                    desc = parse_descriptor(_decode(os.pread(fd, length, desc_offset * SECTOR), rel), rel)
                    self._check_embedded(desc, rel)
                extent = Extent(type="SPARSE", sectors=capacity, file=rel)
                return Layer(file=rel, format="vmdk", extents=[extent], cid=desc.cid, parent_cid=desc.parent_cid), desc
            if head[:4] == VMDK3_MAGIC:
                raise SourceError(rel, "vmdk", "is an ESX delta extent; import the descriptor .vmdk that names it")
            if size > MAX_DESCRIPTOR:
                raise SourceError(rel, "vmdk", "is neither a sparse VMDK nor a descriptor (too large for one)")
            text = _decode(os.pread(fd, MAX_DESCRIPTOR, 0), rel)
        desc = parse_descriptor(text, rel)
        layer = Layer(file=rel, format="vmdk", extents=self._extents(desc, rel), cid=desc.cid,
                      parent_cid=desc.parent_cid)
        return layer, desc

    def _check_embedded(self, desc: Descriptor, rel: str) -> None:
        # The one extent of a monolithic sparse file is the file itself: anything else would make qemu read more.
        names = [name for _, _, _, name, _ in desc.extents]
        if len(desc.extents) != 1 or desc.extents[0][2] != "SPARSE" or names[0] is None \
                or os.path.basename(names[0]) != os.path.basename(rel):
            raise SourceError(rel, "embedded descriptor", "names extents other than the file itself")

    def chain(self, rel: str) -> tuple[list[Layer], str]:
        """The layers of the disk whose current state is `rel`, top first, and its create type."""
        layers: list[Layer] = []
        seen: set[str] = set()
        current = rel
        top_type = ""
        while True:
            if current in seen:
                raise SourceError(rel, "parentFileNameHint", f"the snapshot chain loops back to {current}")
            if len(layers) >= MAX_CHAIN:
                raise SourceError(rel, "parentFileNameHint", f"the snapshot chain is deeper than {MAX_CHAIN}")
            seen.add(current)
            layer, desc = self.layer(current)
            top_type = top_type or desc.create_type
            if layers and layers[-1].parent_cid != layer.cid:
                raise SourceError(layers[-1].file, "parentCID", f"{layers[-1].parent_cid} does not match the CID "
                                  f"{layer.cid} of its parent {current}: the chain was changed after the snapshot")
            layers.append(layer)
            if layer.parent_cid == NO_PARENT:
                if desc.parent_hint:
                    raise SourceError(current, "parentCID", "is ffffffff but a parent is named")
                return layers, top_type
            if not desc.parent_hint:
                raise SourceError(current, "parentFileNameHint", "the disk has a parent (parentCID) but names none")
            current, _ = self.root.join(current, desc.parent_hint, file=current, field="parentFileNameHint")


def capacity(layer: Layer) -> int:
    return sum(extent.sectors for extent in layer.extents) * SECTOR


def layout(layers: list[Layer], create_type: str) -> str:
    shape = f"vmdk {create_type}"
    if len(layers) > 1:
        shape += f", snapshot chain of {len(layers)} layers (the current state is imported)"
    return shape
