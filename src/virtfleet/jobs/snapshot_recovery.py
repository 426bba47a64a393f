"""Crash safety of snapshots: the plans recorded before acting, and the settle functions that converge them.

Each snapshot operation records its plan as an intent before it touches anything. When it fails, or when the daemon
died in the middle (then at the next start, before anything else reads the store), the plan's settle function
compares it with the truth (which image each disk of a running QEMU writes, its block jobs, the internal snapshots
in the images, the files in the pool) and finishes or rolls back, so that the chain the store names for each disk is
the one QEMU writes, every record has its files and no file is left that nothing names. The same function serves the
failure in process and the crash; each is idempotent, so a crash during recovery is recovered the same way.

- create: switched (QEMU writes the overlays, or a stopped VM's overlays are complete) -> finish; else roll back.
- delete: once a merge has begun writing into the frozen image the snapshot's state is gone: always finish.
- memory save: the tag in every image -> record it; else remove the partial tags.
- revert: the store names the new overlays -> finish; else remove them. A memory revert only moves `current`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from virtfleet.drivers.base import BeforePivot, DiskChain, Driver
from virtfleet.errors import DriverError, NotFound
from virtfleet.jobs.recovery import Handler, Outcome, Recovery
from virtfleet.jobs.storage import StorageService
from virtfleet.model.snapshot import SnapshotLayer
from virtfleet.model.vm import DiskSpec, Vm, VmState, is_live
from virtfleet.storage import qemu_img
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import Intent, IntentLog
from virtfleet.store.snapshot_repo import SnapshotRepo

log = logging.getLogger(__name__)

Format = Literal["raw", "qcow2"]


def disk_key(disk: DiskSpec) -> str:
    return disk.volume or disk.path or ""


class NewOverlay(BaseModel):
    """One disk of a create or a revert: an empty qcow2 `overlay` on `frozen` replaces the disk's `old_top`."""

    disk: str
    frozen: str
    format: Format
    overlay: str
    old_top: str


class CreatePlan(BaseModel):
    vm: str
    snapshot: str  # the record's id, chosen before anything exists
    name: str
    description: str
    live: bool
    disks: list[NewOverlay]


class Merge(BaseModel):
    """One disk of a delete: `above` (the image right above the frozen image) is merged into `frozen`; `child` is
    the image right above `above`, None when `above` is the disk's active image."""

    disk: str
    frozen: str
    format: Format
    above: str
    child: str | None


class DeletePlan(BaseModel):
    vm: str
    snapshot: str
    name: str
    live: bool
    merges: list[Merge]
    pivoting: list[str] = []  # `above` of the merges whose disk was told to switch to the frozen image


class MemoryPlan(BaseModel):
    vm: str
    snapshot: str  # also the internal snapshots' tag
    name: str
    description: str
    layers: list[SnapshotLayer]

    @property
    def images(self) -> list[str]:
        return [layer.frozen for layer in self.layers]


class RevertPlan(BaseModel):
    vm: str
    snapshot: str
    name: str
    disks: list[NewOverlay]


class MemoryRevertPlan(BaseModel):
    vm: str
    snapshot: str
    name: str
    resume: bool  # the VM ran before the load (a load leaves it paused until told to continue)


def is_overlay_of(overlay: str, frozen: str) -> bool:
    """True if `overlay` is a readable qcow2 image whose backing file is `frozen`."""
    try:
        backing = qemu_img.info(Path(overlay), "qcow2").backing_file
    except (DriverError, OSError):
        return False
    return backing is not None and os.path.normpath(os.path.join(os.path.dirname(overlay), backing)) == frozen


def make_overlays(disks: list[NewOverlay]) -> None:
    for disk in disks:
        size = qemu_img.info(Path(disk.frozen), disk.format).virtual_size
        qemu_img.create(Path(disk.overlay), "qcow2", size, backing=Path(disk.frozen), backing_fmt=disk.format)


class Tracked:
    """An intent and what it recorded last: the operation advances it, its settle function reads it."""

    def __init__(self, intents: IntentLog, intent: Intent) -> None:
        self.intents = intents
        self.intent = intent

    async def step(self, name: str, **data: object) -> None:
        self.intent = await asyncio.to_thread(self.intents.advance, self.intent, name, **data)

    def before_pivot(self, above: str) -> BeforePivot:
        """Record that a disk is about to switch from `above` to the frozen image below it: the one fact about a
        merge that cannot be read back from the images once QEMU is gone."""
        async def record() -> None:
            await self.step("pivoting", pivoting=[*self.intent.data.get("pivoting", []), above])

        return record


