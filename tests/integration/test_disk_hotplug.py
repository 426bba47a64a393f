"""Disk hot-plug into a running q35 guest through QMP, and the refusal on microvm."""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import READY, Daemon
from tests.integration.test_qemu_vm_api import console_run

pytestmark = pytest.mark.integration


def test_hotplug_and_unplug_a_volume_on_a_running_q35_guest(daemon: Daemon) -> None:
    daemon.ok("POST", "/pools/default/volumes", json={"name": "extra", "size": "32M"})
    daemon.ok("POST", "/pools/default/volumes", json={"name": "cold", "size": "16M"})
    daemon.ok("POST", "/pools/default/volumes", json={"name": "second", "size": "8M"})
    assert daemon.call("POST", "/vms", json={"name": "hp", "machine": "q35", "memory": "256M"}).status_code == 201
    assert daemon.call("POST", "/vms", json={"name": "mv", "memory": "128M"}).status_code == 201
    daemon.ok("POST", "/vms/hp/start")
    daemon.wait_log("hp", rf"{READY} hostname=hp")
    before = console_run(daemon, "hp", "ls /sys/block; echo listed-$((1+1))", "listed-2")
    assert "vda" not in before

    attached = daemon.ok("POST", "/vms/hp/disks", json={"volume": "default/extra"})
    assert "hot-plugged" in attached["message"]
    # The guest sees a new virtio disk of the volume's size (in 512-byte sectors).
    seen = console_run(daemon, "hp", "sleep 1; cat /sys/block/vda/size; echo sized-$((2+1))", "sized-3")
    assert re.search(r"\b65536\b", seen), seen
    assert daemon.vm("hp")["spec"]["disks"][0]["volume"] == "default/extra"
    # A second disk goes into the next free slot (QEMU would accept it on the busy one, unseen by the guest).
    daemon.ok("POST", "/vms/hp/disks", json={"volume": "default/second"})
    both = console_run(daemon, "hp", "sleep 1; cat /sys/block/vdb/size; echo sized-$((2+2))", "sized-4")
    assert re.search(r"\b16384\b", both), both
    daemon.ok("DELETE", "/vms/hp/disks/default/second", params={"timeout": 60})
    volumes = {v["name"]: v for v in daemon.call("GET", "/volumes").json()}
    assert volumes["extra"]["attached_to"] == "hp"

    detached = daemon.ok("DELETE", "/vms/hp/disks/default/extra", params={"timeout": 60})
    assert "detached" in detached["message"] and daemon.vm("hp")["spec"]["disks"] == []
    gone = console_run(daemon, "hp", "ls /sys/block; echo relisted-$((3+1))", "relisted-4")
    assert "vda" not in gone.split("relisted")[0].split("ls /sys/block")[-1]

    # microvm has no hot-plug bus: refused while running, the spec unchanged; attaching while stopped works.
    daemon.ok("POST", "/vms/mv/start")
    refused = daemon.call("POST", "/vms/mv/disks", json={"volume": "default/cold"})  # before any job
    assert refused.status_code == 501 and refused.json()["error"]["capability"] == "disk_hotplug"
    assert daemon.vm("mv")["spec"]["disks"] == []
    daemon.ok("POST", "/vms/mv/stop")
    daemon.ok("POST", "/vms/mv/disks", json={"volume": "default/cold", "bus": "virtio-scsi", "discard": "unmap"})
    assert daemon.vm("mv")["spec"]["disks"][0]["volume"] == "default/cold"
    # Attached while stopped, on the virtio-scsi bus: the next boot has it as a SCSI disk.
    daemon.ok("POST", "/vms/mv/start")
    daemon.wait_ready("mv")
    scsi = console_run(daemon, "mv", "cat /sys/block/sda/size; echo scsi-$((4+4))", "scsi-8")
    assert re.search(r"\b32768\b", scsi), scsi
    for name in ("hp", "mv"):
        daemon.ok("DELETE", f"/vms/{name}", params={"force": "true"})
