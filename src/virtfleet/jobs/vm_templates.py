"""VM templates: a stopped VM frozen as a pattern; new VMs get its settings and linked clones of its disks."""

from __future__ import annotations

from virtfleet.errors import Conflict, InvalidSpec, InvalidState, NotFound
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.jobs.storage import StorageService
from virtfleet.jobs.vms import VmService
from virtfleet.model.job import Job, JobStatus
from virtfleet.model.vm import Vm, VmState
from virtfleet.store.db import Database

CLONE_TIMEOUT = 3600.0


class VmTemplates:
    def __init__(self, db: Database, vms: VmService, storage: StorageService, runner: JobRunner) -> None:
        self.db = db
        self.vms = vms
        self.storage = storage
        self.runner = runner

    def make_template(self, ref: str) -> Vm:
        """Freeze a stopped VM: its volumes become read-only templates and it can no longer be started."""
        vm = self.db.get_vm(ref)
        self.runner.check_all_free({vm.id: f"vm '{vm.name}'", **self.vms.disks.locks(vm.spec.disks)})
        if vm.state not in (VmState.STOPPED, VmState.CRASHED):
            raise InvalidState(f"vm '{vm.name}'", "template", vm.state.value, ["stopped", "crashed"])
        for index, disk in enumerate(vm.spec.disks):
            if disk.volume is None and not disk.readonly:
                raise InvalidSpec(f"disks[{index}]", "only volumes can be shared by linked clones; make it a volume")
        # The VM itself would keep the volumes "attached"; a template VM only reads them through its clones.
        self.db.set_vm_template(vm.id, True)
        try:
            for disk in vm.spec.disks:
                if disk.volume is not None and not disk.readonly:
                    self.storage.set_template(disk.volume, True)
        except BaseException:
            self.db.set_vm_template(vm.id, False)
            raise
        self.db.add_event(vm.id, "template", "became a template")
        return self.db.get_vm(vm.id)

    def clone(self, ref: str, name: str, *, linked: bool = True, cpus: int | None = None,
              memory: int | None = None) -> Job:
        template = self.db.get_vm(ref)
        if not template.template:
            raise Conflict(f"vm '{template.name}' is not a template; make it one first (vm template)")
        overrides: dict[str, object] = {"name": name}
        if cpus is not None:
            overrides["cpus"] = cpus
        if memory is not None:
            overrides["memory"] = memory
        base = template.spec.model_copy(update=overrides)
        # Check the new spec before any copy is made (name, sizes), with the template's disks as stand-ins.
        type(base).model_validate(base.model_dump())
        try:
            self.db.get_vm(name)
        except NotFound:
            pass
        else:
            raise Conflict(f"a vm named '{name}' already exists")

        async def work(context: JobContext) -> str:
            if not self.db.get_vm(template.id).template:  # again, now that the template and its disks are locked
                raise Conflict(f"vm '{template.name}' is no longer a template")
            made: list[str] = []
            disks = []
            try:
                for index, disk in enumerate(base.disks):
                    if disk.volume is None or disk.readonly:
                        disks.append(disk)
                        continue
                    pool = disk.volume.split("/", 1)[0]
                    clone_name = f"{name}-disk{index}"
                    context.progress(10 + 70 * index // max(1, len(base.disks)), f"cloning {disk.volume}")
                    job = self.storage.clone_volume(disk.volume, clone_name, linked=linked, within=context.job)
                    done = await self.runner.wait(job.id, CLONE_TIMEOUT)
                    if done.status is not JobStatus.SUCCEEDED:
                        raise Conflict(f"cloning {disk.volume} failed: {done.error}")
                    made.append(f"{pool}/{clone_name}")
                    disks.append(disk.model_copy(update={"volume": f"{pool}/{clone_name}", "path": None}))
                nics = [nic.model_copy(update={"mac": None}) for nic in base.nics]  # new MACs for the new VM
                cloud_init = (base.cloud_init.model_copy(update={"hostname": None})
                              if base.cloud_init is not None else None)
                spec = base.model_copy(update={"disks": disks, "nics": nics, "cloud_init": cloud_init})
                vm = self.vms.create(type(base).model_validate(spec.model_dump()), within=context.job)
            except BaseException:
                for volume in made:  # nothing lost, nothing left: the clones made for it go
                    job = self.storage.delete_volume(volume, within=context.job)
                    await self.runner.wait(job.id, CLONE_TIMEOUT)
                raise
            kind = "linked" if linked else "full"
            self.db.add_event(vm.id, "created", f"created from template '{template.name}' ({kind} clones)")
            return f"created vm '{name}' from template '{template.name}' ({len(made)} {kind} clone(s))"

        # The template and its disks are locked while they are copied: not deleted, changed or un-templated meanwhile.
        locks = {template.id: f"vm '{template.name}'", **self.vms.disks.locks(template.spec.disks)}
        return self.runner.submit("vm.clone", f"vm-name:{name}", f"vm '{name}'", work, locks=locks)
