"""A SYSLINUX boot disk built from the host's bzImage and the tiny initramfs boots on q35 through SeaBIOS (no -kernel).

Integration tier: it needs dosfstools, mtools, syslinux and qemu-img, and boots real QEMU under TCG.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest

from tests.integration.conftest import wait_console
from virtfleet.images import bootdisk
from virtfleet.images.bootdisk import PART_START, SECTOR, build_boot_disk
from virtfleet.images.tiny import ImageBuildError, default_cmdline, find_host_kernel, load_image

pytestmark = pytest.mark.integration



def test_raw_disk_has_an_active_fat_partition_with_syslinux(tiny_image_dir: Path, short_tmp: Path) -> None:
    kernel, _ = find_host_kernel()
    disk = build_boot_disk(
        short_tmp / "boot.raw", kernel_bzimage=kernel, initrd=load_image(tiny_image_dir).initrd,
        cmdline="console=ttyS0 quiet", size_mib=64, fmt="raw",
    )
    assert disk.stat().st_size == 64 << 20
    assert sorted(p.name for p in short_tmp.iterdir()) == ["boot.raw"]  # the staging directory is gone
    with disk.open("rb") as raw:
        sector0 = raw.read(SECTOR)
        raw.seek(PART_START * SECTOR)
        boot_sector = raw.read(SECTOR)
    assert sector0[510:] == b"\x55\xaa" and sector0[:440].strip(b"\0")  # boot code present
    status, kind, start, count = struct.unpack_from("<B3xB3xII", sector0, 446)
    assert (status, kind, start, count) == (0x80, 0x0E, PART_START, (64 << 20) // SECTOR - PART_START)
    assert sector0[462:510] == bytes(48)  # one partition only
    assert boot_sector[3:11] == b"SYSLINUX" and boot_sector[510:] == b"\x55\xaa"
    listing = subprocess.run(
        ["mdir", "-a", "-b", "-i", f"{disk}@@{PART_START * SECTOR}", "::/"], capture_output=True, text=True, check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout.lower()  # -a: ldlinux.sys is hidden
    for name in ("ldlinux.sys", "ldlinux.c32", "syslinux.cfg", "vmlinuz", "initrd.img"):
        assert f"::/{name}" in listing


def test_bad_inputs_fail_before_building(tiny_image_dir: Path, short_tmp: Path) -> None:
    kernel, _ = find_host_kernel()
    initrd = load_image(tiny_image_dir).initrd
    with pytest.raises(ImageBuildError, match="console=ttyS0"):
        build_boot_disk(short_tmp / "d.qcow2", kernel_bzimage=kernel, initrd=initrd, cmdline="quiet")
    with pytest.raises(ImageBuildError, match="not a bzImage"):
        build_boot_disk(short_tmp / "d.qcow2", kernel_bzimage=load_image(tiny_image_dir).kernel, initrd=initrd,
                        cmdline="console=ttyS0")
    with pytest.raises(ImageBuildError, match="too small"):
        build_boot_disk(short_tmp / "d.qcow2", kernel_bzimage=kernel, initrd=initrd, cmdline="console=ttyS0",
                        size_mib=4)
    assert list(short_tmp.iterdir()) == []


def test_a_missing_tool_names_its_debian_package(
    tiny_image_dir: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel, _ = find_host_kernel()
    build = partial(
        build_boot_disk, short_tmp / "d.qcow2", kernel_bzimage=kernel, initrd=load_image(tiny_image_dir).initrd,
        cmdline="console=ttyS0",
    )
    monkeypatch.setattr(bootdisk, "MBR_BIN_PATHS", (short_tmp / "mbr.bin",))
    with pytest.raises(ImageBuildError, match="apt-get install syslinux-common"):
        build()
    monkeypatch.setattr(bootdisk, "_SEARCH_PATH", str(short_tmp))
    with pytest.raises(ImageBuildError, match=r"mkfs\.fat not found; install it with: apt-get install dosfstools"):
        build()
    assert list(short_tmp.iterdir()) == []


def test_q35_boots_the_disk_through_the_bios(tiny_image_dir: Path, short_tmp: Path) -> None:
    kernel, _ = find_host_kernel()
    disk = build_boot_disk(
        short_tmp / "boot.qcow2", kernel_bzimage=kernel, initrd=load_image(tiny_image_dir).initrd,
        cmdline=default_cmdline("q35", None),
    )
    log = short_tmp / "console.log"
    disk_file = {"driver": "file", "filename": str(disk), "node-name": "disk0-file"}
    disk_fmt = {"driver": "qcow2", "file": "disk0-file", "node-name": "disk0"}
    argv = [
        "qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "256",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", f"file:{log}",
        "-blockdev", json.dumps(disk_file), "-blockdev", json.dumps(disk_fmt),
        "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
    ]
    started = time.monotonic()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        text = wait_console(log, "VIRTFLEET-READY", qemu)
        print(f"q35 booted the disk to VIRTFLEET-READY in {time.monotonic() - started:.1f} s")
        assert "SYSLINUX" in text  # the bootloader ran: no -kernel shortcut
    finally:
        qemu.kill()
        qemu.wait(10)
