"""The libvirt driver: each VM one persistent libvirt domain (q35), found by our <metadata>, watched by events.

libvirt holds the truth about a domain (defined, running, why it stopped); the run directory only keeps the serial
console's socket and history. The domain's name is the VM's name (what virsh users see); its identity is the vm id
in our metadata (and its UUID, derived from the id), so domains made by anyone else are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import libvirt

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
    UsageSample,
)
from virtfleet.drivers.libvirt import blocks, devices, domxml, foreign
from virtfleet.drivers.libvirt.connection import Connection
from virtfleet.drivers.libvirt.options import LibvirtOptions, parse_options
from virtfleet.drivers.libvirt.state import map_state
from virtfleet.drivers.qemu.accel import KvmProbe, choose_accel, probe_kvm
from virtfleet.drivers.qemu.firmware import find_uefi
from virtfleet.drivers.qemu.runtime import RunPaths, is_our_qemu, read_pid, read_tail
from virtfleet.errors import Conflict, DriverError, NotFound, OperationTimeout, Unsupported
from virtfleet.model.network import NicSpec
from virtfleet.model.vm import DiskSpec, VmSpec, VmState

log = logging.getLogger(__name__)
T = TypeVar("T")

_UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
_LIVE_AND_CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
_STATS = (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_BLOCK
          | libvirt.VIR_DOMAIN_STATS_INTERFACE)
_ACCEL = {"kvm": "kvm", "qemu": "tcg"}
LIBVIRT_CATCH_UP = 3.0  # seconds libvirt may take to notice that a QEMU process died


def _options(config: DriverConfig) -> LibvirtOptions:
    if not config.extra:
        return parse_options(None, dict(os.environ))
    return LibvirtOptions.model_validate(config.extra)


def _code(error: libvirt.libvirtError) -> int:
    return int(error.get_error_code() or 0)


def _parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)  # noqa: S314 - libvirt's own output, not user input


def _meta(root: ET.Element, owner: str) -> domxml.DomainMeta | None:
    """Our metadata, if the domain is this virtfleet's: another virtfleet on the same libvirtd (another data
    directory) has domains with our element too, and they are neither ours to manage nor anyone's to adopt."""
    holder = root.find("metadata")
    for element in holder if holder is not None else []:
        if (meta := domxml.read_metadata(element)) is not None:
            return meta if meta.owner == owner else None
    return None


