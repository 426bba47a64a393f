"""VM snapshots as a tree.

disk: each writable disk gets a new qcow2 overlay; the image below it is frozen and is the snapshot. On a
running VM the switch happens live (blockdev-snapshot in one QMP transaction).
memory: RAM and device state plus disk state go into internal snapshots of the disks' current qcow2 images
(snapshot-save); reverting resumes the VM where it was (snapshot-load, or -loadvm when it is stopped).

Reverting a disk snapshot puts a fresh overlay on the frozen image. Deleting one merges the layer above its frozen
image into it (block-commit on a running VM, qemu-img commit on a stopped one). Files no snapshot and no disk needs
any more are removed; nothing is removed that something still reads.

Every operation records its plan (an intent) before it acts and advances it step by step; a failure, or a crash
of the daemon at any step, is settled by the plan's settle function in jobs/snapshot_recovery.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel

from virtfleet import failpoints
from virtfleet.drivers.base import BeforePivot, Driver
from virtfleet.errors import Conflict, InvalidSpec, InvalidState, VirtfleetError
from virtfleet.images.catalog import ImageCatalog
from virtfleet.jobs import capability_check
from virtfleet.jobs.recovery import Handler, Recovery
from virtfleet.jobs.runner import JobContext, JobRunner, Work
from virtfleet.jobs.snapshot_recovery import (
    CreatePlan,
    DeletePlan,
    MemoryPlan,
    MemoryRevertPlan,
    Merge,
    NewOverlay,
    RevertPlan,
    SnapshotSettler,
    Tracked,
    disk_key,
    make_overlays,
)
from virtfleet.jobs.storage import StorageService
from virtfleet.jobs.vm_disks import DiskResolver
from virtfleet.model.job import Job
from virtfleet.model.snapshot import Snapshot, SnapshotLayer, SnapshotSpec
from virtfleet.model.vm import Vm, VmSpec, VmState, is_live
from virtfleet.storage import qemu_img
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import IntentLog
from virtfleet.store.snapshot_repo import SnapshotRepo

log = logging.getLogger(__name__)

for _name, _meaning in {
    "snapshot.create.after-intent": "a disk snapshot's plan is recorded, no overlay exists yet",
    "snapshot.create.after-overlays": "the new overlays exist, nothing writes them yet",
    "snapshot.create.after-switch": "a running VM writes its new overlays, the store still names the old tops",
    "snapshot.create.after-db-switch": "the store names the new overlays, the snapshot is not recorded yet",
    "snapshot.create.after-record": "the disk snapshot is recorded, its plan not yet closed",
    "snapshot.delete.after-intent": "a disk snapshot's merge plan is recorded, nothing is merged yet",
    "snapshot.delete.before-pivot": "a live merge is ready (the frozen image holds everything), the disk still "
                                    "writes the merged overlay",
    "snapshot.delete.after-merge": "a disk's overlay is merged into the frozen image, the store names the overlay",
    "snapshot.delete.after-record": "the store names the merged images and the snapshot is gone; the merged "
                                    "overlays still exist",
    "snapshot.memory.after-intent": "a memory snapshot's plan is recorded, nothing is saved yet",
    "snapshot.memory.after-save": "the memory snapshot is saved in every image, not recorded yet",
    "snapshot.memory.after-record": "the memory snapshot is recorded, its plan not yet closed",
    "snapshot.memory-delete.after-tags": "a memory snapshot is gone from its images, its record is not",
    "snapshot.revert.after-overlays": "a disk revert made its overlays on the frozen images, the store still "
                                      "names the old tops",
    "snapshot.revert.after-switch": "the store names the reverted disks, the abandoned tops still exist",
    "snapshot.revert.after-load": "a memory snapshot is loaded, it is not yet marked current",
}.items():
    failpoints.declare(_name, _meaning)


def new_image_name(image: str) -> str:
    """A fresh overlay next to `image`: its volume's name, '@' and a random suffix."""
    path = Path(image)
    return str(path.with_name(f"{path.name.split('@')[0]}@{secrets.token_hex(4)}"))


