"""Killing the daemon at each step of making a volume: after a restart the name is free or the volume is whole.

The daemon kills itself (SIGKILL) at a named failpoint, so each step is hit exactly, not by timing luck.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Daemon
from virtfleet import failpoints

VOLUME = {"name": "data", "size": 16 << 20, "format": "qcow2"}


def restart_and_settle(server: Daemon, job_id: str) -> dict[str, Any]:
    server.wait_killed()
    server.arm()
    server.start()
    job = server.call("GET", f"/jobs/{job_id}").json()
    assert job["status"] in ("succeeded", "failed"), job  # recovered at start-up, never left running
    return dict(job)


def pool_files(server: Daemon) -> list[str]:
    return sorted(p.name for p in (server.data_dir / "pools" / "default").iterdir() if not p.name.startswith("."))


@pytest.fixture
def server(short_tmp: Path) -> Any:
    daemon = Daemon(short_tmp)
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("point", ["volume.create.after-intent", "volume.create.after-file"])
def test_killed_volume_create_leaves_nothing(server: Daemon, point: str) -> None:
    server.arm(point)
    server.start()
    response = server.call("POST", "/pools/default/volumes", json=VOLUME)
    assert response.status_code == 202, response.text
    job = restart_and_settle(server, response.json()["id"])
    assert job["status"] == "failed" and job["error_code"] == "interrupted", job
    assert "rolled back" in job["error"]
    assert "data" not in pool_files(server)
    assert server.call("GET", "/volumes/default/data").status_code == 404
    server.ok("POST", "/pools/default/volumes", json=VOLUME)  # the name is free again
    assert "data" in pool_files(server)


def test_killed_clone_leaves_nothing(server: Daemon) -> None:
    server.start()
    server.ok("POST", "/pools/default/volumes", json=VOLUME)
    assert server.call("POST", "/volumes/default/data/template", json={"template": True}).status_code == 200
    server.stop()
    server.arm("volume.clone.after-file")
    server.start()
    response = server.call("POST", "/volumes/default/data/clone", json={"name": "copy", "linked": True})
    assert response.status_code == 202, response.text
    job = restart_and_settle(server, response.json()["id"])
    assert job["status"] == "failed", job
    assert pool_files(server) == ["data"]
    server.ok("POST", "/volumes/default/data/clone", json={"name": "copy", "linked": True})


@pytest.mark.parametrize(("point", "kept"), [("volume.register.after-file", False),
                                             ("volume.register.after-record", True)])
def test_killed_upload_is_all_or_nothing(server: Daemon, point: str, kept: bool) -> None:
    server.arm(point)
    server.start()
    body = bytes(1 << 20)
    with contextlib.suppress(httpx.TransportError):  # the server dies mid-request: the connection drops
        server.call("PUT", "/pools/default/volumes/up/data", params={"format": "raw"}, content=body)
    server.wait_killed()
    server.arm()
    server.start()
    exists = server.call("GET", "/volumes/default/up").status_code == 200
    assert exists is kept
    assert ("up" in pool_files(server)) is kept  # never a file without a record, nor a record without its file


def test_every_volume_failpoint_is_tested() -> None:
    tested = {"volume.create.after-intent", "volume.create.after-file", "volume.clone.after-file",
              "volume.register.after-file", "volume.register.after-record"}
    declared = {name for name in failpoints.POINTS if name.startswith("volume.")}
    assert declared == tested
