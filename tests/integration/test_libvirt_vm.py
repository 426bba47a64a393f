"""The libvirt driver behind a real `virtfleet serve --driver libvirt:qemu:///system`: a q35 guest under TCG on the
host's libvirtd, seen by virsh as virtfleet says, a QEMU killed behind libvirt's back announced by libvirt's event.

One guest, two boots: the suite's time budget is tight.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon
from tests.integration.test_qemu_vm_api import console_run
from virtfleet.drivers.base import DriverConfig
from virtfleet.drivers.libvirt.driver import LibvirtDriver
from virtfleet.drivers.qemu.runtime import read_pid
from virtfleet.model.network import NicSpec
from virtfleet.model.vm import VmState

pytestmark = pytest.mark.integration
URI = "qemu:///system"


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=30, check=False)


def dominfo(name: str) -> dict[str, str]:
    result = virsh("dominfo", name)
    assert result.returncode == 0, result.stderr
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in result.stdout.splitlines()) if v}


async def nic_round_trip(vm_id: str, name: str, run_dir: Path) -> None:
    """A user-mode NIC hot-plugged, its cable pulled and plugged, and unplugged again (no network needed)."""
    driver = LibvirtDriver(DriverConfig(run_dir, extra={"uri": URI}))
    nic = NicSpec(network="usr", mac="52:54:00:7e:57:01", user_mode=True)
    try:
        await driver.attach_nic(vm_id, nic)
        assert "52:54:00:7e:57:01" in virsh("domiflist", name).stdout
        await driver.set_link(vm_id, nic, False)
        assert virsh("domif-getlink", name, nic.mac).stdout.strip().endswith("down")
        await driver.set_link(vm_id, nic, True)
        assert virsh("domif-getlink", name, nic.mac).stdout.strip().endswith("up")
        await driver.detach_nic(vm_id, nic, timeout=30)
        assert "52:54:00:7e:57:01" not in virsh("domiflist", name).stdout
    finally:
        await driver.close()


async def crash_seen_by_event(vm_id: str, name: str, run_dir: Path) -> tuple[float, VmState, str]:
    """Kill the guest's QEMU (libvirt's pidfile) and time how long libvirt takes to announce it through watch():
    (seconds, state, reason) as a driver of our own, watching only, sees it."""
    watcher = LibvirtDriver(DriverConfig(run_dir, extra={"uri": URI}))
    announced: asyncio.Queue[str] = asyncio.Queue()
    try:
        watcher.watch(announced.put_nowait)
        assert (await watcher.status(vm_id)).state is VmState.RUNNING  # connected and subscribed
        pid = read_pid(Path("/run/libvirt/qemu") / f"{name}.pid")
        assert pid is not None
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while await asyncio.wait_for(announced.get(), 10.0) != vm_id:
            pass
        elapsed = time.monotonic() - killed
        status = await watcher.status(vm_id)
        return elapsed, status.state, status.reason
    finally:
        await watcher.close()


def test_a_q35_guest_on_libvirt_through_the_api(libvirtd: str, short_tmp: Path, tiny_image_dir: Path) -> None:
    name = f"lv-{uuid.uuid4().hex[:8]}"  # the libvirtd is shared: a name nobody else uses
    (short_tmp / "images").mkdir()
    (short_tmp / "images" / "tiny").symlink_to(tiny_image_dir)
    server = Daemon(short_tmp, args=["--driver", f"libvirt:{URI}"])
    server.start()
    try:
        host = server.call("GET", "/host").json()
        assert host["driver"] == "libvirt" and "QEMU" in host["hypervisor"], host
        spec = {"name": name, "machine": "q35", "accel": "tcg", "cpus": 1, "memory": "256M"}
        assert server.call("POST", "/vms", json=spec).status_code == 201, spec
        # libvirt 9 has no microvm: refused (up front once the API reads capabilities.machines), never half-made.
        microvm = server.call("POST", "/vms", json={"name": f"{name}-m", "machine": "microvm"})
        if microvm.status_code == 201:
            refused = server.job("POST", f"/vms/{name}-m/start")
            assert refused["status"] == "failed" and "q35" in str(refused), refused
            assert virsh("dominfo", f"{name}-m").returncode != 0
            server.ok("DELETE", f"/vms/{name}-m")
        else:
            assert "q35" in microvm.text or "microvm" in microvm.text, microvm.text

        server.ok("POST", f"/vms/{name}/start")
        vm = server.vm(name)
        assert vm["state"] == "running" and vm["accel"] == "tcg", vm
        server.wait_ready(name, timeout=120)
        info = dominfo(name)  # virsh sees the VM under its name, identified by the vm id
        assert info["State"] == "running" and info["UUID"] == vm["id"], info

        server.ok("POST", f"/vms/{name}/stop")
        assert server.vm(name)["state"] == "stopped"
        assert dominfo(name)["State"] == "shut off"

        server.ok("POST", f"/vms/{name}/start")
        this_boot = server.wait_ready(name, timeout=120)
        assert f"hostname={name}" in this_boot
        assert dominfo(name)["State"] == "running"

        # Hot-plug through libvirt (a free root port, the disk found again by its file to unplug it).
        server.ok("POST", "/pools/default/volumes", json={"name": "extra", "size": "32M"})
        server.ok("POST", f"/vms/{name}/disks", json={"volume": "default/extra"})
        seen = console_run(server, name, "sleep 1; cat /sys/block/vda/size; echo sized-$((2+1))", "sized-3")
        assert re.search(r"\b65536\b", seen), seen
        assert "extra" in virsh("domblklist", name).stdout
        server.ok("DELETE", f"/vms/{name}/disks/default/extra", params={"timeout": 60})
        assert "extra" not in virsh("domblklist", name).stdout
        # Usage from libvirt's domain stats: the agent's samples show CPU time and memory.
        time.sleep(1.5)
        points = server.call("GET", f"/vms/{name}/metrics", params={"minutes": 5}).json()
        assert points and max(p["cpu_percent"] for p in points) > 0 and max(p["memory_bytes"] for p in points) > 0
        # Drivers of the same virtfleet (its run directory: a domain belongs to one virtfleet) beside the daemon's.
        asyncio.run(nic_round_trip(vm["id"], name, server.data_dir / "run"))

        elapsed, state, reason = asyncio.run(crash_seen_by_event(vm["id"], name, server.data_dir / "run"))
        assert state is VmState.CRASHED and "died" in reason, (state, reason)
        # The watcher never polls: what it got came from libvirt's event. libvirt handles a dead QEMU in a second or
        # two (more on a loaded host); the bound is only there to fail instead of hanging.
        print(f"libvirt announced the crash {elapsed:.2f}s after the kill")
        assert elapsed < 10.0, f"libvirt announced the crash after {elapsed:.2f}s"
        crashed = server.wait_state(name, ("crashed",), timeout=10)
        assert crashed["state"] == "crashed", crashed
        assert dominfo(name)["State"] == "shut off"

        server.ok("DELETE", f"/vms/{name}")
        assert virsh("dominfo", name).returncode != 0  # undefined
        assert server.call("GET", f"/vms/{name}").status_code == 404
    finally:
        server.stop()
        if virsh("dominfo", name).returncode == 0:  # never leave a domain on the shared libvirtd
            virsh("destroy", name)
            virsh("undefine", name)
