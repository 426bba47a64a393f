"""The QEMU command line is a pure function of spec, image and run directory: compared with golden files.

Regenerate after an intended change with: VIRTFLEET_UPDATE_GOLDEN=1 pytest tests/unit/test_qemu_argv.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from virtfleet.drivers.base import BootImage
from virtfleet.drivers.qemu.argv import build_argv
from virtfleet.drivers.qemu.firmware import UefiFirmware
from virtfleet.drivers.qemu.runtime import RunPaths
from virtfleet.model.network import NetworkSpec
from virtfleet.model.vm import DiskSpec, VmSpec

GOLDEN = Path(__file__).parent.parent / "data" / "argv"
VM_ID = "0b5e8a9e-6f4a-4c1e-9d0e-3f1f2a7c9b11"
BOOT = BootImage("tiny", Path("/img/tiny/vmlinux"), Path("/img/tiny/initramfs.cpio"), "console=ttyS0 quiet",
                 Path("/img/tiny/vmlinuz"))
UEFI = UefiFirmware(Path("/fw/OVMF_CODE_4M.fd"), Path("/fw/OVMF_VARS_4M.fd"), Path("/fw/60-edk2.json"))
PATHS = RunPaths(Path("/run/vf") / VM_ID)

CASES = {
    "microvm-tcg": (VmSpec(name="web", cpus=1, memory=256), "tcg"),
    "q35-kvm-disks": (
        VmSpec(
            name="db",
            cpus=2,
            memory="1G",
            machine="q35",
            disks=[
                {"path": "/pools/default/db.qcow2", "cache": "none", "discard": "unmap"},
                {"path": "/pools/default/seed.raw", "format": "raw", "readonly": True, "bus": "virtio-scsi"},
            ],
        ),
        "kvm",
    ),
    "q35-disk-boot": (
        VmSpec(name="legacy", machine="q35", image=None,
               disks=[{"path": "/pools/default/legacy.qcow2", "boot_index": 0, "cache": "writethrough"}]),
        "tcg",
    ),
    "q35-nics": (
        VmSpec(name="net", machine="q35", nics=[
            {"network": "lan", "mac": "52:54:00:aa:bb:01", "tap": "vft0123456789"},
            {"network": "old", "model": "e1000", "mac": "52:54:00:aa:bb:02", "tap": "vft9876543210"},
            {"network": "usr", "mac": "52:54:00:aa:bb:03", "user_mode": True, "forwards": ["tcp:8080:80"]},
        ]),
        "tcg",
    ),
    "q35-vnc": (VmSpec(name="desk", machine="q35", display="vnc"), "tcg"),
    "q35-uefi": (VmSpec(name="efi", machine="q35", firmware="uefi"), "tcg"),
    "q35-uefi-disk-boot": (VmSpec(name="efidisk", machine="q35", firmware="uefi", image=None,
                                  disks=[{"path": "/pools/default/efi.qcow2", "boot_index": 0}]), "tcg"),
    "microvm-disk": (VmSpec(name="m1", memory=128, disks=[{"path": "/pools/default/a.qcow2"}]), "tcg"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_argv_matches_golden(case: str) -> None:
    spec, accel = CASES[case]
    argv = build_argv(VM_ID, spec, None if spec.image is None else BOOT, PATHS, accel=accel, uefi=UEFI)
    golden = GOLDEN / f"{case}.txt"
    if os.environ.get("VIRTFLEET_UPDATE_GOLDEN"):
        golden.write_text("\n".join(argv) + "\n")
    assert argv == golden.read_text().splitlines()


def _blockdevs(argv: list[str]) -> list[dict[str, object]]:
    return [json.loads(argv[i + 1]) for i, arg in enumerate(argv) if arg == "-blockdev"]


def test_disks_have_explicit_formats_and_never_follow_backing_files() -> None:
    spec, accel = CASES["q35-kvm-disks"]
    nodes = _blockdevs(build_argv(VM_ID, spec, BOOT, PATHS, accel=accel))
    formats = [n for n in nodes if n["driver"] != "file"]
    assert [n["driver"] for n in formats] == ["qcow2", "raw"]
    assert formats[0]["backing"] is None and "backing" not in formats[1]
    assert [n["read-only"] for n in nodes] == [False, False, True, True]
    # cache=none is O_DIRECT on the host side; discard passes through.
    assert nodes[0]["cache"] == {"direct": True, "no-flush": False} and nodes[0]["discard"] == "unmap"


def test_disk_boot_has_no_kernel_and_sets_the_boot_order() -> None:
    spec, accel = CASES["q35-disk-boot"]
    argv = build_argv(VM_ID, spec, None, PATHS, accel=accel)
    assert "-kernel" not in argv and "-append" not in argv
    device = next(a for a in argv if a.startswith("virtio-blk-pci,"))
    assert "bootindex=0" in device and "write-cache=off" in device  # writethrough: no guest write cache


def test_scsi_disks_get_one_controller_and_q35_gets_hotplug_ports() -> None:
    spec, accel = CASES["q35-kvm-disks"]
    argv = build_argv(VM_ID, spec, BOOT, PATHS, accel=accel)
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert sum(d.startswith("virtio-scsi-pci,") for d in devices) == 1
    assert any(d.startswith("scsi-hd,") and "bus=scsi0.0" in d for d in devices)
    assert sum(d.startswith("pcie-root-port,") for d in devices) == 4
    micro = build_argv(VM_ID, CASES["microvm-tcg"][0], BOOT, PATHS, accel="tcg")
    assert not any(a.startswith("pcie-root-port") for a in micro)  # microvm has no PCI: no hot-plug


def test_node_names_do_not_depend_on_disk_order() -> None:
    first, second = DiskSpec(path="/p/a.qcow2"), DiskSpec(path="/p/b.qcow2")
    assert first.node_name != second.node_name
    assert first.node_name == DiskSpec(path="/p/a.qcow2", cache="none").node_name


def test_virtio_bus_follows_the_machine_type() -> None:
    micro = build_argv(VM_ID, CASES["microvm-disk"][0], BOOT, PATHS, accel="tcg")
    q35 = build_argv(VM_ID, CASES["q35-kvm-disks"][0], BOOT, PATHS, accel="kvm")
    assert any(a.startswith("virtio-blk-device,") for a in micro)
    assert any(a.startswith("virtio-blk-pci,") for a in q35)


def test_accel_picks_the_cpu_model() -> None:
    spec = CASES["microvm-tcg"][0]
    for accel, cpu in (("kvm", "host"), ("tcg", "max")):
        argv = build_argv(VM_ID, spec, BOOT, PATHS, accel=accel)
        assert argv[argv.index("-accel") + 1] == accel and argv[argv.index("-cpu") + 1] == cpu


def test_commas_in_run_paths_are_escaped() -> None:
    paths = RunPaths(Path("/data,x") / VM_ID)
    argv = build_argv(VM_ID, CASES["microvm-tcg"][0], BOOT, paths, accel="tcg")
    assert argv[argv.index("-qmp") + 1].startswith("unix:/data,,x/")
    chardev = argv[argv.index("-chardev") + 1]
    assert "path=/data,,x/" in chardev and "logfile=/data,,x/" in chardev


def test_backing_chain_is_opened_explicitly_and_read_only() -> None:
    disk = DiskSpec(path="/p/clone.qcow2", backing_chain=[{"path": "/p/snap.qcow2", "format": "qcow2"},
                                                          {"path": "/p/base.raw", "format": "raw"}])
    spec = VmSpec(name="c", disks=[disk])
    nodes = _blockdevs(build_argv(VM_ID, spec, BOOT, PATHS, accel="tcg"))
    formats = [n for n in nodes if n["driver"] != "file"]
    # lowest layer first; each qcow2 layer names the node below it, so no file is ever found through a header
    assert [n["driver"] for n in formats] == ["raw", "qcow2", "qcow2"]
    assert formats[1]["backing"] == formats[0]["node-name"] and formats[2]["backing"] == formats[1]["node-name"]
    assert formats[2]["node-name"] == disk.node_name
    files = [n for n in nodes if n["driver"] == "file"]
    # backing layers open read-only until a merge needs them writable; the top is the guest's
    assert [n.get("auto-read-only") for n in files] == [True, True, None]
    assert [n["filename"] for n in nodes if n["driver"] == "file"] == ["/p/base.raw", "/p/snap.qcow2", "/p/clone.qcow2"]


def test_nics_get_taps_or_user_mode_with_loopback_forwards() -> None:
    spec, accel = CASES["q35-nics"]
    argv = build_argv(VM_ID, spec, BOOT, PATHS, accel=accel)
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs[0].startswith("tap,") and "ifname=vft0123456789,script=no,downscript=no" in netdevs[0]
    assert netdevs[2].startswith("user,") and "hostfwd=tcp:127.0.0.1:8080-:80" in netdevs[2]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert any(d.startswith("e1000,") and "mac=52:54:00:aa:bb:02" in d for d in devices)
    assert sum(d.startswith("virtio-net-pci,") for d in devices) == 2


def test_e1000_needs_q35_and_vlans_need_a_host_bridge() -> None:
    with pytest.raises(ValidationError, match="e1000"):
        VmSpec(name="m", nics=[{"network": "lan", "model": "e1000"}])
    with pytest.raises(ValidationError, match="VLAN"):
        NetworkSpec(name="n", mode="nat", subnet="10.1.0.0/24", vlan=10)
    for bad in ({"vlan": 0}, {"vlan": 4095}):
        with pytest.raises(ValidationError):
            NetworkSpec(name="b", mode="bridge", bridge="br0", **bad)
    with pytest.raises(ValidationError, match="private"):
        NetworkSpec(name="p", mode="nat", subnet="8.8.8.0/24")
    with pytest.raises(ValidationError, match="not an IPv4 subnet"):
        NetworkSpec(name="p", mode="nat", subnet="10.1.0.1/24")
    with pytest.raises(ValidationError, match="MAC"):
        VmSpec(name="m", nics=[{"network": "lan", "mac": "52:54:00:zz:00:01"}])
    with pytest.raises(ValidationError, match="multicast"):
        VmSpec(name="m", nics=[{"network": "lan", "mac": "01:00:5e:00:00:01"}])


def test_vnc_listens_on_a_unix_socket_in_the_run_dir_only() -> None:
    spec, accel = CASES["q35-vnc"]
    argv = build_argv(VM_ID, spec, BOOT, RunPaths(Path("/data,x") / VM_ID), accel=accel)
    assert argv.count("-vnc") == 1
    assert argv[argv.index("-vnc") + 1] == f"unix:/data,,x/{VM_ID}/vnc.sock"  # a TCP port would bypass the API
    assert "VGA,id=video0" in argv
    for name in ("microvm-tcg", "q35-kvm-disks"):  # no display asked: no graphics card, no VNC server
        plain = build_argv(VM_ID, CASES[name][0], BOOT, PATHS, accel="tcg")
        assert "-vnc" not in plain and not any(a.startswith("VGA") for a in plain)


def test_uefi_boots_the_pe_kernel_from_read_only_code_and_the_vms_own_variables() -> None:
    argv = build_argv(VM_ID, CASES["q35-uefi"][0], BOOT, PATHS, accel="tcg", uefi=UEFI)
    assert argv[argv.index("-machine") + 1] == "q35,pflash0=fw-code,pflash1=fw-vars"
    assert argv[argv.index("-kernel") + 1] == "/img/tiny/vmlinuz"  # OVMF loads PE images, not the ELF vmlinux
    nodes = {node["node-name"]: node for node in _blockdevs(argv)}
    assert nodes["fw-code-file"] == {"driver": "file", "filename": "/fw/OVMF_CODE_4M.fd",
                                     "node-name": "fw-code-file", "read-only": True}
    assert nodes["fw-vars-file"]["filename"] == str(PATHS.uefi_vars)  # never the shared template
    assert "read-only" not in nodes["fw-vars-file"] and nodes["fw-vars"]["driver"] == "raw"
    bios = build_argv(VM_ID, CASES["q35-vnc"][0], BOOT, PATHS, accel="tcg", uefi=UEFI)
    assert "pflash0" not in " ".join(bios) and bios[bios.index("-kernel") + 1] == "/img/tiny/vmlinux"


def test_uefi_is_refused_on_microvm() -> None:
    with pytest.raises(ValidationError, match="UEFI needs machine q35"):
        VmSpec(name="m", firmware="uefi")
