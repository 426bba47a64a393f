"""Hyper-V disks: VHDX and VHD headers, differencing chains, and merging a chain into one raw image.

qemu reads fixed and dynamic VHD/VHDX images but not differencing ones (Hyper-V checkpoints: .avhdx), so a chain is
merged here: every layer is parsed (headers, checksums, block allocation tables, sector bitmaps), its parent found
beside it by name and checked by identity (VHDX DataWriteGuid / VHD unique id), and the chain is written bottom-up
into a raw file that qemu-img then converts like any other. Offsets are checked against the file before every read.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from virtfleet.v2v.errors import SourceError
from virtfleet.v2v.files import ImportDir

MiB = 1 << 20
MAX_CHAIN = 32
MAX_SIZE = 64 << 40
COPY = 4 * MiB
_ZERO_GUID = bytes(16)
BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
# VHDX BAT states.
NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULLY_PRESENT, PARTIALLY_PRESENT = 0, 1, 2, 3, 6, 7
VHD_FIXED, VHD_DYNAMIC, VHD_DIFFERENCING = 2, 3, 4
VHD_UNALLOCATED = 0xFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(frozen=True)
class VhdImage:
    rel: str
    format: str  # "vhdx" or "vpc" (qemu's name for VHD)
    kind: str  # fixed, dynamic, differencing
    size: int  # virtual size in bytes
    block_size: int
    sector_size: int
    identity: str  # what a child's parent link must name
    parent_identity: str | None
    parent_names: tuple[str, ...]  # the parent's paths as Hyper-V recorded them (Windows paths)
    bat_offset: int = 0
    bat_entries: int = 0
    data_offset: int = 0  # VHD fixed: where the data starts (0)
    chunk_ratio: int = 0  # VHDX: payload blocks per sector bitmap block
    file_size: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _Reader:
    def __init__(self, fd: int, rel: str, file: str, size: int) -> None:
        self.fd, self.rel, self.file, self.size = fd, rel, file, size

    def error(self, field_name: str, problem: str) -> SourceError:
        return SourceError(self.file, field_name, f"{self.rel}: {problem}")

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self.error(what, f"points past the end of the file (offset {offset}, {length} bytes)")
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise self.error(what, "is truncated")
        return data


# --- VHDX -----------------------------------------------------------------------------------------------------------


def _vhdx_header(r: _Reader) -> bytes:
    best: tuple[int, bytes] | None = None
    for offset in (64 * 1024, 128 * 1024):
        data = r.read(offset, 4096, "header")
        if data[:4] != b"head":
            continue
        if crc32c(data[:4] + bytes(4) + data[8:]) != struct.unpack_from("<I", data, 4)[0]:
            continue
        sequence = struct.unpack_from("<Q", data, 8)[0]
        if best is None or sequence > best[0]:
            best = (sequence, data)
    if best is None:
        raise r.error("header", "neither VHDX header is valid (signature or checksum)")
    return best[1]


def _vhdx_regions(r: _Reader) -> dict[uuid.UUID, tuple[int, int]]:
    for offset in (192 * 1024, 256 * 1024):
        data = r.read(offset, 64 * 1024, "region table")
        if data[:4] != b"regi" or crc32c(data[:4] + bytes(4) + data[8:]) != struct.unpack_from("<I", data, 4)[0]:
            continue
        count = struct.unpack_from("<I", data, 8)[0]
        if count > 2047:
            raise r.error("region table", f"{count} entries is more than 2047")
        regions = {}
        for index in range(count):
            guid = uuid.UUID(bytes_le=data[16 + 32 * index:32 + 32 * index])
            region_offset, length, required = struct.unpack_from("<QII", data, 32 + 32 * index)
            if guid not in (BAT_GUID, METADATA_GUID) and required & 1:
                raise r.error("region table", f"requires region {guid}, which this import does not know")
            regions[guid] = (region_offset, length)
        if BAT_GUID not in regions or METADATA_GUID not in regions:
            raise r.error("region table", "has no BAT or metadata region")
        return regions
    raise r.error("region table", "neither region table is valid (signature or checksum)")


def _utf16(data: bytes, r: _Reader, what: str) -> str:
    try:
        return data.decode("utf-16-le")
    except UnicodeDecodeError:
        raise r.error(what, "is not UTF-16 text") from None


def _vhdx_locator(r: _Reader, data: bytes) -> dict[str, str]:
    if len(data) < 20:
        raise r.error("parent locator", "is truncated")
    count = struct.unpack_from("<H", data, 18)[0]
    values = {}
    for index in range(count):
        at = 20 + 12 * index
        if at + 12 > len(data):
            raise r.error("parent locator", "is truncated")
        key_offset, value_offset, key_length, value_length = struct.unpack_from("<IIHH", data, at)
        if key_offset + key_length > len(data) or value_offset + value_length > len(data):
            raise r.error("parent locator", "an entry points outside the locator")
        key = _utf16(data[key_offset:key_offset + key_length], r, "parent locator")
        values[key] = _utf16(data[value_offset:value_offset + value_length], r, "parent locator")
    return values


def _guid(text: str) -> str:
    return text.strip().strip("{}").lower()


def _vhdx(r: _Reader) -> VhdImage:
    header = _vhdx_header(r)
    if header[48:64] != _ZERO_GUID:
        raise r.error("header.LogGuid", "the log has entries to replay; open the disk in Hyper-V once, or run "
                                        "Optimize-VHD, before importing it")
    data_write = str(uuid.UUID(bytes_le=header[32:48]))
    regions = _vhdx_regions(r)
    meta_offset, meta_length = regions[METADATA_GUID]
    meta = r.read(meta_offset, min(meta_length, 1 << 20), "metadata")
    if meta[:8] != b"metadata":
        raise r.error("metadata", "has no metadata signature")
    items: dict[uuid.UUID, bytes] = {}
    for index in range(struct.unpack_from("<H", meta, 10)[0]):
        at = 32 + 32 * index
        if at + 32 > len(meta):
            raise r.error("metadata", "the table is truncated")
        guid = uuid.UUID(bytes_le=meta[at:at + 16])
        offset, length = struct.unpack_from("<II", meta, at + 16)
        if offset + length > len(meta):
            raise r.error("metadata", f"item {guid} points outside the metadata region")
        items[guid] = meta[offset:offset + length]
    for required in (FILE_PARAMETERS, VIRTUAL_DISK_SIZE, LOGICAL_SECTOR_SIZE):
        if len(items.get(required, b"")) < 4:
            raise r.error("metadata", f"item {required} is missing")
    block_size, flags = struct.unpack_from("<II", items[FILE_PARAMETERS].ljust(8, b"\0"))
    size = struct.unpack_from("<Q", items[VIRTUAL_DISK_SIZE].ljust(8, b"\0"))[0]
    sector_size = struct.unpack_from("<I", items[LOGICAL_SECTOR_SIZE])[0]
    if block_size < MiB or block_size > 256 * MiB or block_size & (block_size - 1):
        raise r.error("metadata.BlockSize", f"{block_size} is not a power of two between 1 MiB and 256 MiB")
    if sector_size not in (512, 4096):
        raise r.error("metadata.LogicalSectorSize", f"{sector_size} is not 512 or 4096")
    if size == 0 or size % sector_size or size > MAX_SIZE:
        raise r.error("metadata.VirtualDiskSize", f"{size} is not a usable disk size")
    differencing = bool(flags & 2)
    chunk_ratio = (1 << 23) * sector_size // block_size
    blocks = -(-size // block_size)
    # Sector bitmap entries are interleaved after every chunk_ratio payload entries (always present in a
    # differencing disk, only between payload entries otherwise).
    entries = -(-blocks // chunk_ratio) * (chunk_ratio + 1) if differencing else blocks + (blocks - 1) // chunk_ratio
    bat_offset, bat_length = regions[BAT_GUID]
    if bat_length < entries * 8:
        raise r.error("BAT", f"holds {bat_length // 8} entries, fewer than the {entries} the disk needs")
    parent_identity: str | None = None
    names: tuple[str, ...] = ()
    if differencing:
        locator = _vhdx_locator(r, items.get(PARENT_LOCATOR, b""))
        if "parent_linkage" not in locator:
            raise r.error("parent locator", "names no parent_linkage")
        parent_identity = _guid(locator["parent_linkage"])
        names = tuple(locator[key] for key in ("relative_path", "absolute_win32_path", "volume_path")
                      if key in locator)
    return VhdImage(r.rel, "vhdx", "differencing" if differencing else "dynamic", size, block_size, sector_size,
                    data_write.lower(), parent_identity, names, bat_offset, entries, chunk_ratio=chunk_ratio,
                    file_size=r.size)


# --- VHD ------------------------------------------------------------------------------------------------------------

_FOOTER = struct.Struct(">8sIIQIIIIQQIII16sB")


def _vhd_checksum(data: bytes, at: int) -> int:
    return ~sum(data[:at] + bytes(4) + data[at + 4:]) & 0xFFFFFFFF


def _vhd(r: _Reader) -> VhdImage:
    footer = r.read(r.size - 512, 512, "footer")
    if footer[:8] != b"conectix":
        raise r.error("footer", "has no VHD cookie")
    (_, _, _, data_offset, _, _, _, _, _, current_size, _, disk_type, checksum, unique, _) = _FOOTER.unpack_from(footer)
    if _vhd_checksum(footer, 64) != checksum:
        raise r.error("footer.checksum", "does not match the footer")
    if current_size == 0 or current_size % 512 or current_size > MAX_SIZE:
        raise r.error("footer.currentSize", f"{current_size} is not a usable disk size")
    identity = str(uuid.UUID(bytes=unique))
    if disk_type == VHD_FIXED:
        if r.size < current_size + 512:
            raise r.error("footer.currentSize", "the file is shorter than the disk")
        return VhdImage(r.rel, "vpc", "fixed", current_size, current_size, 512, identity, None, (), file_size=r.size)
    if disk_type not in (VHD_DYNAMIC, VHD_DIFFERENCING):
        raise r.error("footer.diskType", f"{disk_type} is not a fixed, dynamic or differencing VHD")
    header = r.read(data_offset, 1024, "dynamic header")
    if header[:8] != b"cxsparse":
        raise r.error("dynamic header", "has no cxsparse cookie")
    table_offset, _, max_entries, block_size, header_checksum = struct.unpack_from(">QIIII", header, 16)
    if _vhd_checksum(header, 36) != header_checksum:
        raise r.error("dynamic header.checksum", "does not match the header")
    if block_size < 512 or block_size > 256 * MiB or block_size & (block_size - 1):
        raise r.error("dynamic header.blockSize", f"{block_size} is not a usable block size")
    if max_entries < -(-current_size // block_size):
        raise r.error("dynamic header.maxTableEntries", f"{max_entries} blocks cannot hold the disk")
    parent_identity: str | None = None
    names: tuple[str, ...] = ()
    if disk_type == VHD_DIFFERENCING:
        parent_identity = str(uuid.UUID(bytes=header[40:56]))
        found = []
        for index in range(8):
            code, _, length, _, offset = struct.unpack_from(">4sIIIQ", header, 576 + 24 * index)
            if code in (b"W2ru", b"W2ku") and 0 < length <= 4096:
                found.append(_utf16(r.read(offset, length, "parent locator"), r, "parent locator"))
        name = header[64:576].decode("utf-16-be", errors="replace").rstrip("\0")
        names = (*found, *([name] if name else []))
    kind = "differencing" if disk_type == VHD_DIFFERENCING else "dynamic"
    return VhdImage(r.rel, "vpc", kind, current_size, block_size, 512, identity, parent_identity, tuple(names),
                    table_offset, -(-current_size // block_size), file_size=r.size)


# --- chains ---------------------------------------------------------------------------------------------------------


def read_image(root: ImportDir, rel: str, *, file: str, field: str) -> VhdImage:
    with root.opened(rel, file=file, field=field) as fd:
        size = os.fstat(fd).st_size
        reader = _Reader(fd, rel, file, size)
        if size < 512:
            raise reader.error(field, "is too small to be a VHD or VHDX image")
        if os.pread(fd, 8, 0) == b"vhdxfile":
            return _vhdx(reader)
        return _vhd(reader)


def chain(root: ImportDir, rel: str, fmt: str, *, file: str, field: str) -> list[VhdImage]:
    """The image `rel` and the parents under it, top first; each parent found beside its child and checked."""
    images = [read_image(root, rel, file=file, field=field)]
    if images[0].format != fmt:
        raise SourceError(file, field, f"{rel} is a {images[0].format} image, not {fmt}")
    while images[-1].parent_identity is not None:
        child = images[-1]
        if len(images) >= MAX_CHAIN:
            raise SourceError(file, field, f"{rel}: the differencing chain is deeper than {MAX_CHAIN}")
        if not child.parent_names:
            raise SourceError(file, field, f"{child.rel} is a differencing disk that names no parent")
        # Hyper-V records Windows paths (.\parent.vhdx, C:\...): the parent is looked for beside its child, by name,
        # and must prove it is the one (its identity) before it is used.
        name = child.parent_names[0].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        parent_rel, _ = root.join(child.rel, name, file=child.rel, field="parent locator")
        if parent_rel in (image.rel for image in images):
            raise SourceError(file, field, f"{child.rel}: the differencing chain loops back to {parent_rel}")
        parent = read_image(root, parent_rel, file=file, field=field)
        if parent.identity != child.parent_identity:
            raise SourceError(file, field, f"{child.rel} expects the parent {child.parent_identity}, but "
                                           f"{parent_rel} is {parent.identity}: the chain was changed")
        if parent.size != child.size:
            raise SourceError(file, field, f"{child.rel} and its parent {parent_rel} differ in size")
        images.append(parent)
    return images


def layout(images: list[VhdImage]) -> str:
    name = "vhdx" if images[0].format == "vhdx" else "vhd"
    if len(images) == 1:
        return f"{name} {images[0].kind}"
    return f"{name} differencing chain of {len(images)} layers (merged; the current state is imported)"


# --- merging --------------------------------------------------------------------------------------------------------


def _runs(bitmap: bytes, first: int, count: int) -> list[tuple[int, int]]:
    """(start, length) runs of set bits among bits first..first+count of a bitmap (bit 0 of byte 0 first);
    `first` and `count` are multiples of 8 (a block always spans whole bytes), so full bytes are taken at once."""
    runs: list[tuple[int, int]] = []
    start = -1
    for index in range(first >> 3, (first + count) >> 3):
        byte = bitmap[index]
        bits: tuple[tuple[int, int], ...]
        if byte in (0, 0xFF):
            bits = ((byte & 1, index * 8),)
        else:
            bits = tuple((byte >> bit & 1, index * 8 + bit) for bit in range(8))
        for present, bit in bits:
            if present and start < 0:
                start = bit
            elif not present and start >= 0:
                runs.append((start - first, bit - start))
                start = -1
    if start >= 0:
        runs.append((start - first, first + count - start))
    return runs


def _vhd_runs(bitmap: bytes, count: int) -> list[tuple[int, int]]:
    """VHD sector bitmaps are big-endian within each byte (sector 0 is the top bit)."""
    flipped = bytes(int(f"{byte:08b}"[::-1], 2) for byte in bitmap)
    return _runs(flipped, 0, count)


class _Writer:
    def __init__(self, out_fd: int, size: int) -> None:
        self.out_fd, self.size = out_fd, size

    def copy(self, reader: _Reader, src: int, dst: int, length: int, *, skip_zeros: bool) -> None:
        length = min(length, self.size - dst)
        done = 0
        while done < length:
            piece = reader.read(src + done, min(COPY, length - done), "data block")
            if not (skip_zeros and not any(piece)):
                os.pwrite(self.out_fd, piece, dst + done)
            done += len(piece)

    def zeros(self, dst: int, length: int) -> None:
        length = min(length, self.size - dst)
        for at in range(0, length, COPY):
            os.pwrite(self.out_fd, bytes(min(COPY, length - at)), dst + at)


def _merge_vhdx(image: VhdImage, r: _Reader, w: _Writer, bottom: bool) -> None:
    bat = r.read(image.bat_offset, image.bat_entries * 8, "BAT")
    sectors = image.block_size // image.sector_size
    blocks = -(-image.size // image.block_size)
    for block in range(blocks):
        entry = struct.unpack_from("<Q", bat, 8 * (block + block // image.chunk_ratio))[0]
        state, offset = entry & 7, (entry >> 20) * MiB
        dst = block * image.block_size
        if state == FULLY_PRESENT:
            w.copy(r, offset, dst, image.block_size, skip_zeros=bottom)
        elif state in (ZERO, UNMAPPED) and not bottom:
            w.zeros(dst, image.block_size)
        elif state == PARTIALLY_PRESENT and image.kind == "differencing":
            chunk = block // image.chunk_ratio
            bitmap_entry = struct.unpack_from("<Q", bat, 8 * ((chunk + 1) * (image.chunk_ratio + 1) - 1))[0]
            if bitmap_entry & 7 != FULLY_PRESENT:
                raise r.error("BAT", f"block {block} is partially present but has no sector bitmap")
            bitmap = r.read((bitmap_entry >> 20) * MiB, MiB, "sector bitmap")
            for start, count in _runs(bitmap, (block % image.chunk_ratio) * sectors, sectors):
                w.copy(r, offset + start * image.sector_size, dst + start * image.sector_size,
                       count * image.sector_size, skip_zeros=False)
        elif state not in (NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED):
            raise r.error("BAT", f"block {block} has the invalid state {state}")


def _merge_vhd(image: VhdImage, r: _Reader, w: _Writer, bottom: bool) -> None:
    if image.kind == "fixed":
        w.copy(r, 0, 0, image.size, skip_zeros=bottom)
        return
    bat = r.read(image.bat_offset, image.bat_entries * 4, "BAT")
    sectors = image.block_size // 512
    bitmap_bytes = -(-sectors // 8)
    bitmap_size = -(-bitmap_bytes // 512) * 512  # the bitmap fills whole sectors before the block's data
    for block in range(image.bat_entries):
        sector = struct.unpack_from(">I", bat, 4 * block)[0]
        if sector == VHD_UNALLOCATED:
            continue
        base = sector * 512
        bitmap = r.read(base, bitmap_size, "sector bitmap")
        for start, count in _vhd_runs(bitmap[:bitmap_bytes], sectors):
            w.copy(r, base + bitmap_size + start * 512, block * image.block_size + start * 512, count * 512,
                   skip_zeros=bottom)


def merge(root: ImportDir, images: list[VhdImage], out_fd: int, *, file: str,
          progress: Callable[[float], None] | None = None) -> None:
    """Write the current state of the chain (top first in `images`) into `out_fd` as a raw image."""
    size = images[0].size
    os.ftruncate(out_fd, size)
    writer = _Writer(out_fd, size)
    for done, image in enumerate(reversed(images)):
        with root.opened(image.rel, file=file, field="disk") as fd:
            reader = _Reader(fd, image.rel, file, os.fstat(fd).st_size)
            if image.format == "vhdx":
                _merge_vhdx(image, reader, writer, bottom=done == 0)
            else:
                _merge_vhd(image, reader, writer, bottom=done == 0)
        if progress is not None:
            progress(100.0 * (done + 1) / len(images))
