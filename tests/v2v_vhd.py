"""Writing VHD and VHDX images, base and differencing, for the Hyper-V tests (qemu-img cannot make differencing ones).

Bases written here are checked against qemu's own reader in the tests, so the layout is right; the differencing
parts follow the published specifications (VHD: Virtual Hard Disk Image Format Specification 1.0; VHDX: MS-VHDX).
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

from virtfleet.v2v.vhd import (
    BAT_GUID,
    FILE_PARAMETERS,
    FULLY_PRESENT,
    LOGICAL_SECTOR_SIZE,
    METADATA_GUID,
    PARENT_LOCATOR,
    PARTIALLY_PRESENT,
    VIRTUAL_DISK_SIZE,
    ZERO,
    crc32c,
)

MiB = 1 << 20
PHYSICAL_SECTOR_SIZE = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
VHDX_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

# What a layer holds: block index -> "full" (the whole block), "zero", or a list of (first sector, sector count).
Blocks = dict[int, "str | list[tuple[int, int]]"]


def _checksummed(data: bytearray, at: int) -> bytes:
    data[at:at + 4] = bytes(4)
    struct.pack_into(">I", data, at, ~sum(data) & 0xFFFFFFFF)
    return bytes(data)


def write_vhd(path: Path, size: int, content: bytes, blocks: Blocks, *, unique: uuid.UUID,
              parent: tuple[uuid.UUID, str] | None = None, block_size: int = 2 * MiB) -> None:
    """A dynamic VHD (or differencing, with `parent` = (its unique id, its file name)); `content` is the whole
    virtual disk as the layer sees it, `blocks` says which sectors this layer holds."""
    entries = -(-size // block_size)
    footer = bytearray(512)
    struct.pack_into(">8sIIQI4sI4sQQIII16sB", footer, 0, b"conectix", 2, 0x10000, 512, 0, b"win ", 0x10000,
                     b"Wi2k", size, size, 0, 4 if parent else 3, 0, unique.bytes, 0)
    footer_bytes = _checksummed(footer, 64)
    bat_offset = 512 + 1024
    bat_size = -(-entries * 4 // 512) * 512
    header = bytearray(1024)
    struct.pack_into(">8sQQIII", header, 0, b"cxsparse", 0xFFFFFFFFFFFFFFFF, bat_offset, 0x10000, entries,
                     block_size)
    data_start = bat_offset + bat_size
    locator = b""
    if parent is not None:
        header[40:56] = parent[0].bytes
        header[64:64 + 512] = parent[1].encode("utf-16-be").ljust(512, b"\0")[:512]
        locator = f".\\{parent[1]}".encode("utf-16-le")
        struct.pack_into(">4sIIIQ", header, 576, b"W2ru", 512, len(locator), 0, data_start)
        data_start += 512
    sectors = block_size // 512
    bitmap_size = -(-(sectors // 8) // 512) * 512
    bat = bytearray(b"\xff" * bat_size)
    body = bytearray()
    for block in sorted(blocks):
        kind = blocks[block]
        bits = bytearray(bitmap_size)
        runs = [(0, sectors)] if kind == "full" else kind if isinstance(kind, list) else []
        for first, count in runs:
            for sector in range(first, first + count):
                bits[sector // 8] |= 0x80 >> (sector % 8)  # VHD bitmaps: the top bit is the first sector
        struct.pack_into(">I", bat, 4 * block, (data_start + len(body)) // 512)
        body += bits + content[block * block_size:(block + 1) * block_size].ljust(block_size, b"\0")
    header_bytes = _checksummed(header, 36)
    with path.open("wb") as f:
        f.write(footer_bytes + header_bytes + bat)
        if parent is not None:
            f.write(locator.ljust(512, b"\0"))
        f.write(body + footer_bytes)


def _vhdx_header(sequence: int, data_write: uuid.UUID) -> bytes:
    header = bytearray(4096)
    struct.pack_into("<4sIQ16s16s16sHHIQ", header, 0, b"head", 0, sequence, uuid.uuid4().bytes_le,
                     data_write.bytes_le, bytes(16), 0, 1, MiB, MiB)
    struct.pack_into("<I", header, 4, crc32c(bytes(header)))
    return bytes(header)


def write_vhdx(path: Path, size: int, content: bytes, blocks: Blocks, *, data_write: uuid.UUID,
               parent: tuple[uuid.UUID, str] | None = None, block_size: int = 2 * MiB) -> None:
    sector = 512
    chunk_ratio = (1 << 23) * sector // block_size
    count = -(-size // block_size)
    entries = (-(-count // chunk_ratio) * (chunk_ratio + 1)) if parent else count + (count - 1) // chunk_ratio
    image = bytearray(4 * MiB)
    image[0:8] = b"vhdxfile"
    image[64 * 1024:68 * 1024] = _vhdx_header(1, data_write)
    image[128 * 1024:132 * 1024] = _vhdx_header(2, data_write)
    regions = bytearray(64 * 1024)
    struct.pack_into("<4sIII", regions, 0, b"regi", 0, 2, 0)
    struct.pack_into("<16sQII", regions, 16, BAT_GUID.bytes_le, 3 * MiB, MiB, 1)
    struct.pack_into("<16sQII", regions, 48, METADATA_GUID.bytes_le, 2 * MiB, MiB, 1)
    struct.pack_into("<I", regions, 4, crc32c(bytes(regions)))
    image[192 * 1024:256 * 1024] = regions
    image[256 * 1024:320 * 1024] = regions
    items = [(FILE_PARAMETERS, struct.pack("<II", block_size, 2 if parent else 0), 4),
             (VIRTUAL_DISK_SIZE, struct.pack("<Q", size), 6), (LOGICAL_SECTOR_SIZE, struct.pack("<I", sector), 6),
             (PHYSICAL_SECTOR_SIZE, struct.pack("<I", sector), 6), (PAGE83, uuid.uuid4().bytes_le, 6)]
    if parent is not None:
        pairs = [("parent_linkage", "{" + str(parent[0]) + "}"), ("relative_path", f".\\{parent[1]}")]
        table, strings = bytearray(), bytearray()
        offset = 20 + 12 * len(pairs)
        for key, value in pairs:
            k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
            table += struct.pack("<IIHH", offset + len(strings), offset + len(strings) + len(k), len(k), len(v))
            strings += k + v
        locator = VHDX_LOCATOR_TYPE.bytes_le + struct.pack("<HH", 0, len(pairs)) + table + strings
        items.append((PARENT_LOCATOR, locator, 4))
    meta = bytearray(MiB)
    struct.pack_into("<8sHH", meta, 0, b"metadata", 0, len(items))
    at = 64 * 1024
    for index, (guid, value, flags) in enumerate(items):
        struct.pack_into("<16sIII", meta, 32 + 32 * index, guid.bytes_le, at, len(value), flags)
        meta[at:at + len(value)] = value
        at += -(-len(value) // 8) * 8
    image[2 * MiB:3 * MiB] = meta
    bat = bytearray(entries * 8)
    payload = bytearray()
    bitmap = bytearray(MiB) if parent else None
    sectors = block_size // sector
    for block in sorted(blocks):
        kind = blocks[block]
        index = block + block // chunk_ratio
        if kind == "zero":
            struct.pack_into("<Q", bat, 8 * index, ZERO)
            continue
        offset_mb = (4 * MiB + len(payload)) // MiB
        state = FULLY_PRESENT if kind == "full" else PARTIALLY_PRESENT
        struct.pack_into("<Q", bat, 8 * index, state | offset_mb << 20)
        payload += content[block * block_size:(block + 1) * block_size].ljust(block_size, b"\0")
        if bitmap is not None and isinstance(kind, list):
            for first, count_ in kind:
                for s in range(first, first + count_):
                    bit = (block % chunk_ratio) * sectors + s
                    bitmap[bit // 8] |= 1 << (bit % 8)
    if bitmap is not None:
        struct.pack_into("<Q", bat, 8 * chunk_ratio, FULLY_PRESENT | ((4 * MiB + len(payload)) // MiB) << 20)
        payload += bitmap
    image[3 * MiB:3 * MiB + len(bat)] = bat
    path.write_bytes(bytes(image) + bytes(payload))
