"""VM templates: a stopped VM frozen as a pattern; new VMs get its settings and linked clones of its disks."""

from __future__ import annotations

from typing import Any

from virtfleet.errors import Conflict, InvalidSpec, InvalidState
from virtfleet.jobs.runner import JobRunner
from virtfleet.jobs.storage import StorageService
from virtfleet.jobs.vm_create import VmCreator, default_volume_name
from virtfleet.model.job import Job
from virtfleet.model.vm import Vm, VmCreate, VmState
from virtfleet.store.db import Database


class VmTemplates:
    def __init__(self, db: Database, storage: StorageService, runner: JobRunner, creator: VmCreator) -> None:
        self.db = db
        self.storage = storage
        self.runner = runner
        self.creator = creator

    def make_template(self, ref: str) -> Vm:
        """Freeze a stopped VM: its volumes become read-only templates and it can no longer be started."""
        vm = self.db.get_vm(ref)
        self.runner.check_all_free({vm.id: f"vm '{vm.name}'", **self.creator.vms.disks.locks(vm.spec.disks)})
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
        """A new VM with the template's settings, new MACs and clones of its volumes: one create job (the clones
        and the record, or nothing)."""
        template = self.db.get_vm(ref)
        if not template.template:
            raise Conflict(f"vm '{template.name}' is not a template; make it one first (vm template)")
        fields = template.spec.model_dump(exclude={"disks"})
        fields.update(name=name, **{k: v for k, v in (("cpus", cpus), ("memory", memory)) if v is not None})
        fields["nics"] = [{**nic, "mac": None} for nic in fields["nics"]]  # new MACs for the new VM
        if fields["cloud_init"] is not None:
            fields["cloud_init"]["hostname"] = None  # the clone answers to its own name
        disks: list[dict[str, Any]] = []
        for index, disk in enumerate(template.spec.disks):
            if disk.volume is None or disk.readonly:
                disks.append(disk.model_dump())  # shared as it is
                continue
            options = disk.model_dump(exclude={"volume", "path", "format", "backing_chain"})
            disks.append({**options, "new": {"clone_of": disk.volume, "linked": linked,
                                             "name": default_volume_name(name, index)}})
        kind = "linked" if linked else "full"

        def still_a_template() -> None:  # again, inside the job, now that the template and its disks are locked
            if not self.db.get_vm(template.id).template:
                raise Conflict(f"vm '{template.name}' is no longer a template")

        job = self.creator.create(VmCreate.model_validate({**fields, "disks": disks}), kind="vm.clone", as_job=True,
                                  note=f"created from template '{template.name}' ({kind} clones)",
                                  extra_locks={template.id: f"vm '{template.name}'"}, recheck=still_a_template)
        assert isinstance(job, Job)  # noqa: S101 - as_job
        return job
