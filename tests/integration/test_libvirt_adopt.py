"""`host adopt` on the host's real libvirtd: a domain made the way virt-manager makes one (defined and started with
libvirt directly, its qcow2 disk in a directory that is a virtfleet dir pool, libvirt's own DAC relabelling, a
user-mode NIC, a serial console with a log) taken over in place through a real `virtfleet serve --driver libvirt`,
then stopped, booted again and deleted by virtfleet; and the daemon SIGKILLed at each adopt failpoint, after which
the restart rolls the adoption back (the domain still foreign, still running, its definitions untouched) or
finishes it, as jobs/adopt.py's recovery promises.

The disk is the tiny boot disk (SYSLINUX + kernel + the tiny initramfs, booted by the BIOS), not a direct kernel
boot: adopting does not carry <kernel> over (v2v/libvirt_xml.py warns so), so only a disk that boots itself proves
that virtfleet's own start of the adopted VM works. One guest per test: the suite's time budget is tight.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import READY, Daemon
from tests.integration.test_crash_volumes import restart_and_settle
from virtfleet import failpoints
from virtfleet.drivers.libvirt.domxml import NAMESPACE
from virtfleet.drivers.qemu.runtime import read_pid
from virtfleet.images.bootdisk import build_boot_disk
from virtfleet.images.tiny import default_cmdline, find_host_kernel, load_image
from virtfleet.jobs import adopt

URI = "qemu:///system"
ADOPT_POINTS = [name for name in failpoints.POINTS if name.startswith("host.adopt.")]
NETWORK_MAP = {"*": "lan"}


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=30, check=False)


def domain_state(name: str) -> str:
    result = virsh("domstate", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def dumpxml(name: str, *flags: str) -> str:
    result = virsh("dumpxml", *flags, name)
    assert result.returncode == 0, result.stderr
    return result.stdout


def qemu_pid(name: str) -> int | None:
    return read_pid(Path("/run/libvirt/qemu") / f"{name}.pid")


def inode(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


@dataclass(frozen=True)
class Foreign:
    name: str
    uuid: str
    disk: Path
    console_log: Path


def foreign_xml(guest: Foreign, console: Path) -> str:
    """What virt-manager writes for a q35 guest, under TCG: its disk by path, no seclabel (libvirt's DAC driver
    chowns the disk to its QEMU user while it runs), a NIC, a serial console whose log anyone here can read."""
    return f"""<domain type='qemu'>
  <name>{guest.name}</name><uuid>{guest.uuid}</uuid>
  <memory unit='MiB'>256</memory><vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{guest.disk}'/><target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><mac address='52:54:00:ad:{guest.uuid[:2]}:{guest.uuid[2:4]}'/><model type='virtio'/>
    </interface>
    <serial type='unix'>
      <source mode='bind' path='{console}'/><log file='{guest.console_log}' append='on'/>
      <target type='isa-serial' port='0'/>
    </serial>
  </devices>
</domain>"""


def wait_text(path: Path, marker: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if marker in text:
            return text
        assert time.monotonic() < deadline, f"no {marker!r} in {path}:\n{text[-2000:]}"
        time.sleep(0.1)


def remove_domain(domain_uuid: str) -> None:
    """Whatever name it has now (virtfleet may have renamed or redefined it): gone from the shared libvirtd."""
    if virsh("dominfo", domain_uuid).returncode == 0:
        virsh("destroy", domain_uuid)
        virsh("undefine", "--nvram", domain_uuid)
        if virsh("dominfo", domain_uuid).returncode == 0:
            virsh("undefine", domain_uuid)


@contextlib.contextmanager
def foreign_guest(pool_dir: Path, tiny_image_dir: Path) -> Iterator[Foreign]:
    """A running foreign domain whose disk lies in `pool_dir`, booted to its readiness line; undefined at the end."""
    domain_uuid = str(uuid.uuid4())
    name = f"foreign-{domain_uuid[:8]}"  # the libvirtd is shared: a name nobody else uses
    guest = Foreign(name, domain_uuid, pool_dir / f"{name}.qcow2", pool_dir / f"{name}.console.log")
    kernel, _ = find_host_kernel()
    build_boot_disk(guest.disk, kernel_bzimage=kernel, initrd=load_image(tiny_image_dir).initrd,
                    cmdline=default_cmdline("q35", None), size_mib=64)
    try:
        definition = pool_dir / f"{name}.xml"
        definition.write_text(foreign_xml(guest, pool_dir / f"{name}.sock"))
        for command in (("define", str(definition)), ("start", name)):
            result = virsh(*command)
            assert result.returncode == 0, result.stderr
        wait_text(guest.console_log, f"{READY} hostname=")
        yield guest
    finally:
        remove_domain(domain_uuid)


@pytest.fixture
def pool_dir() -> Iterator[Path]:
    """The directory the foreign disk lies in: outside the daemon's private data directory, traversable, so that
    libvirt's QEMU user reaches the disk as it would on a virt-manager host (below a pool root the admin allows)."""
    root = Path(tempfile.mkdtemp(prefix="vfadopt", dir="/tmp"))
    root.chmod(0o755)
    try:
        (root / "images").mkdir(mode=0o755)
        yield root / "images"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server(libvirtd: str, short_tmp: Path, pool_dir: Path) -> Iterator[Daemon]:
    """A serve on the libvirt driver, with a user network the foreign NIC maps to and a dir pool over pool_dir."""
    daemon = Daemon(short_tmp, args=["--driver", f"libvirt:{libvirtd}"],
                    env={"VIRTFLEET_POOL_ROOTS": str(pool_dir.parent)})
    daemon.start()
    try:
        assert daemon.call("POST", "/networks", json={"name": "lan", "mode": "user"}).status_code == 201
        created = daemon.call("POST", "/pools", json={"name": "adopt", "path": str(pool_dir)})
        assert created.status_code == 201, created.text
        yield daemon
    finally:
        daemon.stop()


