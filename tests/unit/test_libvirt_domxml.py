"""The libvirt domain XML is a pure function of spec, image and run directory: compared with golden files.

Regenerate after an intended change with: VIRTFLEET_UPDATE_GOLDEN=1 pytest tests/unit/test_libvirt_domxml.py
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from virtfleet.drivers.base import BootImage
from virtfleet.drivers.libvirt.domxml import (
    NAMESPACE,
    build_domain_xml,
    domain_uuid,
    metadata_xml,
    read_metadata,
    target_dev,
)
from virtfleet.drivers.qemu.runtime import RunPaths
from virtfleet.errors import Unsupported
from virtfleet.model.vm import VmSpec

GOLDEN = Path(__file__).parent.parent / "data" / "domxml"
VM_ID = "0b5e8a9e-6f4a-4c1e-9d0e-3f1f2a7c9b11"
BOOT = BootImage("tiny", Path("/img/tiny/vmlinux"), Path("/img/tiny/initramfs.cpio"), "console=ttyS0 quiet",
                 Path("/img/tiny/vmlinuz"))
PATHS = RunPaths(Path("/run/vf") / VM_ID)

CASES = {
    "q35-tcg": (VmSpec(name="web", cpus=1, memory=256, machine="q35"), "qemu"),
    "q35-kvm-disks": (
        VmSpec(
            name="db",
            cpus=2,
            memory="1G",
            machine="q35",
            disks=[
                {"path": "/pools/default/db.qcow2", "cache": "none", "discard": "unmap",
                 "backing_chain": [{"path": "/pools/default/snap.qcow2", "format": "qcow2"},
                                   {"path": "/pools/default/base.raw", "format": "raw"}]},
                {"path": "/pools/default/seed.raw", "format": "raw", "readonly": True, "bus": "virtio-scsi"},
            ],
        ),
        "kvm",
    ),
    "q35-disk-boot": (
        VmSpec(name="legacy", machine="q35", image=None,
               disks=[{"path": "/pools/default/legacy.qcow2", "boot_index": 0, "cache": "writethrough"}]),
        "qemu",
    ),
    "q35-nics": (
        VmSpec(name="net", machine="q35", nics=[
            {"network": "lan", "mac": "52:54:00:aa:bb:01", "tap": "vft0123456789"},
            {"network": "old", "model": "e1000", "mac": "52:54:00:aa:bb:02", "tap": "vft9876543210",
             "link_up": False},
            {"network": "usr", "mac": "52:54:00:aa:bb:03", "user_mode": True},
        ]),
        "qemu",
    ),
    "q35-vnc": (VmSpec(name="desk", machine="q35", display="vnc"), "qemu"),
    "q35-uefi": (VmSpec(name="efi", machine="q35", firmware="uefi"), "qemu"),
}


def _build(case: str) -> str:
    spec, domain_type = CASES[case]
    return build_domain_xml(VM_ID, spec, None if spec.image is None else BOOT, PATHS, domain_type)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", sorted(CASES))
def test_domain_xml_matches_golden(case: str) -> None:
    xml = _build(case)
    golden = GOLDEN / f"{case}.xml"
    if os.environ.get("VIRTFLEET_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(xml)
    assert xml == golden.read_text()


def _parse(case: str) -> ET.Element:
    return ET.fromstring(_build(case))  # noqa: S314 - our own output


def test_name_is_what_users_see_and_identity_is_in_our_metadata() -> None:
    domain = _parse("q35-tcg")
    assert domain.findtext("name") == "web"
    assert domain.findtext("uuid") == VM_ID
    holder = domain.find("metadata")
    assert holder is not None
    meta = read_metadata(holder[0])
    assert meta is not None and meta.vm_id == VM_ID and meta.spec == CASES["q35-tcg"][0]
    # A foreign element, or ours without a readable spec, is not ours.
    assert read_metadata(ET.Element("{urn:other}vm")) is None
    broken = ET.fromstring(metadata_xml(VM_ID, CASES["q35-tcg"][0], "/run/vf"))  # noqa: S314 - our own output
    spec_element = broken.find(f"{{{NAMESPACE}}}spec")
    assert spec_element is not None
    spec_element.text = "{not json"
    assert read_metadata(broken) is None
    assert broken.tag == f"{{{NAMESPACE}}}vm"


def test_defined_spec_is_kept_when_the_devices_come_from_the_start_spec() -> None:
    defined = VmSpec(name="web", machine="q35")
    started = VmSpec(name="web", machine="q35", disks=[{"path": "/seed.iso", "format": "raw", "readonly": True}])
    domain = ET.fromstring(build_domain_xml(VM_ID, started, BOOT, PATHS, "qemu",  # noqa: S314 - our own output
                                            defined_spec=defined))
    holder = domain.find("metadata")
    assert holder is not None
    meta = read_metadata(holder[0])
    assert meta is not None and meta.spec == defined
    assert [s.get("file") for s in domain.iter("source") if s.get("file")] == ["/seed.iso"]


def test_a_non_uuid_vm_id_gets_a_stable_derived_uuid() -> None:
    assert domain_uuid("vm-1") == domain_uuid("vm-1") != domain_uuid("vm-2")
    assert domain_uuid(VM_ID.upper()) == VM_ID


def test_backing_chain_is_pinned_and_ends_in_an_empty_backing_store() -> None:
    disk = next(_parse("q35-kvm-disks").iter("disk"))
    chain = []
    store = disk.find("backingStore")
    while store is not None and store.find("source") is not None:
        chain.append((store.find("format").get("type"), store.find("source").get("file")))  # type: ignore[union-attr]
        store = store.find("backingStore")
    assert chain == [("qcow2", "/pools/default/snap.qcow2"), ("raw", "/pools/default/base.raw")]
    assert store is not None and len(store) == 0 and not store.attrib  # the explicit end: libvirt never probes
    driver = disk.find("driver")
    assert driver is not None and driver.attrib == {"name": "qemu", "type": "qcow2", "cache": "none",
                                                     "discard": "unmap"}


def test_scsi_disks_get_one_controller_and_devices_get_empty_hotplug_ports() -> None:
    domain = _parse("q35-kvm-disks")
    targets = [(t.get("dev"), t.get("bus")) for t in domain.iter("target") if t.get("bus")]
    assert targets == [("vda", "virtio"), ("sda", "scsi")]
    assert [c.get("model") for c in domain.iter("controller") if c.get("type") == "scsi"] == ["virtio-scsi"]
    ports = [c for c in domain.iter("controller") if c.get("model") == "pcie-root-port"]
    assert len(ports) == 2 + 4  # the virtio-blk disk and the SCSI controller take one each; four stay free
    assert next(d for d in domain.iter("disk") if d.find("readonly") is not None).find("source").get(  # type: ignore[union-attr]
        "file") == "/pools/default/seed.raw"


def test_kernel_boot_or_disk_boot_order() -> None:
    kernel = _parse("q35-tcg").find("os")
    assert kernel is not None and kernel.findtext("kernel") == "/img/tiny/vmlinux"
    assert kernel.findtext("cmdline") == "console=ttyS0 quiet"
    disk_boot = _parse("q35-disk-boot")
    assert disk_boot.find("os/kernel") is None
    assert [b.get("order") for b in disk_boot.iter("boot")] == ["1"]  # libvirt counts from 1, boot_index from 0
    spec = CASES["q35-disk-boot"][0]
    with_kernel = ET.fromstring(build_domain_xml(VM_ID, spec, BOOT, PATHS, "qemu"))  # noqa: S314 - our own output
    assert list(with_kernel.iter("boot")) == []  # a kernel image boots: the firmware order means nothing


def test_nics_are_unmanaged_taps_or_user_mode_and_forwards_are_refused() -> None:
    interfaces = list(_parse("q35-nics").iter("interface"))
    assert [i.get("type") for i in interfaces] == ["ethernet", "ethernet", "user"]
    assert interfaces[0].find("target").attrib == {"dev": "vft0123456789", "managed": "no"}  # type: ignore[union-attr]
    assert [i.find("model").get("type") for i in interfaces] == ["virtio", "e1000", "virtio"]  # type: ignore[union-attr]
    assert [i.find("link").get("state") for i in interfaces] == ["up", "down", "up"]  # type: ignore[union-attr]
    forwarded = VmSpec(name="f", machine="q35",
                       nics=[{"network": "usr", "user_mode": True, "forwards": ["tcp:8080:80"]}])
    with pytest.raises(Unsupported, match="passt"):
        build_domain_xml(VM_ID, forwarded, BOOT, PATHS, "qemu")


def test_microvm_is_refused_naming_the_machine() -> None:
    with pytest.raises(Unsupported, match="q35"):
        build_domain_xml(VM_ID, VmSpec(name="m"), BOOT, PATHS, "qemu")


def test_console_and_vnc_are_unix_sockets_in_the_run_dir() -> None:
    domain = _parse("q35-vnc")
    serial = domain.find("devices/serial")
    assert serial is not None and serial.get("type") == "unix"
    assert serial.find("source").attrib == {"mode": "bind", "path": f"/run/vf/{VM_ID}/console.sock"}  # type: ignore[union-attr]
    assert serial.find("log").attrib == {"file": f"/run/vf/{VM_ID}/console.log", "append": "on"}  # type: ignore[union-attr]
    assert domain.find("devices/graphics").attrib == {"type": "vnc", "socket": f"/run/vf/{VM_ID}/vnc.sock"}  # type: ignore[union-attr]
    assert domain.find("devices/video") is not None
    plain = _parse("q35-tcg")
    assert plain.find("devices/graphics") is None and plain.find("devices/video") is None


def test_user_text_cannot_change_the_document() -> None:
    hostile = BootImage("t", Path("/k'><x/>"), Path("/i"), "a=</cmdline><devices/> & b")
    spec = VmSpec(name="ok", machine="q35", disks=[{"path": "/p/a\"b<c>.qcow2"}])
    domain = ET.fromstring(build_domain_xml(VM_ID, spec, hostile, PATHS, "qemu"))  # noqa: S314 - our own output
    assert domain.findtext("os/cmdline") == "a=</cmdline><devices/> & b"
    assert domain.findtext("os/kernel") == "/k'><x/>"
    assert len(domain.findall("devices")) == 1
    assert domain.find("devices/disk/source").get("file") == '/p/a"b<c>.qcow2'  # type: ignore[union-attr]


def test_target_dev_names() -> None:
    assert [target_dev("virtio-blk", i) for i in (0, 1, 25, 26, 27)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]
    assert target_dev("virtio-scsi", 2) == "sdc"


def test_hotplug_finds_disks_by_file_and_picks_a_free_target_name() -> None:
    from virtfleet.drivers.libvirt.devices import disk_by_file, free_target, nic_by_mac, with_link

    domain = _parse("q35-kvm-disks")
    assert free_target([domain], "virtio-blk") == "vdb"  # vda is taken, whatever the index of the new disk
    config = ET.fromstring('<domain><devices><disk><target dev="vdb"/></disk></devices></domain>')  # noqa: S314
    assert free_target([domain, config], "virtio-blk") == "vdc"  # free live and for the next boot
    found = disk_by_file("/pools/default/seed.raw")(domain)
    assert found is not None and found.find("target").get("dev") == "sda"  # type: ignore[union-attr]
    assert disk_by_file("/pools/default/snap.qcow2")(domain) is None  # a backing layer is not a disk
    nic = nic_by_mac("52:54:00:aa:bb:02")(_parse("q35-nics"))
    assert nic is not None
    assert 'state="up"' in with_link(nic, True) and nic_by_mac("52:54:00:aa:bb:99")(_parse("q35-nics")) is None


def test_usage_sums_every_disk_and_nic_of_the_stats() -> None:
    from virtfleet.drivers.libvirt.devices import usage_from_stats

    sample = usage_from_stats({"cpu.time": 2_500_000_000, "balloon.rss": 1024, "block.count": 2,
                               "block.0.rd.bytes": 10, "block.1.rd.bytes": 5, "block.0.wr.bytes": 7,
                               "net.0.rx.bytes": 3, "net.1.rx.bytes": 4, "net.0.tx.bytes": 9})
    assert (sample.cpu_seconds, sample.memory_bytes) == (2.5, 1 << 20)
    assert (sample.disk_read_bytes, sample.disk_write_bytes, sample.net_rx_bytes, sample.net_tx_bytes) == (
        15, 7, 7, 9)
