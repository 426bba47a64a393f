"""A disk that boots through the BIOS (SeaBIOS on q35) with no -kernel: MBR + one FAT partition + SYSLINUX.

Built without mounting anything, so without root: the partition table is written here with struct, the filesystem
by mkfs.fat at an offset inside the image file, and SYSLINUX and the files through mtools (which reads and writes
FAT inside a file, "image@@offset"). SYSLINUX loads a bzImage (/boot/vmlinuz-*), not the bare ELF the tiny image
boots with -kernel.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from virtfleet.images.tiny import ImageBuildError, Progress
from virtfleet.private_files import PRIVATE_FILE

SECTOR = 512
MIB = 1 << 20
PART_START = 2048  # sectors: the partition starts 1 MiB in, the usual alignment
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
FORMATS = ("qcow2", "raw")

# Where distributions put SYSLINUX's MBR boot code (Debian/Ubuntu syslinux-common, then Fedora/Arch).
MBR_BIN_PATHS = (
    Path("/usr/lib/syslinux/mbr/mbr.bin"),
    Path("/usr/lib/SYSLINUX/mbr.bin"),
    Path("/usr/share/syslinux/mbr.bin"),
    Path("/usr/lib/syslinux/bios/mbr.bin"),
)
# tool -> the Debian package that ships it.
_TOOLS = {"mkfs.fat": "dosfstools", "syslinux": "syslinux", "mcopy": "mtools", "qemu-img": "qemu-utils"}
# mkfs.fat lives in /usr/sbin, which a non-root PATH often lacks.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# Headroom for the FAT tables, directories, ldlinux.sys/.c32 and syslinux.cfg.
_OVERHEAD = 2 * MIB

_HEADS, _SECTORS_PER_TRACK = 255, 63
# The MBR disk signature: fixed, so builds are reproducible (nothing finds this disk by it).
_SIGNATURE = 0x56465442
# FAT type (from the boot sector) -> MBR partition type: FAT12, FAT16 (LBA), FAT32 (LBA).
_PARTITION_TYPES = {b"FAT12   ": 0x01, b"FAT16   ": 0x0E, b"FAT32   ": 0x0C}


def _tool(name: str) -> str:
    found = shutil.which(name, path=_SEARCH_PATH)
    if not found:
        raise ImageBuildError(f"{name} not found; install it with: apt-get install {_TOOLS[name]}")
    return found


def _mbr_code() -> bytes:
    for path in MBR_BIN_PATHS:
        if path.is_file():
            code = path.read_bytes()
            if len(code) > 440:
                raise ImageBuildError(f"{path} is {len(code)} bytes: not a SYSLINUX mbr.bin (at most 440)")
            return code
    raise ImageBuildError("SYSLINUX's mbr.bin not found; install it with: apt-get install syslinux-common")


def _run(argv: Sequence[str]) -> None:
    # MTOOLS_SKIP_CHECK: mtools would refuse a FAT whose size is not a whole number of (made-up) cylinders.
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    # S603: an argument list and no shell; the tools were looked up, the paths are ours.
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise ImageBuildError(f"{Path(argv[0]).name} failed (exit {result.returncode}): {detail}")


def _chs(lba: int) -> bytes:
    """The legacy cylinder/head/sector triple for an LBA, saturated past 1023 cylinders as partitioners do."""
    cylinder, rest = divmod(lba, _HEADS * _SECTORS_PER_TRACK)
    head, sector = divmod(rest, _SECTORS_PER_TRACK)
    if cylinder > 1023:
        cylinder, head, sector = 1023, _HEADS - 1, _SECTORS_PER_TRACK - 1
    return bytes([head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF])


def mbr(boot_code: bytes, *, start: int, sectors: int, partition_type: int, signature: int) -> bytes:
    """Sector 0: boot code, disk signature, one active partition [start, start + sectors), the 0x55AA mark."""
    entry = struct.pack("<B3sB3sII", 0x80, _chs(start), partition_type, _chs(start + sectors - 1), start, sectors)
    table = entry + bytes(16 * 3)
    return boot_code.ljust(440, b"\0") + struct.pack("<IH", signature, 0) + table + b"\x55\xaa"


def syslinux_cfg(cmdline: str) -> str:
    # SERIAL: SYSLINUX's own messages (and errors such as a missing kernel) reach the serial console too.
    # PROMPT 0 without TIMEOUT boots the default label at once.
    return (
        "SERIAL 0 115200\n"
        "PROMPT 0\n"
        "DEFAULT virtfleet\n"
        "LABEL virtfleet\n"
        f"  LINUX /{KERNEL_NAME}\n"
        f"  INITRD /{INITRD_NAME}\n"
        f"  APPEND {cmdline}\n"
    )


def _check_inputs(kernel_bzimage: Path, initrd: Path, cmdline: str, size_mib: int, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ImageBuildError(f"unknown disk format {fmt!r}: use one of {', '.join(FORMATS)}")
    if "\n" in cmdline or "\r" in cmdline:
        raise ImageBuildError("the kernel command line must be one line")
    if not any(arg == "console=ttyS0" or arg.startswith("console=ttyS0,") for arg in cmdline.split()):
        raise ImageBuildError("the kernel command line must include console=ttyS0 (the serial console)")
    for part in (kernel_bzimage, initrd):
        if not part.is_file():
            raise ImageBuildError(f"{part} not found")
    with kernel_bzimage.open("rb") as kernel:
        kernel.seek(0x202)
        magic = kernel.read(4)
    if magic != b"HdrS":  # the x86 boot protocol header of a bzImage
        raise ImageBuildError(f"{kernel_bzimage} is not a bzImage (SYSLINUX cannot load a bare ELF vmlinux)")
    payload = kernel_bzimage.stat().st_size + initrd.stat().st_size
    need = -(-(PART_START * SECTOR + payload + _OVERHEAD) // MIB)
    if size_mib < need:
        raise ImageBuildError(f"size_mib={size_mib} is too small for this kernel and initrd: need at least {need}")
    if size_mib * MIB // SECTOR > 0xFFFFFFFF:
        raise ImageBuildError(f"size_mib={size_mib} is too large for an MBR partition table (2 TiB at most)")


def _write_raw(
    raw: Path, tools: dict[str, str], boot_code: bytes, *, kernel_bzimage: Path, initrd: Path, cmdline: str,
    size_mib: int,
) -> None:
    mkfs_fat, syslinux, mcopy = tools["mkfs.fat"], tools["syslinux"], tools["mcopy"]
    sectors = size_mib * MIB // SECTOR - PART_START
    offset = PART_START * SECTOR
    with raw.open("wb") as out:
        out.truncate(size_mib * MIB)  # sparse: only what is written takes space
    # --offset writes the filesystem inside the image; -h records the partition's start in the boot sector (SYSLINUX
    # reads its files by absolute LBA); --mbr=n keeps mkfs.fat from faking a partition table of its own.
    geometry = f"{_HEADS}/{_SECTORS_PER_TRACK}"
    _run([
        mkfs_fat, "--offset", str(PART_START), "-h", str(PART_START), "--mbr=n", "-g", geometry, "-n", "VIRTFLEET",
        str(raw), str(sectors * SECTOR // 1024),
    ])
    _run([syslinux, "--install", "--offset", str(offset), str(raw)])
    image = f"{raw}@@{offset}"
    with tempfile.TemporaryDirectory(dir=raw.parent) as scratch:
        cfg = Path(scratch) / "syslinux.cfg"
        cfg.write_text(syslinux_cfg(cmdline))
        for source, name in ((kernel_bzimage, KERNEL_NAME), (initrd, INITRD_NAME), (cfg, "syslinux.cfg")):
            _run([mcopy, "-i", image, "-o", str(source), f"::/{name}"])
    with raw.open("r+b") as disk:
        disk.seek(offset + 0x36)
        fat16_type = disk.read(8)
        disk.seek(offset + 0x52)
        fat32_type = disk.read(8)
        partition_type = _PARTITION_TYPES.get(fat32_type) or _PARTITION_TYPES.get(fat16_type)
        if partition_type is None:
            raise ImageBuildError("mkfs.fat wrote no FAT boot sector where expected")
        sector0 = mbr(boot_code, start=PART_START, sectors=sectors, partition_type=partition_type, signature=_SIGNATURE)
        disk.seek(0)
        disk.write(sector0)


def build_boot_disk(
    dest: Path,
    *,
    kernel_bzimage: Path,
    initrd: Path,
    cmdline: str,
    size_mib: int = 128,
    fmt: str = "qcow2",
    progress: Progress | None = None,
) -> Path:
    """Build the disk in a temporary directory beside `dest`, then move it in place: a failed build leaves nothing."""
    say = progress or (lambda _message: None)
    _check_inputs(kernel_bzimage, initrd, cmdline, size_mib, fmt)
    # Every tool is looked up before any work, so a missing one is reported at once.
    tools = {name: _tool(name) for name in _TOOLS if name != "qemu-img" or fmt == "qcow2"}
    boot_code = _mbr_code()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        raw = staging / "disk.raw"
        say(f"writing a {size_mib} MiB FAT disk with SYSLINUX, {kernel_bzimage.name} and {initrd.name}")
        _write_raw(
            raw, tools, boot_code, kernel_bzimage=kernel_bzimage, initrd=initrd, cmdline=cmdline, size_mib=size_mib
        )
        final = raw
        if fmt == "qcow2":
            say("converting to qcow2")
            final = staging / "disk.qcow2"
            _run([tools["qemu-img"], "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(final)])
        os.chmod(final, PRIVATE_FILE)
        os.replace(final, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"built boot disk {dest}")
    return dest
