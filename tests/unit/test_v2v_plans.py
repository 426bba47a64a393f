"""Real VM descriptions from other projects' test suites (tests/data/v2v/SOURCES.md) -> import plans, compared with
golden files. Regenerate after an intended change with: VIRTFLEET_UPDATE_GOLDEN=1 pytest tests/unit/test_v2v_plans.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.v2v_stage import DATA, stage
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.planner import PlanOptions, make_plan
from virtfleet.v2v.sources import read_source

GOLDEN = DATA / "golden" / "plans"
OVIRT = {"#DISK_ID#": "d1", "#VOL_ID#": "v1", "#SIZE#": "1024", "#UUID#": "00000000-0000-0000-0000-000000000001",
         "#DATE#": "2024/01/01 00:00:00", "#VM_ID#": "00000000-0000-0000-0000-000000000002"}
TWENTY_ONE = {f"BZ1308535_21disks{'_' + str(i) if i else ''}.vmdk": "vmdk" for i in range(21)}

# name -> (config, the disks it names (made with qemu-img), placeholders to fill, staged as)
CASES: dict[str, tuple[str, dict[str, str], dict[str, str], str | None]] = {
    "esx-windows": ("vmware/libvirt-esx-in-the-wild-9.vmx", {"v2v-windows-kkulkarn.vmdk": "vmdk"}, {}, None),
    "fusion-two-nics": ("vmware/libvirt-fusion-in-the-wild-1.vmx", {"ATTM_VM.vmdk": "vmdk"}, {}, None),
    "esx-uefi-sata": ("vmware/virt-v2v-test-i-vmx-7.vmx", {"win2019.vmdk": "vmdk", "win2019_1.vmdk": "vmdk"}, {},
                      None),
    "esx-21-disks": ("vmware/virt-v2v-test-i-vmx-1.vmx", TWENTY_ONE, {}, None),
    "vmware-ovf-two-disks": ("ovf/virt-v2v-two-disks.ovf", {"disk1.vmdk": "vmdk", "disk2.vmdk": "vmdk"}, {}, None),
    "ovirt": ("ovf/virt-v2v-ovirt.ovf", {"d1/v1": "raw"}, OVIRT, None),
    "virtualbox": ("ovf/govmomi-vbox1.ovf", {"vbox1.vmdk": "vmdk"}, {}, None),
    "virtualbox-ovf-0.9": ("ovf/govmomi-vbox1-0.9.ovf", {"vbox1.vmdk": "vmdk"}, {}, None),
    "virtualbox-no-disk": ("ovf/govmomi-vbox10.ovf", {}, {}, None),
    "ganeti-virtualbox": ("ovf/ganeti-virtualbox.ovf", {"new_disk.vmdk": "vmdk", "second_disk.vmdk": "vmdk"}, {},
                          None),
    "xenserver": ("ovf/xenadmin-sample_app.ovf", {"5936bc8c-20ae-4052-9083-b8e5b96dc683.vhd": "vpc"}, {}, None),
    "xl-hvm-ovmf": ("xen/libvirt-xl-fullvirt-ovmf.cfg", {"XenGuest2-home": "qcow2"}, {}, None),
    "xl-pv": ("xen/libvirt-xl-paravirt-cmdline.cfg", {}, {}, None),
    "xl-positional": ("xen/libvirt-xl-disk-positional-parms-full.cfg", {"XenGuest2-home": "qcow2"}, {}, None),
    "xm-cdrom": ("xen/libvirt-xm-fullvirt-new-cdrom.cfg", {}, {}, None),
    "xm-escape": ("xen/libvirt-xm-escape-paths.cfg", {}, {}, None),
    "libvirt-xen-ovmf": ("libvirt/libvirt-xl-fullvirt-ovmf.xml", {"XenGuest2-home": "qcow2"}, {}, None),
    "libvirt-block": ("libvirt/libvirt-net-virtio.xml", {}, {}, None),
    "hyperv-2012": ("hyperv/handwritten-2012-export.xml", {"../Virtual Hard Disks/web01.vhdx": "vhdx",
                                                          "../Virtual Hard Disks/web01-data.vhd": "vpc"}, {},
                    "Virtual Machines/web01.xml"),
}
DEVICES = ("/dev/HostVG/*",)  # the Xen and libvirt samples name LVs there; an admin allowed them for these tests


def plan_of(root: Path, case: str) -> dict[str, Any]:
    config, disks, replace, as_name = CASES[case]
    rel = stage(root, config, disks, replace=replace, as_name=as_name)
    if case.startswith("ganeti"):
        shutil.copy(DATA / "ovf" / "ganeti.mf", root / "ganeti.mf")
    source = read_source(ImportDir(root, devices=DEVICES), "" if as_name else rel)
    plan = make_plan(source, PlanOptions(network_map={"VM Network": "lan"}, networks=frozenset({"xenbr1"})))
    return plan.model_dump(mode="json")


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_matches_golden(case: str, tmp_path: Path) -> None:
    plan = plan_of(tmp_path, case)
    golden = GOLDEN / f"{case}.json"
    if os.environ.get("VIRTFLEET_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    assert plan == json.loads(golden.read_text())


def test_the_plans_carry_what_each_platform_said(tmp_path: Path) -> None:
    """The facts a reader must get right, spelled out (the golden files hold everything else)."""
    esx = plan_of(tmp_path / "a", "esx-windows")
    assert (esx["cpus"], esx["sockets"], esx["cores"], esx["memory_mib"], esx["guest_family"]) == \
        (16, 4, 4, 16384, "windows")
    assert esx["nics"][0] == {"label": "ethernet0", "mac": "00:50:56:80:b3:81", "source_network": "VM Network",
                              "network": "lan", "source_model": "vmxnet3", "model": "e1000"}
    uefi = plan_of(tmp_path / "b", "esx-uefi-sata")
    assert uefi["firmware"] == "uefi" and [d["label"] for d in uefi["disks"]] == ["scsi0:0", "sata0:3"]
    assert any("secure boot" in w for w in uefi["warnings"])
    assert plan_of(tmp_path / "c", "esx-21-disks")["problems"] == [
        "disks: 21 is more than the 16 disks a virtfleet VM can have"]
    ovirt = plan_of(tmp_path / "d", "ovirt")
    assert ovirt["disks"][0]["bus"] == "virtio-blk" and ovirt["nics"][0]["mac"] == "00:11:22:33:44:55"
    assert ovirt["nics"][0]["source_model"] == "virtio"
    xen = plan_of(tmp_path / "e", "xenserver")
    assert (xen["name"], xen["memory_mib"], xen["disks"][0]["source_format"]) == ("Web-server", 64, "vpc")
    xl = plan_of(tmp_path / "f", "xl-hvm-ovmf")
    assert xl["firmware"] == "uefi" and xl["disks"][0]["source"] == "/dev/HostVG/XenGuest2"
    assert xl["nics"][0]["network"] == "xenbr1"  # same-named virtfleet network, no mapping needed
    hyperv = plan_of(tmp_path / "g", "hyperv-2012")
    assert (hyperv["name"], hyperv["cpus"], hyperv["memory_mib"]) == ("web01", 2, 2048)
    assert [d["label"] for d in hyperv["disks"]] == ["ide0:0", "scsi0:0"]
    assert hyperv["nics"][0]["mac"] == "00:15:5d:0a:0b:0c"
