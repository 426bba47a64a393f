"""An in-memory driver: the whole product runs on it in functional tests, against the same contract as qemu.

The simulated host (FakeHost) is shared per run_dir, so a new driver instance on the same run_dir sees the domains
an earlier one started, the way a restarted agent finds QEMU processes still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from virtfleet.drivers.base import (
    BOOT_SEPARATOR,
    BeforePivot,
    BootImage,
    Capabilities,
    ConsoleStreams,
    DiskChain,
    DomainStatus,
    DriverConfig,
    ForeignDomain,
    HostInfo,
    MemoryAction,
    OpenImage,
    UsageSample,
)
from virtfleet.errors import Conflict, DriverError, InvalidSpec, NotFound, OperationTimeout, Unsupported
from virtfleet.model.network import NicSpec
from virtfleet.model.vm import DiskSpec, VmSpec, VmState

READY_MARKER = "VIRTFLEET-READY"
FAKE_SCREEN = (640, 480)  # the fake graphical console's framebuffer size


@dataclass
class FakeDomain:
    spec: VmSpec
    state: VmState = VmState.STOPPED
    pid: int | None = None
    reason: str = ""
    console: bytearray = field(default_factory=bytearray)
    console_open: bool = False
    ignore_acpi: bool = False  # a guest that does not react to the power button
    memory_snapshots: set[str] = field(default_factory=set)
    links: dict[str, bool] = field(default_factory=dict)  # NIC -> cable plugged
    ticks: int = 0  # usage samples taken
    overlays: list[tuple[str, str]] = field(default_factory=list)  # live snapshots taken, for tests to inspect
    chains: list[list[str]] = field(default_factory=list)  # per disk the images it has open, active layer first
    image_tags: dict[str, set[str]] = field(default_factory=dict)  # image -> its internal snapshots


Watcher = tuple[asyncio.AbstractEventLoop, Callable[[str], None]]
HOLD_TIMEOUT = 30.0  # a test that forgets to release a held call fails instead of hanging


@dataclass
class Hold:
    """The next call of one operation parks here until the test releases it: an interleaving made certain, not
    likely. Threading events, because tests drive the server's event loop from another thread."""

    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


@dataclass
class FakeHost:
    domains: dict[str, FakeDomain] = field(default_factory=dict)
    next_pid: int = 40000
    fail_next: dict[str, str] = field(default_factory=dict)  # operation -> error message, consumed once
    holds: dict[str, Hold] = field(default_factory=dict)  # operation -> where its next call waits, consumed once
    foreign: dict[str, ForeignDomain] = field(default_factory=dict)  # name -> a domain other tools made
    taken_over: set[str] = field(default_factory=set)  # names of foreign domains that are virtfleet's now

    def add_foreign(self, name: str, uuid: str, xml: str, state: VmState = VmState.STOPPED, *,
                    persistent: bool = True) -> ForeignDomain:
        """A domain virt-manager or VDSM made on this host: real libvirt XML, for `host adopt` to read."""
        domain = self.foreign[name] = ForeignDomain(name, uuid, state, persistent, xml)
        return domain
    watchers: list[Watcher] = field(default_factory=list)  # drivers on this host told of changes made behind them

    def hold(self, operation: str) -> Hold:
        """Make the next `operation` call (list_domains: after it has read the domains) wait for hold.released."""
        hold = self.holds[operation] = Hold()
        return hold

    def crash(self, vm_id: str, reason: str = "killed by signal 9") -> None:
        """Simulate the hypervisor process dying under the VM."""
        domain = self.domains[vm_id]
        domain.state = VmState.CRASHED
        domain.pid = None
        domain.reason = reason
        self.announce(vm_id)

    def announce(self, vm_id: str) -> None:
        """Tell the watching drivers that this domain may have changed, as a hypervisor's event would (from any
        thread: tests drive the host from outside the server's loop)."""
        for loop, on_change in list(self.watchers):
            with contextlib.suppress(RuntimeError):  # that driver's loop is closed: nobody listens any more
                loop.call_soon_threadsafe(on_change, vm_id)


_HOSTS: dict[str, FakeHost] = {}


def fake_host_for(config: DriverConfig) -> FakeHost:
    return _HOSTS.setdefault(str(config.run_dir), FakeHost())


