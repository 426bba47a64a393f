"""GET /api/v1/events on the fake driver: what a stream sees and in what order; slow and departing clients; the CLI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.functional.conftest import Api, LiveServer
from virtfleet.cli.main import app as cli_app
from virtfleet.client import parse_sse
from virtfleet.events import EventBus

Message = dict[str, Any]


def bus_of(api: Api) -> EventBus:
    bus: EventBus = api.app.state.server.events
    return bus


def bounded(lines: Iterator[str], keepalives: int = 1000) -> Iterator[str]:
    """The stream's lines; with a tiny keepalive interval, a bound on how long we wait for what never comes."""
    for line in lines:
        if line == ": keepalive":
            keepalives -= 1
            assert keepalives > 0, "the awaited message never came"
        yield line


def sse(response: httpx.Response) -> Iterator[Message]:
    return parse_sse(bounded(response.iter_lines()))


def read_until(stream: Iterator[Message], last: Callable[[Message], bool]) -> list[Message]:
    messages = []
    for message in stream:
        messages.append(message)
        if last(message):
            return messages
    raise AssertionError(f"the stream ended early: {messages}")


def job_done(job_id: str) -> Callable[[Message], bool]:
    return lambda m: m["event"] == "job" and m["data"]["id"] == job_id and m["data"]["status"] == "succeeded"


def summary(message: Message) -> tuple[str, ...]:
    data = message["data"]
    if message["event"] == "vm":
        return ("vm", data["name"], data["state"])
    if message["event"] == "vm-event":
        return ("vm-event", data["kind"])
    if message["event"] == "job":
        return ("job", data["kind"], data["status"], str(data["progress"]))
    return (message["event"], data["name"])


