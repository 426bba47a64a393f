"""The export writers are pure: golden files, the DMTF OVF schema's rules, and our own readers reading them back.

Regenerate after an intended change with: VIRTFLEET_UPDATE_GOLDEN=1 pytest tests/unit/test_v2v_writers.py
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.v2v_stage import DATA, MiB, make_disk
from virtfleet.v2v import writers
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.sources import read_source
from virtfleet.v2v.writers import OVF, RASD, VSSD, ExportDisk, ExportNic, ExportVm

GOLDEN = DATA / "golden" / "export"
VM = ExportVm(name="web", cpus=2, memory_mib=768,
              disks=[ExportDisk(file="web-disk1.vmdk", capacity=16 * MiB, size=65536, format="vmdk"),
                     ExportDisk(file="web-disk2.vmdk", capacity=8 * MiB, size=65536, format="vmdk",
                                bus="virtio-scsi")],
              nics=[ExportNic(mac="52:54:00:12:34:56", network="lan"),
                    ExportNic(mac="52:54:00:12:34:57", network="dmz", model="e1000")])
WRITERS: dict[str, tuple[Callable[[ExportVm], str], str]] = {
    "ovf": (writers.ovf, "web.ovf"), "vmx": (writers.vmx, "web.vmx"), "xl": (writers.xl, "web.cfg"),
    "libvirt": (writers.libvirt, "web.xml"),
}
# The element order of the CIM classes in the OVF 1.x schema (CIM_ResourceAllocationSettingData.xsd and
# CIM_VirtualSystemSettingData.xsd, as DSP8023 imports them): a sequence, alphabetical.
RASD_ORDER = ["Address", "AddressOnParent", "AllocationUnits", "AutomaticAllocation", "AutomaticDeallocation",
              "Caption", "ChangeableType", "ConfigurationName", "Connection", "ConsumerVisibility", "Description",
              "ElementName", "Generation", "HostResource", "InstanceID", "Limit", "MappingBehavior",
              "OtherResourceType", "Parent", "PoolID", "Reservation", "ResourceSubType", "ResourceType",
              "VirtualQuantity", "Weight"]
VSSD_ORDER = ["AutomaticRecoveryAction", "AutomaticShutdownAction", "AutomaticStartupAction", "Caption",
              "ChangeableType", "ConfigurationDataRoot", "ConfigurationFile", "ConfigurationID", "ConfigurationName",
              "CreationTime", "Description", "ElementName", "Generation", "InstanceID", "LogDataRoot", "Notes",
              "RecoveryFile", "SnapshotDataRoot", "SuspendDataRoot", "SwapFileDataRoot", "VirtualSystemIdentifier",
              "VirtualSystemType"]


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_writer_matches_golden(kind: str) -> None:
    write, name = WRITERS[kind]
    text = write(VM)
    golden = GOLDEN / name
    if os.environ.get("VIRTFLEET_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _in_order(names: list[str], order: list[str]) -> bool:
    positions = [order.index(name) for name in names]
    return positions == sorted(positions)


def test_the_ovf_follows_the_dmtf_schema_rules() -> None:
    envelope = ET.fromstring(writers.ovf(VM))  # noqa: S314 - our own writer's output
    assert envelope.tag == _q(OVF, "Envelope") and envelope.get(_q(OVF, "version")) == "1.0"
    children = [child.tag for child in envelope]
    # EnvelopeType: References, then the package sections, then exactly one Content (the VirtualSystem).
    assert children == [_q(OVF, "References"), _q(OVF, "DiskSection"), _q(OVF, "NetworkSection"),
                        _q(OVF, "VirtualSystem")]
    files = {f.get(_q(OVF, "id")): f for f in envelope.find(_q(OVF, "References")) or []}
    assert all(f.get(_q(OVF, "href")) and f.get(_q(OVF, "size")) for f in files.values())
    disk_section = envelope.find(_q(OVF, "DiskSection"))
    network_section = envelope.find(_q(OVF, "NetworkSection"))
    assert disk_section is not None and network_section is not None
    for section in (disk_section, network_section):
        assert section[0].tag == _q(OVF, "Info")  # Section_Type: Info comes first
    disks = {d.get(_q(OVF, "diskId")): d for d in disk_section.findall(_q(OVF, "Disk"))}
    assert all(d.get(_q(OVF, "fileRef")) in files and int(d.get(_q(OVF, "capacity")) or 0) > 0
               for d in disks.values())
    networks = {n.get(_q(OVF, "name")) for n in network_section.findall(_q(OVF, "Network"))}
    system = envelope.find(_q(OVF, "VirtualSystem"))
    assert system is not None and system.get(_q(OVF, "id")) == "web"
    assert [child.tag for child in system][:2] == [_q(OVF, "Info"), _q(OVF, "Name")]
    hardware = system.find(_q(OVF, "VirtualHardwareSection"))
    assert hardware is not None
    assert [child.tag for child in hardware][:2] == [_q(OVF, "Info"), _q(OVF, "System")]
    vssd = hardware.find(_q(OVF, "System"))
    assert vssd is not None and _in_order([c.tag.rpartition("}")[2] for c in vssd], VSSD_ORDER)
    assert all(c.tag.startswith(f"{{{VSSD}}}") for c in vssd)
    items = hardware.findall(_q(OVF, "Item"))
    instance_ids = []
    for item in items:
        names = [c.tag.rpartition("}")[2] for c in item]
        assert all(c.tag.startswith(f"{{{RASD}}}") for c in item)
        assert _in_order(names, RASD_ORDER), names
        fields = {c.tag.rpartition("}")[2]: c.text or "" for c in item}
        assert {"ElementName", "InstanceID", "ResourceType"} <= fields.keys()  # required by the RASD class
        instance_ids.append(fields["InstanceID"])
        if fields["ResourceType"] == "17":
            assert fields["HostResource"].removeprefix("ovf:/disk/") in disks
            assert fields["Parent"] in instance_ids  # the controller comes first
        if fields["ResourceType"] == "10":
            assert fields["Connection"] in networks
    assert len(instance_ids) == len(set(instance_ids))
    assert sorted(f["ResourceType"] for f in ({c.tag.rpartition("}")[2]: c.text for c in i} for i in items)) == \
        ["10", "10", "17", "17", "3", "4", "6"]


def test_the_manifest_names_the_descriptor_and_every_file_with_sha256() -> None:
    text = writers.manifest({"web.ovf": "a" * 64, "web-disk1.vmdk": "b" * 64})
    assert text == f"SHA256(web.ovf)= {'a' * 64}\nSHA256(web-disk1.vmdk)= {'b' * 64}\n"


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_what_is_written_reads_back_the_same(kind: str, tmp_path: Path) -> None:
    write, name = WRITERS[kind]
    (tmp_path / name).write_text(write(VM))
    for disk in VM.disks:
        make_disk(tmp_path / disk.file, "vmdk", disk.capacity, subformat="streamOptimized")
    if kind == "ovf":
        (tmp_path / name).write_text(write(VM).replace('ovf:size="65536"', ""))  # the sizes of the disks made here
    source = read_source(ImportDir(tmp_path), name)
    assert (source.name, source.cpus, source.memory_mib) == ("web", 2, 768)
    assert [nic.mac for nic in source.nics] == ["52:54:00:12:34:56", "52:54:00:12:34:57"]
    assert [nic.network for nic in source.nics] == ["lan", "dmz"]
    assert [disk.size for disk in source.disks] == [16 * MiB, 8 * MiB]


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_uefi_firmware_is_written_so_that_it_reads_back(kind: str, tmp_path: Path) -> None:
    write, name = WRITERS[kind]
    uefi = VM.model_copy(update={"firmware": "uefi"})
    for vm, expected in ((uefi, "uefi"), (VM, "bios")):
        (tmp_path / name).write_text(write(vm).replace('ovf:size="65536"', ""))
        for disk in vm.disks:
            make_disk(tmp_path / disk.file, "vmdk", disk.capacity, subformat="streamOptimized")
        assert read_source(ImportDir(tmp_path), name).firmware == expected
