"""What every reader needs: a disk file -> SourceDisk (format checked by its header), MACs, names."""

from __future__ import annotations

import os
import posixpath
import re
import struct

from virtfleet.v2v import vhd
from virtfleet.v2v.errors import SourceError
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import ImageFormat, Layer, SourceDisk
from virtfleet.v2v.vmdk import VmdkReader, capacity, layout

QCOW2_MAGIC = b"QFI\xfb"
VDI_MAGIC = 0xBEDA107F
# File extension -> qemu format, for disks a description names without saying their format.
EXTENSIONS: dict[str, ImageFormat] = {
    ".vmdk": "vmdk", ".vhdx": "vhdx", ".avhdx": "vhdx", ".vhd": "vpc", ".avhd": "vpc", ".qcow2": "qcow2",
    ".qcow": "qcow2", ".vdi": "vdi", ".img": "raw", ".raw": "raw", ".iso": "raw", ".bin": "raw",
}
FORMAT_NAMES: dict[str, ImageFormat] = {
    "vmdk": "vmdk", "vhdx": "vhdx", "vhd": "vpc", "vpc": "vpc", "qcow2": "qcow2", "qcow": "qcow2", "vdi": "vdi",
    "raw": "raw", "aio": "raw", "file": "raw", "tap": "raw", "tap2": "raw",
}
_MAC_HEX = re.compile(r"^[0-9a-fA-F]{12}$")


def stem(rel: str) -> str:
    return posixpath.splitext(posixpath.basename(rel))[0] or "imported"


def format_of(name: str, file: str, field: str, given: str | None = None) -> ImageFormat:
    """The qemu format of a disk: as the description names it, else by extension; never by its content."""
    if given:
        fmt = FORMAT_NAMES.get(given.lower())
        if fmt is None:
            raise SourceError(file, field, f"disk format {given[:40]!r} is not one this import reads "
                                           f"({', '.join(sorted(set(FORMAT_NAMES.values())))})")
        return fmt
    fmt = EXTENSIONS.get(posixpath.splitext(name.lower())[1])
    if fmt is None:
        raise SourceError(file, field, f"{name[:200]!r}: the disk format is not given and its extension is unknown")
    return fmt


def mac(value: str | None, file: str, field: str) -> str | None:
    """A MAC in any spelling the hypervisors use (00:50:56:.., 00-15-5D-.., 080027D5E4A1) -> 00:50:56:..."""
    if value is None or not value.strip():
        return None
    digits = value.strip().replace(":", "").replace("-", "").replace(".", "")
    if not _MAC_HEX.match(digits):
        raise SourceError(file, field, f"{value[:40]!r} is not a MAC address")
    if int(digits[:2], 16) & 1:
        raise SourceError(file, field, f"{value} is a multicast address, not a NIC's")
    if int(digits, 16) == 0:
        return None  # "not set yet": the hypervisor would have made one up at power-on
    digits = digits.lower()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def _qcow2_size(root: ImportDir, rel: str, file: str, field: str) -> int:
    with root.opened(rel, file=file, field=field) as fd:
        head = os.pread(fd, 104, 0)
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        raise SourceError(file, field, f"{rel} is not a qcow2 image (no qcow2 header)")
    version, backing_offset = struct.unpack_from(">IQ", head, 4)
    size = struct.unpack_from(">Q", head, 24)[0]
    if backing_offset:
        raise SourceError(file, field, f"{rel} is a qcow2 overlay with a backing file; imported images must be "
                                       "self-contained (commit the overlay first)")
    if version >= 3 and len(head) >= 80 and struct.unpack_from(">Q", head, 72)[0] & 0b100:
        raise SourceError(file, field, f"{rel} keeps its data in an external data file; refused")
    return int(size)


def _check_magic(root: ImportDir, rel: str, fmt: ImageFormat, file: str, field: str) -> int:
    """The file's size, after checking its header fits the format it was named as."""
    with root.opened(rel, file=file, field=field) as fd:
        head = os.pread(fd, 512, 0)
        size = os.fstat(fd).st_size
    if fmt == "vdi" and (len(head) < 0x44 or struct.unpack_from("<I", head, 0x40)[0] != VDI_MAGIC):
        raise SourceError(file, field, f"{rel} is not a VDI image")
    return size


def from_file(root: ImportDir, rel: str, *, label: str, controller: str, fmt: ImageFormat,
              checksum: str | None = None, file: str | None = None) -> SourceDisk:
    """The disk whose current state is the image `rel`, with every layer under it (snapshots, differencing)."""
    file = file or rel
    field = label
    if fmt == "vmdk":
        layers, create_type = VmdkReader(root).chain(rel)
        return SourceDisk(label=label, layers=layers, layout=layout(layers, create_type), controller=controller,
                          size=capacity(layers[0]), checksum=checksum)
    if fmt in ("vhdx", "vpc"):
        chain = vhd.chain(root, rel, fmt, file=file, field=field)
        layers = [Layer(file=image.rel, format="vhdx" if image.format == "vhdx" else "vpc") for image in chain]
        return SourceDisk(label=label, layers=layers,
                          layout=vhd.layout(chain), controller=controller, size=chain[0].size, checksum=checksum)
    if fmt == "qcow2":
        size: int | None = _qcow2_size(root, rel, file, field)
    else:
        size = _check_magic(root, rel, fmt, file, field) if fmt == "raw" else None
        if fmt == "vdi":
            _check_magic(root, rel, fmt, file, field)
    return SourceDisk(label=label, layers=[Layer(file=rel, format=fmt)], layout=fmt, controller=controller,
                      size=size, checksum=checksum)