def test_a_stream_sees_a_vm_created_started_stopped_and_deleted_in_order(api: Api) -> None:
    bus_of(api).keepalive = 0.01
    with api.client.stream("GET", "/api/v1/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = sse(response)
        vm = api.create("ev1")
        api.run("ev1", "start")
        stop = api.run("ev1", "stop")
        messages = read_until(stream, job_done(stop["id"]))
        deleting = api.client.delete("/api/v1/vms/ev1").json()
        messages += read_until(stream, job_done(deleting["id"]))

    assert [summary(m) for m in messages] == [
        ("vm", "ev1", "stopped"), ("vm-event", "created"),
        ("job", "vm.start", "queued", "0"), ("job", "vm.start", "running", "0"), ("vm", "ev1", "starting"),
        ("job", "vm.start", "running", "10"), ("vm", "ev1", "running"), ("vm-event", "started"),
        ("job", "vm.start", "succeeded", "100"),
        ("job", "vm.stop", "queued", "0"), ("job", "vm.stop", "running", "0"), ("vm", "ev1", "stopped"),
        ("vm-event", "stopped"), ("job", "vm.stop", "succeeded", "100"),
        ("job", "vm.delete", "queued", "0"), ("job", "vm.delete", "running", "0"),
        ("job", "vm.delete", "running", "50"), ("vm-deleted", "ev1"), ("job", "vm.delete", "succeeded", "100"),
    ]
    ids = [m["id"] for m in messages]
    assert ids == sorted(set(ids))
    # The data are what the REST API answers for the same things.
    assert messages[0]["data"] == {"id": vm["id"], "name": "ev1", "state": "stopped", "reason": "created"}
    assert messages[13]["data"] == stop
    assert messages[-2]["data"] == {"id": vm["id"], "name": "ev1"}
    assert messages[-1]["data"] == api.client.get(f"/api/v1/jobs/{deleting['id']}").json()
    assert [m["data"]["vm_id"] for m in messages if m["event"] == "vm-event"] == [vm["id"]] * 3


def test_vm_event_messages_are_the_lines_of_the_event_log(api: Api) -> None:
    bus_of(api).keepalive = 0.01
    api.create("ev2")
    with api.client.stream("GET", "/api/v1/events") as response:
        start = api.run("ev2", "start")
        messages = read_until(sse(response), job_done(start["id"]))
    log = api.events("ev2")
    assert [m["data"] for m in messages if m["event"] == "vm-event"] == log[1:]  # all but "created", seen before


def test_a_client_that_leaves_is_unsubscribed(api: Api) -> None:
    bus = bus_of(api)
    with api.client.stream("GET", "/api/v1/events") as response:
        assert response.status_code == 200
        assert bus.subscriber_count == 1
    assert bus.subscriber_count == 0
    api.create("after")  # publishing with nobody listening is fine
    assert bus.subscriber_count == 0


def test_keepalive_comments_come_on_an_idle_stream(api: Api) -> None:
    bus_of(api).keepalive = 0.01
    with api.client.stream("GET", "/api/v1/events") as response:
        lines = response.iter_lines()
        assert [next(lines) for _ in range(4)] == [": keepalive", "", ": keepalive", ""]


def test_the_openapi_document_describes_the_stream(api: Api) -> None:
    events = api.client.get("/openapi.json").json()["paths"]["/api/v1/events"]["get"]
    assert list(events["responses"]["200"]["content"]) == ["text/event-stream"]
    assert "`event: vm-deleted`" in events["description"]


def test_a_client_that_falls_behind_is_disconnected_and_others_are_not(api: Api) -> None:
    bus = bus_of(api)
    bus.keepalive, bus.queue_size = 0.01, 3
    with api.client.stream("GET", "/api/v1/events") as slow, api.client.stream("GET", "/api/v1/events") as fast:
        seen: list[Message] = []
        fast_stream = sse(fast)
        for i in range(4):  # 8 messages: `fast` reads them as they come, `slow` reads nothing
            api.create(f"n{i}")
            seen += read_until(fast_stream, lambda m: m["event"] == "vm-event")
        lagging = list(sse(slow))  # ends: the server dropped it
        assert bus.subscriber_count == 1
    assert len(lagging) < 8
    assert [m["data"]["name"] for m in seen if m["event"] == "vm"] == ["n0", "n1", "n2", "n3"]


def test_viewers_may_follow_the_stream_and_anonymous_clients_may_not(api: Api) -> None:
    viewer = api.headers_for("viewer")
    with api.client.stream("GET", "/api/v1/events", headers=viewer) as response:
        assert response.status_code == 200
    with api.anonymous() as anonymous:
        refused = anonymous.get("/api/v1/events")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    assert bus_of(api).subscriber_count == 0


# --- against a real uvicorn (what `virtfleet serve` runs) ---------------------------------------------------------
class Served(LiveServer):
    @property
    def bus(self) -> EventBus:
        bus: EventBus = self.app.state.server.events
        return bus

    def wait_subscribers(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while self.bus.subscriber_count != count:
            assert time.monotonic() < deadline, f"{self.bus.subscriber_count} subscribers, expected {count}"
            time.sleep(0.01)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    served = Served(tmp_path / "data")
    monkeypatch.setenv("VIRTFLEET_DATA_DIR", str(served.data_dir))  # where the CLI finds the local admin token
    monkeypatch.delenv("VIRTFLEET_TOKEN", raising=False)
    served.start()
    yield served
    served.stop()


def test_shutdown_ends_open_streams_so_the_server_stops(served: Served) -> None:
    served.bus.keepalive = 0.01  # so that `bounded` fails the test if the stream goes on
    with httpx.stream("GET", f"{served.url}/api/v1/events", headers=served.auth, timeout=30) as response:
        assert response.status_code == 200
        served.wait_subscribers(1)
        httpx.post(f"{served.url}/api/v1/vms", json={"name": "last"}, headers=served.auth).raise_for_status()
        served.server.should_exit = True
        messages = list(sse(response))  # ends cleanly (no error) when the server stops
    served.thread.join(30)
    assert not served.thread.is_alive()
    assert [m["event"] for m in messages] == ["vm", "vm-event"]


def test_cli_follows_the_stream(served: Served) -> None:
    results: list[Any] = []

    def follow(*args: str) -> None:
        results.append(CliRunner().invoke(cli_app, ["--url", served.url, "events", *args]))

    for args in (("--json", "--count", "3"), ("--count", "3")):
        thread = threading.Thread(target=follow, args=args)
        thread.start()
        served.wait_subscribers(1)
        name = f"c{len(results)}"
        httpx.post(f"{served.url}/api/v1/vms", json={"name": name}, headers=served.auth).raise_for_status()
        httpx.post(f"{served.url}/api/v1/vms/{name}/start", headers=served.auth).raise_for_status()
        thread.join(30)
        served.wait_subscribers(0)

    as_json, human = results
    assert as_json.exit_code == 0, as_json.output
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(m["event"], m["data"].get("kind")) for m in lines] == [("vm", None), ("vm-event", "created"),
                                                                     ("job", "vm.start")]
    assert lines[0]["data"]["name"] == "c0" and lines[0]["id"] < lines[1]["id"] < lines[2]["id"]
    assert human.exit_code == 0, human.output
    words = [line.split()[1:4] for line in human.stdout.splitlines()]
    assert words == [["vm", "c1", "stopped"], ["vm-event", "c1", "created:"], ["job", "vm.start", "c1"]]


def test_cli_says_when_the_server_ends_the_stream(served: Served) -> None:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(
        CliRunner().invoke(cli_app, ["--url", served.url, "events"])))
    thread.start()
    served.wait_subscribers(1)
    served.server.should_exit = True
    thread.join(30)
    assert results[0].exit_code == 1
    assert "the server ended the event stream" in results[0].stderr
