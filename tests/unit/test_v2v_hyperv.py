"""Hyper-V disks: VHD/VHDX headers read like qemu reads them, differencing chains merged into the current state."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.v2v_stage import qemu_img
from tests.v2v_vhd import MiB, write_vhd, write_vhdx
from virtfleet.errors import InvalidSpec
from virtfleet.v2v import vhd
from virtfleet.v2v.convert import convert_disk
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.sources import read_source

SIZE = 6 * MiB
BLOCK = 2 * MiB


def pattern(byte: int, length: int = SIZE) -> bytes:
    return bytes([byte]) * length


def overlay(base: bytes, spans: list[tuple[int, bytes]]) -> bytes:
    data = bytearray(base)
    for at, chunk in spans:
        data[at:at + len(chunk)] = chunk
    return bytes(data)


def raw_of(path: Path, fmt: str, tmp: Path) -> bytes:
    out = tmp / "check.raw"
    out.unlink(missing_ok=True)
    qemu_img("convert", "-f", fmt, "-O", "raw", str(path), str(out))
    return out.read_bytes()


@pytest.mark.parametrize("fmt", ["vhdx", "vpc"])
def test_base_images_written_for_the_tests_read_the_same_in_qemu_and_here(fmt: str, tmp_path: Path) -> None:
    content = overlay(bytes(SIZE), [(0, pattern(0x11, BLOCK)), (2 * BLOCK, pattern(0x33, BLOCK))])
    path = tmp_path / ("base.vhdx" if fmt == "vhdx" else "base.vhd")
    if fmt == "vhdx":
        write_vhdx(path, SIZE, content, {0: "full", 2: "full"}, data_write=uuid.uuid4())
    else:
        write_vhd(path, SIZE, content, {0: "full", 2: "full"}, unique=uuid.uuid4())
    assert raw_of(path, fmt, tmp_path) == content  # qemu agrees with the layout
    root = ImportDir(tmp_path)
    chain = vhd.chain(root, path.name, fmt, file=path.name, field="disk")
    fd = os.open(tmp_path / "merged.raw", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        vhd.merge(root, chain, fd, file=path.name)
    finally:
        os.close(fd)
    assert (tmp_path / "merged.raw").read_bytes() == content


def make_export(root: Path, fmt: str) -> bytes:
    """A Hyper-V 2016 style export: a binary .vmcx and base + checkpoint disks. Returns the current disk contents."""
    disks = root / "web" / "Virtual Hard Disks"
    disks.mkdir(parents=True)
    (root / "web" / "Virtual Machines").mkdir()
    (root / "web" / "Virtual Machines" / "0A1B2C3D.vmcx").write_bytes(b"\x00binary configuration\x00" * 10)
    base = pattern(0x11)
    child_spans = [(100 * 512, pattern(0x22, 4 * 512)), (2000 * 512, pattern(0x22, 48 * 512)),
                   (BLOCK, pattern(0x44, BLOCK))]
    child = overlay(bytes(SIZE), child_spans)
    blocks_child: dict[int, str | list[tuple[int, int]]] = {0: [(100, 4), (2000, 48)], 1: "full"}
    expected = overlay(base, child_spans)
    identity = uuid.uuid4()
    if fmt == "vhdx":
        blocks_child[2] = "zero"
        expected = expected[:2 * BLOCK] + bytes(BLOCK)
        write_vhdx(disks / "web.vhdx", SIZE, base, {0: "full", 1: "full", 2: "full"}, data_write=identity)
        write_vhdx(disks / "web_6C1A.avhdx", SIZE, child, blocks_child, data_write=uuid.uuid4(),
                   parent=(identity, "web.vhdx"))
    else:
        write_vhd(disks / "web.vhd", SIZE, base, {0: "full", 1: "full", 2: "full"}, unique=identity)
        write_vhd(disks / "web_6C1A.avhd", SIZE, child, blocks_child, unique=uuid.uuid4(),
                  parent=(identity, "web.vhd"))
    return expected


@pytest.mark.parametrize("fmt", ["vhdx", "vpc"])
def test_a_hyperv_export_with_a_checkpoint_imports_the_current_state(fmt: str, tmp_path: Path) -> None:
    root = tmp_path / "import"
    expected = make_export(root, fmt)
    source = read_source(ImportDir(root), "web")
    assert source.name == "web" and len(source.disks) == 1
    disk = source.disks[0]
    assert disk.layers[0].file.endswith(("web_6C1A.avhdx", "web_6C1A.avhd"))
    assert len(disk.layers) == 2 and "differencing chain of 2 layers" in disk.layout
    assert any(".vmcx" in warning and "not read" in warning for warning in source.warnings)
    staging = tmp_path / "staging"
    staging.mkdir()
    convert_disk(ImportDir(root), disk, tmp_path / "out.qcow2", "qcow2", staging)
    assert raw_of(tmp_path / "out.qcow2", "qcow2", tmp_path) == expected


@pytest.mark.parametrize("fmt", ["vhdx", "vpc"])
def test_a_broken_chain_is_refused(fmt: str, tmp_path: Path) -> None:
    root = tmp_path / "import"
    make_export(root, fmt)
    disks = root / "web" / "Virtual Hard Disks"
    parent = disks / ("web.vhdx" if fmt == "vhdx" else "web.vhd")
    if fmt == "vhdx":
        write_vhdx(parent, SIZE, bytes(SIZE), {}, data_write=uuid.uuid4())  # replaced after the checkpoint
    else:
        write_vhd(parent, SIZE, bytes(SIZE), {}, unique=uuid.uuid4())
    with pytest.raises(InvalidSpec, match="expects the parent"):
        read_source(ImportDir(root), "web")
    parent.unlink()
    with pytest.raises(InvalidSpec, match="does not exist"):
        read_source(ImportDir(root), "web")


def test_a_bare_vhdx_is_a_vm_with_defaults(tmp_path: Path) -> None:
    write_vhdx(tmp_path / "disk.vhdx", SIZE, bytes(SIZE), {}, data_write=uuid.uuid4())
    source = read_source(ImportDir(tmp_path), "disk.vhdx")
    assert (source.kind, source.name, source.cpus, source.memory_mib) == ("disk", "disk", 1, 1024)
    assert source.disks[0].size == SIZE and source.warnings
