"""The libvirt block helpers on fixed XML (as libvirt 9.0 writes it) and a scripted domain: the cases a real guest
cannot be made to show on demand (a failed job, a foreign job on the disk)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

libvirt = pytest.importorskip("libvirt")

from virtfleet.drivers.base import OpenImage  # noqa: E402
from virtfleet.drivers.libvirt import blocks  # noqa: E402  (needs libvirt-python)
from virtfleet.drivers.libvirt.blocks import (  # noqa: E402
    LiveDisk,
    memory_snapshot_xml,
    parse_live_disks,
    snapshot_xml,
)
from virtfleet.errors import DriverError, Unsupported  # noqa: E402
from virtfleet.storage import qemu_img  # noqa: E402

# Live XML of a running domain, trimmed, as libvirt 9.0 showed it in tests/integration/test_libvirt_blocks.py: vda
# mid-way through an active commit of its overlay into its base, an empty CD-ROM, a seed ISO, a raw block device and
# a network disk.
LIVE_XML = """<domain type='qemu' id='7'>
  <name>vf-example</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/pool/data.qcow2@2' index='3'/>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/pool/data.qcow2@1'/>
        <backingStore type='file' index='1'>
          <format type='qcow2'/>
          <source file='/pool/./data.qcow2'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <mirror type='file' job='active-commit' ready='yes'>
        <format type='qcow2'/>
        <source file='/pool/data.qcow2@1' index='2'/>
      </mirror>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/run/seed.iso' index='4'/>
      <backingStore/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/lv' index='5'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='export'><host name='127.0.0.1' port='10809'/></source>
      <target dev='vdc' bus='virtio'/>
    </disk>
  </devices>
