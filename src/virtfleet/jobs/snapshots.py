"""VM snapshots as a tree.

disk: each writable disk gets a new qcow2 overlay; the image below it is frozen and is the snapshot. On a
running VM the switch happens live (blockdev-snapshot in one QMP transaction).
memory: RAM and device state plus disk state go into internal snapshots of the disks' current qcow2 images
(snapshot-save); reverting resumes the VM where it was (snapshot-load, or -loadvm when it is stopped).

Reverting a disk snapshot puts a fresh overlay on the frozen image. Deleting one merges the layer above its frozen
image into it (block-commit on a running VM, qemu-img commit on a stopped one). Files no snapshot and no disk needs
any more are removed; nothing is removed that something still reads.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

from virtfleet.drivers.base import Driver
from virtfleet.errors import Conflict, InvalidSpec, InvalidState
from virtfleet.images.catalog import ImageCatalog
from virtfleet.jobs.runner import JobContext, JobRunner, Work
from virtfleet.jobs.storage import StorageService
from virtfleet.jobs.vm_disks import DiskResolver
from virtfleet.model.job import Job
from virtfleet.model.snapshot import Snapshot, SnapshotLayer, SnapshotSpec
from virtfleet.model.vm import DiskSpec, Vm, VmSpec, VmState, is_live
from virtfleet.storage import qemu_img
from virtfleet.store.db import Database
from virtfleet.store.snapshot_repo import SnapshotRepo


def disk_key(disk: DiskSpec) -> str:
    return disk.volume or disk.path or ""


class SnapshotService:
    def __init__(self, db: Database, driver: Driver, runner: JobRunner, storage: StorageService,
                 disks: DiskResolver, images: ImageCatalog, boot_spec: Callable[[Vm], VmSpec]) -> None:
        self.boot_spec = boot_spec
        self.db = db
        self.images = images
        self.repo = SnapshotRepo(db)
        self.driver = driver
        self.runner = runner
        self.storage = storage
        self.disks = disks

    def for_vm(self, ref: str) -> list[Snapshot]:
        return self.repo.for_vm(self.db.get_vm(ref).id)

    def _submit(self, vm: Vm, kind: str, work: Work, allowed: frozenset[VmState], verb: str) -> Job:
        """Run `work` holding the VM and its volumes (a snapshot moves their top images), state checked twice."""
        label = f"vm '{vm.name}'"
        self.runner.check_free(vm.id, label)

        def check(state: VmState) -> None:
            if state not in allowed:
                raise InvalidState(label, verb, state.value, (s.value for s in allowed))

        check(vm.state)

        async def checked(context: JobContext) -> str:
            check(self.db.get_vm(vm.id).state)  # again, now that the locks are held
            return await work(context)

        return self.runner.submit(kind, vm.id, label, checked, locks=self.disks.locks(vm.spec.disks))

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
            current = self.db.get_vm(vm.id)
            if spec.memory:
                snapshot = self.repo.add(vm.id, spec.name, "memory", spec.description, "running", [
                    SnapshotLayer(disk=disk_key(d), frozen=str(d.path), format=d.format) for d in writable])
                try:
                    await self.driver.memory_snapshot(vm.id, "save", snapshot.id, [str(d.path) for d in writable])
                except BaseException:
                    self.repo.delete(snapshot)
                    raise
                return f"memory snapshot '{spec.name}' of vm '{vm.name}'"
            layers, new_disks = await asyncio.to_thread(self._make_overlays, current.spec)
            live = is_live(current.state)
            if live:
                try:
                    await self.driver.snapshot_disks(vm.id, [(layer.frozen, str(new_disks[i].path))
                                                             for i, layer in enumerate(layers)])
                except BaseException:
                    for disk in new_disks:
                        Path(str(disk.path)).unlink(missing_ok=True)
                    raise
            self._switch_disks(current, {layer.disk: disk for layer, disk in zip(layers, new_disks, strict=True)})
            self.repo.add(vm.id, spec.name, "disk", spec.description, "running" if live else "stopped", layers)
            return f"disk snapshot '{spec.name}' of vm '{vm.name}' ({len(layers)} disk(s))"

        allowed = frozenset({VmState.RUNNING, VmState.PAUSED, VmState.STOPPED, VmState.CRASHED})
        return self._submit(vm, "vm.snapshot", work, allowed, "snapshot")

    def _make_overlays(self, spec: VmSpec) -> tuple[list[SnapshotLayer], list[DiskSpec]]:
        """Create an empty overlay on each writable disk's current image (nothing is switched yet)."""
        layers: list[SnapshotLayer] = []
        new_disks: list[DiskSpec] = []
        try:
            for disk in spec.disks:
                if disk.readonly:
                    continue
                top = Path(str(disk.path))
                overlay = top.with_name(f"{top.name.split('@')[0]}@{secrets.token_hex(4)}")
                size = qemu_img.info(top, disk.format).virtual_size
                qemu_img.create(overlay, "qcow2", size, backing=top, backing_fmt=disk.format)
                layers.append(SnapshotLayer(disk=disk_key(disk), frozen=str(top), format=disk.format))
                new_disks.append(disk.model_copy(update={"path": str(overlay), "format": "qcow2"}))
        except BaseException:
            for made in new_disks:
                Path(str(made.path)).unlink(missing_ok=True)
            raise
        return layers, new_disks

    def _switch_disks(self, vm: Vm, replacement: dict[str, DiskSpec]) -> None:
        """Point the VM's disks (and their volumes) at new top images."""
        disks = [replacement.get(disk_key(d), d) for d in vm.spec.disks]
        self.db.update_vm_spec(vm.id, vm.spec.model_copy(update={"disks": disks}))
        for disk in disks:
            if disk.volume is not None and disk_key(disk) in replacement:
                self.storage.move_volume_top(disk.volume, str(disk.path), disk.format)

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
            current = self.db.get_vm(vm.id)
            if snapshot.kind == "memory":
                images = [layer.frozen for layer in snapshot.layers]
                if is_live(current.state):
                    await self.driver.memory_snapshot(vm.id, "load", snapshot.id, images)
                else:
                    boot = self.images.boot_image(current.spec)
                    status = await self.driver.start(vm.id, self.boot_spec(current), boot, restore=snapshot.id)
                    self.db.set_vm_state(vm.id, status.state, f"resumed from snapshot '{name}'", accel=status.accel)
                self.repo.set_current(vm.id, snapshot.id)
                return f"vm '{vm.name}' is back at memory snapshot '{name}'"
            replacement: dict[str, DiskSpec] = {}
            abandoned: list[str] = []
            by_key = {disk_key(d): d for d in current.spec.disks}
            for layer in snapshot.layers:
                disk = by_key.get(layer.disk)
                if disk is None:
                    continue  # detached since: nothing to revert on it
                frozen = Path(layer.frozen)
                overlay = frozen.with_name(f"{frozen.name.split('@')[0]}@{secrets.token_hex(4)}")
                size = qemu_img.info(frozen, layer.format).virtual_size
                await asyncio.to_thread(qemu_img.create, overlay, "qcow2", size, backing=frozen,
                                        backing_fmt=layer.format)
                replacement[layer.disk] = disk.model_copy(update={"path": str(overlay), "format": "qcow2"})
                abandoned.append(str(disk.path))
            self._switch_disks(current, replacement)
            self.repo.set_current(vm.id, snapshot.id)
            self._remove_unneeded(vm, abandoned)
            return f"vm '{vm.name}' disks are back at snapshot '{name}'"

        return self._submit(vm, "vm.revert", work, allowed, "revert")

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
        plan = [] if snapshot.kind == "memory" else self._merge_plan(vm, snapshot)

        async def work(context: JobContext) -> str:
            current = self.db.get_vm(vm.id)
            live = is_live(current.state)
            if snapshot.kind == "memory":
                images = [layer.frozen for layer in snapshot.layers]
                if live and all(image in {str(d.path) for d in current.spec.disks} for image in images):
                    await self.driver.memory_snapshot(vm.id, "delete", snapshot.id, images)
                else:
                    for image in images:
                        await asyncio.to_thread(_delete_internal, Path(image), snapshot.id)
                self.repo.delete(snapshot)
                return f"deleted memory snapshot '{name}'"
            replacement: dict[str, DiskSpec] = {}
            for layer, above, disk in plan:
                # Merge `above` (the changes made after the snapshot) into the frozen image: the snapshot's state
                # is then gone, and the frozen image carries the newer data.
                if live:
                    await self.driver.commit_disk(vm.id, str(disk.path), above, layer.frozen)
                else:
                    await asyncio.to_thread(qemu_img.commit, Path(above), "qcow2")
                    if above != disk.path:
                        child = self._child_of(current, disk, above)
                        await asyncio.to_thread(qemu_img.rebase_unsafe, Path(child), "qcow2", Path(layer.frozen),
                                                layer.format)
                if above == disk.path:
                    replacement[layer.disk] = disk.model_copy(update={"path": layer.frozen, "format": layer.format})
                self._rename_frozen(vm, above, layer)
                Path(above).unlink(missing_ok=True)
            self._switch_disks(current, replacement)
            self.repo.delete(snapshot)
            return f"deleted disk snapshot '{name}' (merged {len(plan)} layer(s))"

        return self._submit(vm, "vm.snapshot-delete", work, allowed, "delete snapshot")

    def _chain(self, disk: DiskSpec) -> list[str]:
        """The disk's images, top first."""
        return [str(disk.path), *(layer.path for layer in self.disks.chain_of(disk, "disks"))]

    def _merge_plan(self, vm: Vm, snapshot: Snapshot) -> list[tuple[SnapshotLayer, str, DiskSpec]]:
        """For each layer of the snapshot: the image right above its frozen image in the disk's current chain."""
        by_key = {disk_key(d): d for d in vm.spec.disks}
        others = [s for s in self.repo.for_vm(vm.id) if s.id != snapshot.id]
        plan = []
        for layer in snapshot.layers:
            disk = by_key.get(layer.disk)
            if disk is None:
                continue
            chain = self._chain(disk)
            if layer.frozen not in chain[1:]:
                raise Conflict(f"snapshot '{snapshot.name}' is not on the VM's current branch; revert to it, or "
                               "delete the snapshots of the other branch first")
            above = chain[chain.index(layer.frozen) - 1]
            if any(o.kind == "memory" and any(x.frozen in (above, layer.frozen) for x in o.layers) for o in others):
                raise Conflict(f"a memory snapshot lives in {above}; delete it first")
            if any(x.frozen == layer.frozen for o in others for x in o.layers) or self._branched(vm, layer.frozen):
                raise Conflict(f"{layer.frozen} is the base of another branch; delete that branch first")
            plan.append((layer, above, disk))
        return plan

    def _branched(self, vm: Vm, frozen: str) -> bool:
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

    def _child_of(self, vm: Vm, disk: DiskSpec, image: str) -> str:
        chain = self._chain(disk)
        return chain[chain.index(image) - 1]

    def _rename_frozen(self, vm: Vm, merged: str, layer: SnapshotLayer) -> None:
        """Snapshots that froze the merged image now find their state in the image it was merged into."""
        for other in self.repo.for_vm(vm.id):
            if any(x.frozen == merged for x in other.layers):
                self.repo.set_layers(other.id, [x.model_copy(update={"frozen": layer.frozen})
                                                if x.frozen == merged else x for x in other.layers])

    def _remove_unneeded(self, vm: Vm, images: list[str]) -> None:
        """Delete abandoned top images that no snapshot froze (a revert leaves them behind)."""
        frozen = {x.frozen for s in self.repo.for_vm(vm.id) for x in s.layers}
        for image in images:
            if image not in frozen and "@" in Path(image).name:
                Path(image).unlink(missing_ok=True)


def _delete_internal(image: Path, tag: str) -> None:
    if any(s.name == tag for s in qemu_img.snapshot_list(image, "qcow2")):
        qemu_img.snapshot_delete(image, "qcow2", tag)
