"""The libvirt driver on libvirt's in-process mock hypervisor (test:///default: no daemon, no guest), and its
settings. What needs a real guest is in the driver contract (libvirt-system) and tests/integration."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest

from virtfleet.config import Settings
from virtfleet.drivers.base import DriverConfig, create_driver
from virtfleet.drivers.libvirt.driver import LibvirtDriver
from virtfleet.drivers.libvirt.options import LibvirtOptions
from virtfleet.drivers.libvirt.state import map_state
from virtfleet.errors import Conflict, NotFound, Unsupported
from virtfleet.model.vm import DiskSpec, VmSpec, VmState

MOCK = {"uri": "test:///default"}


@pytest.fixture
async def driver(short_tmp: Path) -> AsyncIterator[LibvirtDriver]:
    made = create_driver("libvirt", DriverConfig(short_tmp / "run", extra=MOCK))
    assert isinstance(made, LibvirtDriver)
    try:
        yield made
    finally:
        for status in await made.list_domains():
            await made.stop(status.vm_id)
            await made.undefine(status.vm_id)
        await made.close()


def spec(name: str, **fields: object) -> VmSpec:
    return VmSpec.model_validate({"name": name, "machine": "q35", "accel": "tcg", **fields})


def test_driver_setting_names_the_driver_before_the_first_colon(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(Path("/d"), driver="qemu").driver_setting() == ("qemu", {})
    assert Settings(Path("/d"), driver="libvirt").driver_setting() == ("libvirt", {"uri": "qemu:///system"})
    assert Settings(Path("/d"), driver="libvirt:qemu+ssh://root@h/system").driver_setting() == (
        "libvirt", {"uri": "qemu+ssh://root@h/system"})
    monkeypatch.setenv("VIRTFLEET_DRIVER", "libvirt:test:///default")
    monkeypatch.setenv("VIRTFLEET_LIBVIRT_USERNAME", "ops")
    monkeypatch.setenv("VIRTFLEET_LIBVIRT_PASSWORD", "s3cret")
    name, extra = Settings.from_env(data_dir=Path("/d")).driver_setting()
    options = LibvirtOptions.model_validate(extra)
    assert (name, options.uri, options.username) == ("libvirt", "test:///default", "ops")
    assert options.password is not None and "s3cret" not in repr(options)


@pytest.mark.parametrize(("value", "message"), [
    ("libvirt:", "not a libvirt URI"),
    ("libvirt:qemu", "not a libvirt URI"),
    ("libvirt:xen:///system", "qemu://"),
    ("libvirt:qemu:///sys tem", "not a libvirt URI"),
    ("qemu:qemu:///system", "takes no options"),
    ("vmware", "unknown driver"),
])
def test_bad_driver_settings_are_refused_naming_the_setting(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        Settings(Path("/d"), driver=value)
    assert "VIRTFLEET_DRIVER" in str(error.value)


def test_capabilities_are_per_uri(short_tmp: Path) -> None:
    def caps(uri: str) -> dict[str, object]:
        return vars(LibvirtDriver(DriverConfig(short_tmp, extra={"uri": uri})).capabilities())

    mock, local, remote = caps("test:///default"), caps("qemu:///system"), caps("qemu+ssh://h/system")
    assert mock["machines"] == local["machines"] == ("q35",)
    assert not any(mock[name] for name in ("console", "vnc", "usage", "disk_hotplug", "snapshots"))
    assert local["console"] and local["vnc"] and local["usage"] and local["disk_hotplug"]
    assert local["snapshots"] and local["memory_snapshots"] and local["adopt"] and mock["adopt"]
    assert not remote["console"] and not remote["vnc"] and remote["usage"]  # the sockets are on that host
    assert not remote["snapshots"] and not remote["uefi"]  # image headers and firmware are read on this host


def test_state_mapping_tells_a_crash_from_a_power_off() -> None:
    assert map_state(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN) == (VmState.STOPPED, "")
    assert map_state(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED)[0] is VmState.CRASHED
    assert map_state(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED)[0] is VmState.CRASHED
    assert map_state(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)[0] is VmState.STOPPED
    assert map_state(libvirt.VIR_DOMAIN_CRASHED, 0)[0] is VmState.CRASHED
    paused, why = map_state(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)
    assert paused is VmState.PAUSED and "I/O error" in why
    assert map_state(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)[0] is VmState.STARTING


async def test_domains_of_others_are_ignored_and_ours_carry_their_spec(driver: LibvirtDriver) -> None:
    conn = libvirt.open("test:///default")  # the mock's own domain "test" and one more, not ours
    try:
        assert conn.lookupByName("test") is not None
        assert await driver.list_domains() == []
        vm_id = str(uuid.uuid4())
        wanted = spec("web", disks=[DiskSpec(path="/p/a.qcow2")])
        await driver.define(vm_id, wanted)
        # The name is what virsh users see; the identity is our metadata (and the UUID made from the id).
        domain = conn.lookupByName("web")
        assert domain.UUIDString() == vm_id
        [listed] = await driver.list_domains()
        assert (listed.vm_id, listed.state, listed.spec) == (vm_id, VmState.STOPPED, wanted)
        # A restarted agent (a new driver) finds it, spec and all, so a store that lost it can adopt it.
        again = LibvirtDriver(DriverConfig(driver.config.run_dir, extra=MOCK))
        try:
            assert [(s.vm_id, s.spec) for s in await again.recover()] == [(vm_id, wanted)]
        finally:
            await again.close()
        # Another virtfleet on the same libvirtd (another data directory) neither sees nor adopts our domains.
        other = LibvirtDriver(DriverConfig(driver.config.run_dir.parent / "other-run", extra=MOCK))
        try:
            assert await other.list_domains() == []
            assert "web" not in {domain.name for domain in await other.foreign_domains()}
            with pytest.raises(NotFound):
                await other.status(vm_id)
        finally:
            await other.close()
        with pytest.raises(Conflict, match="another domain named 'test'"):
            await driver.define(str(uuid.uuid4()), spec("test"))
        with pytest.raises(NotFound):  # the mock's own domain is not ours, even by its UUID
            await driver.status(conn.lookupByName("test").UUIDString())
    finally:
        conn.close()


async def test_lifecycle_and_events_reach_watch(driver: LibvirtDriver) -> None:
    changed: asyncio.Queue[str] = asyncio.Queue()
    driver.watch(changed.put_nowait)
    vm_id = str(uuid.uuid4())
    wanted = spec("life")
    await driver.define(vm_id, wanted)
    await driver.define(vm_id, wanted)  # idempotent

    started = await driver.start(vm_id, wanted, None)
    assert (started.state, started.accel) == (VmState.RUNNING, "tcg")
    assert await asyncio.wait_for(changed.get(), 5.0) == vm_id  # announced by libvirt, not polled
    with pytest.raises(Conflict):
        await driver.start(vm_id, wanted, None)
    with pytest.raises(Conflict):
        await driver.undefine(vm_id)

    await driver.pause(vm_id)
    assert (await driver.status(vm_id)).state is VmState.PAUSED
    await driver.resume(vm_id)
    assert (await driver.status(vm_id)).state is VmState.RUNNING
    await driver.shutdown(vm_id, timeout=5)
    assert (await driver.status(vm_id)) .reason == "guest powered off"
    await driver.start(vm_id, wanted, None)
    await driver.stop(vm_id)
    stopped = await driver.status(vm_id)
    assert (stopped.state, stopped.reason, stopped.pid) == (VmState.STOPPED, "powered off by the host", None)
    await driver.stop(vm_id)  # already off: nothing to do

    await driver.define(vm_id, spec("renamed"))  # stopped: renamed in libvirt too
    assert (await driver.status(vm_id)).spec == spec("renamed")
    conn = libvirt.open("test:///default")
    try:
        assert conn.lookupByUUIDString(vm_id).name() == "renamed"
    finally:
        conn.close()
    await driver.undefine(vm_id)
    await driver.undefine(vm_id)  # idempotent
    with pytest.raises(NotFound):
        await driver.status(vm_id)


async def test_events_of_domains_a_driver_never_looked_at_are_resolved_and_foreign_ones_dropped(
        driver: LibvirtDriver, short_tmp: Path) -> None:
    watcher = LibvirtDriver(DriverConfig(driver.config.run_dir, extra=MOCK))  # the same virtfleet, restarted
    changed: asyncio.Queue[str] = asyncio.Queue()
    watcher.watch(changed.put_nowait)
    conn = libvirt.open("test:///default")
    try:
        await watcher.list_domains()  # connected (and subscribed); it knows no domain of ours yet
        foreign = conn.lookupByName("test")
        foreign.suspend()  # someone else's domain: its events are nobody's business here
        foreign.resume()
        vm_id = str(uuid.uuid4())
        await driver.define(vm_id, spec("seen"))
        await driver.start(vm_id, spec("seen"), None)
        assert await asyncio.wait_for(changed.get(), 5.0) == vm_id  # looked up by its UUID, then reported
        await driver.stop(vm_id)
        assert await asyncio.wait_for(changed.get(), 5.0) == vm_id
        await asyncio.sleep(0.2)
        rest = [changed.get_nowait() for _ in range(changed.qsize())]
        assert set(rest) <= {vm_id}  # (defined, started, stopped ...) and nothing for the foreign domain
    finally:
        conn.close()
        await watcher.close()


async def test_what_libvirt_cannot_do_is_refused_naming_the_capability(driver: LibvirtDriver) -> None:
    vm_id = str(uuid.uuid4())
    forwarded = spec("fwd", nics=[{"network": "usr", "user_mode": True, "forwards": ["tcp:8080:80"]}])
    with pytest.raises(Unsupported, match="passt"):
        await driver.define(vm_id, forwarded)
    assert await driver.list_domains() == []  # nothing defined
    with pytest.raises(Unsupported, match="q35"):
        await driver.define(vm_id, VmSpec(name="micro"))
    await driver.define(vm_id, spec("plain"))
    with pytest.raises(Unsupported, match="memory_snapshots"):
        await driver.start(vm_id, spec("plain"), None, restore="tag")
    with pytest.raises(Unsupported, match="snapshots"):
        await driver.snapshot_disks(vm_id, [("/a", "/b")])
    with pytest.raises(Unsupported, match="disk_hotplug"):
        await driver.attach_disk(vm_id, DiskSpec(path="/p/b.qcow2"))
    with pytest.raises(Unsupported, match="console"):
        await driver.open_console(vm_id)
    assert await driver.usage(vm_id) is None
    info = await driver.host_info()
    assert info.driver == "libvirt" and not info.kvm_usable and "mock" in info.kvm_reason


async def test_a_dropped_connection_is_reopened_with_its_event_subscription(driver: LibvirtDriver) -> None:
    keep = libvirt.open("test:///default")  # the mock keeps its domains while any connection is open
    try:
        changed: asyncio.Queue[str] = asyncio.Queue()
        driver.watch(changed.put_nowait)
        vm_id = str(uuid.uuid4())
        await driver.define(vm_id, spec("again"))
        dropped = driver._connection.get()
        dropped.close()  # the daemon went away, as far as this connection knows
        assert (await driver.status(vm_id)).state is VmState.STOPPED  # answered on a new connection
        assert driver._connection.get() is not dropped
        await asyncio.sleep(0.2)
        for _ in range(changed.qsize()):
            changed.get_nowait()  # what define() announced
        await driver.start(vm_id, spec("again"), None)
        while await asyncio.wait_for(changed.get(), 5.0) != vm_id:
            pass  # events come again, from the new connection
    finally:
        keep.close()
