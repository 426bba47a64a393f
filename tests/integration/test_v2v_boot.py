"""Imported guests boot: the tiny boot disk (as tests/integration/test_boot_disk.py builds it) wrapped the way VMware
and Hyper-V leave a VM (a .vmx beside a monolithicSparse VMDK; an export directory with a binary .vmcx and a VHDX),
imported through a real `virtfleet serve`, started under TCG, up to the guest's readiness line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon
from virtfleet.images.bootdisk import build_boot_disk
from virtfleet.images.tiny import default_cmdline, find_host_kernel, load_image

pytestmark = pytest.mark.integration


@pytest.fixture
def boot_disk(tiny_image_dir: Path, tmp_path: Path) -> Path:
    kernel, _ = find_host_kernel()
    return build_boot_disk(tmp_path / "boot.qcow2", kernel_bzimage=kernel, initrd=load_image(tiny_image_dir).initrd,
                           cmdline=default_cmdline("q35", None))


def convert(src: Path, dst: Path, fmt: str, *options: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    argv = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", fmt, *(["-o", ",".join(options)] if options else []),
            str(src), str(dst)]
    subprocess.run(argv, check=True)


def import_and_boot(daemon: Daemon, path: str, name: str) -> dict[str, object]:
    if daemon.call("GET", "/networks/lan").status_code == 404:
        assert daemon.call("POST", "/networks", json={"name": "lan", "mode": "user"}).status_code == 201
    plan = daemon.call("POST", "/imports", json={"path": path, "dry_run": True, "network_map": {"*": "lan"},
                                                 "name": name})
    assert plan.status_code == 200, plan.text
    done = daemon.ok("POST", "/imports", json={"path": path, "network_map": {"*": "lan"}, "name": name})
    daemon.ok("POST", f"/vms/{name}/start")
    text = daemon.wait_ready(name, timeout=120)
    assert "SYSLINUX" in text  # the imported disk's own boot loader, through the BIOS
    vm = daemon.vm(name)
    assert vm["state"] == "running"
    daemon.ok("POST", f"/vms/{name}/stop")
    return {"plan": plan.json(), "job": done, "vm": vm}


def test_a_vmware_vm_imports_and_boots(daemon: Daemon, boot_disk: Path) -> None:
    folder = daemon.data_dir / "import" / "vmware-web"
    convert(boot_disk, folder / "web.vmdk", "vmdk", "subformat=monolithicSparse", "adapter_type=lsilogic")
    (folder / "web.vmx").write_text(
        '.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "14"\ndisplayName = "web"\n'
        'guestOS = "other4xlinux-64"\nnumvcpus = "1"\nmemsize = "256"\nscsi0.present = "TRUE"\n'
        'scsi0.virtualDev = "lsilogic"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "web.vmdk"\n'
        'scsi0:0.deviceType = "scsi-hardDisk"\nethernet0.present = "TRUE"\nethernet0.virtualDev = "vmxnet3"\n'
        'ethernet0.networkName = "VM Network"\nethernet0.addressType = "generated"\n'
        'ethernet0.generatedAddress = "00:0c:29:aa:bb:cc"\nsound.present = "TRUE"\n')
    result = import_and_boot(daemon, "vmware-web/web.vmx", "vmware-web")
    vm = result["vm"]
    assert isinstance(vm, dict)
    assert vm["spec"]["disks"][0]["bus"] == "virtio-scsi" and vm["spec"]["nics"][0]["mac"] == "00:0c:29:aa:bb:cc"
    assert "sound card" in str(result["job"])


def test_a_hyperv_export_imports_and_boots(daemon: Daemon, boot_disk: Path) -> None:
    export = daemon.data_dir / "import" / "hyperv-web"
    convert(boot_disk, export / "Virtual Hard Disks" / "hyperv-web.vhdx", "vhdx", "subformat=dynamic")
    (export / "Virtual Machines").mkdir()
    (export / "Virtual Machines" / "5D1C7E1A-3B7C-4D0E-9C59-0C7E1F6A2B44.vmcx").write_bytes(b"\0" * 4096)
    result = import_and_boot(daemon, "hyperv-web", "hyperv-web")
    plan = result["plan"]
    assert isinstance(plan, dict) and any(".vmcx" in warning for warning in plan["warnings"])