def foreign_plans(server: Daemon) -> dict[str, dict[str, Any]]:
    response = server.call("GET", "/host/foreign-domains")
    assert response.status_code == 200, response.text
    return {plan["domain"]: plan for plan in response.json()}


def volume_record(server: Daemon, ref: str) -> dict[str, Any]:
    found = [v for v in server.call("GET", "/volumes").json() if f"{v['pool']}/{v['name']}" == ref]
    assert len(found) == 1, ref
    return dict(found[0])


def recorded(server: Daemon, guest: Foreign) -> tuple[list[str], list[str]]:
    """What adopting `guest` records: its VM and the volumes of the pool its disk lies in. Only those: the shared
    libvirtd runs other users' virtfleet domains too, which this daemon's reconcile pass records as it finds them."""
    vms = sorted(vm["name"] for vm in server.call("GET", "/vms").json() if vm["id"] == guest.uuid)
    in_pool = server.call("GET", "/volumes", params={"pool": "adopt"}).json()
    volumes = sorted(f"{v['pool']}/{v['name']}" for v in in_pool)
    return vms, volumes


@pytest.mark.integration
def test_a_virt_manager_domain_is_adopted_in_place_and_managed(server: Daemon, pool_dir: Path,
                                                              tiny_image_dir: Path) -> None:
    with foreign_guest(pool_dir, tiny_image_dir) as guest:
        volume = f"adopt/{guest.disk.name}"
        disk_before, pid_before = inode(guest.disk), qemu_pid(guest.name)
        assert pid_before is not None

        plan = foreign_plans(server)[guest.name]
        assert (plan["uuid"], plan["state"], plan["vm"]) == (guest.uuid, "running", guest.name), plan
        [disk] = plan["disks"]
        assert [(layer["volume"], layer["new"], layer["template"]) for layer in disk["layers"]] == [
            (volume, True, False)]
        assert any("keeps running as it is" in warning for warning in plan["warnings"]), plan

        nothing = recorded(server, guest)
        xml_before = dumpxml(guest.name, "--inactive")
        dry = server.call("POST", "/host/adopt", json={"domains": [guest.name], "network_map": NETWORK_MAP,
                                                       "dry_run": True})
        assert dry.status_code == 200, dry.text
        [dry_plan] = dry.json()
        assert dry_plan["adoptable"] and dry_plan["problems"] == [], dry_plan
        assert recorded(server, guest) == nothing and dumpxml(guest.name, "--inactive") == xml_before
        assert NAMESPACE not in dumpxml(guest.name)

        started = time.monotonic()
        done = server.ok("POST", "/host/adopt", json={"domains": [guest.name], "network_map": NETWORK_MAP})
        print(f"adopting a running domain took {time.monotonic() - started:.2f}s")
        assert f"adopted running domain {guest.name} as vm '{guest.name}'" in done["message"], done

        vm = server.vm(guest.name)
        assert (vm["id"], vm["state"]) == (guest.uuid, "running"), vm
        assert [d["volume"] for d in vm["spec"]["disks"]] == [volume]
        assert vm["spec"]["nics"][0]["network"] == "lan"
        info = volume_record(server, volume)
        assert info["attached_to"] == guest.name and info["format"] == "qcow2", info
        assert inode(Path(info["path"])) == disk_before  # registered in place: the same file, not a copy
        # Taken over, not restarted: the same QEMU, our metadata in both definitions, no longer offered.
        assert qemu_pid(guest.name) == pid_before and domain_state(guest.name) == "running"
        assert NAMESPACE in dumpxml(guest.name) and NAMESPACE in dumpxml(guest.name, "--inactive")
        assert guest.name not in foreign_plans(server)
        # Its console stays where the foreign definition put it until virtfleet starts it: no history of ours yet.
        logs = server.call("GET", f"/vms/{guest.name}/logs")
        assert logs.status_code == 200 and READY not in logs.text, logs.text
        # The reconcile pass sees it as ours and running (a domain it could not find would turn crashed).
        assert server.wait_state(guest.name, ("crashed", "stopped"), timeout=2)["state"] == "running"

        server.ok("POST", f"/vms/{guest.name}/stop")
        assert server.vm(guest.name)["state"] == "stopped" and domain_state(guest.name) == "shut off"
        started = time.monotonic()
        server.ok("POST", f"/vms/{guest.name}/start")  # virtfleet's own definition now: its console, its log
        this_boot = server.wait_ready(guest.name, timeout=120)
        print(f"virtfleet's start of the adopted VM to its readiness line took {time.monotonic() - started:.2f}s")
        assert "SYSLINUX" in this_boot  # the adopted disk booted by the BIOS, as the foreign domain did
        assert domain_state(guest.name) == "running" and server.vm(guest.name)["state"] == "running"

        # Deleting the VM undefines the domain; its volume stays (delete_volumes defaults to false), the file too.
        server.ok("DELETE", f"/vms/{guest.name}", params={"force": "true"})
        assert virsh("dominfo", guest.uuid).returncode != 0
        assert server.call("GET", f"/vms/{guest.name}").status_code == 404
        info = volume_record(server, volume)
        assert info["attached_to"] is None and inode(guest.disk) == disk_before, info


