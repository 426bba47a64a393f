"""`host adopt`: take over the domains other tools made on this host (virt-manager, oVirt's VDSM, virsh) as they are.

A foreign domain's XML is read by the v2v libvirt reader and planned by the v2v planner, like an import: the same
report of what is not carried over, the same --network-map. Unlike an import nothing is copied: each disk file (and
each layer of its qcow2 backing chain) must already lie in a dir pool, and is registered there in place as a volume
(the layers below the top as templates: an overlay reads them, so nothing may write them). The VM is recorded in the
state the domain is in (a running domain keeps running: nothing is restarted), with the domain's UUID as its id, and
the driver marks the domain as ours.

Everything that can be refused is refused before a job exists, naming the domain and the disk or NIC, and nothing
changes. The job adopts one domain at a time; each domain is all or nothing: an intent lists the records made for it
(volumes, then the VM), a failure removes them at once and a crash at the next start (unless the driver had already
taken the domain over, which finishes it). Files are never deleted, moved or rewritten: they were never ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from virtfleet import failpoints
from virtfleet.drivers.base import Driver, ForeignDomain
from virtfleet.errors import Conflict, DriverError, InvalidSpec, NotFound, Unsupported, VirtfleetError
from virtfleet.jobs.networks import NetworkService
from virtfleet.jobs.recovery import Outcome, Recovery
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.jobs.storage import StorageService, volume_key
from virtfleet.jobs.vm_disks import DiskResolver, backing_chain, vm_using
from virtfleet.model.job import Job
from virtfleet.model.names import NAME_PATTERN
from virtfleet.model.network import NicSpec
from virtfleet.model.storage import Pool, VolumeFormat
from virtfleet.model.vm import DiskSpec, VmSpec, VmState
from virtfleet.storage import qemu_img
from virtfleet.storage.identity import file_id
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import Intent, IntentLog
from virtfleet.v2v import disks as v2v_disks
from virtfleet.v2v import libvirt_xml
from virtfleet.v2v.errors import SourceError
from virtfleet.v2v.libvirt_xml import DiskElement
from virtfleet.v2v.model import ImportPlan, Layer, SourceDisk
from virtfleet.v2v.planner import PlanOptions, make_plan

INTENT = "host.adopt"
failpoints.declare("host.adopt.after-volumes", "an adopted domain's volumes are recorded, not its VM")
failpoints.declare("host.adopt.after-vm", "an adopted domain's VM is recorded, the domain not yet taken over")
failpoints.declare("host.adopt.after-take-over", "the domain carries our metadata, the intent is not yet closed")
_RECORDING_VM, _VM_RECORDED = "vm-recording", "vm-recorded"
_ADOPTABLE_STATES = (VmState.RUNNING, VmState.PAUSED, VmState.STOPPED)


class AdoptedLayer(BaseModel):
    """One image of an adopted disk, top first, and the volume it is (or becomes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # the volume's file in its pool (the domain may spell it otherwise: a link, '..')
    format: VolumeFormat
    size: int
    volume: str  # POOL/NAME
    new: bool  # registered by this adoption (False: a volume already, e.g. a base two domains share)
    template: bool  # a backing layer: read by the layer above, so never written


class AdoptedDisk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    bus: Literal["virtio-blk", "virtio-scsi"]
    boot: bool
    layers: list[AdoptedLayer]


class AdoptPlan(BaseModel):
    """What adopting one foreign domain makes, and what stops it (problems)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str
    uuid: str
    state: VmState
    vm: str  # the VM's name in virtfleet
    disks: list[AdoptedDisk]
    warnings: list[str]  # what is not carried over into the recorded spec (the domain itself is left as it is)
    problems: list[str]  # empty when it can be adopted
    # The v2v plan it came from (None when the XML could not be read); its disks' pool, volume and conversion are
    # what an import would do: `disks` above is what adopting does.
    plan: ImportPlan | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def adoptable(self) -> bool:
        return not self.problems


class AdoptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        min_length=1, max_length=64, description="names of foreign domains")
    network_map: dict[str, str] = Field(default_factory=dict, max_length=64,
                                        description="source network or bridge -> virtfleet network ('*': any other)")
    dry_run: bool = Field(default=False, description="only answer the plans; nothing changes")


def _adopt_disk(rel: str, disk: DiskElement, warnings: list[str]) -> SourceDisk:
    """A disk stays where it is: its host path is kept as is (the service finds the pool it lies in)."""
    if disk.kind == "block":
        return SourceDisk(label=disk.label, layout="host block device", controller=disk.controller,
                          device=disk.source)
    if disk.kind != "file" or disk.source is None:
        protocol = f" ({disk.protocol})" if disk.protocol else ""
        raise SourceError(rel, f"{disk.label}.type", f"a {disk.kind} disk{protocol} is not a file in a pool; "
                                                     "copy it into a file in a dir pool first")
    fmt = v2v_disks.format_of(disk.source, rel, f"{disk.label}.driver", disk.driver_type)
    return SourceDisk(label=disk.label, layers=[Layer(file=disk.source, format=fmt)], layout=fmt,
                      controller=disk.controller)


class AdoptService:
    def __init__(self, db: Database, driver: Driver, runner: JobRunner, storage: StorageService,
                 disks: DiskResolver, networks: NetworkService, intents: IntentLog, *, host: str) -> None:
        self.db = db
        self.driver = driver
        self.runner = runner
        self.storage = storage
        self.disks = disks
        self.networks = networks
        self.intents = intents
        self.host = host

    def _require_capability(self) -> None:
        if not self.driver.capabilities().adopt:
            raise Unsupported(f"the {self.driver.name} driver cannot take over domains made by other tools "
                              "(capability 'adopt'); run the server with the libvirt driver", "adopt")

    # --- planning (the listing and the dry run) -----------------------------------------------------------
    async def plans(self, names: list[str] | None = None, network_map: dict[str, str] | None = None
                    ) -> list[AdoptPlan]:
        """The plan of every foreign domain (or of those named: NotFound for a name that is not one)."""
        self._require_capability()
        found = {domain.name: domain for domain in await self.driver.foreign_domains()}
        if names is None:
            chosen = list(found.values())
        else:
            if len(set(names)) != len(names):
                raise InvalidSpec("domains", "a domain is named twice")
            missing = [name for name in names if name not in found]
            if missing:
                raise NotFound("foreign domain", missing[0])
            chosen = [found[name] for name in names]
        mapping = dict(network_map or {})
        return await asyncio.to_thread(lambda: [self._plan(domain, mapping) for domain in chosen])

    def _plan(self, domain: ForeignDomain, network_map: dict[str, str]) -> AdoptPlan:
        rel = f"domain {domain.name}"
        problems: list[str] = []
        if not domain.persistent:
            problems.append(f"{domain.name} is transient: it has no definition that outlives it, so it cannot be "
                            "managed across restarts; make it persistent first (virsh define)")
        if domain.state not in _ADOPTABLE_STATES:
            problems.append(f"{domain.name} is {domain.state.value}; adopt it once it is running or stopped")
        try:
            source = libvirt_xml.parse(domain.xml.encode(), rel,
                                       lambda disk, warnings: _adopt_disk(rel, disk, warnings))
        except SourceError as error:
            return AdoptPlan(domain=domain.name, uuid=domain.uuid, state=domain.state, vm=domain.name, disks=[],
                             warnings=[], problems=[*problems, error.message], plan=None)
        networks = frozenset(network.name for network in self.networks.all())
        plan = make_plan(source, PlanOptions(network_map=network_map, networks=networks))
        # The v2v plan's disk choices (pool, volume name, conversion) are an import's: here disks stay in place.
        problems += plan.problems
        adopted = []
        for planned, disk in zip(plan.disks, source.disks, strict=True):
            try:
                layers = self._layers(disk)
            except InvalidSpec as error:
                problems.append(f"{disk.label}: {error.problem}")
                continue
            except DriverError as error:  # qemu-img cannot read it as the format the domain names
                problems.append(f"{disk.label}: {disk.layers[0].file}: {error.message}")
                continue
            adopted.append(AdoptedDisk(label=disk.label, bus=planned.bus, boot=planned.boot, layers=layers))
        problems += self._clashes(domain, plan, adopted)
        warnings = list(plan.warnings)
        if domain.state is not VmState.STOPPED:
            warnings.append(f"{domain.name} keeps running as it is; the recorded spec (machine q35, BIOS, the disk "
                            "buses and NIC models planned) applies from its next start by virtfleet")
        return AdoptPlan(domain=domain.name, uuid=domain.uuid, state=domain.state, vm=plan.name, disks=adopted,
                         warnings=warnings, problems=problems, plan=plan)

    def _clashes(self, domain: ForeignDomain, plan: ImportPlan, adopted: list[AdoptedDisk]) -> list[str]:
        problems = []
        with contextlib.suppress(NotFound):
            self.db.get_vm(plan.name)
            problems.append(f"name: a VM named '{plan.name}' exists already; rename one of them first "
                            f"(virsh domrename {domain.name} NEW-NAME, or rename the VM)")
        with contextlib.suppress(NotFound):
            self.db.get_vm(domain.uuid)
            problems.append(f"uuid: virtfleet has a VM with the id {domain.uuid} already")
        taken = {nic.mac: vm.name for vm in self.db.list_vms() for nic in vm.spec.nics if nic.mac}
        known = {network.name for network in self.networks.all()}
        for nic in plan.nics:
            if nic.network is not None and nic.network not in known:
                problems.append(f"{nic.label}: mapped to {nic.network!r}, which is no virtfleet network")
            if nic.mac in taken:
                problems.append(f"{nic.label}: the MAC {nic.mac} is used by vm '{taken[nic.mac]}' already")
        tops = [disk.layers[0].volume for disk in adopted]
        if len(set(tops)) != len(tops):
            problems.append("disks: one file is attached twice")
        return problems

    def _layers(self, disk: SourceDisk) -> list[AdoptedLayer]:
        """The disk's images, top first, each as the volume it is or will be; InvalidSpec says why not."""
        if disk.device is not None:
            raise InvalidSpec("source", f"{disk.device} is a host block device; adopting takes disk files in dir "
                                        "pools only: copy it into a file in a dir pool (or import the VM) first")
        top = disk.layers[0]
        if top.format not in ("qcow2", "raw"):
            raise InvalidSpec("driver", f"{top.file} is a {top.format} image; volumes are qcow2 or raw: convert it "
                                        "(virtfleet import) instead")
        fmt: VolumeFormat = "qcow2" if top.format == "qcow2" else "raw"
        if not os.path.isabs(top.file):
            raise InvalidSpec("source", f"{top.file} is not an absolute path")
        if file_id(top.file) is None:
            raise InvalidSpec("source", f"{top.file} does not exist")
        roots = [root.resolve() for root in self.storage.pool_roots()]
        # The same walk a start does (vm_disks.backing_chain): explicit formats, nothing outside the pools.
        below = backing_chain(DiskSpec(path=top.file, format=fmt), roots, "source")
        chain = [(top.file, fmt), *((layer.path, layer.format) for layer in below)]
        return [self._layer(path, layer_fmt, template=index > 0) for index, (path, layer_fmt) in enumerate(chain)]

    def _layer(self, path: str, fmt: VolumeFormat, *, template: bool) -> AdoptedLayer:
        existing = self.storage.volume_by_path(path)
        if existing is not None:
            if template and not existing.template:
                raise InvalidSpec("source", f"{path} is the volume {existing.ref}, which is not a template, and it "
                                            "backs this disk: a file an overlay reads must never be written")
            if not template:
                if existing.template:
                    raise InvalidSpec("source", f"{path} is the template {existing.ref}; a VM may not write it")
                user = vm_using(self.db, existing.path)
                if user is not None:
                    raise InvalidSpec("source", f"{path} is the volume {existing.ref}, attached to vm '{user}'")
            return AdoptedLayer(path=path, format=existing.format, size=existing.size, volume=existing.ref,
                                new=False, template=existing.template)
        pool, name = self._pool_of(path)
        # Recorded under the pool's own spelling of it (the same file, by identity), as every volume is: deleting
        # the volume later removes exactly this file.
        in_pool = self.storage.backend(pool).volume_path(name)
        info = qemu_img.info(in_pool, fmt)
        return AdoptedLayer(path=str(in_pool), format=fmt, size=info.virtual_size, volume=f"{pool.name}/{name}",
                            new=True, template=template)

    def _pool_of(self, path: str) -> tuple[Pool, str]:
        """The dir pool whose directory holds the file itself (by identity), and the volume name it takes."""
        real = Path(os.path.realpath(path))
        if file_id(real) is None:
            raise InvalidSpec("source", f"{path} does not exist")
        directory = file_id(real.parent)
        inside = None
        for pool in self.storage.repo.list_pools():
            backend = self.storage.backend(pool)
            if not backend.supports_backing_files:
                continue  # lvm: block devices, never a file
            if file_id(backend.mount_path) == directory:
                return pool, self._volume_name(pool, real)
            if real.is_relative_to(os.path.realpath(backend.mount_path)):
                inside = pool
        if inside is not None:
            raise InvalidSpec("source", f"{path} lies in a subdirectory of pool '{inside.name}'; a pool's volumes "
                                        f"are the files directly in {inside.mount_path}: move it there first")
        raise InvalidSpec("source", f"{path} is outside every storage pool; create a dir pool over {real.parent} "
                                    f"first (virtfleet pool create NAME --path {real.parent})")

    def _volume_name(self, pool: Pool, real: Path) -> str:
        name = real.name
        if not re.fullmatch(NAME_PATTERN, name):
            raise InvalidSpec("source", f"{real}: {name!r} is not a valid volume name (letters, digits, '.', '_', "
                                        "'-'; at most 63); rename the file first")
        with contextlib.suppress(NotFound):
            other = self.storage.repo.get_volume(pool.name, name)
            raise InvalidSpec("source", f"{real}: pool '{pool.name}' has a volume named {name} already "
                                        f"({other.path}), another file")
        return name

    # --- the job ------------------------------------------------------------------------------------------
    async def submit(self, request: AdoptRequest) -> Job:
        plans = await self.plans(request.domains, request.network_map)
        refused = [f"{plan.domain}: {'; '.join(plan.problems)}" for plan in plans if plan.problems]
        if refused:
            raise InvalidSpec("domains", " | ".join(refused))
        names = [plan.vm for plan in plans]
        if len(set(names)) != len(names):
            raise InvalidSpec("domains", "two of these domains would become VMs of the same name")
        locks = await asyncio.to_thread(self._locks, plans)
        network_map = dict(request.network_map)

        async def run(context: JobContext) -> str:
            done: list[str] = []
            for index, name in enumerate(request.domains):
                context.progress(int(index * 100 / len(request.domains)), f"adopting {name}")
                try:
                    done.append(await self._adopt(name, network_map, context))
                except VirtfleetError as error:
                    error.message = "; ".join([*done, f"{name}: not adopted, nothing of it kept: {error.message}"])
                    raise
            return "; ".join(done)

        return self.runner.submit("host.adopt", "host:adopt", "host adopt", run, locks=locks)

    def _locks(self, plans: list[AdoptPlan]) -> dict[str, str]:
        """What the job holds: each VM by name and id (the reconcile pass leaves a VM alone while a job holds it),
        each volume it makes by name and each existing one by id, as every job on them does."""
        locks: dict[str, str] = {}
        for plan in plans:
            locks[f"vm-name:{plan.vm}"] = f"vm '{plan.vm}'"
            locks[plan.uuid] = f"vm '{plan.vm}'"
            for disk in plan.disks:
                for layer in disk.layers:
                    locks[f"volume:{layer.volume}"] = f"volume '{layer.volume}'"
                    if not layer.new:
                        locks[volume_key(self.storage.volume(layer.volume))] = f"volume '{layer.volume}'"
        return locks

    async def _adopt(self, name: str, network_map: dict[str, str], context: JobContext) -> str:
        """Adopt one domain, or leave nothing of it: checked again now that the locks are held."""
        [plan] = await self.plans([name], network_map)
        if plan.problems:
            raise InvalidSpec("domains", f"{name}: {'; '.join(plan.problems)}")
        assert plan.plan is not None  # noqa: S101 - a plan without problems was read
        intent = await asyncio.to_thread(
            self.intents.begin, INTENT, f"domain:{name}",
            {"domain": name, "vm_id": plan.uuid, "vm": plan.vm, "volumes": []}, job_id=context.job.id)
        try:
            spec = await asyncio.to_thread(self._record, plan, intent)
            failpoints.hit("host.adopt.after-vm")
            await self.driver.take_over(name, plan.uuid, spec)
        except BaseException:
            await asyncio.to_thread(self._roll_back, intent)
            raise
        failpoints.hit("host.adopt.after-take-over")
        await asyncio.to_thread(self.intents.end, intent)
        registered = [layer.volume for disk in plan.disks for layer in disk.layers if layer.new]
        return (f"adopted {plan.state.value} domain {name} as vm '{plan.vm}' (volumes registered in place: "
                f"{', '.join(registered) or 'none'})")

    def _record(self, plan: AdoptPlan, intent: Intent) -> VmSpec:
        """Register the new volumes (bottom layer first: each names the one it is backed by), then the VM."""
        assert plan.plan is not None  # noqa: S101 - checked by the caller
        made: list[str] = []
        for disk in plan.disks:
            base_id: str | None = None
            for layer in reversed(disk.layers):
                if layer.new:
                    pool, _, volume_name = layer.volume.partition("/")
                    volume = self.storage.repo.add_volume(pool, volume_name, layer.format, layer.size, layer.path,
                                                          template=layer.template, base_id=base_id)
                    made.append(volume.id)
                    self.intents.advance(intent, "volumes", volumes=made)
                else:
                    volume = self.storage.volume(layer.volume)
                base_id = volume.id
        failpoints.hit("host.adopt.after-volumes")
        disks = [DiskSpec(volume=disk.layers[0].volume, bus=disk.bus, boot_index=0 if disk.boot else None)
                 for disk in plan.disks]
        nics = [NicSpec(network=nic.network or "", model=nic.model, mac=nic.mac) for nic in plan.plan.nics]
        spec = VmSpec(name=plan.vm, cpus=plan.plan.cpus, memory=plan.plan.memory_mib, machine="q35", image=None,
                      disks=disks, nics=nics)
        spec = self.networks.resolve(self.disks.resolve(spec))
        reason = f"adopted from the host's foreign domain {plan.domain}"
        self.intents.advance(intent, _RECORDING_VM)  # before: a crash right after the insert must remove it too
        vm = self.db.adopt_vm(plan.uuid, spec, self.host, plan.state, reason)
        self.intents.advance(intent, _VM_RECORDED)
        if vm.name != plan.vm:  # adopt_vm renames on a clash: a VM of this name appeared meanwhile
            raise Conflict(f"a VM named '{plan.vm}' was created meanwhile")
        if plan.warnings:
            self.db.add_event(vm.id, "adopt-warnings", "; ".join(plan.warnings))
        return spec

    def _roll_back(self, intent: Intent) -> None:
        current = next((i for i in self.intents.pending() if i.id == intent.id), intent)  # how far it got
        self._remove_records(current)
        self.intents.end(current)

    # --- crash recovery -----------------------------------------------------------------------------------
    async def _recover(self, intent: Intent) -> Outcome:
        name = str(intent.data["domain"])
        foreign = {domain.name for domain in await self.driver.foreign_domains()}
        if intent.step == _VM_RECORDED and name not in foreign:
            return Outcome(True, f"domain {name} had been taken over as vm '{intent.data['vm']}'")
        await asyncio.to_thread(self._remove_records, intent)
        return Outcome(False, f"domain {name} is left foreign; the records made for it are removed (files kept)")

    def _remove_records(self, intent: Intent) -> None:
        """Remove the records an adoption made (VM, volumes); never a file: the files were never ours."""
        if intent.step in (_RECORDING_VM, _VM_RECORDED):
            self.db.delete_vm(str(intent.data["vm_id"]))  # idempotent
        for volume_id in intent.data.get("volumes", []):
            self.storage.repo.delete_volume(str(volume_id))

    def register_recovery(self, recovery: Recovery) -> None:
        recovery.register(INTENT, self._recover)
