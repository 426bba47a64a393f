"""Every reader, fuzzed: random mutations of real files (flipped, inserted, deleted bytes, truncation) must give a plan
or one InvalidSpec naming the file, never another exception. Bounded to a few seconds per reader."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.v2v_stage import DATA, make_disk, stage
from virtfleet.errors import InvalidSpec
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.planner import PlanOptions, make_plan
from virtfleet.v2v.sources import read_source

FUZZ = settings(max_examples=int(os.environ.get("V2V_FUZZ_EXAMPLES", "60")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# A byte-level edit: (kind, position as a fraction of the length, payload).
edits = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "replace"]),
                           st.floats(min_value=0, max_value=1, allow_nan=False),
                           st.binary(min_size=1, max_size=16)), min_size=1, max_size=6)


def mutate(data: bytes, changes: list[tuple[str, float, bytes]], window: int | None = None) -> bytes:
    out = bytearray(data)
    for kind, where, payload in changes:
        span = min(len(out), window or len(out))
        at = int(where * max(span - 1, 0))
        if kind == "flip" and out:
            out[at] ^= payload[0] or 0xFF
        elif kind == "insert":
            out[at:at] = payload
        elif kind == "delete":
            del out[at:at + len(payload)]
        elif kind == "truncate":
            del out[at:]
        else:
            out[at:at + len(payload)] = payload
    return bytes(out)


def check(root: Path, rel: str) -> None:
    try:
        source = read_source(ImportDir(root, devices=("/dev/HostVG/*",)), rel)
        make_plan(source, PlanOptions(network_map={"*": "lan"}))
    except InvalidSpec as error:
        assert error.message and error.field  # one clear line naming the field (and, for SourceError, the file)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="v2vfuzz"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


TEXT_CASES = {
    "vmx": ("vmware/libvirt-esx-in-the-wild-9.vmx", {"v2v-windows-kkulkarn.vmdk": "vmdk"}),
    "ovf-vmware": ("ovf/virt-v2v-two-disks.ovf", {"disk1.vmdk": "vmdk", "disk2.vmdk": "vmdk"}),
    "ovf-virtualbox": ("ovf/govmomi-vbox1-0.9.ovf", {"vbox1.vmdk": "vmdk"}),
    "ovf-xenserver": ("ovf/xenadmin-sample_app.ovf", {"5936bc8c-20ae-4052-9083-b8e5b96dc683.vhd": "vpc"}),
    "xl": ("xen/libvirt-xl-fullvirt-ovmf.cfg", {"XenGuest2-home": "qcow2"}),
    "xm": ("xen/libvirt-xm-escape-paths.cfg", {}),
    "libvirt": ("libvirt/libvirt-xl-fullvirt-ovmf.xml", {"XenGuest2-home": "qcow2"}),
    "hyperv-xml": ("hyperv/handwritten-2012-export.xml", {"web01.vhdx": "vhdx", "web01-data.vhd": "vpc"}),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_text_readers_survive_mutations(case: str, workdir: Path) -> None:
    config, disks = TEXT_CASES[case]
    root = workdir / case
    rel = stage(root, config, disks)
    seed = (DATA / config).read_bytes()

    @FUZZ
    @given(changes=edits)
    def run(changes: list[tuple[str, float, bytes]]) -> None:
        (root / rel).write_bytes(mutate(seed, changes))
        check(root, rel)

    run()


BINARY_CASES = {"vmdk-sparse": ("vmdk", None), "vmdk-stream": ("vmdk", "streamOptimized"),
                "vhdx": ("vhdx", None), "vhd": ("vpc", None), "qcow2": ("qcow2", None)}


@pytest.mark.parametrize("case", sorted(BINARY_CASES))
def test_disk_headers_survive_mutations(case: str, workdir: Path) -> None:
    """Bare disks: the header parsers (VMDK sparse + embedded descriptor, VHD footer and dynamic header, VHDX headers,
    region table and metadata, qcow2) see mutated bytes in their first 1.2 MiB."""
    fmt, subformat = BINARY_CASES[case]
    root = workdir / case
    root.mkdir()
    extension = {"vpc": "vhd"}.get(fmt, fmt)
    seed = make_disk(root / f"seed.{extension}", fmt, 8 << 20, subformat=subformat).read_bytes()
    rel = f"disk.{extension}"

    @FUZZ
    @given(changes=edits, tail=st.booleans())
    def run(changes: list[tuple[str, float, bytes]], tail: bool) -> None:
        if tail and fmt == "vpc":  # a VHD's footer is at the end
            data = seed[:-512] + mutate(seed[-512:], changes)
        else:
            data = mutate(seed, changes, window=1_300_000)
        (root / rel).write_bytes(data)
        check(root, rel)

    run()


def test_ova_archives_survive_mutations(workdir: Path) -> None:
    root = workdir / "ova"
    root.mkdir()
    disk = make_disk(root / "d.vmdk", "vmdk", 1 << 20, subformat="streamOptimized").read_bytes()
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in (("vm.ovf", (DATA / "ovf/govmomi-vbox1.ovf").read_bytes().replace(b"vbox1.vmdk",
                                                                                                b"d.vmdk")),
                              ("d.vmdk", disk)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, BytesIO(payload))
    seed = buffer.getvalue()

    @FUZZ
    @given(changes=edits)
    def run(changes: list[tuple[str, float, bytes]]) -> None:
        (root / "vm.ova").write_bytes(mutate(seed, changes, window=12_000))
        check(root, "vm.ova")

    run()


@pytest.mark.parametrize("fmt", ["vhdx", "vpc"])
def test_differencing_chains_survive_mutations(fmt: str, workdir: Path) -> None:
    """A Hyper-V export whose checkpoint disk (parent locator, bitmaps, BAT) is mutated: read and merged."""
    from tests.unit.test_v2v_hyperv import make_export
    from virtfleet.v2v.convert import convert_disk

    root = workdir / f"diff-{fmt}"
    make_export(root, fmt)
    child = next((root / "web" / "Virtual Hard Disks").glob("*.avhd*"))
    seed = child.read_bytes()
    staging = workdir / f"staging-{fmt}"

    @FUZZ
    @given(changes=edits)
    def run(changes: list[tuple[str, float, bytes]]) -> None:
        child.write_bytes(mutate(seed, changes, window=len(seed)))
        try:
            source = read_source(ImportDir(root), "web")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for index, disk in enumerate(source.disks):  # the merge reads the BAT and bitmaps for real
                convert_disk(ImportDir(root), disk, staging / f"out{index}.raw", "raw", staging)
        except InvalidSpec as error:
            assert error.message

    run()
