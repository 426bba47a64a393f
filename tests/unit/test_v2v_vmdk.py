"""Every VMDK layout a VMware VM leaves behind, read and converted through our own descriptors: the result is the
disk qemu sees when it opens the original directly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.v2v_stage import MiB, make_disk, qemu_img
from virtfleet.v2v.convert import convert_disk
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.sources import read_source

GiB = 1 << 30


def write(image: Path, fmt: str, offset: int, byte: int, length: int = MiB) -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {byte} {offset} {length}", str(image)], check=True,
                   capture_output=True)


def vmx(root: Path, disk: str) -> str:
    (root / "vm.vmx").write_text(f'displayName = "vm"\nmemsize = "256"\nscsi0.present = "TRUE"\n'
                                 f'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "{disk}"\n')
    return "vm.vmx"


def import_and_compare(root: Path, tmp_path: Path, disk: str) -> tuple[int, str]:
    source = read_source(ImportDir(root), vmx(root, disk))
    staging = tmp_path / "staging"
    staging.mkdir()
    out = tmp_path / "out.qcow2"
    convert_disk(ImportDir(root), source.disks[0], out, "qcow2", staging)
    # qemu-img reading the original itself (trusted here, in a test) must see the same disk.
    qemu_img("compare", "-f", "vmdk", "-F", "qcow2", str(root / disk), str(out))
    return len(source.disks[0].layers), source.disks[0].layout


@pytest.mark.parametrize(("subformat", "size"), [
    ("monolithicSparse", 64 * MiB), ("streamOptimized", 64 * MiB), ("monolithicFlat", 16 * MiB),
    ("twoGbMaxExtentSparse", 5 * GiB // 2), ("twoGbMaxExtentFlat", 5 * GiB // 2),
])
def test_each_vmdk_layout_converts_to_the_same_disk(subformat: str, size: int, tmp_path: Path) -> None:
    root = tmp_path / "import"
    disk = make_disk(root / "disk.vmdk", "vmdk", size, subformat=subformat)
    if subformat != "streamOptimized":  # qemu writes streamOptimized only by converting
        write(disk, "vmdk", 0, 0x11)
        write(disk, "vmdk", size - MiB, 0x22)  # in the last extent of a split disk
    layers, layout = import_and_compare(root, tmp_path, "disk.vmdk")
    assert layers == 1 and subformat in layout
    if subformat.startswith("twoGb"):
        assert len(list(root.glob("disk-*.vmdk"))) == 2


def test_a_snapshot_chain_imports_its_current_state(tmp_path: Path) -> None:
    root = tmp_path / "import"
    base = make_disk(root / "vm.vmdk", "vmdk", 32 * MiB)
    write(base, "vmdk", 0, 0x11, 4 * MiB)
    for index, byte in ((1, 0x22), (2, 0x33)):  # Workstation snapshots: vm-000001.vmdk on vm.vmdk, and so on
        parent = "vm.vmdk" if index == 1 else f"vm-00000{index - 1}.vmdk"
        child = root / f"vm-00000{index}.vmdk"
        qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", "-b", parent, "-F", "vmdk",
                 str(child))
        write(child, "vmdk", index * MiB, byte)
    layers, layout = import_and_compare(root, tmp_path, "vm-000002.vmdk")
    assert layers == 3 and "snapshot chain of 3 layers" in layout
    out = tmp_path / "check.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(tmp_path / "out.qcow2"), str(out))
    data = out.read_bytes()
    assert data[:MiB] == b"\x11" * MiB and data[MiB:2 * MiB] == b"\x22" * MiB
    assert data[2 * MiB:3 * MiB] == b"\x33" * MiB and data[3 * MiB:4 * MiB] == b"\x11" * MiB
