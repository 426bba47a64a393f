"""Creating a VM with the volumes it needs, as one server-side operation: everything or nothing.

The whole request is checked before anything exists (names, sizes, room in each pool, networks, image, cloud-init,
what the driver can run), so bad input gets a 422 naming the field (a 501 naming the capability the driver lacks)
and leaves nothing behind. A VM whose disks all exist is recorded at once; one that needs new volumes becomes one
job: an intent lists the volumes it will make, then each is made and recorded, then the VM. A failure in the job,
or a crash of the daemon anywhere in it, rolls back to nothing: the volumes made for a VM that was never recorded
are deleted; once the VM is recorded, the create has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from virtfleet import failpoints
from virtfleet.errors import Conflict, InvalidSpec, NotFound
from virtfleet.jobs import capability_check
from virtfleet.jobs.recovery import Outcome, Recovery
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.jobs.storage import DEFAULT_POOL, StorageService, VolumePlan, volume_key
from virtfleet.jobs.vm_disks import cloud_init_for
from virtfleet.jobs.vms import VmService
from virtfleet.model.job import Job
from virtfleet.model.vm import DiskRequest, DiskSpec, NewVolume, Vm, VmCreate, VmSpec, valid_name
from virtfleet.store.intent_repo import Intent, IntentLog

log = logging.getLogger(__name__)

INTENT_KIND = "vm.create"

failpoints.declare("vm.create.after-intent", "the intent of a VM create is recorded, no volume made yet")
failpoints.declare("vm.create.after-volume-file", "a new volume's file exists, not recorded; no VM record")
failpoints.declare("vm.create.after-volume-record", "a new volume is recorded; no VM record")
failpoints.declare("vm.create.after-vm-record", "the VM is recorded with its new volumes, the intent still open")


@dataclass(frozen=True)
class CreatePlan:
    spec: VmSpec  # what gets recorded: each new disk names the volume planned for it
    volumes: list[tuple[int, VolumePlan]]  # (index in disks, the volume to make for it)
    attached: list[str]  # the existing volumes it attaches, as POOL/NAME


def default_volume_name(vm_name: str, index: int) -> str:
    return f"{vm_name}-disk{index}"


class VmCreator:
    def __init__(self, vms: VmService, storage: StorageService, runner: JobRunner, intents: IntentLog) -> None:
        self.vms = vms
        self.db = vms.db
        self.storage = storage
        self.runner = runner
        self.intents = intents

    # --- the one entry point of the API, the CLI and the web UI -----------------------------------------------
    def create(self, request: VmCreate, *, kind: str = "vm.create", note: str | None = None, as_job: bool = False,
               extra_locks: dict[str, str] | None = None, recheck: Callable[[], None] | None = None) -> Vm | Job:
        """Check everything, then: the recorded VM when no volume has to be made (unless `as_job`), else the job
        that makes them (`note`: a line for the new VM's event log, e.g. which template it came from). The job also
        holds `extra_locks` and runs `recheck` first, once they are held."""
        label = f"vm '{request.name}'"
        self.runner.check_free(f"vm-name:{request.name}", label)  # a create of this name running: busy, say so
        plan = self.plan(request)
        locks = {**self._locks(plan), **(extra_locks or {})}
        if not plan.volumes and not as_job:
            for key, key_label in locks.items():
                self.runner.check_free(key, key_label)
            return self._record(plan.spec, note)

        def run(context: JobContext) -> str:
            if recheck is not None:
                recheck()
            return self._run(request, context, note)

        async def work(context: JobContext) -> str:
            return await asyncio.to_thread(run, context)

        return self.runner.submit(kind, f"vm-name:{request.name}", label, work, locks=locks)

    def _locks(self, plan: CreatePlan) -> dict[str, str]:
        """Besides the VM's name: each volume it makes (by the name it will take: it has no id yet), and each
        existing volume it attaches or clones (by id, the key every job on a volume takes)."""
        locks = {f"volume:{made.ref}": f"volume '{made.ref}'" for _, made in plan.volumes}
        read = [self.storage.volume(ref) for ref in plan.attached]
        read += [made.source for _, made in plan.volumes if made.source is not None]
        locks.update({volume_key(volume): f"volume '{volume.ref}'" for volume in read})
        return locks

    # --- checks: everything, before anything is made -----------------------------------------------------------
    def plan(self, request: VmCreate) -> CreatePlan:
        with contextlib.suppress(NotFound):
            self.db.get_vm(request.name)
            raise Conflict(f"a VM named '{request.name}' already exists")
        volumes = [(index, self._plan_volume(request.name, index, new)) for index, new in request.new_disks()]
        self._check_names_and_room(volumes)
        planned = dict(volumes)
        disks = [disk_spec(disk, planned[index].ref if index in planned else None)
                 for index, disk in enumerate(request.disks)]
        spec = VmSpec.model_validate({**request.model_dump(exclude={"disks"}), "disks": disks})
        return CreatePlan(spec, volumes, self._check_spec(spec, planned))

    def _plan_volume(self, vm_name: str, index: int, new: NewVolume) -> VolumePlan:
        field = f"disks[{index}].new"
        name = new.name or default_volume_name(vm_name, index)
        if not valid_name(name):
            raise InvalidSpec(f"{field}.name", f"the default name {name} is too long; name the volume (new.name)")
        try:
            if new.clone_of is not None:
                return self.storage.plan_clone(new.clone_of, name, linked=new.linked, pool_name=new.pool)
            return self.storage.plan_blank(new.pool or DEFAULT_POOL, name, new.format or "qcow2", int(new.size or 0))
        except NotFound as error:
            where = "clone_of" if error.kind == "volume" else error.kind
            raise InvalidSpec(f"{field}.{where}", f"no {error.kind} named {error.name}") from None
        except InvalidSpec as error:
            where = "clone_of" if error.field == "size" and new.clone_of is not None else error.field
            raise InvalidSpec(f"{field}.{where}", error.problem) from None
        except Conflict as error:  # the name is taken: a field the user can change, so 422 rather than 409
            hint = "" if new.name else "; name the new volume (new.name)"
            raise InvalidSpec(f"{field}.name", f"{error.message}{hint}") from None

    def _check_names_and_room(self, volumes: list[tuple[int, VolumePlan]]) -> None:
        """Each volume was checked alone; together they need distinct names and room for all of them."""
        seen: set[str] = set()
        by_pool: dict[str, list[tuple[int, VolumePlan]]] = defaultdict(list)
        for index, plan in volumes:
            if plan.ref in seen:
                raise InvalidSpec(f"disks[{index}].new.name", f"another new disk of this VM is {plan.ref}")
            seen.add(plan.ref)
            by_pool[plan.pool.name].append((index, plan))
        for pool, planned in by_pool.items():
            needed = sum(plan.room for _, plan in planned)
            if len(planned) < 2 or needed == 0:
                continue
            usage = planned[0][1].backend.usage()
            if not usage.thin and needed > usage.available:
                raise InvalidSpec(f"disks[{planned[-1][0]}].new.size", f"the new volumes in pool '{pool}' need "
                                  f"{needed} bytes together; it has {usage.available} free")

    def _check_spec(self, spec: VmSpec, planned: dict[int, VolumePlan]) -> list[str]:
        """What VmService.create checks, with the planned volumes standing in for volumes not made yet; returns the
        existing volumes the VM attaches."""
        vms = self.vms
        if spec.cloud_init is not None:
            cloud_init_for(spec.name, "check", spec.cloud_init)
        paths: list[str | None] = []
        attached = []
        for index, disk in enumerate(spec.disks):
            if index in planned:
                paths.append(str(planned[index].backend.volume_path(planned[index].name)))
                continue
            resolved = vms.disks.resolve_disk(disk, f"disks[{index}]")
            paths.append(resolved.path)
            if resolved.volume is not None:
                attached.append(resolved.volume)
        for index, path in enumerate(paths):
            if path in paths[:index]:
                raise InvalidSpec(f"disks[{index}]", f"{path} is attached twice")
        vms.networks.resolve(spec)
        vms.images.check_spec(spec)
        capability_check.check_spec(vms.driver, spec, what=f"create vm '{spec.name}'")
        return attached

    # --- the job ---------------------------------------------------------------------------------------------
    def _run(self, request: VmCreate, context: JobContext, note: str | None) -> str:
        plan = self.plan(request)  # again, under the locks: what changed before the job started is caught here
        if not plan.volumes:
            return f"created vm '{self._record(plan.spec, note, within=context.job).name}'"
        made = [{"pool": volume.pool.name, "name": volume.name} for _, volume in plan.volumes]
        intent = self.intents.begin(INTENT_KIND, request.name, {"vm": request.name, "volumes": made},
                                    job_id=context.job.id)
        try:
            failpoints.hit("vm.create.after-intent")
            share = 90 // len(plan.volumes)
            for count, (_, volume) in enumerate(plan.volumes):
                context.progress(count * share, f"making volume {volume.ref}")
                path = self.storage.make_file(volume, copy_progress(context, volume.ref, count * share, share))
                failpoints.hit("vm.create.after-volume-file")
                self.storage.record(volume, path)
                failpoints.hit("vm.create.after-volume-record")
            vm = self._record(plan.spec, note, within=context.job)
            failpoints.hit("vm.create.after-vm-record")
        except BaseException:
            try:
                self._settle(intent)
            except Exception:  # the intent stays: the next start rolls back what this could not
                log.exception("rolling back the create of vm %s failed", request.name)
            else:
                self.intents.end(intent)
            raise
        self.intents.end(intent)
        refs = ", ".join(volume.ref for _, volume in plan.volumes)
        return f"created vm '{vm.name}' with new volume(s) {refs}"

    def _record(self, spec: VmSpec, note: str | None, *, within: Job | None = None) -> Vm:
        # Resolves and checks the spec once more, with the made volumes in it; `within`: the create job, which holds
        # the volumes' locks itself.
        vm = self.vms.create(spec, within=within)
        if note:
            self.db.add_event(vm.id, "created", note)
        return vm

    # --- rollback, in process and at start-up ----------------------------------------------------------------
    def _settle(self, intent: Intent) -> Outcome:
        name = str(intent.data["vm"])
        volumes = [(str(v["pool"]), str(v["name"])) for v in intent.data["volumes"]]
        refs = {f"{pool}/{volume}" for pool, volume in volumes}
        with contextlib.suppress(NotFound):
            vm = self.db.get_vm(name)
            # The name was free and locked when the intent began: a VM with it and these volumes is ours.
            if refs <= {disk.volume for disk in vm.spec.disks}:
                return Outcome(True, f"vm '{name}' is recorded with its volumes")
        removed = [f"{pool}/{volume}" for pool, volume in volumes if self.storage.discard_made(pool, volume)]
        what = f"removed {', '.join(removed)}, made for it" if removed else "nothing had been made"
        return Outcome(False, f"vm '{name}' was never recorded: {what}")

    def register_recovery(self, recovery: Recovery) -> None:
        async def recover(intent: Intent) -> Outcome:
            return await asyncio.to_thread(self._settle, intent)

        recovery.register(INTENT_KIND, recover)


def copy_progress(context: JobContext, ref: str, start: int, share: int) -> Callable[[float], None]:
    """A full clone's copy progress as part of the job's: `share` percent from `start`."""
    return lambda pct: context.progress(start + int(pct * share / 100), f"copying into {ref}: {pct:.0f}%")


def disk_spec(disk: DiskRequest, new_volume: str | None) -> DiskSpec:
    """The disk as the VM's spec records it: a new disk names the volume made for it."""
    fields = disk.model_dump(exclude={"new"})
    if new_volume is not None:
        fields.update(volume=new_volume, path=None)
        fields.pop("format")  # the volume's, filled in when the spec is resolved
    return DiskSpec.model_validate(fields)