</domain>"""


def test_the_live_xml_gives_each_local_disk_its_chain_active_layer_first() -> None:
    disks = parse_live_disks(LIVE_XML)
    assert disks == [
        LiveDisk("vda", ("/pool/data.qcow2@2", "/pool/data.qcow2@1", "/pool/./data.qcow2"),
                 ("qcow2", "qcow2", "qcow2"), mirror="/pool/data.qcow2@1", mirror_ready=True),
        LiveDisk("sdb", ("/run/seed.iso",), ("raw",), readonly=True),
        LiveDisk("vdb", ("/dev/vg/lv",), ("raw",)),
    ]  # the empty CD-ROM and the network disk have no image path
    assert disks[0].index("/pool/data.qcow2") == 2  # compared as normalised paths
    assert disks[0].index("/pool/data.qcow2@2") == 0
    assert disks[0].index("/pool/other.qcow2") is None


def test_a_mirror_that_is_not_ready_yet_says_so() -> None:
    copying = LIVE_XML.replace("ready='yes'", "")
    assert parse_live_disks(copying)[0].mirror_ready is False


def test_the_snapshot_xml_switches_the_named_disks_and_leaves_the_others() -> None:
    disks = parse_live_disks(LIVE_XML)
    root = ET.fromstring(snapshot_xml(disks, {"vda": "/pool/data.qcow2@3"}))  # noqa: S314 - our own output
    assert root.tag == "domainsnapshot"
    entries = root.findall("./disks/disk")
    assert [(e.get("name"), e.get("snapshot")) for e in entries] == [
        ("vda", "external"), ("sdb", "no"), ("vdb", "no")]
    vda = entries[0]
    assert vda.get("type") == "file"
    assert vda.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert vda.find("source").get("file") == "/pool/data.qcow2@3"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="no disk vdz"):
        snapshot_xml(disks, {"vdz": "/pool/x"})


def test_the_snapshot_xml_escapes_paths() -> None:
    xml = snapshot_xml([LiveDisk("vda", ("/p/a",))], {"vda": "/p/a&b'<c>"})
    source = ET.fromstring(xml).find("./disks/disk/source")  # noqa: S314 - our own output
    assert source is not None and source.get("file") == "/p/a&b'<c>"


def test_the_memory_snapshot_xml_saves_every_writable_disk_internally() -> None:
    root = ET.fromstring(memory_snapshot_xml(parse_live_disks(LIVE_XML), "tag-1"))  # noqa: S314 - our own output
    assert root.findtext("name") == "tag-1"
    assert root.find("memory").get("snapshot") == "internal"  # type: ignore[union-attr]
    assert [(e.get("name"), e.get("snapshot")) for e in root.findall("./disks/disk")] == [
        ("vda", "internal"), ("sdb", "no"), ("vdb", "internal")]  # libvirt refuses to leave out a writable disk


def test_a_forgotten_memory_snapshot_is_recorded_again_with_the_domain_as_it_is() -> None:
    xml = blocks.recorded_snapshot_xml(parse_live_disks(LIVE_XML), "tag-1", 1700000000, LIVE_XML)
    root = ET.fromstring(xml)  # noqa: S314 - our own output
    assert (root.findtext("name"), root.findtext("state"), root.findtext("creationTime")) == (
        "tag-1", "running", "1700000000")
    assert root.find("memory").get("snapshot") == "internal"  # type: ignore[union-attr]
    assert root.findtext("./domain/name") == "vf-example"


def disk_xml(chain: list[str], mirror: str | None = None, ready: bool = False) -> str:
    """A domain with one disk vda holding `chain` (active first)."""
    inner = "<backingStore/>"
    for path in reversed(chain[1:]):
        inner = f"<backingStore type='file'><format type='qcow2'/><source file='{path}'/>{inner}</backingStore>"
    mirrored = ""
    if mirror is not None:
        mirrored = (f"<mirror type='file' job='active-commit'{' ready=' + chr(39) + 'yes' + chr(39) if ready else ''}>"
                    f"<source file='{mirror}'/></mirror>")
    return (f"<domain><devices><disk type='file' device='disk'><driver type='raw'/><source file='{chain[0]}'/>"
            f"{inner}{mirrored}"
            "<target dev='vda' bus='virtio'/></disk></devices></domain>")


class ScriptedDomain:
    """Answers XMLDesc and blockJobInfo from scripts (the last answer repeats) and records the block calls."""

    def __init__(self, xmls: list[str], jobs: list[dict[str, int]]) -> None:
        self.xmls = xmls
        self.jobs = jobs
        self.calls: list[tuple[Any, ...]] = []

    def XMLDesc(self, flags: int) -> str:
        return self.xmls.pop(0) if len(self.xmls) > 1 else self.xmls[0]

    def blockJobInfo(self, disk: str, flags: int) -> dict[str, int]:
        return self.jobs.pop(0) if len(self.jobs) > 1 else self.jobs[0]

    def blockCommit(self, disk: str, base: str, top: str, bandwidth: int, flags: int) -> None:
        self.calls.append(("commit", disk, base, top, flags))

    def blockJobAbort(self, disk: str, flags: int) -> None:
        self.calls.append(("abort", disk, flags))


COMMIT_JOB = {"type": libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT, "cur": 1, "end": 2, "bandwidth": 0}
ACTIVE_JOB = {"type": libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT, "cur": 2, "end": 2, "bandwidth": 0}


def test_a_commit_whose_job_ends_with_the_layer_still_there_fails() -> None:
    chain = disk_xml(["/p/top", "/p/mid", "/p/base"])
    domain = ScriptedDomain([chain], [{}, COMMIT_JOB, {}])  # the job runs, then vanishes: libvirt forgot it failed
    with pytest.raises(DriverError, match="still in the chain"):
        asyncio.run(blocks.commit_disk(domain, "/p/mid", "/p/base"))
    assert domain.calls == [("commit", "vda", "/p/base", "/p/mid", 0)]


def test_settle_reports_a_commit_that_ended_without_shortening_the_chain() -> None:
    before = disk_xml(["/p/top", "/p/mid", "/p/base"])
    domain = ScriptedDomain([before], [COMMIT_JOB, {}])
    problems = asyncio.run(blocks.settle_block_jobs(domain))
    assert len(problems) == 1 and "commit job on disk vda" in problems[0], problems

    merged = ScriptedDomain([before, disk_xml(["/p/top", "/p/base"])], [COMMIT_JOB, {}])
    assert asyncio.run(blocks.settle_block_jobs(merged)) == []


def test_settle_pivots_a_ready_active_commit_without_a_callback() -> None:
    ready = disk_xml(["/p/top", "/p/base"], "/p/base", ready=True)
    domain = ScriptedDomain([ready, ready, disk_xml(["/p/base"])], [ACTIVE_JOB, ACTIVE_JOB, {}])
    assert asyncio.run(blocks.settle_block_jobs(domain)) == []
    assert domain.calls == [("abort", "vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)]


def test_a_commit_does_not_touch_a_disk_busy_with_another_merge() -> None:
    # An active commit of top into mid runs; merging mid into base must not pivot it (nor start anything).
    domain = ScriptedDomain([disk_xml(["/p/top", "/p/mid", "/p/base"], "/p/mid", ready=True)], [ACTIVE_JOB])
    with pytest.raises(DriverError, match="busy with another active commit job"):
        asyncio.run(blocks.commit_disk(domain, "/p/mid", "/p/base"))
    assert domain.calls == []


def test_a_commit_of_an_image_no_longer_in_the_chain_does_nothing() -> None:
    domain = ScriptedDomain([disk_xml(["/p/base"])], [{}])
    asyncio.run(blocks.commit_disk(domain, "/p/top", "/p/base"))
    assert domain.calls == []
    with pytest.raises(DriverError, match="no disk of the domain has /p/gone open"):
        asyncio.run(blocks.commit_disk(domain, "/p/top", "/p/gone"))


def test_a_base_above_the_top_is_refused() -> None:
    domain = ScriptedDomain([disk_xml(["/p/top", "/p/base"])], [{}])
    with pytest.raises(DriverError, match="not below it"):
        asyncio.run(blocks.commit_disk(domain, "/p/base", "/p/top"))
    assert domain.calls == []


def test_disk_chains_come_from_the_live_xml_with_the_tags_in_each_qcow2(tmp_path: Path) -> None:
    base, top = tmp_path / "data.qcow2", tmp_path / "data.qcow2@1"
    qemu_img.create(base, "qcow2", 1 << 20)
    qemu_img.create(top, "qcow2", 1 << 20, backing=base, backing_fmt="qcow2")
    qemu_img.snapshot_create(top, "qcow2", "memory-1")
    live = (f"<domain><devices><disk type='file' device='disk'><driver type='qcow2'/><source file='{top}'/>"
            f"<backingStore type='file'><format type='qcow2'/><source file='{tmp_path}/./data.qcow2'/>"
            "<backingStore/></backingStore><target dev='vda'/></disk>"
            "<disk type='file' device='cdrom'><driver type='raw'/><source file='/nonexistent/seed.iso'/>"
            "<target dev='sda'/><readonly/></disk></devices></domain>")
    domain = ScriptedDomain([live], [{}])
    assert asyncio.run(blocks.disk_chains(domain)) == [
        (OpenImage(str(top), ("memory-1",)), OpenImage(str(base))),
        (OpenImage("/nonexistent/seed.iso"),),  # raw: no internal snapshots, and not opened to look
    ]
    with pytest.raises(DriverError, match=r"no disk of the domain writes .*data\.qcow2:"):
        asyncio.run(blocks.snapshot_disks(domain, [(str(base), "/p/new")]))  # not the active layer
    assert domain.calls == []


def test_a_memory_snapshot_goes_into_exactly_the_writable_disks() -> None:
    domain = ScriptedDomain([LIVE_XML], [{}])  # writable: vda (active /pool/data.qcow2@2) and vdb
    with pytest.raises(DriverError, match="every writable disk"):
        asyncio.run(blocks.memory_snapshot(domain, "save", "tag", ["/pool/data.qcow2@2"]))
    with pytest.raises(Unsupported):
        asyncio.run(blocks.memory_snapshot(domain, "save", "tag", []))
    assert domain.calls == []
