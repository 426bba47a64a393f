"""Deleting a VM, crash-safe: the intent is recorded before the first step, and recovery rolls it forward.

The user asked for the VM to be gone, so a delete that a crash interrupted is finished at the next start, never
undone: power off (whatever the record says, the host decides), undefine, forget the seed disk and the taps, delete
the record, then the volumes when asked. Every step is idempotent, so running them all again from the top is how
both recovery and a retry finish the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from virtfleet import failpoints
from virtfleet.drivers.base import Driver
from virtfleet.errors import VirtfleetError
from virtfleet.jobs.networks import NetworkService
from virtfleet.jobs.recovery import Outcome, Recovery
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.jobs.storage import StorageService
from virtfleet.jobs.vm_disks import DiskResolver
from virtfleet.jobs.vms import resync_state
from virtfleet.model.job import Job
from virtfleet.model.vm import Vm, VmOperation, is_live, require
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import Intent, IntentLog

INTENT_KIND = "vm.delete"

failpoints.declare("vm.delete.after-intent", "the intent of a VM delete is recorded, nothing done yet")
failpoints.declare("vm.delete.after-stop", "the guest is off (if it ran); the domain is still defined")
failpoints.declare("vm.delete.after-undefine", "the domain is gone from the host; seed, taps and record remain")
failpoints.declare("vm.delete.after-forget", "seed disk and taps are gone; the record remains")
failpoints.declare("vm.delete.after-record", "the record is gone; the volumes to delete remain")
failpoints.declare("vm.delete.after-volume", "one of the volumes to delete is gone, perhaps not all")

Progress = Callable[[int, str], None]


def volumes_to_delete(vm: Vm) -> list[str]:
    """What --delete-volumes removes: the VM's own volumes, never what it only reads (templates, shared disks)."""
    return [disk.volume for disk in vm.spec.disks if disk.volume is not None and not disk.readonly]


class VmDeleter:
    def __init__(self, db: Database, driver: Driver, runner: JobRunner, disks: DiskResolver,
                 networks: NetworkService, storage: StorageService, intents: IntentLog) -> None:
        self.db = db
        self.driver = driver
        self.runner = runner
        self.disks = disks
        self.networks = networks
        self.storage = storage
        self.intents = intents

    def delete(self, ref: str, force: bool = False, delete_volumes: bool = False) -> Job:
        """Delete a VM (a running one only with `force`); its volumes are kept unless `delete_volumes`."""
        vm = self.db.get_vm(ref)
        label = f"vm '{vm.name}'"
        if not force:
            require(VmOperation.DELETE, vm.state, label)
        volumes = volumes_to_delete(vm) if delete_volumes else []

        async def work(context: JobContext) -> str:
            if not force:  # again, now that the VM and its volumes are locked
                require(VmOperation.DELETE, self.db.get_vm(vm.id).state, label)
            intent = self.intents.begin(INTENT_KIND, vm.id, {"vm": vm.model_dump(mode="json"), "volumes": volumes},
                                        job_id=context.job.id)
            try:
                failpoints.hit("vm.delete.after-intent")
                message = await self._converge(vm, volumes, stop=force, progress=context.progress)
            except asyncio.CancelledError:
                raise  # the daemon is stopping: the intent stays, the next start finishes the delete
            except BaseException:
                # In process, the job reports what failed; the VM (if its record is still there) shows what the
                # host runs, and a retry runs every step again.
                self.intents.end(intent)
                await resync_state(self.db, self.driver, vm.id)
                raise
            self.intents.end(intent)
            return message

        # Its volumes are locked with the VM, kept or not: nothing attaches, clones or snapshots them meanwhile, and
        # they stop being in use (or stop existing) when the job ends.
        return self.runner.submit("vm.delete", vm.id, label, work, locks=self.disks.locks(vm.spec.disks))

    async def _converge(self, vm: Vm, volumes: list[str], *, stop: bool, progress: Progress) -> str:
        if stop:
            try:
                status = await self.driver.status(vm.id)
            except VirtfleetError:
                status = None  # not defined on this host: nothing runs
            if status is not None and is_live(status.state):
                progress(20, "powering off")
                await self.driver.stop(vm.id)
        failpoints.hit("vm.delete.after-stop")
        progress(50, "removing the domain from the host")
        await self.driver.undefine(vm.id)
        failpoints.hit("vm.delete.after-undefine")
        await asyncio.to_thread(self.disks.forget_seed, vm)
        await asyncio.to_thread(self.networks.forget_vm, vm)
        failpoints.hit("vm.delete.after-forget")
        self.db.delete_vm(vm.id)
        failpoints.hit("vm.delete.after-record")
        message = f"deleted vm '{vm.name}'"
        removed, kept = [], []
        for ref in volumes:
            progress(80, f"deleting volume {ref}")
            reason = await asyncio.to_thread(self.storage.delete_unused_volume, ref)
            if reason is None:
                removed.append(ref)
            else:
                kept.append(f"kept {ref}: {reason}")
            failpoints.hit("vm.delete.after-volume")
        if removed:
            message += f" and its volumes {', '.join(removed)}"
        return "; ".join([message, *kept])

    def register_recovery(self, recovery: Recovery) -> None:
        async def recover(intent: Intent) -> Outcome:
            vm = Vm.model_validate(intent.data["vm"])
            volumes = [str(ref) for ref in intent.data["volumes"]]
            # Forward, whatever step it reached: the guest is stopped even if the record said it was not running.
            message = await self._converge(vm, volumes, stop=True, progress=lambda _percent, _message: None)
            return Outcome(True, message)

        recovery.register(INTENT_KIND, recover)
