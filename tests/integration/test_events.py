"""The event stream of a real `virtfleet serve` while a real guest starts and powers off, and while the daemon stops."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Daemon
from virtfleet.client import parse_sse

pytestmark = pytest.mark.integration


def until_job_done(stream: Iterator[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    messages = []
    for message in stream:
        messages.append(message)
        data = message["data"]
        if message["event"] == "job" and data["id"] == job_id and data["status"] in ("succeeded", "failed"):
            return messages
    raise AssertionError(f"the stream ended early: {messages}")


def test_a_stream_follows_a_real_guest_and_ends_when_the_daemon_stops(daemon: Daemon) -> None:
    # The read timeout only guards against a hung test: keepalives come every 15 s.
    timeout = httpx.Timeout(30, read=120)
    with httpx.stream("GET", f"{daemon.url}/events", headers=daemon.auth, timeout=timeout) as response:
        assert response.status_code == 200
        stream = parse_sse(response.iter_lines())
        spec = {"name": "watched", "cpus": 1, "memory": "256M"}
        assert daemon.call("POST", "/vms", json=spec).status_code == 201
        start = daemon.ok("POST", "/vms/watched/start")
        seen = until_job_done(stream, start["id"])
        daemon.wait_ready("watched")
        shutdown = daemon.ok("POST", "/vms/watched/shutdown", params={"timeout": 60})  # ACPI: the guest powers off
        seen += until_job_done(stream, shutdown["id"])

        vm_states = [(m["data"]["state"], m["data"]["reason"]) for m in seen if m["event"] == "vm"]
        assert vm_states == [("stopped", "created"), ("starting", "starting"), ("running", start["message"]),
                             ("stopping", "ACPI power button pressed"), ("stopped", shutdown["message"])]
        assert [m["data"]["kind"] for m in seen if m["event"] == "vm-event"] == ["created", "started", "stopped"]
        assert seen[-1]["data"] == daemon.call("GET", f"/jobs/{shutdown['id']}").json()
        ids = [m["id"] for m in seen]
        assert ids == sorted(set(ids))

        # SIGTERM with a client attached: the daemon ends the stream and exits rather than waiting to be killed.
        daemon.stop()
        assert daemon.process is not None and daemon.process.returncode in (0, -signal.SIGTERM)
        assert list(stream) == []  # a clean end of the chunked body, not a broken connection
