"""The tiny image builder's pure parts: kernel extraction, module ordering, the cpio archive, the command line."""

from __future__ import annotations

import lzma
import stat
from pathlib import Path

import pytest

from virtfleet.images.tiny import (
    GUEST_MODULES,
    ImageBuildError,
    build_initramfs,
    build_tiny_image,
    default_cmdline,
    extract_vmlinux,
    find_host_kernel,
    host_tsc_khz,
    load_image,
    resolve_modules,
    write_manifest,
)


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    """name -> (mode, data, rdevmajor, rdevminor): an independent reader for what CpioWriter writes."""
    entries: dict[str, tuple[int, bytes, int, int]] = {}
    offset = 0
    while True:
        assert data[offset : offset + 6] == b"070701", f"bad magic at {offset}"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmajor, rminor, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_start = offset + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body_start = (name_start + namesize + 3) & ~3
        body = data[body_start : body_start + filesize]
        offset = (body_start + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert offset == len(data)
            return entries
        entries[name] = (mode, body, rmajor, rminor)


def test_initramfs_holds_init_busybox_console_and_modules() -> None:
    entries = read_newc(build_initramfs(b"BUSYBOX", [("virtio_ring", b"RING"), ("virtio", b"VIRTIO")]))
    mode, body, _, _ = entries["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and body.startswith(b"#!/bin/busybox sh")
    assert entries["bin/busybox"][1] == b"BUSYBOX"
    mode, _, major, minor = entries["dev/console"]
    assert stat.S_ISCHR(mode) and (major, minor) == (5, 1)
    assert entries["etc/modules"][1] == b"virtio_ring\nvirtio\n"
    assert entries["lib/modules/virtio.ko"][1] == b"VIRTIO"
    power = entries["etc/acpi/PWRF/00000080"]
    assert power[0] & 0o111 and b"poweroff" in power[1]
    rc = entries["etc/rc"][1]
    assert b"VIRTFLEET-READY hostname=$(hostname)" in rc and b"acpid" in rc
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"


def test_initramfs_configures_nics_by_dhcp_and_serves_a_test_page() -> None:
    entries = read_newc(build_initramfs(b"BUSYBOX", []))
    mode, script, _, _ = entries["etc/udhcpc.script"]
    assert stat.S_ISREG(mode) and mode & 0o111 and script.startswith(b"#!/bin/sh\n")
    assert b'echo "virtfleet-net: $interface $ip/$mask gw ${gw:-none}" >/dev/console' in script
    assert script.count(b"virtfleet-net:") == 1  # the one line a test waits for; everything else stays quiet
    for event in (b"deconfig)", b"bound|renew)"):
        assert event in script
    assert stat.S_ISDIR(entries["www"][0])
    mode, page, _, _ = entries["www/index.html"]
    assert stat.S_ISREG(mode) and page.strip() == b"virtfleet-httpd-ok"
    rc = entries["etc/rc"][1].decode()
    assert "ip link set lo up" in rc and "-s /etc/udhcpc.script" in rc
    # The clients start (in the background) before READY; the hot-plug watch loop, which sleeps, only after it.
    assert rc.index("udhcpc ") < rc.index("\nacpid") < rc.index("VIRTFLEET-READY") < rc.index("sleep 1")
    assert "done) </dev/null >/dev/null 2>&1 &" in rc


def test_modules_come_after_their_dependencies(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko "
        "kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/net/net-failover.ko.xz:\n"
    )
    order = [name for name, _ in resolve_modules(tmp_path, ["virtio_pci", "net_failover"])]
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_pci")
    assert order.index("virtio_pci_modern_dev") < order.index("virtio_pci")
    assert len(order) == len(set(order)) == 5
    with pytest.raises(ImageBuildError, match="kernel module nope not found"):
        resolve_modules(tmp_path, ["nope"])


def test_extracts_the_elf_from_a_bzimage_like_blob() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    stream = lzma.compress(elf, format=lzma.FORMAT_XZ)
    # A decoy xz stream that is not an ELF comes first, as setup code and other payloads may.
    decoy = lzma.compress(b"not a kernel", format=lzma.FORMAT_XZ)
    blob = b"MZ setup code" + decoy + b"\0" * 100 + stream + b"trailing data"
    assert extract_vmlinux(blob) == elf
    with pytest.raises(ImageBuildError, match="no xz-compressed ELF"):
        extract_vmlinux(b"MZ gzip kernel \x1f\x8b")


def test_newest_kernel_is_chosen(tmp_path: Path) -> None:
    for release in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-28-amd64"):
        (tmp_path / f"vmlinuz-{release}").write_bytes(b"")
    assert find_host_kernel(tmp_path)[1] == "6.1.0-10-amd64"
    with pytest.raises(ImageBuildError, match="apt-get install linux-image-amd64"):
        find_host_kernel(tmp_path / "empty")


def test_cmdline_adds_tsc_khz_and_triple_fault_reboot_on_microvm_only() -> None:
    micro = default_cmdline("microvm", 2445406)
    assert "console=ttyS0" in micro and "tsc_early_khz=2445406" in micro and "reboot=t" in micro
    assert "tsc_early_khz" not in default_cmdline("q35", 2445406)
    assert "tsc_early_khz" not in default_cmdline("microvm", None)


def test_host_tsc_khz_reads_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2445.406\nflags\t\t: fpu\n")
    assert host_tsc_khz(cpuinfo) == 2445406
    cpuinfo.write_text("processor\t: 0\n")
    assert host_tsc_khz(cpuinfo) is None


def test_manifest_round_trip_and_incomplete_images(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match=r"image\.json is missing"):
        load_image(tmp_path)
    (tmp_path / "vmlinux").write_bytes(b"k")
    with pytest.raises(ImageBuildError, match=r"initramfs\.cpio is missing"):
        write_manifest(tmp_path, name="tiny", kernel_release="6.1")
    (tmp_path / "initramfs.cpio").write_bytes(b"i")
    image = load_image(tmp_path)
    assert (image.name, image.kernel_release, image.kernel.name) == ("tiny", "6.1", "vmlinux")


def test_failed_build_keeps_the_previous_image(tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    dest.mkdir()
    (dest / "vmlinux").write_bytes(b"old kernel")
    (dest / "initramfs.cpio").write_bytes(b"old initramfs")
    write_manifest(dest, name="tiny", kernel_release="old")
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "vmlinuz-6.1.0-1-amd64").write_bytes(b"not xz")
    with pytest.raises(ImageBuildError):
        build_tiny_image(dest, boot_dir=boot)
    assert load_image(dest).kernel_release == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot", "tiny"]  # no staging left behind


def test_guest_modules_include_the_virtio_transports_and_the_power_button() -> None:
    assert {"virtio_ring", "virtio", "virtio_mmio", "virtio_pci", "button", "evdev"} <= set(GUEST_MODULES)
    assert {"virtio_net", "e1000"} <= set(GUEST_MODULES)  # both NIC models virtfleet offers
    assert GUEST_MODULES.index("virtio_ring") < GUEST_MODULES.index("virtio")


def test_images_built_by_an_older_virtfleet_are_stale(tmp_path: Path) -> None:
    from virtfleet.images.catalog import ImageCatalog
    from virtfleet.images.tiny import GUEST_VERSION

    dest = tmp_path / "tiny"
    dest.mkdir()
    (dest / "vmlinux").write_bytes(b"k")
    (dest / "initramfs.cpio").write_bytes(b"i")
    write_manifest(dest, name="tiny", kernel_release="6.1", guest_version=GUEST_VERSION - 1)
    catalog = ImageCatalog(tmp_path)
    assert load_image(dest).stale and not catalog.info("tiny").built  # so `demo` and `image build` redo it
    write_manifest(dest, name="tiny", kernel_release="6.1")
    assert catalog.info("tiny").built