class FakeDriver:
    name = "fake"

    def __init__(self, config: DriverConfig) -> None:
        self.host = fake_host_for(config)
        self._on_change: Callable[[str], None] = lambda vm_id: None
        self._capabilities = capabilities_from_json(config.extra.get(CAPABILITIES_OPTION, ""))

    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def host_info(self) -> HostInfo:
        return HostInfo(
            hostname=socket.gethostname(),
            cpus=os.cpu_count() or 1,
            memory_mib=65536,
            driver=self.name,
            hypervisor="fake 1.0",
            kvm_usable=False,
            kvm_reason="fake driver: no hypervisor",
        )

    def _domain(self, vm_id: str) -> FakeDomain:
        try:
            return self.host.domains[vm_id]
        except KeyError:
            raise NotFound("domain", vm_id) from None

    def _status(self, vm_id: str, domain: FakeDomain) -> DomainStatus:
        accel = "tcg" if domain.state not in (VmState.STOPPED, VmState.CRASHED) else ""
        return DomainStatus(vm_id, domain.state, domain.pid, domain.reason, accel, domain.spec)

    def _maybe_fail(self, operation: str) -> None:
        message = self.host.fail_next.pop(operation, None)
        if message is not None:
            raise DriverError(f"fake {operation} failed", message)

    async def _maybe_hold(self, operation: str) -> None:
        hold = self.host.holds.pop(operation, None)
        if hold is not None:
            hold.reached.set()
            if not await asyncio.to_thread(hold.released.wait, HOLD_TIMEOUT):
                raise DriverError(f"fake {operation} held", f"not released within {HOLD_TIMEOUT:g}s")

    async def recover(self) -> list[DomainStatus]:
        return await self.list_domains()

    async def list_domains(self) -> list[DomainStatus]:
        statuses = [self._status(vm_id, d) for vm_id, d in self.host.domains.items()]
        await self._maybe_hold("list_domains")  # a real driver awaits each domain in turn: the host moves on
        return statuses

    async def status(self, vm_id: str) -> DomainStatus:
        status = self._status(vm_id, self._domain(vm_id))
        await self._maybe_hold("status")  # after the read, like list_domains: the host may move on meanwhile
        return status

    async def define(self, vm_id: str, spec: VmSpec) -> None:
        domain = self.host.domains.get(vm_id)
        if domain is None:
            self.host.domains[vm_id] = FakeDomain(spec)
        else:
            domain.spec = spec

    async def undefine(self, vm_id: str) -> None:
        domain = self.host.domains.get(vm_id)
        if domain is not None and domain.state not in (VmState.STOPPED, VmState.CRASHED):
            raise Conflict(f"domain {vm_id} is {domain.state.value}; stop it first")
        self.host.domains.pop(vm_id, None)

    async def start(self, vm_id: str, spec: VmSpec, boot: BootImage | None, *, restore: str | None = None
                    ) -> DomainStatus:
        domain = self._domain(vm_id)
        self._maybe_fail("start")
        if domain.state not in (VmState.STOPPED, VmState.CRASHED):
            raise Conflict(f"domain {vm_id} is already {domain.state.value}")
        self.host.next_pid += 1
        domain.spec, domain.state, domain.pid, domain.reason = spec, VmState.RUNNING, self.host.next_pid, ""
        domain.chains = [_chain(d) for d in spec.disks]
        if restore is not None and restore not in domain.memory_snapshots:
            raise DriverError("fake restore failed", f"no memory snapshot {restore}")
        source = f"memory snapshot {restore}" if restore else (boot.name if boot else "disk")
        boot_output = f"\n{BOOT_SEPARATOR} {spec.name}\nfake boot of {source}\n"
        domain.console += f"{boot_output}{READY_MARKER} hostname={spec.name} kernel=fake\n".encode()
        return self._status(vm_id, domain)

    def _require_live(self, vm_id: str, *states: VmState) -> FakeDomain:
        domain = self._domain(vm_id)
        if domain.state not in states:
            raise Conflict(f"domain {vm_id} is {domain.state.value}")
        return domain

    async def shutdown(self, vm_id: str, timeout: float) -> None:
        domain = self._require_live(vm_id, VmState.RUNNING)
        self._maybe_fail("shutdown")
        if domain.ignore_acpi:
            await asyncio.sleep(timeout)
            raise OperationTimeout(f"guest did not power off within {timeout:g}s")
        domain.state, domain.pid, domain.reason = VmState.STOPPED, None, "guest powered off"

    async def stop(self, vm_id: str) -> None:
        domain = self._domain(vm_id)
        self._maybe_fail("stop")
        domain.state, domain.pid, domain.reason = VmState.STOPPED, None, "powered off by the host"

    async def reboot(self, vm_id: str) -> None:
        domain = self._require_live(vm_id, VmState.RUNNING)
        domain.console += f"{READY_MARKER} hostname={domain.spec.name} kernel=fake\n".encode()

    async def pause(self, vm_id: str) -> None:
        self._require_live(vm_id, VmState.RUNNING).state = VmState.PAUSED

    async def resume(self, vm_id: str) -> None:
        self._require_live(vm_id, VmState.PAUSED).state = VmState.RUNNING

    async def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        await self._maybe_hold("attach_disk")
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        _require_hotplug(domain, "attach disks")
        if any(d.path == disk.path for d in domain.spec.disks):
            raise Conflict(f"{disk.path} is already attached")
        domain.spec = domain.spec.model_copy(update={"disks": [*domain.spec.disks, disk]})
        domain.chains.append(_chain(disk))

    async def detach_disk(self, vm_id: str, disk: DiskSpec, timeout: float) -> None:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        _require_hotplug(domain, "detach disks")
        remaining = [d for d in domain.spec.disks if d.path != disk.path]
        if len(remaining) == len(domain.spec.disks):
            raise NotFound("disk", disk.path or "")
        domain.spec = domain.spec.model_copy(update={"disks": remaining})
        domain.chains[:] = [chain for chain in domain.chains if str(disk.path) not in chain]

    async def attach_nic(self, vm_id: str, nic: NicSpec) -> None:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        _require_hotplug(domain, "add NICs")
        domain.spec = domain.spec.model_copy(update={"nics": [*domain.spec.nics, nic]})

    async def detach_nic(self, vm_id: str, nic: NicSpec, timeout: float) -> None:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        _require_hotplug(domain, "remove NICs")
        _require_nic(domain, nic)
        domain.spec = domain.spec.model_copy(update={"nics": [n for n in domain.spec.nics if n.mac != nic.mac]})

    async def set_link(self, vm_id: str, nic: NicSpec, up: bool) -> None:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        _require_nic(domain, nic)
        domain.links[nic.netdev_id] = up

    async def snapshot_disks(self, vm_id: str, overlays: list[tuple[str, str]]) -> None:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        self._maybe_fail("snapshot")
        tops = {chain[0]: chain for chain in domain.chains if chain}
        missing = [top for top, _ in overlays if top not in tops]
        if missing:  # all disks switch or none, like QEMU's transaction
            raise DriverError("fake snapshot failed", f"no disk has {missing[0]} as its active image")
        for top, overlay in overlays:
            tops[top].insert(0, overlay)
        domain.overlays.extend(overlays)

    async def commit_disk(self, vm_id: str, top: str, base: str, *, before_pivot: BeforePivot | None = None
                          ) -> None:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        self._maybe_fail("commit")
        chain = next((chain for chain in domain.chains if base in chain), None)
        if chain is None:
            raise DriverError("fake commit failed", f"no disk has {base} open")
        if top not in chain:
            return  # merged already
        if chain[0] == top and before_pivot is not None:
            await before_pivot()
        del chain[chain.index(top):chain.index(base)]

    async def disk_chains(self, vm_id: str) -> list[DiskChain]:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        return [tuple(OpenImage(path, tuple(sorted(domain.image_tags.get(path, ())))) for path in chain)
                for chain in domain.chains]

    async def settle_block_jobs(self, vm_id: str) -> list[str]:
        self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        return []  # the fake's block jobs end within the call that starts them

    async def release_images(self, vm_id: str, paths: list[str]) -> None:
        self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)

    async def memory_snapshot(self, vm_id: str, action: MemoryAction, tag: str, images: list[str]) -> None:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        if not images:
            raise DriverError("fake memory snapshot failed", "no qcow2 image to hold the VM state")
        if action == "save":
            self._maybe_fail("memory-save")
            domain.memory_snapshots.add(tag)
            for image in images:
                domain.image_tags.setdefault(image, set()).add(tag)
        elif tag not in domain.memory_snapshots:
            raise DriverError(f"fake memory snapshot {action} failed", f"no snapshot {tag}")
        elif action == "delete":
            domain.memory_snapshots.discard(tag)
            for image in images:
                domain.image_tags.get(image, set()).discard(tag)
        else:
            domain.console += f"restored memory snapshot {tag}\n".encode()

    async def usage(self, vm_id: str) -> UsageSample | None:
        domain = self._domain(vm_id)
        if domain.state not in (VmState.RUNNING, VmState.PAUSED):
            return None
        domain.ticks += 1  # counters that grow like a busy guest's, so rates are never zero
        n = domain.ticks
        return UsageSample(cpu_seconds=0.05 * n, memory_bytes=domain.spec.memory << 20, disk_read_bytes=4096 * n,
                           disk_write_bytes=8192 * n, net_rx_bytes=1000 * n, net_tx_bytes=500 * n)

    async def open_console(self, vm_id: str) -> ConsoleStreams:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        if domain.console_open:
            raise Conflict(f"the console of {vm_id} is already attached by another client")
        domain.console_open = True

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The fake guest echoes what it is sent, like a tty in cooked mode.
            try:
                while data := await reader.read(4096):
                    domain.console += data
                    writer.write(data)
                    await writer.drain()
            finally:
                domain.console_open = False

        return await _serve(echo)

    async def open_vnc(self, vm_id: str) -> ConsoleStreams:
        domain = self._require_live(vm_id, VmState.RUNNING, VmState.PAUSED)
        if domain.spec.display != "vnc":
            raise Conflict(f"domain {vm_id} has no graphical console: it was started with display 'none'")
        name = domain.spec.name.encode()
        return await _serve(lambda reader, writer: _fake_rfb(name, reader, writer))

    async def console_log(self, vm_id: str, max_bytes: int) -> bytes:
        return bytes(self._domain(vm_id).console[-max_bytes:])

    async def foreign_domains(self) -> list[ForeignDomain]:
        return sorted(self.host.foreign.values(), key=lambda domain: domain.name)

    async def take_over(self, name: str, vm_id: str, spec: VmSpec) -> None:
        if name in self.host.taken_over:
            raise Conflict(f"domain {name} is virtfleet's already")
        foreign = self.host.foreign.get(name)
        if foreign is None:
            raise NotFound("foreign domain", name)
        if not foreign.persistent:
            raise Conflict(f"domain {name} is transient: it has no definition that outlives it; define it first")
        if vm_id in self.host.domains:
            raise Conflict(f"a domain with id {vm_id} is virtfleet's already")
        if vm_id != foreign.uuid:
            raise InvalidSpec("vm_id", f"domain {name} has the uuid {foreign.uuid}: take it over under that id")
        self._maybe_fail("take_over")
        live = foreign.state in (VmState.RUNNING, VmState.PAUSED)
        if live:
            self.host.next_pid += 1
        domain = self.host.domains[vm_id] = FakeDomain(spec, foreign.state, self.host.next_pid if live else None,
                                                       "taken over" if live else "")
        if live:  # what the running domain has open: its disks as they were (the adopt registered each layer)
            domain.chains = [_chain(d) for d in spec.disks]
        del self.host.foreign[name]
        self.host.taken_over.add(name)
        self._on_change(vm_id)

    def watch(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        self.host.watchers.append((asyncio.get_running_loop(), on_change))

    async def close(self) -> None:
        self.host.watchers[:] = [w for w in self.host.watchers if w[1] is not self._on_change]


CAPABILITIES_OPTION = "capabilities"  # DriverConfig.extra: what the fake lacks, so tests see every refusal


def capabilities_from_json(text: str) -> Capabilities:
    """Full capabilities changed by a JSON object of fields, e.g. {"pause": false, "machines": ["q35"]}."""
    changes = json.loads(text) if text.strip() else {}
    if not isinstance(changes, dict):
        raise ValueError(f"fake driver capabilities: a JSON object of Capabilities fields, not {text!r}")
    known = {f.name for f in dataclasses.fields(Capabilities)}
    for name, value in changes.items():
        if name not in known:
            raise ValueError(f"fake driver capabilities: no capability '{name}' (known: {', '.join(sorted(known))})")
        if name == "machines":
            if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                raise ValueError("fake driver capabilities: machines is a list of machine types")
            changes[name] = tuple(value)
        elif not isinstance(value, bool):
            raise ValueError(f"fake driver capabilities: {name} is true or false")
    return dataclasses.replace(Capabilities(adopt=True), **changes)


def _chain(disk: DiskSpec) -> list[str]:
    """The images a disk has open once plugged: its own, then its backing chain."""
    return [str(disk.path), *(layer.path for layer in disk.backing_chain)]


def _require_nic(domain: FakeDomain, nic: NicSpec) -> None:
    if all(n.mac != nic.mac for n in domain.spec.nics):
        raise NotFound("NIC", str(nic.mac))


def _require_hotplug(domain: FakeDomain, action: str) -> None:
    if domain.spec.machine != "q35":
        raise Unsupported(f"microvm has no hot-plug bus: {action} while the VM is stopped, or use q35")


_BACKGROUND: set[asyncio.Task[None]] = set()

Guest = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(guest: Guest) -> ConsoleStreams:
    """A connected pair of streams: the caller gets one end, `guest` plays the other end in the background."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)

    async def run() -> None:
        try:
            await guest(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    task = asyncio.get_running_loop().create_task(run())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return await asyncio.open_connection(sock=theirs)


async def _fake_rfb(name: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Just enough of an RFB 3.8 server for a client to get through the handshake: security type None, one
    true-colour screen that never changes; what the client sends afterwards is read and ignored."""
    writer.write(b"RFB 003.008\n")
    await reader.readexactly(12)  # the client's protocol version
    writer.write(b"\x01\x01")  # one security type: None
    await reader.readexactly(1)
    writer.write(struct.pack(">I", 0))  # SecurityResult: OK
    await reader.readexactly(1)  # ClientInit (shared flag)
    pixel_format = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    writer.write(struct.pack(">HH", *FAKE_SCREEN) + pixel_format + struct.pack(">I", len(name)) + name)
    await writer.drain()
    while await reader.read(4096):
        pass
