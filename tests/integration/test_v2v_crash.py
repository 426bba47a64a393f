"""Killing the daemon in the middle of an import: after a restart there is the whole VM, or no VM, no volume and no
half-converted file (a real `serve`, killed at each v2v failpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Daemon
from tests.integration.test_crash_volumes import restart_and_settle
from tests.v2v_stage import make_disk


@pytest.fixture
def server(short_tmp: Path) -> Any:
    daemon = Daemon(short_tmp)
    yield daemon
    daemon.stop()


def two_disk_vm(server: Daemon) -> str:
    folder = server.data_dir / "import" / "vm"
    for name in ("a.vmdk", "b.vmdk"):
        make_disk(folder / name, "vmdk", 8 << 20)
    (folder / "vm.vmx").write_text('displayName = "two"\nmemsize = "128"\nscsi0.present = "TRUE"\n'
                                   'scsi0:0.present = "TRUE"\nscsi0:0.fileName = "a.vmdk"\n'
                                   'scsi0:1.present = "TRUE"\nscsi0:1.fileName = "b.vmdk"\n')
    return "vm/vm.vmx"


def everything(server: Daemon) -> tuple[list[str], list[str], list[str]]:
    pool = server.data_dir / "pools" / "default"
    files = sorted(str(p.relative_to(pool)) for p in pool.rglob("*") if p.is_file())
    vms = [vm["name"] for vm in server.call("GET", "/vms").json()]
    volumes = [v["name"] for v in server.call("GET", "/volumes").json()]
    return vms, volumes, files


@pytest.mark.parametrize("point", ["v2v.import.after-file", "v2v.import.after-disk"])
def test_an_import_killed_before_the_vm_is_recorded_leaves_nothing(server: Daemon, point: str) -> None:
    server.arm(point)
    server.start()
    response = server.call("POST", "/imports", json={"path": two_disk_vm(server)})
    assert response.status_code == 202, response.text
    job = restart_and_settle(server, response.json()["id"])
    assert job["status"] == "failed" and "rolled back" in job["error"], job
    assert everything(server) == ([], [], [])
    assert server.job("POST", "/imports", json={"path": "vm/vm.vmx"})["status"] == "succeeded"  # names free again


def test_an_import_killed_after_the_vm_is_recorded_is_whole(server: Daemon) -> None:
    server.arm("v2v.import.after-vm")
    server.start()
    response = server.call("POST", "/imports", json={"path": two_disk_vm(server)})
    job = restart_and_settle(server, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert everything(server) == (["two"], ["two-disk1", "two-disk2"], ["two-disk1", "two-disk2"])