# Killed once the domain carries our metadata, an adoption is finished at the restart; before that, rolled back.
ROLLED_FORWARD = frozenset({"host.adopt.after-take-over"})


@pytest.mark.integration
def test_killed_adopt_on_libvirt_is_rolled_back_or_finished(server: Daemon, pool_dir: Path,
                                                            tiny_image_dir: Path) -> None:
    """One foreign guest for every failpoint, in declaration order: each roll-back leaves it as it was, so the next
    try (and the roll-forward last) starts from the same place."""
    with foreign_guest(pool_dir, tiny_image_dir) as guest:
        nothing = recorded(server, guest)
        untouched = (qemu_pid(guest.name), dumpxml(guest.name), dumpxml(guest.name, "--inactive"))
        assert untouched[0] is not None and NAMESPACE not in untouched[1] + untouched[2]
        request = {"domains": [guest.name], "network_map": NETWORK_MAP}
        for point in ADOPT_POINTS:
            server.stop()
            server.arm(point)
            server.start()
            response = server.call("POST", "/host/adopt", json=request)
            assert response.status_code == 202, response.text
            started = time.monotonic()
            job = restart_and_settle(server, response.json()["id"])
            print(f"{point}: killed, restarted and recovered in {time.monotonic() - started:.2f}s")
            assert qemu_pid(guest.name) == untouched[0] and domain_state(guest.name) == "running", point
            if point in ROLLED_FORWARD:
                assert job["status"] == "succeeded" and "finished after a daemon restart" in job["message"], job
                vm = server.vm(guest.name)
                assert (vm["id"], vm["state"]) == (guest.uuid, "running"), vm
                volume = volume_record(server, f"adopt/{guest.disk.name}")
                assert volume["attached_to"] == guest.name, volume
                assert NAMESPACE in dumpxml(guest.name) and NAMESPACE in dumpxml(guest.name, "--inactive")
                assert guest.name not in foreign_plans(server)
                continue
            assert job["status"] == "failed" and job["error_code"] == "interrupted", (point, job)
            assert "rolled back" in job["error"] and "left foreign" in job["error"], job
            assert recorded(server, guest) == nothing, point
            # Untouched: both definitions as they were (no metadata of ours), and adoptable again.
            assert (dumpxml(guest.name), dumpxml(guest.name, "--inactive")) == untouched[1:], point
            dry = server.call("POST", "/host/adopt", json={**request, "dry_run": True})
            assert dry.status_code == 200 and dry.json()[0]["adoptable"], (point, dry.text)


def test_every_adopt_failpoint_is_tested() -> None:  # not marked integration: it runs in every suite
    assert adopt.INTENT  # imported: the module declares its failpoints
    assert ADOPT_POINTS == ["host.adopt.after-volumes", "host.adopt.after-vm", "host.adopt.after-take-over"]
    assert set(ADOPT_POINTS) >= ROLLED_FORWARD