class LibvirtDriver:
    name = "libvirt"

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.options = _options(config)
        self._connection = Connection(self.options, self._domain_event)
        self._vm_ids: dict[str, str] = {}  # libvirt UUID -> vm id, for events
        self._locks: dict[str, asyncio.Lock] = {}
        self._consoles: dict[str, asyncio.StreamWriter] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._kvm_probe: KvmProbe | None = None
        self._on_change: Callable[[str], None] = lambda vm_id: None
        self._owner = domxml.owner_of(self._paths("-"))

    # --- host ----------------------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        """What this URI can do: libvirt's mock (test://) runs no guest, so it has no console, display or
        counters, and takes no hot-plug; a remote libvirt's console and display sockets are on another host."""
        if self.options.scheme == "test":
            return Capabilities(console=False, vnc=False, usage=False, disk_hotplug=False, nic_hotplug=False,
                                link_state=False, snapshots=False, memory_snapshots=False, uefi=False, adopt=True,
                                machines=("q35",))
        # Snapshots read image headers (internal snapshot names) and UEFI needs the firmware descriptors: on
        # this host only, like the console and display sockets.
        local = self.options.local
        return Capabilities(console=local, vnc=local, snapshots=local, memory_snapshots=local,
                            uefi=local and find_uefi() is not None, adopt=True, machines=("q35",))

    @cached_property
    def _local_kvm(self) -> KvmProbe:
        return probe_kvm() if self.options.local else KvmProbe(True, "remote host: libvirt decides")

    def _kvm(self, conn: libvirt.virConnect) -> KvmProbe:
        if self._kvm_probe is None:
            self._kvm_probe = self._probe_kvm(conn)
        return self._kvm_probe

    def _probe_kvm(self, conn: libvirt.virConnect) -> KvmProbe:
        """KVM is usable when libvirt offers the kvm domain type for q35 and, on this host, the CPU really has
        hardware virtualization (the qemu driver's probe: a /dev/kvm without vmx/svm crashes guests)."""
        if self.options.scheme != "qemu":
            return KvmProbe(False, f"{self.options.uri} is libvirt's mock hypervisor: no KVM")
        try:
            conn.getDomainCapabilities(None, "x86_64", "q35", "kvm", 0)
        except libvirt.libvirtError as error:
            return KvmProbe(False, f"libvirt offers no kvm domains: {error.get_error_message()}")
        if not self._local_kvm.usable:
            return KvmProbe(False, f"libvirt offers kvm domains, but {self._local_kvm.reason}")
        return KvmProbe(True, f"libvirt offers kvm domains; {self._local_kvm.reason}")

    async def host_info(self) -> HostInfo:
        def read(conn: libvirt.virConnect) -> HostInfo:
            info = conn.getInfo()
            version = conn.getVersion()
            kvm = self._kvm(conn)
            major, minor, release = version // 1_000_000, version // 1000 % 1000, version % 1000
            return HostInfo(hostname=conn.getHostname(), cpus=int(info[2]), memory_mib=int(info[1]),
                            driver=self.name, hypervisor=f"{conn.getType()} {major}.{minor}.{release} via libvirt "
                            f"{libvirt.getVersion() // 1_000_000}.{libvirt.getVersion() // 1000 % 1000}",
                            kvm_usable=kvm.usable, kvm_reason=kvm.reason)

        return await self._call(read)

    # --- plumbing ------------------------------------------------------------------------------------------
    async def _call(self, action: Callable[[libvirt.virConnect], T]) -> T:
        """Run a blocking libvirt call off the event loop; libvirt errors become ours."""
        self._loop = asyncio.get_running_loop()
        try:
            return await asyncio.to_thread(self._connection.call, action)
        except libvirt.libvirtError as error:
            code = _code(error)
            message = error.get_error_message() or str(error)
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound("domain", message) from None
            if code == libvirt.VIR_ERR_OPERATION_INVALID:  # e.g. "domain is not running"
                raise Conflict(message) from None
            raise DriverError("libvirt refused", message) from None

    def _paths(self, vm_id: str) -> RunPaths:
        return RunPaths(self.config.run_dir / vm_id)

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _lookup(self, conn: libvirt.virConnect, vm_id: str) -> tuple[libvirt.virDomain, ET.Element,
                                                                       domxml.DomainMeta]:
        """Our domain for vm_id, its XML and metadata; NotFound when there is none (or the UUID is someone
        else's domain)."""
        try:
            domain = conn.lookupByUUIDString(domxml.domain_uuid(vm_id))
            root = _parse(domain.XMLDesc(0))
        except libvirt.libvirtError as error:
            if _code(error) == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound("domain", vm_id) from None
            raise
        meta = _meta(root, self._owner)
        if meta is None or meta.vm_id != vm_id:
            raise NotFound("domain", vm_id)
        self._vm_ids[domain.UUIDString()] = vm_id
        return domain, root, meta

    def _status(self, domain: libvirt.virDomain, root: ET.Element, meta: domxml.DomainMeta) -> DomainStatus:
        state_code, reason_code = domain.state()
        state, reason = map_state(state_code, reason_code)
        pid = None
        if state not in (VmState.STOPPED, VmState.CRASHED):
            pid, gone = self._pid(domain, meta.vm_id)
            # QEMU died and libvirt has not handled its end yet (it does so asynchronously): wait for its word
            # rather than report a dead domain as running.
            deadline = time.monotonic() + LIBVIRT_CATCH_UP
            while gone and time.monotonic() < deadline:
                time.sleep(0.05)
                state, reason = map_state(*domain.state())
                gone = state not in (VmState.STOPPED, VmState.CRASHED)
        if state in (VmState.STOPPED, VmState.CRASHED):
            return DomainStatus(meta.vm_id, state, None, reason, "", meta.spec)
        return DomainStatus(meta.vm_id, state, pid, reason, _ACCEL.get(root.get("type", ""), ""), meta.spec)

    def _pid(self, domain: libvirt.virDomain, vm_id: str) -> tuple[int | None, bool]:
        """(pid, gone) of the QEMU process of a running domain on this host: libvirt's pidfile, checked against
        the -uuid it was given. `gone`: the pidfile names a process that is no longer ours (dead). (None, False)
        for the mock and remote hosts."""
        if self.options.scheme != "qemu" or not self.options.local:
            return None, False
        run = Path("/run/libvirt/qemu") if self.options.uri.endswith("/system") else Path(
            os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")) / "libvirt/qemu/run"
        pid = read_pid(run / f"{domain.name()}.pid")
        if pid is None:
            return None, False
        if is_our_qemu(pid, domxml.domain_uuid(vm_id)):
            return pid, False
        return None, True

    def _domain_event(self, domain: libvirt.virDomain) -> None:
        """On libvirt's event thread: tell the agent, on its loop, which VM may have changed. No RPC here (the
        event thread must not wait on the daemon): a domain not seen yet is looked up from the loop."""
        uuid = domain.UUIDString()
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        vm_id = self._vm_ids.get(uuid)
        if vm_id is not None:
            loop.call_soon_threadsafe(self._on_change, vm_id)
        else:
            loop.call_soon_threadsafe(self._resolve_event, uuid)

    def _resolve_event(self, uuid: str) -> None:
        async def resolve() -> None:
            def find(conn: libvirt.virConnect) -> str | None:
                try:
                    meta = _meta(_parse(conn.lookupByUUIDString(uuid).XMLDesc(0)), self._owner)
                except libvirt.libvirtError:
                    return None  # gone already (undefined): nobody's to report
                if meta is None:
                    return None  # not ours
                self._vm_ids[uuid] = meta.vm_id
                return meta.vm_id

            with contextlib.suppress(DriverError):
                if (vm_id := await self._call(find)) is not None:
                    self._on_change(vm_id)

        task = asyncio.get_running_loop().create_task(resolve())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def watch(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    # --- observing -----------------------------------------------------------------------------------------
    async def recover(self) -> list[DomainStatus]:
        return await self.list_domains()

    async def list_domains(self) -> list[DomainStatus]:
        def read(conn: libvirt.virConnect) -> list[DomainStatus]:
            statuses = []
            for domain in conn.listAllDomains(0):
                try:
                    root = _parse(domain.XMLDesc(0))
                    meta = _meta(root, self._owner)
                    if meta is None:
                        continue  # not ours: someone else's domain
                    self._vm_ids[domain.UUIDString()] = meta.vm_id
                    statuses.append(self._status(domain, root, meta))
                except libvirt.libvirtError as error:
                    if _code(error) != libvirt.VIR_ERR_NO_DOMAIN:  # undefined while we looked: gone
                        raise
            return sorted(statuses, key=lambda status: status.vm_id)

        return await self._call(read)

    async def status(self, vm_id: str) -> DomainStatus:
        return await self._call(lambda conn: self._status(*self._lookup(conn, vm_id)))

    # --- definition ----------------------------------------------------------------------------------------
    def _run_as(self) -> tuple[int, int] | None:
        return (os.getuid(), os.getgid()) if self.options.scheme == "qemu" and self.options.local else None

    def _domain_type(self, conn: libvirt.virConnect, spec: VmSpec) -> tuple[domxml.DomainType, str, str]:
        """(libvirt domain type, accel, warning): the qemu driver's choice (accel field, KVM probe)."""
        accel, warning = choose_accel(spec.accel, self._kvm(conn))
        return ("kvm" if accel == "kvm" else "qemu"), accel, warning

    def _define_xml(self, conn: libvirt.virConnect, vm_id: str, name: str,
                    xml_for: Callable[[str], str]) -> libvirt.virDomain:
        """defineXML under the VM's `name`. libvirt renames inactive domains only: an inactive one is renamed
        first, a running one keeps its name until it next stops."""
        with contextlib.suppress(NotFound):
            domain, _, _ = self._lookup(conn, vm_id)
            if domain.isActive():
                name = domain.name()
            elif domain.name() != name:
                domain.rename(name, 0)
        try:
            return conn.defineXML(xml_for(name))
        except libvirt.libvirtError as error:
            if "already exists" in (error.get_error_message() or ""):
                raise Conflict(f"libvirt already has another domain named {name!r}: "
                               f"{error.get_error_message()}") from None
            raise

    async def define(self, vm_id: str, spec: VmSpec) -> None:
        paths = self._paths(vm_id)
        await asyncio.to_thread(paths.root.mkdir, parents=True, exist_ok=True, mode=0o700)

        def define(conn: libvirt.virConnect) -> None:
            domain_type, _, _ = self._domain_type(conn, spec)
            # Devices not resolved yet (a NIC's tap, a disk's chain) come with the start spec; what is known now
            # is defined, so virsh shows the VM as it will run.
            devices = spec.model_copy(update={
                "disks": [disk for disk in spec.disks if disk.path is not None],
                "nics": [nic for nic in spec.nics if nic.tap is not None or nic.user_mode],
            })

            def xml_for(name: str) -> str:
                return domxml.build_domain_xml(vm_id, devices.model_copy(update={"name": name}), None, paths,
                                               domain_type, defined_spec=spec, run_as=self._run_as())

            self._define_xml(conn, vm_id, spec.name, xml_for)

        await self._call(define)

    async def undefine(self, vm_id: str) -> None:
        def undefine(conn: libvirt.virConnect) -> None:
            try:
                domain, _, _ = self._lookup(conn, vm_id)
            except NotFound:
                return
            if domain.isActive():
                raise Conflict(f"domain {vm_id} is running; stop it first")
            try:
                domain.undefineFlags(_UNDEFINE_FLAGS)
            except libvirt.libvirtError as error:
                if _code(error) != libvirt.VIR_ERR_NO_SUPPORT and _code(error) != libvirt.VIR_ERR_INVALID_ARG:
                    raise
                domain.undefine()  # a hypervisor that knows none of these (libvirt's mock) has none of them

        await self._call(undefine)
        self._consoles.pop(vm_id, None)
        await asyncio.to_thread(shutil.rmtree, self._paths(vm_id).root, True)

    # --- power ---------------------------------------------------------------------------------------------
    async def start(self, vm_id: str, spec: VmSpec, boot: BootImage | None, *, restore: str | None = None
                    ) -> DomainStatus:
        paths = self._paths(vm_id)
        async with self._lock(vm_id):
            def prepare(conn: libvirt.virConnect) -> tuple[libvirt.virDomain, str, str]:
                domain, _, meta = self._lookup(conn, vm_id)
                if domain.isActive():
                    raise Conflict(f"domain {vm_id} is already running")
                domain_type, accel, warning = self._domain_type(conn, spec)

                def xml_for(name: str) -> str:
                    return domxml.build_domain_xml(vm_id, spec.model_copy(update={"name": name}), boot, paths,
                                                   domain_type, defined_spec=meta.spec, run_as=self._run_as())

                return self._define_xml(conn, vm_id, spec.name, xml_for), accel, warning

            _, accel, warning = await self._call(prepare)
            if warning:
                log.warning("vm %s: %s", spec.name, warning)
            await asyncio.to_thread(self._prepare_run_dir, paths, spec)
            if restore is None:
                await self._call(lambda conn: self._lookup(conn, vm_id)[0].create())
            else:  # resume the saved RAM and devices instead of booting
                await blocks.memory_snapshot(await self._domain(vm_id, "memory_snapshots"), "load", restore, [])
            status = await self.status(vm_id)
            return DomainStatus(vm_id, status.state, status.pid, warning, accel, status.spec)

    def _prepare_run_dir(self, paths: RunPaths, spec: VmSpec) -> None:
        paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in (paths.console, paths.vnc):
            stale.unlink(missing_ok=True)
        # The console history spans boots (virtlogd appends); a separator lets readers find where this boot starts.
        with paths.console_log.open("ab") as history:
            history.write(f"\n{BOOT_SEPARATOR} {spec.name} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())

    async def _running(self, vm_id: str) -> None:
        def check(conn: libvirt.virConnect) -> None:
            if not self._lookup(conn, vm_id)[0].isActive():
                raise Conflict(f"domain {vm_id} is not running")

        await self._call(check)

    async def _wait_state(self, vm_id: str, done: Callable[[VmState], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done((await self.status(vm_id)).state):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def shutdown(self, vm_id: str, timeout: float) -> None:
        await self._running(vm_id)
        async with self._lock(vm_id):
            def power_button(conn: libvirt.virConnect) -> None:
                domain = self._lookup(conn, vm_id)[0]
                try:
                    domain.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                except libvirt.libvirtError as error:
                    if _code(error) not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
                        raise
                    domain.shutdown()  # libvirt's mock knows no flags

            await self._call(power_button)
            if not await self._wait_state(vm_id, lambda state: state in (VmState.STOPPED, VmState.CRASHED),
                                          timeout):
                raise OperationTimeout(f"guest did not power off within {timeout:g}s")

    async def stop(self, vm_id: str) -> None:
        def destroy(conn: libvirt.virConnect) -> None:
            domain = self._lookup(conn, vm_id)[0]
            if not domain.isActive():
                return
            try:
                domain.destroy()
            except libvirt.libvirtError as error:
                if _code(error) != libvirt.VIR_ERR_OPERATION_INVALID:  # it went down by itself meanwhile
                    raise

        async with self._lock(vm_id):
            await self._call(destroy)

    async def reboot(self, vm_id: str) -> None:
        def reset(conn: libvirt.virConnect) -> None:
            domain = self._lookup(conn, vm_id)[0]
            try:
                domain.reset(0)  # a hard reset, like the qemu driver's system_reset
            except libvirt.libvirtError as error:
                if _code(error) != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                domain.reboot(0)

        await self._running(vm_id)
        await self._call(reset)

    async def pause(self, vm_id: str) -> None:
        await self._running(vm_id)
        await self._call(lambda conn: self._lookup(conn, vm_id)[0].suspend())

    async def resume(self, vm_id: str) -> None:
        await self._running(vm_id)
        await self._call(lambda conn: self._lookup(conn, vm_id)[0].resume())

    # --- devices -------------------------------------------------------------------------------------------
    def _require(self, capability: str, what: str) -> None:
        """The driver's own last check (services refuse before a job exists: jobs/capability_check.py)."""
        if not getattr(self.capabilities(), capability):
            raise Unsupported(f"{capability}: {self.options.uri} cannot {what}", capability=capability)

    def _require_hotplug(self, capability: str) -> None:
        self._require(capability, "hot-plug devices")

    async def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        self._require_hotplug("disk_hotplug")
        if disk.bus != "virtio-blk":
            raise Unsupported("only virtio-blk disks can be hot-plugged; attach virtio-scsi disks while stopped")

        def attach(conn: libvirt.virConnect) -> None:
            domain, root, _ = self._lookup(conn, vm_id)
            if not domain.isActive():
                raise Conflict(f"domain {vm_id} is not running")
            dev = devices.free_target([root, _parse(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))], disk.bus)
            domain.attachDeviceFlags(ET.tostring(domxml.disk_element(disk, dev), encoding="unicode"),
                                     _LIVE_AND_CONFIG)

        async with self._lock(vm_id):
            await self._call(attach)

    async def detach_disk(self, vm_id: str, disk: DiskSpec, timeout: float) -> None:
        self._require_hotplug("disk_hotplug")
        async with self._lock(vm_id):  # found by the file it opens: target names change as disks come and go
            await self._detach(vm_id, devices.disk_by_file(disk.path), timeout, str(disk.volume or disk.path))

    async def _detach(self, vm_id: str, find: devices.Finder, timeout: float, what: str) -> None:
        def request(conn: libvirt.virConnect) -> None:
            domain, root, _ = self._lookup(conn, vm_id)
            if not domain.isActive():
                raise Conflict(f"domain {vm_id} is not running")
            config = find(_parse(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
            if config is not None:
                domain.detachDeviceFlags(ET.tostring(config, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            live = find(root)
            if live is None:
                raise NotFound("device", what)
            domain.detachDeviceFlags(ET.tostring(live, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)

        def released(conn: libvirt.virConnect) -> bool:
            return find(_parse(self._lookup(conn, vm_id)[0].XMLDesc(0))) is None

        await self._call(request)
        deadline = time.monotonic() + timeout
        while not await self._call(released):  # hot-unplug goes through the guest's ACPI handling
            if time.monotonic() >= deadline:
                raise OperationTimeout(f"the guest did not release {what} within {timeout:g}s")
            await asyncio.sleep(0.2)

    async def attach_nic(self, vm_id: str, nic: NicSpec) -> None:
        self._require_hotplug("nic_hotplug")
        xml = ET.tostring(domxml.nic_element(nic), encoding="unicode")

        def attach(conn: libvirt.virConnect) -> None:
            domain = self._lookup(conn, vm_id)[0]
            if not domain.isActive():
                raise Conflict(f"domain {vm_id} is not running")
            domain.attachDeviceFlags(xml, _LIVE_AND_CONFIG)

        async with self._lock(vm_id):
            await self._call(attach)

    async def detach_nic(self, vm_id: str, nic: NicSpec, timeout: float) -> None:
        self._require_hotplug("nic_hotplug")
        async with self._lock(vm_id):
            await self._detach(vm_id, devices.nic_by_mac(nic.mac), timeout, f"NIC {nic.mac}")

    async def set_link(self, vm_id: str, nic: NicSpec, up: bool) -> None:
        self._require_hotplug("link_state")
        find = devices.nic_by_mac(nic.mac)

        def update(conn: libvirt.virConnect) -> None:
            domain, root, _ = self._lookup(conn, vm_id)
            if not domain.isActive():
                raise Conflict(f"domain {vm_id} is not running")
            interface = find(root)
            if interface is None:
                raise NotFound("NIC", str(nic.mac))
            domain.updateDeviceFlags(devices.with_link(interface, up), libvirt.VIR_DOMAIN_AFFECT_LIVE)

        await self._call(update)

    # --- snapshots (drivers/libvirt/blocks.py) ----------------------------------------------------------
    async def _domain(self, vm_id: str, capability: str = "snapshots") -> libvirt.virDomain:
        self._require(capability, "snapshot disks" if capability == "snapshots" else "snapshot memory")
        return await self._call(lambda conn: self._lookup(conn, vm_id)[0])

    async def snapshot_disks(self, vm_id: str, overlays: list[tuple[str, str]]) -> None:
        await blocks.snapshot_disks(await self._domain(vm_id), overlays)

    async def commit_disk(self, vm_id: str, top: str, base: str, *, before_pivot: BeforePivot | None = None
                          ) -> None:
        await blocks.commit_disk(await self._domain(vm_id), top, base, before_pivot=before_pivot)

    async def disk_chains(self, vm_id: str) -> list[DiskChain]:
        return await blocks.disk_chains(await self._domain(vm_id))

    async def settle_block_jobs(self, vm_id: str) -> list[str]:
        return await blocks.settle_block_jobs(await self._domain(vm_id))

    async def release_images(self, vm_id: str, paths: list[str]) -> None:
        await blocks.release_images(await self._domain(vm_id), paths)

    async def memory_snapshot(self, vm_id: str, action: MemoryAction, tag: str, images: list[str]) -> None:
        await blocks.memory_snapshot(await self._domain(vm_id, "memory_snapshots"), action, tag, images)

    # --- adopting domains made by others (drivers/libvirt/foreign.py) ---------------------------------------
    async def foreign_domains(self) -> list[ForeignDomain]:
        return await self._call(foreign.list_foreign)

    async def take_over(self, name: str, vm_id: str, spec: VmSpec) -> None:
        await self._call(lambda conn: foreign.take_over(conn, name, vm_id, spec, self._owner))

    # --- usage and consoles --------------------------------------------------------------------------------
    async def usage(self, vm_id: str) -> UsageSample | None:
        if not self.capabilities().usage:
            return None

        def read(conn: libvirt.virConnect) -> UsageSample | None:
            domain = self._lookup(conn, vm_id)[0]
            if not domain.isActive():
                return None
            records = conn.domainListGetStats([domain], _STATS, 0)
            if not records:
                return None
            return devices.usage_from_stats(records[0][1])

        return await self._call(read)

    async def open_console(self, vm_id: str) -> ConsoleStreams:
        if not self.capabilities().console:
            raise Unsupported(f"console: {self.options.uri} has no serial console this host can reach")
        await self._running(vm_id)
        attached = self._consoles.get(vm_id)
        if attached is not None and not attached.is_closing():
            raise Conflict(f"the console of {vm_id} is already attached by another client")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self._paths(vm_id).console)), 5.0)
        except (OSError, TimeoutError) as exc:
            raise DriverError("cannot attach to the serial console", str(exc) or type(exc).__name__) from exc
        self._consoles[vm_id] = writer
        return reader, writer

    async def open_vnc(self, vm_id: str) -> ConsoleStreams:
        def graphics(conn: libvirt.virConnect) -> bool:
            domain, root, _ = self._lookup(conn, vm_id)
            if not domain.isActive():
                raise Conflict(f"domain {vm_id} is not running")
            # What the running domain was started with decides, not the spec on record.
            return root.find("devices/graphics[@type='vnc']") is not None

        if not await self._call(graphics):
            raise Conflict(f"domain {vm_id} has no graphical console: it was started with display 'none'")
        if not self.capabilities().vnc:
            raise Unsupported(f"vnc: {self.options.uri} has no graphical console this host can reach")
        try:
            return await asyncio.wait_for(asyncio.open_unix_connection(str(self._paths(vm_id).vnc)), 5.0)
        except (OSError, TimeoutError) as exc:
            raise DriverError("cannot attach to the graphical console", str(exc) or type(exc).__name__) from exc

    async def console_log(self, vm_id: str, max_bytes: int) -> bytes:
        await self.status(vm_id)  # NotFound for a domain that is not ours
        return await asyncio.to_thread(read_tail, self._paths(vm_id).console_log, max_bytes)

    async def close(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)
        for writer in self._consoles.values():
            writer.close()
        self._consoles.clear()
        await asyncio.to_thread(self._connection.close)