class SnapshotSettler:
    def __init__(self, db: Database, driver: Driver, storage: StorageService, intents: IntentLog) -> None:
        self.db = db
        self.repo = SnapshotRepo(db)
        self.driver = driver
        self.storage = storage
        self.intents = intents

    @property
    def handlers(self) -> dict[str, Handler]:
        """Intent kind -> its settle function."""
        handlers: dict[str, Handler] = {
            "snapshot.create": self.settle_create, "snapshot.delete": self.settle_delete,
            "snapshot.memory-save": self.settle_memory_save, "snapshot.memory-delete": self.settle_memory_delete,
            "snapshot.revert": self.settle_revert, "snapshot.memory-revert": self.settle_memory_revert}
        return {kind: self._unless_vm_gone(handler) for kind, handler in handlers.items()}

    def _unless_vm_gone(self, settle: Handler) -> Handler:
        async def guarded(intent: Intent) -> Outcome:
            try:
                await asyncio.to_thread(self.db.get_vm, str(intent.data.get("vm")))
            except NotFound:
                return Outcome(False, "the VM was deleted since; nothing left to settle")
            return await settle(intent)

        return guarded

    def register(self, recovery: Recovery) -> None:
        for kind, handler in self.handlers.items():
            recovery.register(kind, handler)

    # --- the truth of a running VM -------------------------------------------------------------------------
    async def live_chains(self, vm_id: str) -> list[DiskChain] | None:
        """What the VM's QEMU has open once the block jobs left to it have ended; None when it does not run."""
        try:
            status = await self.driver.status(vm_id)
        except NotFound:
            return None
        if not is_live(status.state):
            return None
        for problem in await self.driver.settle_block_jobs(vm_id):
            log.warning("vm %s: %s", vm_id, problem)
        return await self.driver.disk_chains(vm_id)

    # --- store changes shared by the operations and their recovery -----------------------------------------
    def switch_disks(self, vm: Vm, replacement: dict[str, DiskSpec]) -> None:
        """Point the VM's disks (and their volumes) at new top images; applying it twice changes nothing."""
        disks = [replacement.get(disk_key(d), d) for d in vm.spec.disks]
        self.db.update_vm_spec(vm.id, vm.spec.model_copy(update={"disks": disks}))
        for disk in disks:
            if disk.volume is not None and disk_key(disk) in replacement:
                self.storage.move_volume_top(disk.volume, str(disk.path), disk.format)

    def switch_to_overlays(self, vm_id: str, disks: list[NewOverlay]) -> None:
        vm = self.db.get_vm(vm_id)
        replacement: dict[str, DiskSpec] = {}
        for new in disks:
            for disk in vm.spec.disks:
                if disk.path in (new.old_top, new.overlay):
                    replacement[disk_key(disk)] = disk.model_copy(update={"path": new.overlay, "format": "qcow2"})
        self.switch_disks(vm, replacement)

    def names_overlays(self, vm_id: str, disks: list[NewOverlay]) -> bool:
        tops = {disk.path for disk in self.db.get_vm(vm_id).spec.disks}
        return all(new.overlay in tops for new in disks)

    def needed(self, vm_id: str) -> set[str]:
        """Images the store still names: the VM's disks and every snapshot's frozen images."""
        vm = self.db.get_vm(vm_id)
        return {str(d.path) for d in vm.spec.disks} | {x.frozen for s in self.repo.for_vm(vm_id) for x in s.layers}

    def remove_unneeded(self, vm_id: str, images: list[str]) -> list[str]:
        """Delete those of `images` the store no longer names (only snapshot-made files, with an '@')."""
        needed = self.needed(vm_id)
        removed = []
        for image in images:
            if image not in needed and "@" in Path(image).name and os.path.lexists(image):
                Path(image).unlink()
                removed.append(image)
        return removed

    def record(self, vm_id: str, snapshot_id: str, name: str, kind: Literal["disk", "memory"], description: str,
               vm_state: str, layers: list[SnapshotLayer]) -> None:
        if not any(s.id == snapshot_id for s in self.repo.for_vm(vm_id)):
            self.repo.add(vm_id, name, kind, description, vm_state, layers, snapshot_id=snapshot_id)

    def forget(self, vm_id: str, snapshot_id: str) -> None:
        snapshot = next((s for s in self.repo.for_vm(vm_id) if s.id == snapshot_id), None)
        if snapshot is not None:
            self.repo.delete(snapshot)

    # --- create --------------------------------------------------------------------------------------------
    def record_create(self, plan: CreatePlan) -> None:
        layers = [SnapshotLayer(disk=d.disk, frozen=d.frozen, format=d.format) for d in plan.disks]
        self.record(plan.vm, plan.snapshot, plan.name, "disk", plan.description,
                    "running" if plan.live else "stopped", layers)

    async def settle_create(self, intent: Intent) -> Outcome:
        plan = CreatePlan.model_validate(intent.data)
        overlays = [d.overlay for d in plan.disks]
        chains = await self.live_chains(plan.vm)
        if chains is not None:
            active = {chain[0].path for chain in chains if chain}
            switched = [overlay in active for overlay in overlays]
            if any(switched) and not all(switched):
                raise DriverError(f"snapshot '{plan.name}': only some disks write their new overlay",
                                  "a QMP transaction is all or nothing; the VM was changed behind virtfleet's back")
            if not all(switched):
                await self.driver.release_images(plan.vm, overlays)
            how = "QEMU writes the new overlays" if all(switched) else "QEMU still writes the old images"
            forward = all(switched)
        else:
            # Not running: an overlay nothing wrote yet is empty, so keeping a complete set loses nothing.
            forward = all(await asyncio.to_thread(lambda: [is_overlay_of(d.overlay, d.frozen) for d in plan.disks]))
            how = "its overlays are complete" if forward else "its overlays were not all made"
        if forward:
            await asyncio.to_thread(self._finish_create, plan)
            return Outcome(True, f"snapshot '{plan.name}' recorded ({how})")
        await asyncio.to_thread(self._undo_create, plan)
        return Outcome(False, f"snapshot '{plan.name}' removed ({how})")

    def _finish_create(self, plan: CreatePlan) -> None:
        self.switch_to_overlays(plan.vm, plan.disks)
        self.record_create(plan)

    def _undo_create(self, plan: CreatePlan) -> None:
        self.forget(plan.vm, plan.snapshot)
        self.remove_unneeded(plan.vm, [d.overlay for d in plan.disks])

    # --- delete --------------------------------------------------------------------------------------------
    async def settle_delete(self, intent: Intent) -> Outcome:
        plan = DeletePlan.model_validate(intent.data)
        tracked = Tracked(self.intents, intent)
        chains = await self.live_chains(plan.vm)
        for merge in plan.merges:
            if chains is not None:
                # Commits again if QEMU still has `above` in the chain; else only closes what is left open.
                await self.driver.commit_disk(plan.vm, merge.above, merge.frozen,
                                              before_pivot=tracked.before_pivot(merge.above))
            else:
                await asyncio.to_thread(self.merge_offline, plan, merge)
        await asyncio.to_thread(self.finish_delete, plan)
        await asyncio.to_thread(self.remove_merged, plan)
        return Outcome(True, f"snapshot '{plan.name}' deleted, {len(plan.merges)} layer(s) merged")

    def merge_offline(self, plan: DeletePlan, merge: Merge) -> None:
        """Merge with qemu-img, skipping what is merged already: committing `above` again is harmless (nothing
        writes it while the VM is stopped); only an image that already became the disk's top must not be
        overwritten with older data."""
        above = Path(merge.above)
        if not above.exists():
            return
        if merge.child is None:
            tops = {disk.path for disk in self.db.get_vm(plan.vm).spec.disks}
            if merge.above not in tops or merge.above in plan.pivoting:
                return  # the store or QEMU (before it stopped) switched the disk to the frozen image already
            qemu_img.commit(above, "qcow2")
            return
        if is_overlay_of(merge.child, merge.frozen):
            return  # QEMU or qemu-img finished this merge and pointed the child at the frozen image
        qemu_img.commit(above, "qcow2")
        qemu_img.rebase_unsafe(Path(merge.child), "qcow2", Path(merge.frozen), merge.format)

    def finish_delete(self, plan: DeletePlan) -> None:
        vm = self.db.get_vm(plan.vm)
        replacement: dict[str, DiskSpec] = {}
        for merge in plan.merges:
            for disk in vm.spec.disks:
                if merge.child is None and disk.path == merge.above:
                    replacement[disk_key(disk)] = disk.model_copy(update={"path": merge.frozen,
                                                                          "format": merge.format})
        self.switch_disks(vm, replacement)
        for merge in plan.merges:
            self._rename_frozen(plan.vm, merge)
        self.forget(plan.vm, plan.snapshot)

    def _rename_frozen(self, vm_id: str, merge: Merge) -> None:
        """Snapshots that froze the merged image now find their state in the image it was merged into."""
        for other in self.repo.for_vm(vm_id):
            if any(x.frozen == merge.above for x in other.layers):
                self.repo.set_layers(other.id, [
                    x.model_copy(update={"frozen": merge.frozen, "format": merge.format}) if x.frozen == merge.above
                    else x for x in other.layers])

    def remove_merged(self, plan: DeletePlan) -> list[str]:
        return self.remove_unneeded(plan.vm, [merge.above for merge in plan.merges])

    # --- memory snapshots ----------------------------------------------------------------------------------
    async def tags(self, vm_id: str, images: list[str]) -> tuple[dict[str, tuple[str, ...]], set[str] | None]:
        """The internal snapshot names in each image (as QEMU sees them while it runs), and the images the disks
        write (None when the VM does not run)."""
        chains = await self.live_chains(vm_id)
        if chains is not None:
            seen = {image.path: image.snapshots for chain in chains for image in chain}
            return {image: seen.get(image, ()) for image in images}, {chain[0].path for chain in chains if chain}

        def read() -> dict[str, tuple[str, ...]]:
            return {image: tuple(s.name for s in qemu_img.snapshot_list(Path(image), "qcow2"))
                    if Path(image).exists() else () for image in images}

        return await asyncio.to_thread(read), None

    async def delete_tags(self, vm_id: str, tag: str, images: list[str]) -> None:
        """Remove the internal snapshot `tag` from those of `images` that hold it."""
        present, tops = await self.tags(vm_id, images)
        holding = [image for image in images if tag in present[image]]
        if holding and tops is not None and all(image in tops for image in holding):
            await self.driver.memory_snapshot(vm_id, "delete", tag, holding)
            return
        for image in holding:
            await asyncio.to_thread(qemu_img.snapshot_delete, Path(image), "qcow2", tag)

    def record_memory(self, plan: MemoryPlan) -> None:
        self.record(plan.vm, plan.snapshot, plan.name, "memory", plan.description, "running", plan.layers)

    async def settle_memory_save(self, intent: Intent) -> Outcome:
        plan = MemoryPlan.model_validate(intent.data)
        if any(s.id == plan.snapshot for s in await asyncio.to_thread(self.repo.for_vm, plan.vm)):
            return Outcome(True, f"memory snapshot '{plan.name}' is recorded")
        present, _ = await self.tags(plan.vm, plan.images)  # waits for a save still running first
        if all(plan.snapshot in present[image] for image in plan.images):
            await asyncio.to_thread(self.record_memory, plan)
            return Outcome(True, f"memory snapshot '{plan.name}' was saved in every image; recorded")
        await self.delete_tags(plan.vm, plan.snapshot, plan.images)
        return Outcome(False, f"memory snapshot '{plan.name}' was not saved in every image; removed")

    async def settle_memory_delete(self, intent: Intent) -> Outcome:
        plan = MemoryPlan.model_validate(intent.data)
        try:
            await self.delete_tags(plan.vm, plan.snapshot, plan.images)
        except DriverError as error:
            present, _ = await self.tags(plan.vm, plan.images)
            if all(plan.snapshot in present[image] for image in plan.images):
                return Outcome(False, f"memory snapshot '{plan.name}' is still whole, kept ({error.message})")
            raise  # gone from some images: only finishing the delete makes the record true again
        await asyncio.to_thread(self.forget, plan.vm, plan.snapshot)
        return Outcome(True, f"memory snapshot '{plan.name}' deleted")

    # --- revert --------------------------------------------------------------------------------------------
    def switch_revert(self, plan: RevertPlan) -> None:
        self.switch_to_overlays(plan.vm, plan.disks)
        self.repo.set_current(plan.vm, plan.snapshot)

    def remove_abandoned(self, plan: RevertPlan) -> list[str]:
        """The tops the revert left behind go, unless a snapshot froze them (another branch of the tree)."""
        return self.remove_unneeded(plan.vm, [d.old_top for d in plan.disks])

    def finish_revert(self, plan: RevertPlan) -> None:
        self.switch_revert(plan)
        self.remove_abandoned(plan)

    async def settle_revert(self, intent: Intent) -> Outcome:
        plan = RevertPlan.model_validate(intent.data)
        if await asyncio.to_thread(self.names_overlays, plan.vm, plan.disks):
            await asyncio.to_thread(self.finish_revert, plan)
            return Outcome(True, f"the disks are back at snapshot '{plan.name}'")
        await asyncio.to_thread(self.remove_unneeded, plan.vm, [d.overlay for d in plan.disks])
        return Outcome(False, f"the disks stay as they were; the new overlays on snapshot '{plan.name}' removed")

    async def settle_memory_revert(self, intent: Intent) -> Outcome:
        plan = MemoryRevertPlan.model_validate(intent.data)
        current = await asyncio.to_thread(self.repo.current, plan.vm)
        if current is not None and current.id == plan.snapshot:
            return Outcome(True, f"snapshot '{plan.name}' is current")
        try:
            running = is_live((await self.driver.status(plan.vm)).state)
        except NotFound:
            running = False
        if not running:
            return Outcome(False, f"the VM is not running from snapshot '{plan.name}'")
        failed = await self.driver.settle_block_jobs(plan.vm)
        if failed:
            return Outcome(False, f"loading snapshot '{plan.name}' failed: {'; '.join(failed)}")
        if plan.resume and (await self.driver.status(plan.vm)).state is VmState.PAUSED:
            await self.driver.resume(plan.vm)  # the load stopped the vCPUs and the agent died before resuming
        await asyncio.to_thread(self.repo.set_current, plan.vm, plan.snapshot)
        return Outcome(True, f"the VM runs from snapshot '{plan.name}'")
