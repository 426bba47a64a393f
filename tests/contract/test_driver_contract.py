"""The driver contract: what the agent relies on from every driver, checked against each one.

Each qemu boot under TCG costs seconds, so each test boots at most one guest and checks everything that
follows naturally from that boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import pytest

from tests.contract.conftest import CONSOLE_TAIL, READY_MARKER, DriverEnv, ready_line
from tests.rfb import RfbHandshake, ServerInit
from virtfleet.drivers.base import BOOT_SEPARATOR, ConsoleStreams, DomainStatus, Driver, HostInfo
from virtfleet.errors import Conflict, NotFound
from virtfleet.model.vm import DiskSpec, VmState
from virtfleet.storage import qemu_img

DOWN = (VmState.STOPPED, VmState.CRASHED)


def new_vm_id() -> str:
    """A domain id as the store makes them (a UUID; the qemu driver also passes it to -uuid)."""
    return str(uuid.uuid4())


def only(statuses: list[DomainStatus], vm_id: str) -> DomainStatus:
    """The one status for `vm_id`; fails on a missing or duplicated domain."""
    matching = [s for s in statuses if s.vm_id == vm_id]
    assert len(matching) == 1, f"{vm_id} listed {len(matching)} times in {statuses}"
    return matching[0]


async def read_until(streams: ConsoleStreams, command: bytes, expected: bytes, timeout: float) -> bytes:
    """Send `command` and read the console until `expected` comes back; re-send while nothing answers
    (a guest shell may still be starting right after the READY marker)."""
    reader, writer = streams
    received = b""
    deadline = time.monotonic() + timeout
    while expected not in received:
        writer.write(command)
        await writer.drain()
        resend_at = min(deadline, time.monotonic() + 5.0)
        while expected not in received and (remaining := resend_at - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), remaining)
            except TimeoutError:
                break
            assert chunk, f"console closed before {expected!r} arrived; received {received!r}"
            received += chunk
        if expected not in received and time.monotonic() >= deadline:
            raise AssertionError(f"{expected!r} not echoed within {timeout:g}s; received {received!r}")
    return received


async def close_streams(streams: ConsoleStreams) -> None:
    writer = streams[1]
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def wait_down(driver: Driver, vm_id: str, timeout: float) -> DomainStatus:
    """Poll until the domain is no longer reported live, through both list_domains() and status()."""
    deadline = time.monotonic() + timeout
    while True:
        listed = only(await driver.list_domains(), vm_id)
        status = await driver.status(vm_id)
        if listed.state in DOWN and status.state in DOWN:
            return status
        if time.monotonic() >= deadline:
            raise AssertionError(f"still live {timeout:g}s after the hypervisor died: {listed} / {status}")
        await asyncio.sleep(0.05)


async def test_define_list_status_undefine(env: DriverEnv) -> None:
    driver = env.driver
    vm_id, unknown = new_vm_id(), new_vm_id()
    assert env.mine(await driver.recover()) == []
    assert env.mine(await driver.list_domains()) == []

    spec = env.spec("c-define")
    await driver.define(vm_id, spec)
    await driver.define(vm_id, spec)  # idempotent

    listed = only(await driver.list_domains(), vm_id)
    assert listed.state is VmState.STOPPED and listed.pid is None
    status = await driver.status(vm_id)
    assert status.vm_id == vm_id
    assert status.state is VmState.STOPPED and status.pid is None
    assert status.spec == spec

    await driver.undefine(vm_id)
    assert [s.vm_id for s in env.mine(await driver.list_domains())] == []
    with pytest.raises(NotFound):
        await driver.status(vm_id)
    with pytest.raises(NotFound):
        await driver.status(unknown)
    await driver.undefine(vm_id)  # already gone: a no-op
    await driver.undefine(unknown)


async def test_lifecycle_start_pause_resume_shutdown(env: DriverEnv) -> None:
    env.require("console", "pause", "acpi_shutdown")  # the guest's READY line shows on its console
    vm_id = new_vm_id()
    driver = env.driver
    spec = env.spec("c-life")
    await driver.define(vm_id, spec)

    started = await driver.start(vm_id, spec, env.boot(spec))
    assert started.vm_id == vm_id and started.state is VmState.RUNNING
    assert started.pid is not None
    assert started.accel in ("kvm", "tcg")
    if spec.accel != "auto":
        assert started.accel == spec.accel
    log = await env.wait_console(vm_id, ready_line(spec.name), env.boot_timeout)
    assert f"{ready_line(spec.name)} kernel=".encode() in log

    status = await driver.status(vm_id)
    assert status.state is VmState.RUNNING and status.pid == started.pid and status.accel == started.accel
    assert only(await driver.list_domains(), vm_id).state is VmState.RUNNING

    with pytest.raises(Conflict):
        await driver.start(vm_id, spec, env.boot(spec))
    with pytest.raises(Conflict):
        await driver.undefine(vm_id)  # never forget a domain that still runs
    assert (await driver.status(vm_id)).pid == started.pid  # the refused start left it alone

    await driver.pause(vm_id)
    assert (await driver.status(vm_id)).state is VmState.PAUSED
    await driver.resume(vm_id)
    assert (await driver.status(vm_id)).state is VmState.RUNNING

    await driver.shutdown(vm_id, timeout=30)  # ACPI power button; the guest powers itself off
    stopped = await driver.status(vm_id)
    assert stopped.state is VmState.STOPPED and stopped.pid is None

    await driver.undefine(vm_id)
    with pytest.raises(NotFound):
        await driver.status(vm_id)


async def test_reboot_then_stop_keeps_console_history(env: DriverEnv) -> None:
    env.require("reboot")
    vm_id = new_vm_id()
    driver = env.driver
    spec = env.spec("c-reboot")
    await env.start(vm_id, spec)

    await driver.reboot(vm_id)
    await env.wait_console(vm_id, ready_line(spec.name), env.boot_timeout, count=2)
    after_reboot = await driver.status(vm_id)
    assert after_reboot.state is VmState.RUNNING and after_reboot.pid is not None

    await driver.stop(vm_id)  # pull the plug
    stopped = await driver.status(vm_id)
    assert stopped.state is VmState.STOPPED and stopped.pid is None
    assert only(await driver.list_domains(), vm_id).state is VmState.STOPPED
    history = await driver.console_log(vm_id, CONSOLE_TAIL)
    assert history.count(ready_line(spec.name).encode()) == 2
    assert await driver.console_log(vm_id, 10) == history[-10:]

    # Starting again appends to the history after a boot separator, so this boot's output can be told apart.
    await driver.start(vm_id, spec, env.boot(spec))
    await env.wait_console(vm_id, ready_line(spec.name), env.boot_timeout, count=3)
    history = await driver.console_log(vm_id, CONSOLE_TAIL)
    this_boot = history[history.rindex(BOOT_SEPARATOR.encode()) :]
    assert history.count(BOOT_SEPARATOR.encode()) == 2 and this_boot.count(ready_line(spec.name).encode()) == 1


async def test_killed_hypervisor_is_reported_down(env: DriverEnv) -> None:
    vm_id = new_vm_id()
    spec = env.spec("c-crash")
    announced = asyncio.Event()
    env.driver.watch(lambda changed: announced.set() if changed == vm_id else None)
    await env.start(vm_id, spec)
    announced.clear()  # what starting announced, if anything

    await env.kill_hypervisor(vm_id)
    # The driver tells of it (watch): nobody polls here. The bound leaves the hypervisor time to notice: libvirtd
    # takes 1.7-2.2 s to handle a dead QEMU on this machine (QEMU's own monitor hang-up is at once).
    await asyncio.wait_for(announced.wait(), 5.0)
    down = await wait_down(env.driver, vm_id, timeout=2.0)
    assert down.pid is None
    assert down.reason, f"no reason given for {down}"

    # A restarted agent must not take the dead domain for a running one either.
    await env.driver.close()
    restarted = env.new_driver()
    recovered = only(await restarted.recover(), vm_id)
    assert recovered.state in DOWN and recovered.pid is None


async def test_hypervisor_killed_while_no_driver_watched_is_crashed(env: DriverEnv) -> None:
    vm_id = new_vm_id()
    started = await env.start(vm_id, env.spec("c-unwatched"))
    await env.driver.close()  # the agent is gone when the hypervisor dies
    await env.kill_hypervisor(vm_id, started.pid)
    if env.name != "fake":  # dead before any driver looks again, so none saw it go
        for _ in range(100):
            if not _alive(started.pid):
                break
            await asyncio.sleep(0.05)
    recovered = only(await env.new_driver().recover(), vm_id)
    assert recovered.state is VmState.CRASHED and recovered.pid is None, recovered
    assert recovered.reason, f"no reason given for {recovered}"


def _alive(pid: int | None) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_new_driver_adopts_running_domain(env: DriverEnv) -> None:
    vm_id = new_vm_id()
    spec = env.spec("c-adopt")
    started = await env.start(vm_id, spec)

    await env.driver.close()  # the agent goes away; the guest keeps running
    adopter = env.new_driver()
    recovered = only(await adopter.recover(), vm_id)
    assert recovered.state is VmState.RUNNING
    assert recovered.pid == started.pid
    assert recovered.spec == spec
    assert only(await adopter.list_domains(), vm_id).state is VmState.RUNNING
    await env.wait_console(vm_id, ready_line(spec.name), 5.0, driver=adopter)

    await adopter.pause(vm_id)
    assert (await adopter.status(vm_id)).state is VmState.PAUSED
    await adopter.resume(vm_id)
    assert (await adopter.status(vm_id)).state is VmState.RUNNING
    await adopter.stop(vm_id)
    stopped = await adopter.status(vm_id)
    assert stopped.state is VmState.STOPPED and stopped.pid is None


async def test_console_round_trip_single_client(env: DriverEnv) -> None:
    vm_id = new_vm_id()
    driver = env.driver
    spec = env.spec("c-console")
    await env.start(vm_id, spec)

    command = b"echo contract-$((6*7))\n"
    # The real guest runs the command in its shell; the fake only echoes what it is sent.
    expected = b"contract-$((6*7))" if env.name == "fake" else b"contract-42"
    first = await driver.open_console(vm_id)
    try:
        await read_until(first, command, expected, timeout=30.0)
        with pytest.raises(Conflict):
            await driver.open_console(vm_id)
    finally:
        await close_streams(first)
    assert expected in await driver.console_log(vm_id, CONSOLE_TAIL)  # the history records sessions

    # Once the first client has gone, the console is free again (the release may take a moment to notice).
    deadline = time.monotonic() + 2.0
    while True:
        try:
            second = await driver.open_console(vm_id)
            break
        except Conflict:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)
    try:
        await read_until(second, command, expected, timeout=30.0)
    finally:
        await close_streams(second)


async def rfb_handshake(streams: ConsoleStreams) -> ServerInit:
    reader, writer = streams
    client = RfbHandshake()
    while client.server_init is None:
        data = await reader.read(4096)
        assert data, "the VNC stream closed during the RFB handshake"
        if reply := client.feed(data):
            writer.write(reply)
            await writer.drain()
    return client.server_init


async def test_vnc_stream_speaks_rfb_to_several_clients(env: DriverEnv) -> None:
    env.require("vnc")
    driver = env.driver
    plain, desk = new_vm_id(), new_vm_id()
    await driver.define(plain, env.spec("c-plain"))
    spec = env.spec("c-vnc", machine="q35", display="vnc")
    await driver.define(desk, spec)
    for vm_id in (plain, desk):
        with pytest.raises(Conflict):  # not running
            await driver.open_vnc(vm_id)
    # No wait for the guest: the VNC server is up with the hypervisor (the firmware already draws on it).
    await driver.start(desk, spec, env.boot(spec))
    first = await driver.open_vnc(desk)
    second = await driver.open_vnc(desk)
    try:
        for streams in (first, second):
            init = await asyncio.wait_for(rfb_handshake(streams), 30.0)
            assert init.version.startswith("RFB 003.00"), init
            assert 320 <= init.width <= 4096 and 200 <= init.height <= 4096, init
            assert init.bits_per_pixel in (8, 16, 32), init
    finally:
        await close_streams(first)
        await close_streams(second)


async def test_host_info(env: DriverEnv) -> None:
    assert isinstance(env.driver, Driver)
    assert env.driver.name == env.name
    info = await env.driver.host_info()
    assert isinstance(info, HostInfo)
    assert info.cpus >= 1
    assert info.memory_mib > 0
    assert info.driver == env.name
    assert info.hostname and info.hypervisor
    assert isinstance(info.kvm_usable, bool)
    assert info.kvm_reason


def test_ready_marker_matches_the_guest() -> None:
    """The marker the contract waits for is the one the fake driver and the tiny image actually print."""
    from virtfleet.drivers import fake
    from virtfleet.images import tiny

    assert fake.READY_MARKER == tiny.READY_MARKER == READY_MARKER


async def test_block_graph_is_read_back_and_an_interrupted_merge_finishes(env: DriverEnv) -> None:
    """What crash recovery of snapshots relies on: the driver tells which image each disk writes and which
    internal snapshots the images hold, and a merge whose agent died before the switch is finished, not stuck."""
    env.require("snapshots", "memory_snapshots")
    vm_id = new_vm_id()
    base, overlay = env.config.run_dir.parent / "disk", env.config.run_dir.parent / "disk@1"
    await asyncio.to_thread(qemu_img.create, base, "qcow2", 16 << 20)
    spec = env.spec("c-block", disks=[DiskSpec(path=str(base), format="qcow2")])
    await env.start(vm_id, spec)
    driver = env.driver

    async def chains(on: Driver) -> list[list[str]]:
        return [[image.path for image in chain] for chain in await on.disk_chains(vm_id)]

    assert await chains(driver) == [[str(base)]]
    await asyncio.to_thread(qemu_img.create, overlay, "qcow2", 16 << 20, backing=base, backing_fmt="qcow2")
    await driver.snapshot_disks(vm_id, [(str(base), str(overlay))])
    assert await chains(driver) == [[str(overlay), str(base)]]
    await driver.memory_snapshot(vm_id, "save", "tag1", [str(overlay)])
    [[top, below]] = await driver.disk_chains(vm_id)
    assert (top.snapshots, below.snapshots) == (("tag1",), ())
    await driver.memory_snapshot(vm_id, "load", "tag1", [str(overlay)])  # back to that instant, still running
    assert (await driver.status(vm_id)).state is VmState.RUNNING
    assert [image.snapshots for image in (await driver.disk_chains(vm_id))[0]] == [("tag1",), ()]
    await driver.memory_snapshot(vm_id, "delete", "tag1", [str(overlay)])
    assert [image.snapshots for image in (await driver.disk_chains(vm_id))[0]] == [(), ()]

    class AgentDied(Exception):
        pass

    async def die() -> None:
        raise AgentDied

    with pytest.raises(AgentDied):  # the merge is ready, the agent dies before the disk switches to the base
        await driver.commit_disk(vm_id, str(overlay), str(base), before_pivot=die)
    assert await chains(driver) == [[str(overlay), str(base)]]
    await driver.close()
    adopter = env.new_driver()
    pivots: list[str] = []

    async def record() -> None:
        pivots.append("pivot")

    await adopter.commit_disk(vm_id, str(overlay), str(base), before_pivot=record)  # finishes the leftover job
    assert pivots == ["pivot"]
    assert await chains(adopter) == [[str(base)]]
    await adopter.commit_disk(vm_id, str(overlay), str(base))  # merged already: nothing to do
    await adopter.release_images(vm_id, [str(overlay), str(base)])  # the disk's own image stays open
    await adopter.release_images(vm_id, [str(base.parent / "never-opened")])  # not open at all: harmless
    assert await chains(adopter) == [[str(base)]]
    assert await adopter.settle_block_jobs(vm_id) == []
    await adopter.stop(vm_id)
