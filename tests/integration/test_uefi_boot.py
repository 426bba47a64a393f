"""firmware: uefi boots the tiny image through OVMF (found by its QEMU firmware descriptor) on real QEMU under TCG,
with a variable store of the VM's own; the same spec with firmware bios stays on SeaBIOS."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.conftest import READY, Daemon
from virtfleet.drivers.qemu.firmware import find_uefi

pytestmark = pytest.mark.integration


@pytest.mark.skipif(find_uefi() is None, reason="no UEFI firmware installed (apt-get install ovmf)")
def test_a_uefi_vm_boots_through_ovmf_with_its_own_variable_store(daemon: Daemon) -> None:
    spec = {"name": "efi", "memory": "256M", "machine": "q35", "firmware": "uefi"}
    assert daemon.call("POST", "/vms", json=spec).status_code == 201
    assert daemon.vm("efi")["spec"]["firmware"] == "uefi"
    started = time.monotonic()
    daemon.ok("POST", "/vms/efi/start")
    daemon.wait_ready("efi", timeout=120)  # OVMF under TCG takes most of this
    print(f"UEFI boot to {READY}: {time.monotonic() - started:.1f} s")
    vm = daemon.vm("efi")
    run = daemon.data_dir / "run" / vm["id"]
    argv = json.loads((run / "runtime.json").read_text())["argv"]
    assert "q35,pflash0=fw-code,pflash1=fw-vars" in argv
    firmware = find_uefi()
    assert firmware is not None
    store = run / "uefi-vars.fd"
    assert store.stat().st_size == firmware.vars_template.stat().st_size and store.stat().st_mode & 0o077 == 0
    assert any(str(firmware.code) in arg for arg in argv) and not any(str(firmware.vars_template) in a for a in argv)
    daemon.ok("POST", "/vms/efi/stop")
    assert store.exists()  # kept across boots: it holds the guest's boot entries
    daemon.ok("DELETE", "/vms/efi")
    assert not run.exists()

    refused = daemon.call("POST", "/vms", json={"name": "micro", "firmware": "uefi"})
    assert refused.status_code == 422 and "UEFI needs machine q35" in refused.text
