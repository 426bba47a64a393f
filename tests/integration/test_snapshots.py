"""Snapshots of a real guest: the guest writes, snapshots are taken, it writes again, and reverts bring back
exactly what it had written (disk snapshots) and where it was (memory snapshots)."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.conftest import READY, Daemon
from tests.integration.test_qemu_vm_api import console_run, last_tick

pytestmark = pytest.mark.integration


def write(daemon: Daemon, vm: str, text: str) -> None:
    """Write `text` at the start of the guest's disk, past its page cache."""
    console_run(daemon, vm, f"echo -n {text} | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; "
                            f"echo wrote-$((7*6))", "wrote-42")


def read(daemon: Daemon, vm: str) -> str:
    seen = console_run(daemon, vm, "echo 3 > /proc/sys/vm/drop_caches; "
                                   "echo R=$(dd if=/dev/vda bs=16 count=1 2>/dev/null | tr -d '\\000')=R; "
                                   "echo read-$((5*5))", "read-25")
    found = re.findall(r"R=([a-z]*)=R", seen)
    assert found, seen
    return found[-1]


def test_disk_and_memory_snapshots_revert_and_merge(daemon: Daemon) -> None:
    daemon.ok("POST", "/pools/default/volumes", json={"name": "data", "size": "32M"})
    spec = {"name": "snap", "memory": "256M", "kernel_args": "virtfleet.ticks=1", "disks": [{"volume": "data"}]}
    assert daemon.call("POST", "/vms", json=spec).status_code == 201
    daemon.ok("POST", "/vms/snap/start")
    daemon.wait_log("snap", rf"{READY} hostname=snap")

    write(daemon, "snap", "first")
    daemon.ok("POST", "/vms/snap/snapshots", json={"name": "s1"})  # live, disk-only
    write(daemon, "snap", "second")
    assert read(daemon, "snap") == "second"

    daemon.wait_log("snap", r"virtfleet-tick 3\b")
    daemon.ok("POST", "/vms/snap/snapshots", json={"name": "m1", "memory": True})
    at_save = last_tick(daemon.logs("snap"))
    write(daemon, "snap", "third")
    daemon.wait_log("snap", rf"virtfleet-tick {at_save + 3}\b", timeout=20)
    before_load = last_tick(daemon.logs("snap"))

    # Memory revert on the running VM: the disk and the guest's own clock go back.
    daemon.ok("POST", "/vms/snap/snapshots/m1/revert")
    assert daemon.vm("snap")["state"] == "running"
    assert read(daemon, "snap") == "second"
    history = daemon.logs("snap")
    after = [int(n) for n in re.findall(r"virtfleet-tick (\d+)", history.rsplit("R=second=R", 1)[0])][-1:]
    assert after and after[0] < before_load, (after, before_load)

    tree = daemon.call("GET", "/vms/snap/snapshots").json()
    assert [(s["name"], s["parent"], s["kind"]) for s in tree] == [("s1", None, "disk"), ("m1", "s1", "memory")]
    assert [s["name"] for s in tree if s["current"]] == ["m1"]
    daemon.ok("DELETE", "/vms/snap/snapshots/m1")

    # Disk revert needs the VM stopped; the refusal names the state and changes nothing.
    refused = daemon.call("POST", "/vms/snap/snapshots/s1/revert")
    assert refused.status_code == 409 and "running" in refused.json()["error"]["message"]
    daemon.ok("POST", "/vms/snap/shutdown", params={"timeout": 60})
    daemon.ok("POST", "/vms/snap/snapshots/s1/revert")
    daemon.ok("POST", "/vms/snap/start")
    daemon.wait_log("snap", rf"{READY} hostname=snap", count=2)
    assert read(daemon, "snap") == "first"

    # Deleting the snapshot on the running VM merges the overlay back (block-commit): data intact, one image left.
    write(daemon, "snap", "fourth")
    daemon.ok("DELETE", "/vms/snap/snapshots/s1")
    assert daemon.call("GET", "/vms/snap/snapshots").json() == []
    assert read(daemon, "snap") == "fourth"
    pool = daemon.data_dir / "pools" / "default"
    assert sorted(p.name for p in pool.iterdir() if not p.name.startswith(".")) == ["data"]
    volume = daemon.call("GET", "/volumes/default/data").json()
    assert volume["backing_chain"] == [str(pool / "data")]
    daemon.ok("POST", "/vms/snap/stop")
    time.sleep(0.1)
    daemon.ok("DELETE", "/vms/snap", params={"delete_volumes": "true"})