class SnapshotService:
    def __init__(self, db: Database, driver: Driver, runner: JobRunner, storage: StorageService,
                 disks: DiskResolver, images: ImageCatalog, boot_spec: Callable[[Vm], VmSpec],
                 intents: IntentLog) -> None:
        self.boot_spec = boot_spec
        self.db = db
        self.images = images
        self.repo = SnapshotRepo(db)
        self.driver = driver
        self.runner = runner
        self.storage = storage
        self.disks = disks
        self.intents = intents
        self.settler = SnapshotSettler(db, driver, storage, intents)

    def register_recovery(self, recovery: Recovery) -> None:
        self.settler.register(recovery)

    def for_vm(self, ref: str) -> list[Snapshot]:
        return self.repo.for_vm(self.db.get_vm(ref).id)

    def _submit(self, vm: Vm, kind: str, work: Work, allowed: frozenset[VmState], verb: str,
                capable: Callable[[Vm], None]) -> Job:
        """Run `work` holding the VM and its volumes (a snapshot moves their top images), state and what the driver
        can do (`capable` raises Unsupported; the VM's state decides whether the work is live) checked twice."""
        label = f"vm '{vm.name}'"
        self.runner.check_free(vm.id, label)

        def check(current: Vm) -> None:
            if current.state not in allowed:
                raise InvalidState(label, verb, current.state.value, (s.value for s in allowed))
            capable(current)

        check(vm)

        async def checked(context: JobContext) -> str:
            check(self.db.get_vm(vm.id))  # again, now that the locks are held
            return await work(context)

        return self.runner.submit(kind, vm.id, label, checked, locks=self.disks.locks(vm.spec.disks))

    # --- the frame every operation runs in -----------------------------------------------------------------
    async def _settle_leftovers(self, vm_id: str) -> None:
        """Finish what an earlier operation on this VM could not settle when it failed, before anything new."""
        handlers = self.settler.handlers
        for intent in await asyncio.to_thread(self.intents.pending):
            if intent.kind in handlers and intent.data.get("vm") == vm_id:
                try:
                    outcome = await handlers[intent.kind](intent)
                except VirtfleetError as error:
                    raise Conflict(f"an earlier {intent.kind} on this VM (job {intent.job_id}) could not be "
                                   f"settled: {error.message}; it is retried before each snapshot operation and "
                                   "at every start") from error
                await asyncio.to_thread(self.intents.end, intent)
                log.warning("settled the %s left open on vm %s: %s", intent.kind, vm_id, outcome.message)

    async def _guarded(self, kind: str, target: str, plan: BaseModel, context: JobContext,
                       body: Callable[[Tracked], Awaitable[str]], settle: Handler | None) -> str:
        """Record the plan, run the body; on failure let `settle` finish or roll back (None: a failure changes
        nothing the store knows). A cancellation (the daemon stopping) leaves the plan to the next start."""
        intent = await asyncio.to_thread(self.intents.begin, kind, target, plan.model_dump(mode="json"),
                                         job_id=context.job.id)
        tracked = Tracked(self.intents, intent)
        try:
            message = await body(tracked)
        except Exception as error:
            if settle is not None:
                try:
                    outcome = await settle(tracked.intent)
                except Exception:
                    log.exception("%s of %s failed and could not be settled; the next start retries", kind, target)
                    raise error from None
                await asyncio.to_thread(self.intents.end, tracked.intent)
                if outcome.finished:
                    log.warning("%s of %s: %s after %s", kind, target, outcome.message, error)
                    return f"{outcome.message} (finished after: {error})"
                raise
            await asyncio.to_thread(self.intents.end, tracked.intent)
            raise
        await asyncio.to_thread(self.intents.end, tracked.intent)
        return message

    # --- create --------------------------------------------------------------------------------------------
    def create(self, ref: str, spec: SnapshotSpec) -> Job:
        vm = self.db.get_vm(ref)
        if any(s.name == spec.name for s in self.repo.for_vm(vm.id)):
            raise Conflict(f"vm '{vm.name}' already has a snapshot named '{spec.name}'")
        writable = [d for d in vm.spec.disks if not d.readonly]
        if not writable:
            raise InvalidSpec("disks", f"vm '{vm.name}' has no writable disk to snapshot")
        if spec.memory:
            if vm.state not in (VmState.RUNNING, VmState.PAUSED):
                raise InvalidState(f"vm '{vm.name}'", "memory snapshot", vm.state.value, ["running", "paused"])
            if any(d.format != "qcow2" for d in writable):
                raise InvalidSpec("memory", "memory snapshots need every writable disk in qcow2 format")

        async def work(context: JobContext) -> str:
            await self._settle_leftovers(vm.id)
            current = self.db.get_vm(vm.id)
            if any(s.name == spec.name for s in self.repo.for_vm(vm.id)):
                raise Conflict(f"vm '{vm.name}' already has a snapshot named '{spec.name}'")
            disks = [d for d in current.spec.disks if not d.readonly]
            target = f"vm '{vm.name}' snapshot '{spec.name}'"
            if spec.memory:
                return await self._save_memory(context, vm.name, MemoryPlan(
                    vm=vm.id, snapshot=str(uuid.uuid4()), name=spec.name, description=spec.description,
                    layers=[SnapshotLayer(disk=disk_key(d), frozen=str(d.path), format=d.format) for d in disks]))
            plan = CreatePlan(vm=vm.id, snapshot=str(uuid.uuid4()), name=spec.name, description=spec.description,
                              live=is_live(current.state), disks=[
                                  NewOverlay(disk=disk_key(d), frozen=str(d.path), format=d.format,
                                             overlay=new_image_name(str(d.path)), old_top=str(d.path))
                                  for d in disks])

            async def make(tracked: Tracked) -> str:
                failpoints.hit("snapshot.create.after-intent")
                await asyncio.to_thread(make_overlays, plan.disks)
                await tracked.step("overlays-made")
                failpoints.hit("snapshot.create.after-overlays")
                if plan.live:
                    await self.driver.snapshot_disks(vm.id, [(d.frozen, d.overlay) for d in plan.disks])
                    await tracked.step("switched")
                    failpoints.hit("snapshot.create.after-switch")
                await asyncio.to_thread(self.settler.switch_to_overlays, vm.id, plan.disks)
                failpoints.hit("snapshot.create.after-db-switch")
                await asyncio.to_thread(self.settler.record_create, plan)
                failpoints.hit("snapshot.create.after-record")
                return f"disk snapshot '{spec.name}' of vm '{vm.name}' ({len(plan.disks)} disk(s))"

            return await self._guarded("snapshot.create", target, plan, context, make, self.settler.settle_create)

        def capable(vm: Vm) -> None:
            if spec.memory:
                self._require("memory_snapshots", f"save a memory snapshot of vm '{vm.name}'")
            elif is_live(vm.state):
                self._require("snapshots", f"snapshot the disks of running vm '{vm.name}' (stop it first)")

        allowed = frozenset({VmState.RUNNING, VmState.PAUSED, VmState.STOPPED, VmState.CRASHED})
        return self._submit(vm, "vm.snapshot", work, allowed, "snapshot", capable)

    async def _save_memory(self, context: JobContext, vm_name: str, plan: MemoryPlan) -> str:
        async def save(tracked: Tracked) -> str:
            failpoints.hit("snapshot.memory.after-intent")
            # The record comes only after the save: a record never names state that is not in the images.
            await self.driver.memory_snapshot(plan.vm, "save", plan.snapshot, plan.images)
            await tracked.step("saved")
            failpoints.hit("snapshot.memory.after-save")
            await asyncio.to_thread(self.settler.record_memory, plan)
            failpoints.hit("snapshot.memory.after-record")
            return f"memory snapshot '{plan.name}' of vm '{vm_name}'"

        return await self._guarded("snapshot.memory-save", f"vm '{vm_name}' snapshot '{plan.name}'", plan,
                                   context, save, self.settler.settle_memory_save)

    # --- revert --------------------------------------------------------------------------------------------
    def revert(self, ref: str, name: str) -> Job:
        vm = self.db.get_vm(ref)
        snapshot = self.repo.get(vm.id, name)
        if snapshot.kind == "disk":
            allowed = frozenset({VmState.STOPPED, VmState.CRASHED})
        else:
            allowed = frozenset({VmState.RUNNING, VmState.PAUSED, VmState.STOPPED, VmState.CRASHED})
            self._check_memory_layers_current(vm, snapshot)

        async def work(context: JobContext) -> str:
            await self._settle_leftovers(vm.id)
            current = self.db.get_vm(vm.id)
            target = self.repo.get(vm.id, name)  # still there: a delete left open was finished just above
            if target.kind == "memory":
                return await self._load_memory(context, current, target)
            by_key = {disk_key(d): d for d in current.spec.disks}
            plan = RevertPlan(vm=vm.id, snapshot=target.id, name=name, disks=[
                NewOverlay(disk=layer.disk, frozen=layer.frozen, format=layer.format,
                           overlay=new_image_name(layer.frozen), old_top=str(by_key[layer.disk].path))
                for layer in target.layers if layer.disk in by_key])  # a disk detached since has nothing to revert

            async def switch(tracked: Tracked) -> str:
                await asyncio.to_thread(make_overlays, plan.disks)
                await tracked.step("overlays-made")
                failpoints.hit("snapshot.revert.after-overlays")
                await asyncio.to_thread(self.settler.switch_revert, plan)
                await tracked.step("switched")
                failpoints.hit("snapshot.revert.after-switch")
                await asyncio.to_thread(self.settler.remove_abandoned, plan)
                return f"vm '{vm.name}' disks are back at snapshot '{name}'"

            return await self._guarded("snapshot.revert", f"vm '{vm.name}' snapshot '{name}'", plan, context,
                                       switch, self.settler.settle_revert)

        def capable(vm: Vm) -> None:  # a disk revert happens on a stopped VM, in the pool: no driver needed
            if snapshot.kind == "memory":
                what = f"load memory snapshot '{name}' of vm '{vm.name}'"
                self._require("memory_snapshots", what)
                if not is_live(vm.state):  # it starts the VM
                    capability_check.check_spec(self.driver, vm.spec, what=what)

        return self._submit(vm, "vm.revert", work, allowed, "revert", capable)

    async def _load_memory(self, context: JobContext, vm: Vm, snapshot: Snapshot) -> str:
        plan = MemoryRevertPlan(vm=vm.id, snapshot=snapshot.id, name=snapshot.name,
                                resume=vm.state is VmState.RUNNING)

        async def load(tracked: Tracked) -> str:
            if is_live(vm.state):
                await self.driver.memory_snapshot(vm.id, "load", snapshot.id, [x.frozen for x in snapshot.layers])
            else:
                boot = self.images.boot_image(vm.spec)
                status = await self.driver.start(vm.id, self.boot_spec(vm), boot, restore=snapshot.id)
                self.db.set_vm_state(vm.id, status.state, f"resumed from snapshot '{snapshot.name}'",
                                     accel=status.accel)
            failpoints.hit("snapshot.revert.after-load")
            await asyncio.to_thread(self.repo.set_current, vm.id, snapshot.id)
            return f"vm '{vm.name}' is back at memory snapshot '{snapshot.name}'"

        # A failed load changes nothing the store knows: no settling in process, only after a crash.
        return await self._guarded("snapshot.memory-revert", f"vm '{vm.name}' snapshot '{snapshot.name}'", plan,
                                   context, load, None)

    def _check_memory_layers_current(self, vm: Vm, snapshot: Snapshot) -> None:
        """A memory snapshot lives inside images; it can be loaded only while those images are the disks' tops."""
        tops = {str(d.path) for d in vm.spec.disks}
        stale = [layer.frozen for layer in snapshot.layers if layer.frozen not in tops]
        if stale:
            raise Conflict(f"memory snapshot '{snapshot.name}' lives in images that later disk snapshots froze "
                           f"({', '.join(stale)}); revert to or delete those first")

    # --- delete --------------------------------------------------------------------------------------------
    def delete(self, ref: str, name: str) -> Job:
        vm = self.db.get_vm(ref)
        snapshot = self.repo.get(vm.id, name)
        allowed = frozenset({VmState.RUNNING, VmState.PAUSED, VmState.STOPPED, VmState.CRASHED})
        if snapshot.kind == "disk":
            self._merge_plan(vm, snapshot)  # refuses at once what cannot be merged

        async def work(context: JobContext) -> str:
            await self._settle_leftovers(vm.id)
            current = self.db.get_vm(vm.id)
            target = self.repo.get(vm.id, name)
            label = f"vm '{vm.name}' snapshot '{name}'"
            if target.kind == "memory":
                plan = MemoryPlan(vm=vm.id, snapshot=target.id, name=name, description=target.description,
                                  layers=target.layers)

                async def drop(tracked: Tracked) -> str:
                    await self.settler.delete_tags(vm.id, target.id, plan.images)
                    await tracked.step("tags-deleted")
                    failpoints.hit("snapshot.memory-delete.after-tags")
                    await asyncio.to_thread(self.settler.forget, vm.id, target.id)
                    return f"deleted memory snapshot '{name}'"

                return await self._guarded("snapshot.memory-delete", label, plan, context, drop,
                                           self.settler.settle_memory_delete)
            merges = DeletePlan(vm=vm.id, snapshot=target.id, name=name, live=is_live(current.state),
                                merges=await asyncio.to_thread(self._merge_plan, current, target))
            return await self._guarded("snapshot.delete", label, merges, context,
                                       lambda tracked: self._merge(merges, tracked), self.settler.settle_delete)

        def capable(vm: Vm) -> None:  # on a stopped VM the images are merged or untagged in the pool, by qemu-img
            if not is_live(vm.state):
                return
            if snapshot.kind == "memory":
                self._require("memory_snapshots", f"delete memory snapshot '{name}' of running vm '{vm.name}' "
                              "(stop it first)")
            else:
                self._require("snapshots", f"merge disk snapshot '{name}' of running vm '{vm.name}' "
                              "(stop it first)")

        return self._submit(vm, "vm.snapshot-delete", work, allowed, "delete snapshot", capable)

    def _require(self, capability: capability_check.Flag, what: str) -> None:
        capability_check.require(self.driver, capability, what=what)

    async def _merge(self, plan: DeletePlan, tracked: Tracked) -> str:
        """Merge each `above` (the changes made after the snapshot) into its frozen image: from the first write on
        the snapshot's state is gone and the frozen image carries the newer data, so recovery only goes forward."""
        failpoints.hit("snapshot.delete.after-intent")
        for merge in plan.merges:
            if plan.live:
                await self.driver.commit_disk(plan.vm, merge.above, merge.frozen,
                                              before_pivot=self._pivot_point(tracked, merge.above))
            else:
                await asyncio.to_thread(self.settler.merge_offline, plan, merge)
            await tracked.step(f"merged {merge.above}")
            failpoints.hit("snapshot.delete.after-merge")
        await asyncio.to_thread(self.settler.finish_delete, plan)
        await tracked.step("recorded")
        failpoints.hit("snapshot.delete.after-record")
        await asyncio.to_thread(self.settler.remove_merged, plan)
        return f"deleted disk snapshot '{plan.name}' (merged {len(plan.merges)} layer(s))"

    @staticmethod
    def _pivot_point(tracked: Tracked, above: str) -> BeforePivot:
        record = tracked.before_pivot(above)

        async def pivot() -> None:
            await record()
            failpoints.hit("snapshot.delete.before-pivot")

        return pivot

    def _chain(self, vm: Vm, key: str) -> list[str]:
        """The disk's images, top first."""
        disk = next(d for d in vm.spec.disks if disk_key(d) == key)
        return [str(disk.path), *(layer.path for layer in self.disks.chain_of(disk, "disks"))]

    def _merge_plan(self, vm: Vm, snapshot: Snapshot) -> list[Merge]:
        """For each layer of the snapshot: the image right above its frozen image in the disk's current chain."""
        keys = {disk_key(d) for d in vm.spec.disks}
        others = [s for s in self.repo.for_vm(vm.id) if s.id != snapshot.id]
        plan = []
        for layer in snapshot.layers:
            if layer.disk not in keys:
                continue
            chain = self._chain(vm, layer.disk)
            if layer.frozen not in chain[1:]:
                raise Conflict(f"snapshot '{snapshot.name}' is not on the VM's current branch; revert to it, or "
                               "delete the snapshots of the other branch first")
            position = chain.index(layer.frozen) - 1
            above = chain[position]
            if any(o.kind == "memory" and any(x.frozen in (above, layer.frozen) for x in o.layers) for o in others):
                raise Conflict(f"a memory snapshot lives in {above}; delete it first")
            if any(x.frozen == layer.frozen for o in others for x in o.layers) or self._branched(layer.frozen):
                raise Conflict(f"{layer.frozen} is the base of another branch; delete that branch first")
            plan.append(Merge(disk=layer.disk, frozen=layer.frozen, format=layer.format, above=above,
                              child=chain[position - 1] if position > 0 else None))
        return plan

    def _branched(self, frozen: str) -> bool:
        """True if images outside the current chain are backed by `frozen` (an abandoned branch still needs it)."""
        folder = Path(frozen).parent
        stem = Path(frozen).name.split("@")[0]
        users = 0
        for candidate in folder.glob(f"{stem}@*"):
            try:
                backing = qemu_img.info(candidate, "qcow2").backing_file
            except Exception as exc:
                # An image we cannot read may well be based on `frozen`: merging into it could break that branch.
                problem = f"cannot tell whether {candidate} is based on {frozen} ({exc}); nothing was changed"
                raise Conflict(problem) from exc
            if backing in (frozen, Path(frozen).name):
                users += 1
        return users > 1
