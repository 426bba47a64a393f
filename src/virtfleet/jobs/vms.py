"""VM operations: validate -> lock -> check state -> run as a job against the driver.

Checks that can fail fast (unknown VM, busy, wrong state, bad spec) raise before a job exists, so the caller gets a
409/422 at once; only the work that touches the hypervisor runs inside the job.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from virtfleet.drivers.base import ConsoleStreams, DomainStatus, Driver
from virtfleet.errors import Conflict, NotFound, OperationTimeout, VirtfleetError
from virtfleet.images.catalog import ImageCatalog
from virtfleet.jobs.networks import NetworkService
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.jobs.vm_disks import DiskResolver
from virtfleet.model.job import Event, Job
from virtfleet.model.network import NicSpec
from virtfleet.model.vm import DiskSpec, Vm, VmOperation, VmSpec, VmState, is_live, require
from virtfleet.store.db import Database

DEFAULT_SHUTDOWN_TIMEOUT = 60.0


class VmService:
    def __init__(
        self,
        db: Database,
        driver: Driver,
        runner: JobRunner,
        images: ImageCatalog,
        *,
        host: str,
        disks: DiskResolver,
        networks: NetworkService,
    ) -> None:
        self.db = db
        self.driver = driver
        self.runner = runner
        self.images = images
        self.host = host
        self.disks = disks
        self.networks = networks

    # --- reads -----------------------------------------------------------------------------------------------
    def get(self, ref: str) -> Vm:
        return self.db.get_vm(ref)

    def list_all(self) -> list[Vm]:
        return self.db.list_vms()

    def events(self, ref: str, limit: int = 100) -> list[Event]:
        return self.db.list_events(self.db.get_vm(ref).id, limit)

    async def logs(self, ref: str, max_bytes: int) -> bytes:
        vm = self.db.get_vm(ref)
        try:
            return await self.driver.console_log(vm.id, max_bytes)
        except VirtfleetError:
            return b""  # never started on this host: no history yet

    # --- create ----------------------------------------------------------------------------------------------
    def create(self, spec: VmSpec) -> Vm:
        spec = self.networks.resolve(self.disks.resolve(spec))
        self.images.check_spec(spec)
        return self.db.add_vm(spec, self.host)

    # --- state changes ---------------------------------------------------------------------------------------
    def _submit(self, ref: str, operation: VmOperation, work: Callable[[Vm, JobContext], Awaitable[str]]) -> Job:
        vm = self.db.get_vm(ref)
        label = f"vm '{vm.name}'"
        self.runner.check_free(vm.id, label)
        require(operation, vm.state, label)

        async def guarded(context: JobContext) -> str:
            try:
                return await work(vm, context)
            except BaseException:
                await self._resync(vm)  # whatever failed, the record shows what the host really runs
                raise

        return self.runner.submit(f"vm.{operation.value}", vm.id, label, guarded)

    async def _resync(self, vm: Vm) -> None:
        try:
            status = await self.driver.status(vm.id)
        except VirtfleetError:
            status = DomainStatus(vm.id, VmState.STOPPED, reason="not defined on the host")
        if self.db.get_vm(vm.id).state is not status.state:
            self.db.set_vm_state(vm.id, status.state, status.reason or "re-read from the host")

    def _record(self, vm: Vm, status: DomainStatus, kind: str, message: str) -> None:
        accel = status.accel if status.state in (VmState.RUNNING, VmState.PAUSED) else None
        self.db.set_vm_state(vm.id, status.state, message, accel=accel)
        self.db.add_event(vm.id, kind, message)

    def start(self, ref: str) -> Job:
        vm = self.db.get_vm(ref)
        if vm.template:
            raise Conflict(f"vm '{vm.name}' is a template and never runs; create a VM from it "
                           "(vm create NAME --from-template " + vm.name + ")")
        async def work(vm: Vm, context: JobContext) -> str:
            boot = self.images.boot_image(vm.spec)
            self.db.set_vm_state(vm.id, VmState.STARTING, "starting")
            context.progress(10, f"starting with image {boot.name}" if boot else "starting from its disks")
            await self.driver.define(vm.id, vm.spec)
            try:
                status = await self.driver.start(vm.id, self.boot_spec(vm), boot)
            except VirtfleetError as error:
                self.db.add_event(vm.id, "start-failed", error.message)
                raise
            for nic in vm.spec.nics:
                if not nic.link_up:
                    await self.driver.set_link(vm.id, nic, False)
            detail = f"started with {status.accel or 'unknown accel'} (pid {status.pid})"
            if status.reason:
                detail += f"; {status.reason}"
            self._record(vm, status, "started", detail)
            return detail

        return self._submit(ref, VmOperation.START, work)

    def shutdown(self, ref: str, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, force: bool = True) -> Job:
        async def work(vm: Vm, context: JobContext) -> str:
            self.db.set_vm_state(vm.id, VmState.STOPPING, "ACPI power button pressed")
            context.progress(10, f"waiting up to {timeout:g}s for the guest to power off")
            try:
                await self.driver.shutdown(vm.id, timeout)
                message = "guest powered off (ACPI shutdown)"
            except OperationTimeout:
                if not force:
                    raise
                self.db.add_event(vm.id, "shutdown-timeout", f"guest still up after {timeout:g}s; forcing off")
                context.progress(80, "guest did not power off; forcing")
                await self.driver.stop(vm.id)
                message = f"forced off after the guest ignored ACPI shutdown for {timeout:g}s"
            self._record(vm, await self.driver.status(vm.id), "stopped", message)
            return message

        return self._submit(ref, VmOperation.SHUTDOWN, work)

    def stop(self, ref: str) -> Job:
        async def work(vm: Vm, context: JobContext) -> str:
            await self.driver.stop(vm.id)
            message = "powered off by force"
            self._record(vm, await self.driver.status(vm.id), "stopped", message)
            return message

        return self._submit(ref, VmOperation.STOP, work)

    def _simple(self, ref: str, operation: VmOperation, call: Callable[[str], Awaitable[None]], done: str) -> Job:
        async def work(vm: Vm, context: JobContext) -> str:
            await call(vm.id)
            self._record(vm, await self.driver.status(vm.id), operation.value, done)
            return done

        return self._submit(ref, operation, work)

    def reboot(self, ref: str) -> Job:
        return self._simple(ref, VmOperation.REBOOT, self.driver.reboot, "reset (hard reboot)")

    def pause(self, ref: str) -> Job:
        return self._simple(ref, VmOperation.PAUSE, self.driver.pause, "paused: vCPUs stopped")

    def resume(self, ref: str) -> Job:
        return self._simple(ref, VmOperation.RESUME, self.driver.resume, "resumed")

    def boot_spec(self, vm: Vm) -> VmSpec:
        """What QEMU runs: disks with their checked chains and the seed disk, NICs with their taps."""
        spec = self.disks.boot_spec(vm)
        return spec.model_copy(update={"nics": self.networks.boot_nics(vm)})

    # --- NICs ------------------------------------------------------------------------------------------------
    def _find_nic(self, vm: Vm, mac: str) -> NicSpec:
        nic = next((n for n in vm.spec.nics if n.mac == mac.lower()), None)
        if nic is None:
            raise NotFound("NIC", f"{mac} on vm '{vm.name}'")
        return nic

    def attach_nic(self, ref: str, nic: NicSpec) -> Job:
        vm = self.db.get_vm(ref)
        spec = self.networks.resolve(vm.spec.model_copy(update={"nics": [*vm.spec.nics, nic]}), vm_name=vm.name)
        added = spec.nics[-1]

        async def work(vm: Vm, context: JobContext) -> str:
            if is_live(vm.state):
                await self.driver.attach_nic(vm.id, await asyncio.to_thread(self.networks.plug, vm.id, added))
            self.db.update_vm_spec(vm.id, spec)
            await self.driver.define(vm.id, spec)
            where = "hot-plugged into the running VM" if is_live(vm.state) else "added for the next start"
            message = f"NIC {added.mac} on {added.network} {where}"
            self.db.add_event(vm.id, "nic-attached", message)
            return message

        return self._submit(ref, VmOperation.ATTACH_NIC, work)

    def detach_nic(self, ref: str, mac: str, timeout: float = 30.0) -> Job:
        vm = self.db.get_vm(ref)
        nic = self._find_nic(vm, mac)
        spec = vm.spec.model_copy(update={"nics": [n for n in vm.spec.nics if n.mac != nic.mac]})

        async def work(vm: Vm, context: JobContext) -> str:
            if is_live(vm.state):
                await self.driver.detach_nic(vm.id, nic, timeout)
            await asyncio.to_thread(self.networks.unplug, vm.id, nic)
            self.db.update_vm_spec(vm.id, spec)
            await self.driver.define(vm.id, spec)
            message = f"removed NIC {nic.mac} from {nic.network}"
            self.db.add_event(vm.id, "nic-detached", message)
            return message

        return self._submit(ref, VmOperation.DETACH_NIC, work)

    def set_link(self, ref: str, mac: str, up: bool) -> Job:
        vm = self.db.get_vm(ref)
        nic = self._find_nic(vm, mac)
        spec = vm.spec.model_copy(update={"nics": [n.model_copy(update={"link_up": up}) if n.mac == nic.mac else n
                                                   for n in vm.spec.nics]})

        async def work(vm: Vm, context: JobContext) -> str:
            if is_live(vm.state):
                await self.driver.set_link(vm.id, nic, up)
            self.db.update_vm_spec(vm.id, spec)
            message = f"link of NIC {nic.mac} {'up' if up else 'down'}"
            self.db.add_event(vm.id, "link", message)
            return message

        return self._submit(ref, VmOperation.SET_LINK, work)

    # --- disks -----------------------------------------------------------------------------------------------
    def attach_disk(self, ref: str, disk: DiskSpec) -> Job:
        """Attach a disk: hot-plugged into a running q35 VM, or recorded for the next start of a stopped one."""
        vm = self.db.get_vm(ref)
        field = f"disks[{len(vm.spec.disks)}]"
        spec = self.disks.resolve(vm.spec.model_copy(update={"disks": [*vm.spec.disks, disk]}), vm_name=vm.name)
        resolved = spec.disks[-1]
        label = resolved.volume or resolved.path

        async def work(vm: Vm, context: JobContext) -> str:
            if is_live(vm.state):
                chain = self.disks.chain_of(resolved, field)
                await self.driver.attach_disk(vm.id, resolved.model_copy(update={"backing_chain": chain}))
            self.db.update_vm_spec(vm.id, spec)
            await self.driver.define(vm.id, spec)
            where = "hot-plugged into the running VM" if is_live(vm.state) else "attached for the next start"
            self.db.add_event(vm.id, "disk-attached", f"{label} {where}")
            return f"{label} {where}"

        return self._submit(ref, VmOperation.ATTACH_DISK, work)

    def detach_disk(self, ref: str, disk_ref: str, timeout: float = 30.0) -> Job:
        vm = self.db.get_vm(ref)
        # A volume POOL/NAME, NAME in the default pool, or a path (a URL path arrives without its leading slash).
        wanted = {disk_ref, f"default/{disk_ref}", f"/{disk_ref}"}
        disk = next((d for d in vm.spec.disks if d.volume in wanted or d.path in wanted), None)
        if disk is None:
            raise NotFound("disk", f"{disk_ref} on vm '{vm.name}'")
        spec = vm.spec.model_copy(update={"disks": [d for d in vm.spec.disks if d is not disk]})

        async def work(vm: Vm, context: JobContext) -> str:
            if is_live(vm.state):
                context.progress(20, "waiting for the guest to release the disk")
                await self.driver.detach_disk(vm.id, disk, timeout)
            self.db.update_vm_spec(vm.id, spec)
            await self.driver.define(vm.id, spec)
            message = f"detached {disk.volume or disk.path}"
            self.db.add_event(vm.id, "disk-detached", message)
            return message

        return self._submit(ref, VmOperation.DETACH_DISK, work)

    # --- console ---------------------------------------------------------------------------------------------
    async def open_console(self, ref: str) -> tuple[Vm, ConsoleStreams]:
        vm = self.db.get_vm(ref)
        require(VmOperation.CONSOLE, vm.state, f"vm '{vm.name}'")
        return vm, await self.driver.open_console(vm.id)

    async def open_vnc(self, ref: str) -> tuple[Vm, ConsoleStreams]:
        vm = self.db.get_vm(ref)
        require(VmOperation.CONSOLE, vm.state, f"vm '{vm.name}'")
        if vm.spec.display != "vnc":
            raise Conflict(f"vm '{vm.name}' has no graphical console: its spec has display '{vm.spec.display}' "
                           "(a VM created with display 'vnc' on machine q35 has one)")
        return vm, await self.driver.open_vnc(vm.id)


def host_name() -> str:
    return os.uname().nodename
