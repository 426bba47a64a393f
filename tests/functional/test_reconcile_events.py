"""State changes come from the hypervisor's events, not from polling: the full reconcile pass here runs once a minute
(never, within a test), so whatever the store learns it learns from an event or from a job letting go of a VM.

Interleavings are forced with held driver calls (FakeHost.hold), as in test_races: a targeted pass that has read one
domain waits until the test lets it apply what it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import Api, open_api
from virtfleet.jobs.runner import JobContext

WAIT = 5.0
FALLBACK = 60.0  # seconds between full passes: longer than any test here


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from open_api(tmp_path / "data", reconcile_interval=FALLBACK)


def test_a_domain_crashed_behind_our_back_is_marked_crashed_at_once(api: Api) -> None:
    vm = api.create("victim")
    api.run("victim", "start")
    killed_at = time.monotonic()
    api.host.crash(vm["id"], "QEMU (pid 4242) was killed by signal 9")
    seen = api.wait_state("victim", "crashed", timeout=0.5)
    assert seen["state"] == "crashed", seen
    assert time.monotonic() - killed_at < 0.5
    crash = [e for e in api.events("victim") if e["kind"] == "crashed"]
    assert crash and "killed by signal 9" in crash[0]["message"]


def test_a_change_during_a_job_is_picked_up_when_the_job_lets_go_of_the_vm(api: Api) -> None:
    vm = api.create("busy")
    api.run("busy", "start")
    release = threading.Event()

    async def hold(_context: JobContext) -> str:
        await asyncio.to_thread(release.wait, WAIT)
        return "released"

    portal = api.client.portal
    assert portal is not None
    holder = portal.call(lambda: api.server.runner.submit("test.hold", vm["id"], "vm 'busy'", hold))
    api.host.crash(vm["id"])  # announced while a job owns the VM: that pass leaves it alone
    time.sleep(0.2)
    assert api.vm("busy")["state"] == "running"
    release.set()
    assert api.wait(holder.model_dump(mode="json"))["status"] == "succeeded"
    assert api.wait_state("busy", "crashed", timeout=0.5)["state"] == "crashed"


@contextlib.contextmanager
def held_targeted_read(api: Api, vm_id: str) -> Iterator[None]:
    """Inside: a targeted pass has read the domain of `vm_id` (announced to it) and waits. Leaving the block lets it
    apply that read, and returns once it has (the next read of that domain has then been made, and is let go)."""
    first = api.host.hold("status")
    api.host.announce(vm_id)
    assert first.reached.wait(WAIT), "no targeted pass read the domain"
    second = None
    try:
        yield
        second = api.host.hold("status")
        first.released.set()
        # The job that ran meanwhile announced the VM again as it ended: that read proves the first one applied.
        assert second.reached.wait(WAIT), "the held pass did not finish"
    finally:
        first.released.set()
        if second is not None:
            second.released.set()


def test_a_stop_that_ends_during_a_targeted_read_is_not_undone(api: Api) -> None:
    vm = api.create("s")
    api.run("s", "start")
    with held_targeted_read(api, vm["id"]):  # it saw the domain running
        api.run("s", "stop")
    assert api.vm("s")["state"] == "stopped"
    assert "state-changed" not in [e["kind"] for e in api.events("s")]


def test_a_vm_force_deleted_during_a_targeted_read_is_not_adopted_again(api: Api) -> None:
    vm = api.create("d")
    api.run("d", "start")
    first = api.host.hold("status")
    api.host.announce(vm["id"])
    assert first.reached.wait(WAIT)  # it saw the domain running
    try:
        job = api.wait(api.client.delete("/api/v1/vms/d", params={"force": "true"}).json())
        assert job["status"] == "succeeded", job
    finally:
        first.released.set()
    time.sleep(0.2)  # nothing announces the end of that pass: give it time to (wrongly) adopt
    assert api.client.get("/api/v1/vms").json() == []
    assert api.host.domains == {}
