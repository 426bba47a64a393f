"""The reconciler's targeted passes: what one event costs, however large the fleet, and how bursts coalesce."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from virtfleet.agent.reconcile import Reconciler
from virtfleet.config import Settings
from virtfleet.drivers.base import DriverConfig
from virtfleet.drivers.fake import FakeDriver
from virtfleet.jobs.runner import JobRunner
from virtfleet.model.vm import VmSpec, VmState
from virtfleet.store.db import Database

HOST = "host-a"
FLEET = 40


@dataclass
class Agent:
    db: Database
    driver: FakeDriver
    reconciler: Reconciler
    calls: dict[str, int]


def counting(calls: dict[str, int], name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def spy(*args: Any, **kwargs: Any) -> Any:
        calls[name] = calls.get(name, 0) + 1
        return method(*args, **kwargs)

    return spy


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    db = Database.sqlite(tmp_path / "vf.db")
    db.migrate()
    driver = FakeDriver(DriverConfig(tmp_path / "run"))
    for n in range(FLEET):
        vm = db.add_vm(VmSpec(name=f"vm{n}"), HOST)
        await driver.define(vm.id, vm.spec)
        await driver.start(vm.id, vm.spec, None)
        db.set_vm_state(vm.id, VmState.RUNNING, "started")
    reconciler = Reconciler(db, driver, JobRunner(db), HOST, interval=60)
    await reconciler.recover()
    reconciler.start()
    calls: dict[str, int] = {}
    for name in ("status", "list_domains", "recover"):
        setattr(driver, name, counting(calls, name, getattr(driver, name)))
    for name in ("list_vms", "find_vm"):
        setattr(db, name, counting(calls, name, getattr(db, name)))
    yield Agent(db, driver, reconciler, calls)
    await reconciler.stop()
    await driver.close()
    db.close()


async def settled(agent: Agent, vm_id: str, state: VmState, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while agent.db.get_vm(vm_id).state is not state:
        assert time.monotonic() < deadline, f"{vm_id} never became {state.value}"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # any read still to come has had time to happen


async def test_one_event_reads_one_domain_and_one_record_never_the_whole_fleet(agent: Agent) -> None:
    vm = agent.db.list_vms()[FLEET // 2]
    agent.calls.clear()
    agent.driver.host.crash(vm.id)
    await settled(agent, vm.id, VmState.CRASHED)
    assert agent.calls == {"status": 1, "find_vm": 1}  # no list_domains, no list_vms


async def test_a_burst_of_events_for_one_vm_reads_it_once(agent: Agent) -> None:
    vm = agent.db.list_vms()[0]
    agent.calls.clear()
    agent.driver.host.crash(vm.id)
    for _ in range(99):
        agent.driver.host.announce(vm.id)
    await settled(agent, vm.id, VmState.CRASHED)
    assert agent.calls["status"] == 1


async def test_an_event_during_a_read_is_read_again_once_after_it(agent: Agent) -> None:
    vm = agent.db.list_vms()[0]
    hold = agent.driver.host.hold("status")
    agent.calls.clear()
    agent.reconciler.notify(vm.id)
    assert await asyncio.to_thread(hold.reached.wait, 5)  # the domain was read (running): the pass waits
    agent.driver.host.crash(vm.id)  # what it read is stale now
    for _ in range(50):
        agent.reconciler.notify(vm.id)
    hold.released.set()
    await settled(agent, vm.id, VmState.CRASHED)
    assert agent.calls["status"] == 2


async def test_a_job_letting_go_of_something_else_than_a_vm_reads_no_domain(agent: Agent) -> None:
    async def done(_context: object) -> str:
        return "done"

    agent.calls.clear()
    job = agent.reconciler.runner.submit("volume.create", "volume:default/v1", "volume 'v1'", done)
    await agent.reconciler.runner.wait(job.id, 5)
    await asyncio.sleep(0.05)
    assert "status" not in agent.calls


def test_the_fallback_interval_is_long_by_default_and_tunable_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VIRTFLEET_RECONCILE_INTERVAL", raising=False)
    assert Settings.from_env(data_dir=tmp_path).reconcile_interval == 30.0
    monkeypatch.setenv("VIRTFLEET_RECONCILE_INTERVAL", "2.5")
    assert Settings.from_env(data_dir=tmp_path).reconcile_interval == 2.5
    for bad in ("soon", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("VIRTFLEET_RECONCILE_INTERVAL", bad)
        with pytest.raises(ValueError, match="VIRTFLEET_RECONCILE_INTERVAL"):
            Settings.from_env(data_dir=tmp_path)
