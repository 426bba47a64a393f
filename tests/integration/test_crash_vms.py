"""Killing the daemon at each step of creating a VM with new disks, and of deleting a VM.

A create is rolled back (the volumes made for a VM that was never recorded go; the name is free for the retry) or,
once the VM is recorded, finished. A delete is rolled forward: the user asked for the VM to be gone, so after the
restart there is no record, no domain, no QEMU process, no seed, and the volumes are gone exactly when asked.
The daemon kills itself (SIGKILL) at a named failpoint, so each step is hit exactly, not by timing luck.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Daemon, qemu_pids
from tests.integration.test_crash_volumes import pool_files, restart_and_settle
from virtfleet import failpoints
from virtfleet.jobs import vm_create, vm_delete

pytestmark = pytest.mark.integration

MiB = 1 << 20
CREATE_POINTS = [name for name in failpoints.POINTS if name.startswith("vm.create.")]
DELETE_POINTS = [name for name in failpoints.POINTS if name.startswith("vm.delete.")]


@pytest.fixture
def server(short_tmp: Path) -> Any:
    daemon = Daemon(short_tmp)
    yield daemon
    daemon.stop()


def make_volume(server: Daemon, name: str, *, template: bool = False) -> None:
    server.ok("POST", "/pools/default/volumes", json={"name": name, "size": 16 * MiB})
    if template:
        assert server.call("POST", f"/volumes/default/{name}/template", json={"template": True}).status_code == 200


def volume_names(server: Daemon) -> list[str]:
    return sorted(v["name"] for v in server.call("GET", "/volumes").json())


def restart_armed(server: Daemon, point: str) -> None:
    server.stop()
    server.arm(point)
    server.start()


# --- create ----------------------------------------------------------------------------------------------------
# Boots from a linked clone of a template, with a blank data disk and an existing volume: no guest image needed.
CREATE = {"name": "web", "machine": "q35", "image": None, "disks": [
    {"new": {"clone_of": "golden"}, "boot_index": 0}, {"new": {"size": 16 * MiB}}, {"volume": "data"}]}


@pytest.mark.parametrize("point", CREATE_POINTS)
def test_killed_create_is_all_or_nothing(server: Daemon, point: str) -> None:
    server.start()
    make_volume(server, "golden", template=True)
    make_volume(server, "data")
    restart_armed(server, point)
    response = server.call("POST", "/vms", json=CREATE)
    assert response.status_code == 202, response.text
    job = restart_and_settle(server, response.json()["id"])
    if point == "vm.create.after-vm-record":
        assert job["status"] == "succeeded" and "finished after a daemon restart" in job["message"], job
        disks = server.vm("web")["spec"]["disks"]
        assert [d["volume"] for d in disks] == ["default/web-disk0", "default/web-disk1", "default/data"]
        assert volume_names(server) == ["data", "golden", "web-disk0", "web-disk1"]
        assert pool_files(server) == ["data", "golden", "web-disk0", "web-disk1"]
        return
    assert job["status"] == "failed" and job["error_code"] == "interrupted", job
    assert "rolled back" in job["error"] and "never recorded" in job["error"]
    assert server.call("GET", "/vms/web").status_code == 404
    assert volume_names(server) == ["data", "golden"] and pool_files(server) == ["data", "golden"]
    created = server.ok("POST", "/vms", json=CREATE)  # nothing of the first try is in the way
    assert "default/web-disk0" in created["message"]
    assert server.vm("web")["spec"]["disks"][0]["volume"] == "default/web-disk0"


def test_killed_clone_of_a_template_vm_leaves_nothing(server: Daemon) -> None:
    server.start()
    make_volume(server, "root")
    base = {"name": "base", "machine": "q35", "image": None, "disks": [{"volume": "root", "boot_index": 0}]}
    assert server.call("POST", "/vms", json=base).status_code == 201
    assert server.call("POST", "/vms/base/template").status_code == 200
    restart_armed(server, "vm.create.after-volume-record")
    response = server.call("POST", "/vms/base/clone", json={"name": "web"})
    assert response.status_code == 202, response.text
    job = restart_and_settle(server, response.json()["id"])
    assert job["status"] == "failed" and job["kind"] == "vm.clone", job
    assert server.call("GET", "/vms/web").status_code == 404
    assert volume_names(server) == ["root"] and pool_files(server) == ["root"]
    server.ok("POST", "/vms/base/clone", json={"name": "web"})
    assert volume_names(server) == ["root", "web-disk0"]


# --- delete ----------------------------------------------------------------------------------------------------
def defined_vm(server: Daemon) -> tuple[str, Path]:
    """A VM defined on the host but never started (attaching a disk defines it), with the seed a start leaves."""
    make_volume(server, "d1")
    make_volume(server, "d2")
    spec = {"name": "web", "machine": "q35", "image": None, "disks": [{"volume": "d1", "boot_index": 0}],
            "cloud_init": {"hostname": "web"}}
    vm_id = server.call("POST", "/vms", json=spec).json()["id"]
    server.ok("POST", "/vms/web/disks", json={"volume": "d2"})
    seed = server.data_dir / "seeds" / f"{vm_id}.iso"
    seed.parent.mkdir(exist_ok=True)
    seed.write_bytes(b"CD001")
    return vm_id, seed


@pytest.mark.parametrize(("point", "delete_volumes"), [(point, True) for point in DELETE_POINTS] +
                         [("vm.delete.after-record", False), ("vm.delete.after-intent", False)])
def test_killed_delete_is_finished_at_restart(server: Daemon, point: str, delete_volumes: bool) -> None:
    server.start()
    vm_id, seed = defined_vm(server)
    run_dir = server.data_dir / "run" / vm_id
    assert run_dir.is_dir()
    restart_armed(server, point)
    response = server.call("DELETE", "/vms/web", params={"delete_volumes": str(delete_volumes).lower()})
    assert response.status_code == 202, response.text
    job = restart_and_settle(server, response.json()["id"])
    assert job["status"] == "succeeded" and "finished after a daemon restart" in job["message"], job
    assert server.call("GET", "/vms/web").status_code == 404
    assert not run_dir.exists() and not seed.exists()
    if delete_volumes:
        assert volume_names(server) == [] and pool_files(server) == []
    else:
        assert [v["attached_to"] for v in server.call("GET", "/volumes").json()] == [None, None]
        assert pool_files(server) == ["d1", "d2"]


def test_killed_delete_of_a_running_guest_stops_it_at_restart(daemon: Daemon) -> None:
    make_volume(daemon, "data")
    spec = {"name": "run1", "memory": "128M", "disks": [{"volume": "data"}], "cloud_init": {"hostname": "run1"}}
    vm_id = daemon.call("POST", "/vms", json=spec).json()["id"]
    daemon.ok("POST", "/vms/run1/start")
    seed = daemon.data_dir / "seeds" / f"{vm_id}.iso"
    assert qemu_pids(daemon.data_dir) and seed.is_file()
    restart_armed(daemon, "vm.delete.after-intent")  # QEMU runs on while the daemon restarts
    assert daemon.vm("run1")["state"] == "running"
    response = daemon.call("DELETE", "/vms/run1", params={"force": "true", "delete_volumes": "true"})
    assert response.status_code == 202, response.text
    job = restart_and_settle(daemon, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert qemu_pids(daemon.data_dir) == []
    assert daemon.call("GET", "/vms/run1").status_code == 404
    assert not (daemon.data_dir / "run" / vm_id).exists() and not seed.exists()
    assert volume_names(daemon) == [] and pool_files(daemon) == []


def test_every_vm_failpoint_is_tested() -> None:
    assert vm_create.INTENT_KIND and vm_delete.INTENT_KIND  # the modules that declare them are loaded
    assert CREATE_POINTS == ["vm.create.after-intent", "vm.create.after-volume-file",
                             "vm.create.after-volume-record", "vm.create.after-vm-record"]
    assert DELETE_POINTS == ["vm.delete.after-intent", "vm.delete.after-stop", "vm.delete.after-undefine",
                             "vm.delete.after-forget", "vm.delete.after-record", "vm.delete.after-volume"]
