"""The driver contract, continued: pause and usage without a guest, hot-plug on a running q35 guest, and taking
over foreign domains. Same environments as test_driver_contract.py; the real ones boot at most one guest a test."""

from __future__ import annotations

import asyncio

import pytest

from tests.contract.conftest import DriverEnv, ready_line
from tests.contract.test_driver_contract import new_vm_id, only
from virtfleet.drivers.base import UsageSample
from virtfleet.errors import Conflict, InvalidSpec, NotFound, Unsupported
from virtfleet.model.network import NicSpec
from virtfleet.model.vm import DiskSpec, VmState
from virtfleet.storage import qemu_img


def check_sample(sample: UsageSample | None) -> UsageSample:
    assert isinstance(sample, UsageSample), sample
    assert sample.cpu_seconds >= 0 and sample.memory_bytes > 0, sample
    for counter in (sample.disk_read_bytes, sample.disk_write_bytes, sample.net_rx_bytes, sample.net_tx_bytes):
        assert counter >= 0, sample
    return sample


async def test_pause_resume_usage_and_close_without_waiting_for_the_guest(env: DriverEnv) -> None:
    """Runs everywhere, libvirt's mock included: nothing here needs the guest's console."""
    env.require("pause")
    driver = env.driver
    vm_id = new_vm_id()
    spec = env.spec("c-pause")
    await driver.define(vm_id, spec)
    assert await driver.usage(vm_id) is None  # defined, never started
    started = await driver.start(vm_id, spec, env.boot(spec))
    assert started.state is VmState.RUNNING
    if driver.capabilities().usage:
        first = check_sample(await driver.usage(vm_id))

    await driver.pause(vm_id)
    assert (await driver.status(vm_id)).state is VmState.PAUSED
    assert only(await driver.list_domains(), vm_id).state is VmState.PAUSED
    if driver.capabilities().usage:  # counters are cumulative: a paused domain's never go back
        paused = check_sample(await driver.usage(vm_id))
        assert paused.cpu_seconds >= first.cpu_seconds
    await driver.resume(vm_id)
    assert (await driver.status(vm_id)).state is VmState.RUNNING

    # The agent goes away: the domain keeps running, a new instance finds it as it was. The new one connects
    # first: libvirt's mock hypervisor lives only while someone is connected to it (a real one outlives us).
    again = env.new_driver()
    await again.host_info()
    await driver.close()
    recovered = only(await again.recover(), vm_id)
    assert recovered.state is VmState.RUNNING and recovered.pid == started.pid
    await again.stop(vm_id)
    assert (await again.status(vm_id)).state is VmState.STOPPED
    assert await again.usage(vm_id) is None  # stopped
    await again.undefine(vm_id)


async def test_disk_and_nic_hot_plug_on_a_running_q35_guest(env: DriverEnv) -> None:
    env.require("disk_hotplug", "nic_hotplug", "link_state")
    driver = env.driver
    vm_id = new_vm_id()
    image = env.config.run_dir.parent / "extra.qcow2"
    await asyncio.to_thread(qemu_img.create, image, "qcow2", 16 << 20)
    disk = DiskSpec(path=str(image), format="qcow2")
    spec = env.spec("c-hotplug", machine="q35")
    await env.start(vm_id, spec)  # unplugging goes through the guest's ACPI handling: it must be up

    async def chains() -> list[list[str]]:
        return [[layer.path for layer in chain] for chain in await driver.disk_chains(vm_id)]

    assert await chains() == []
    await driver.attach_disk(vm_id, disk)
    assert await chains() == [[str(image)]]
    await driver.detach_disk(vm_id, disk, timeout=60)  # the same DiskSpec finds it
    assert await chains() == []
    with pytest.raises(NotFound):  # gone already
        await driver.detach_disk(vm_id, disk, timeout=60)

    nic = NicSpec(network="usr", mac="52:54:00:c0:47:01", user_mode=True)  # user mode: no host network needed
    with pytest.raises(NotFound):  # not plugged yet
        await driver.set_link(vm_id, nic, False)
    await driver.attach_nic(vm_id, nic)
    await driver.set_link(vm_id, nic, False)
    await driver.set_link(vm_id, nic, True)
    await driver.detach_nic(vm_id, nic, timeout=60)
    with pytest.raises(NotFound):  # gone again
        await driver.set_link(vm_id, nic, True)
    with pytest.raises(NotFound):
        await driver.detach_nic(vm_id, nic, timeout=60)

    assert (await driver.status(vm_id)).state is VmState.RUNNING  # none of it disturbed the guest
    assert ready_line(spec.name).encode() in await driver.console_log(vm_id, 1 << 20)
    await driver.stop(vm_id)


async def test_foreign_domains_are_offered_and_taken_over(env: DriverEnv) -> None:
    driver = env.driver
    if not driver.capabilities().adopt:  # the contract for a driver without the capability
        assert await driver.foreign_domains() == []
        with pytest.raises(Unsupported):
            await driver.take_over("anything", new_vm_id(), env.spec("c-foreign"))
        return
    stopped = await asyncio.to_thread(env.add_foreign)
    running = await asyncio.to_thread(env.add_foreign, running=True)
    transient = await asyncio.to_thread(env.add_foreign, persistent=False)
    offered = {domain.name: domain for domain in await driver.foreign_domains()}
    assert offered[stopped].state is VmState.STOPPED and offered[stopped].persistent
    assert offered[running].state is VmState.RUNNING and offered[running].persistent
    assert not offered[transient].persistent
    for name in (stopped, running, transient):
        assert f"<name>{name}</name>" in offered[name].xml
        assert offered[name].uuid

    with pytest.raises(InvalidSpec, match="vm_id"):  # the domain keeps its identity: taken over under its uuid
        await driver.take_over(stopped, new_vm_id(), env.spec(stopped))
    assert stopped in {domain.name for domain in await driver.foreign_domains()}  # and nothing changed
    taken: dict[str, str] = {}
    for name in (stopped, running):
        vm_id = taken[name] = offered[name].uuid
        spec = env.spec(name)
        await driver.take_over(name, vm_id, spec)
        status = await driver.status(vm_id)
        assert status.state is offered[name].state  # nothing was started, stopped or restarted
        assert status.spec == spec
        with pytest.raises(Conflict):  # virtfleet's already
            await driver.take_over(name, vm_id, spec)
    assert set(taken.values()) <= {status.vm_id for status in await driver.list_domains()}
    left = {domain.name for domain in await driver.foreign_domains()}
    assert stopped not in left and running not in left and transient in left

    with pytest.raises(Conflict):  # a transient domain has no definition to mark
        await driver.take_over(transient, offered[transient].uuid, env.spec(transient))
    assert transient in {domain.name for domain in await driver.foreign_domains()}
    with pytest.raises(NotFound):
        await driver.take_over("no-such-domain", new_vm_id(), env.spec("c-missing"))
    await driver.stop(taken[running])
