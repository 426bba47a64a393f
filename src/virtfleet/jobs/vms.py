"""VM operations: validate -> lock -> check state -> run as a job against the driver.

Checks that can fail fast (unknown VM, busy, wrong state, bad spec, an operation this host's driver cannot do)
raise before a job exists, so the caller gets a 409/422/501 at once; only the work that touches the hypervisor
runs inside the job. A job locks the VM and the volumes it touches, and checks the state (and what the driver can
do with the VM in that state) again once it runs, on the VM as it is then.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping

from virtfleet.drivers.base import ConsoleStreams, DomainStatus, Driver
from virtfleet.errors import Conflict, NotFound, OperationTimeout, VirtfleetError
from virtfleet.images.catalog import ImageCatalog
from virtfleet.jobs import capability_check
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
        capability_check.require(self.driver, "console", what=f"read the console history of vm '{vm.name}'")
        try:
            return await self.driver.console_log(vm.id, max_bytes)
        except VirtfleetError:
            return b""  # never started on this host: no history yet

    # --- create ----------------------------------------------------------------------------------------------
    def create(self, spec: VmSpec, *, within: Job | None = None) -> Vm:
        """Record a new VM; `within`: on behalf of that job (a clone from a template), which may hold its volumes."""
        spec = self.networks.resolve(self.disks.resolve(spec))
        self.images.check_spec(spec)
        capability_check.check_spec(self.driver, spec, what=f"create vm '{spec.name}'")
        self.runner.check_all_free(self.disks.locks(spec.disks), within=within)  # e.g. a volume being deleted
        return self.db.add_vm(spec, self.host)

    # --- state changes ---------------------------------------------------------------------------------------
    def _submit(self, ref: str, operation: VmOperation, work: Callable[[Vm, JobContext], Awaitable[str]], *,
                locks: Mapping[str, str] | None = None, capable: Callable[[Vm], None] | None = None) -> Job:
        """`capable`: raises Unsupported when this host cannot do the operation on the VM as it is (its state
        decides, e.g., whether a disk is hot-plugged); checked with the state, before the job and in it."""
        vm = self.db.get_vm(ref)
        label = f"vm '{vm.name}'"
        self.runner.check_free(vm.id, label)
        require(operation, vm.state, label)
        if capable is not None:
            capable(vm)

        async def guarded(context: JobContext) -> str:
            current = self.db.get_vm(vm.id)
            require(operation, current.state, label)  # again, now that the locks are held
            if capable is not None:
                capable(current)
            try:
                return await work(current, context)
            except BaseException:
                await self._resync(current)  # whatever failed, the record shows what the host really runs
                raise

        return self.runner.submit(f"vm.{operation.value}", vm.id, label, guarded, locks=locks)

    async def _resync(self, vm: Vm) -> None:
        await resync_state(self.db, self.driver, vm.id)

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
                status = await self.driver.start(vm.id, await asyncio.to_thread(self.boot_spec, vm), boot)
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

        def capable(vm: Vm) -> None:  # a VM recorded under another driver may need what this one lacks
            capability_check.check_spec(self.driver, vm.spec, what=f"start vm '{vm.name}'")

        return self._submit(ref, VmOperation.START, work, capable=capable)

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

        return self._submit(ref, VmOperation.SHUTDOWN, work,
                            capable=self._needs("acpi_shutdown", "shut down {vm} by ACPI (stop powers it off)"))

    def stop(self, ref: str) -> Job:
        async def work(vm: Vm, context: JobContext) -> str:
            await self.driver.stop(vm.id)
            message = "powered off by force"
            self._record(vm, await self.driver.status(vm.id), "stopped", message)
            return message

        return self._submit(ref, VmOperation.STOP, work)

    def _needs(self, capability: capability_check.Flag, what: str) -> Callable[[Vm], None]:
        """A `capable` check of one capability; "{vm}" in `what` stands for the VM."""
        def capable(vm: Vm) -> None:
            capability_check.require(self.driver, capability, what=what.replace("{vm}", f"vm '{vm.name}'"))

        return capable

    def _simple(self, ref: str, operation: VmOperation, call: Callable[[str], Awaitable[None]], done: str,
                capable: Callable[[Vm], None]) -> Job:
        async def work(vm: Vm, context: JobContext) -> str:
            await call(vm.id)
            self._record(vm, await self.driver.status(vm.id), operation.value, done)
            return done

        return self._submit(ref, operation, work, capable=capable)

    def reboot(self, ref: str) -> Job:
        return self._simple(ref, VmOperation.REBOOT, self.driver.reboot, "reset (hard reboot)",
                            self._needs("reboot", "reboot {vm}"))

    def pause(self, ref: str) -> Job:
        return self._simple(ref, VmOperation.PAUSE, self.driver.pause, "paused: vCPUs stopped",
                            self._needs("pause", "pause {vm}"))

    def resume(self, ref: str) -> Job:
        return self._simple(ref, VmOperation.RESUME, self.driver.resume, "resumed", self._needs("pause", "resume {vm}"))

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

        def capable(vm: Vm) -> None:
            what = f"add a NIC to vm '{vm.name}'"
            if is_live(vm.state):
                capability_check.require(self.driver, "nic_hotplug", what=what, spec=vm.spec)
            if not added.link_up:  # pulled at each start, and now when hot-plugged
                capability_check.require(self.driver, "link_state", what=f"{what} with its link down")

        return self._submit(ref, VmOperation.ATTACH_NIC, work, capable=capable)

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

        def capable(vm: Vm) -> None:
            if is_live(vm.state):
                capability_check.require(self.driver, "nic_hotplug", what=f"remove a NIC from vm '{vm.name}'",
                                         spec=vm.spec)

        return self._submit(ref, VmOperation.DETACH_NIC, work, capable=capable)

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

        # Always: a running VM's cable is plugged or pulled now, a stopped VM's at each start.
        return self._submit(ref, VmOperation.SET_LINK, work,
                            capable=self._needs("link_state", f"set the link of NIC {nic.mac} of {{vm}}"))

    # --- disks -----------------------------------------------------------------------------------------------
    def attach_disk(self, ref: str, disk: DiskSpec) -> Job:
        """Attach a disk: hot-plugged into a running q35 VM, or recorded for the next start of a stopped one."""
        vm = self.db.get_vm(ref)
        field = f"disks[{len(vm.spec.disks)}]"
        resolved = self.disks.with_disk(vm, disk).disks[-1]
        label = resolved.volume or resolved.path

        async def work(vm: Vm, context: JobContext) -> str:
            spec = self.disks.with_disk(vm, disk)  # again under the locks: still there, still free, still allowed?
            resolved = spec.disks[-1]
            # Checked now, not only at the next start: an image that reads another file is refused at once.
            chain = await asyncio.to_thread(self.disks.chain_of, resolved, field)
            if is_live(vm.state):
                await self.driver.attach_disk(vm.id, resolved.model_copy(update={"backing_chain": chain}))
            self.db.update_vm_spec(vm.id, spec)
            await self.driver.define(vm.id, spec)
            where = "hot-plugged into the running VM" if is_live(vm.state) else "attached for the next start"
            self.db.add_event(vm.id, "disk-attached", f"{label} {where}")
            return f"{label} {where}"

        def capable(vm: Vm) -> None:
            if is_live(vm.state):
                capability_check.require(self.driver, "disk_hotplug", what=f"hot-plug {label} into vm '{vm.name}'",
                                         spec=vm.spec, disk=resolved)

        return self._submit(ref, VmOperation.ATTACH_DISK, work, locks=self.disks.locks([resolved]), capable=capable)

    def _find_disk(self, vm: Vm, disk_ref: str) -> DiskSpec:
        """A disk of the VM by its volume or by any path to its file."""
        disk = self.disks.find_disk(vm, disk_ref)
        if disk is None:
            raise NotFound("disk", f"{disk_ref} on vm '{vm.name}'")
        return disk

    def detach_disk(self, ref: str, disk_ref: str, timeout: float = 30.0) -> Job:
        vm = self.db.get_vm(ref)
        disk = self._find_disk(vm, disk_ref)

        async def work(vm: Vm, context: JobContext) -> str:
            disk = self._find_disk(vm, disk_ref)
            spec = vm.spec.model_copy(update={"disks": [d for d in vm.spec.disks if d is not disk]})
            if is_live(vm.state):
                context.progress(20, "waiting for the guest to release the disk")
                await self.driver.detach_disk(vm.id, disk, timeout)
            self.db.update_vm_spec(vm.id, spec)
            await self.driver.define(vm.id, spec)
            message = f"detached {disk.volume or disk.path}"
            self.db.add_event(vm.id, "disk-detached", message)
            return message

        def capable(vm: Vm) -> None:
            if is_live(vm.state):
                capability_check.require(self.driver, "disk_hotplug", what=f"hot-unplug {disk.volume or disk.path} "
                                         f"from vm '{vm.name}'", spec=vm.spec)

        return self._submit(ref, VmOperation.DETACH_DISK, work, locks=self.disks.locks([disk]), capable=capable)

    # --- console ---------------------------------------------------------------------------------------------
    async def open_console(self, ref: str) -> tuple[Vm, ConsoleStreams]:
        vm = self.db.get_vm(ref)
        require(VmOperation.CONSOLE, vm.state, f"vm '{vm.name}'")
        capability_check.require(self.driver, "console", what=f"open the serial console of vm '{vm.name}'")
        return vm, await self.driver.open_console(vm.id)

    async def open_vnc(self, ref: str) -> tuple[Vm, ConsoleStreams]:
        vm = self.db.get_vm(ref)
        require(VmOperation.CONSOLE, vm.state, f"vm '{vm.name}'")
        capability_check.require(self.driver, "vnc", what=f"open the graphical console of vm '{vm.name}'")
        if vm.spec.display != "vnc":
            raise Conflict(f"vm '{vm.name}' has no graphical console: its spec has display '{vm.spec.display}' "
                           "(a VM created with display 'vnc' on machine q35 has one)")
        return vm, await self.driver.open_vnc(vm.id)


async def resync_state(db: Database, driver: Driver, vm_id: str) -> None:
    """After a failed operation: the VM's record (if it still exists) says what the host really runs."""
    try:
        status = await driver.status(vm_id)
    except VirtfleetError:
        status = DomainStatus(vm_id, VmState.STOPPED, reason="not defined on the host")
    try:
        recorded = db.get_vm(vm_id)
    except NotFound:
        return  # deleted before the failure (e.g. removing its volumes failed): nothing left to correct
    if recorded.state is not status.state:
        db.set_vm_state(vm_id, status.state, status.reason or "re-read from the host")


def host_name() -> str:
    return os.uname().nodename
