"""Importing a foreign VM: plan (pure, fast, also the dry run) -> checks that change nothing -> a job that converts
each disk into a pool volume and records the VM, or leaves nothing at all.

Server-side paths are only ever resolved inside the admin-set import directory (Settings.import_dir). Importing is an
operator's right: the admin decides what can be imported by what they put in that directory (and which host block
devices are allowed), operators choose what to import from it. The job holds an intent listing every volume it may
make: a failure rolls them back at once, a crash at the next start (jobs/recovery.py), so a failed import leaves no
VM, no volume and no half-converted file (those sit in the pool's .incoming staging directory, emptied at start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from virtfleet import failpoints
from virtfleet.errors import Conflict, InvalidSpec, NotFound, Unsupported
from virtfleet.jobs import capability_check
from virtfleet.jobs.networks import NetworkService
from virtfleet.jobs.recovery import Outcome, Recovery
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.jobs.storage import StorageService, pool_staging
from virtfleet.jobs.vms import VmService
from virtfleet.model.job import Job
from virtfleet.model.network import NicSpec
from virtfleet.model.storage import Volume
from virtfleet.model.vm import DiskSpec, VmSpec
from virtfleet.private_files import create_private
from virtfleet.storage import qemu_img, transfer
from virtfleet.storage.identity import FileId, file_id
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import Intent, IntentLog
from virtfleet.v2v.convert import convert_disk
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import ImportedDisk, ImportPlan, ImportReport, ImportRequest, Upload
from virtfleet.v2v.planner import PlanOptions, make_plan
from virtfleet.v2v.sources import read_source

INTENT = "v2v.import"
failpoints.declare("v2v.import.after-file", "an imported disk's file is in place under its final name, no record yet")
failpoints.declare("v2v.import.after-disk", "an imported disk is converted and recorded; more disks or the VM follow")
failpoints.declare("v2v.import.after-vm", "the imported VM is recorded, the intent not yet closed")
_REPORT_ID = re.compile(r"^[0-9a-f-]{1,64}$")
# An uploaded OVA's name: plain (no path, no hidden file), and an .ova, the only package that is one file.
_UPLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,122}\.ova$")
UPLOADS = "uploads"  # the import directory's subdirectory that uploads land in
PARTIAL_UPLOAD = ".upload-"  # in the name of an upload still being received (hidden: .NAME.upload-RANDOM)
DELETED_UPLOAD = ".deleted-"  # in the name of an upload being removed (hidden: .NAME.deleted-RANDOM)
PROGRESS_INTERVAL = 0.5  # seconds between progress records


class ThrottledProgress:
    """Job progress at most every PROGRESS_INTERVAL: qemu-img reports every percent, and a database write (and an
    event) per percent, made from the loop that reads qemu-img's output, slowed a 1 GiB conversion by half."""

    def __init__(self, context: JobContext) -> None:
        self.context = context
        self.last = 0.0

    def __call__(self, percent: int, message: str) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.context.progress(percent, message)


class ImportService:
    def __init__(self, db: Database, runner: JobRunner, storage: StorageService, vms: VmService,
                 networks: NetworkService, intents: IntentLog, *, import_dir: Path, devices: tuple[str, ...],
                 reports_dir: Path) -> None:
        self.db = db
        self.runner = runner
        self.storage = storage
        self.vms = vms
        self.networks = networks
        self.intents = intents
        self.import_dir = import_dir
        self.devices = devices
        self.reports_dir = reports_dir

    def root(self) -> ImportDir:
        self.import_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        return ImportDir(self.import_dir, devices=self.devices)

    # --- planning (the dry run) ---------------------------------------------------------------------------
    def _plan(self, request: ImportRequest) -> ImportPlan:
        root = self.root()
        source = read_source(root, root.entry(request.path))
        networks = frozenset(network.name for network in self.networks.all())
        options = PlanOptions(pool=request.pool, format=request.format, name=request.name,
                              network_map=dict(request.network_map), networks=networks)
        return make_plan(source, options)

    async def plan(self, request: ImportRequest) -> ImportPlan:
        """What importing `request.path` would make; reads files, changes nothing."""
        return await asyncio.to_thread(self._plan, request)

    # --- uploads (the web UI's way to put an OVA into the import directory) --------------------------------
    async def upload(self, name: str, body: AsyncIterator[bytes], *, length: int | None) -> str:
        """Store the request body as uploads/NAME in the import directory; returns that path (what to import).

        Bounded like a volume upload (max_volume_size, declared or counted); never replaces a file; the file appears
        whole under its name or not at all (a partial upload is removed)."""
        if not _UPLOAD_NAME.match(name):
            raise InvalidSpec("name", f"{name[:200]!r} is not a plain .ova file name (letters, digits, '.', '_', '-' "
                                      "and ending in .ova)")
        if length is not None:
            self.storage.check_size(length, "content-length")
        directory = self.import_dir / UPLOADS
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True, mode=0o750)
        final = directory / name
        if await asyncio.to_thread(os.path.lexists, final):
            raise Conflict(f"{UPLOADS}/{name} exists already: import it by that path, or upload under another name")
        incoming = directory / f".{name}{PARTIAL_UPLOAD}{secrets.token_hex(8)}"
        received = 0
        try:
            out = os.fdopen(await asyncio.to_thread(create_private, incoming), "wb")
            try:
                async for chunk in body:
                    received += len(chunk)
                    self.storage.check_size(received, "body")  # a chunked body declares no length: count it
                    await asyncio.to_thread(out.write, chunk)
            except OSError as error:
                raise transfer.write_failure(error, f"cannot store the upload of {name} after {received} bytes") \
                    from error
            finally:
                await asyncio.to_thread(out.close)
            if length is not None and received != length:
                raise InvalidSpec("body", f"received {received} bytes, the request declared {length}")
            await asyncio.to_thread(_publish_upload, incoming, final)  # Conflict if the name was taken meanwhile
        finally:
            await asyncio.to_thread(_remove, incoming)
        return f"{UPLOADS}/{name}"

    def _upload_path(self, name: str) -> Path:
        if not _UPLOAD_NAME.match(name):
            raise InvalidSpec("name", f"{name[:200]!r} is not a plain .ova file name (letters, digits, '.', '_', '-' "
                                      "and ending in .ova)")
        return self.import_dir / UPLOADS / name

    async def list_uploads(self) -> list[Upload]:
        """The OVAs uploaded and not removed, with their sizes (uploads still being received are not listed)."""
        return await asyncio.to_thread(_list_uploads, self.import_dir / UPLOADS)

    async def delete_upload(self, name: str) -> None:
        """Remove an uploaded OVA; refused (Busy) while an import job reads it."""
        path = self._upload_path(name)
        identity = await asyncio.to_thread(file_id, path)
        if identity is None or not await asyncio.to_thread(path.is_file):
            raise NotFound("upload", name)
        # No await between the check and the rename: no import can start reading it in between. The rename is
        # cheap; freeing the blocks of a large file is not, so that happens off the loop.
        self.runner.check_free(_source_key(identity), f"upload '{name}'")
        doomed = path.with_name(f".{name}.deleted-{secrets.token_hex(8)}")
        try:
            path.rename(doomed)
        except FileNotFoundError:
            raise NotFound("upload", name) from None
        await asyncio.to_thread(_remove, doomed)

    def remove_partial_uploads(self) -> list[str]:
        """At start-up nothing is being received: uploads an earlier daemon did not finish are garbage."""
        directory = self.import_dir / UPLOADS
        if not directory.is_dir():
            return []
        partial = [p for p in directory.iterdir()
                   if p.name.startswith(".") and (PARTIAL_UPLOAD in p.name or DELETED_UPLOAD in p.name)]
        for path in partial:
            _remove(path)
        return [path.name for path in partial]

    # --- checks that fail fast ----------------------------------------------------------------------------
    def _check(self, plan: ImportPlan) -> None:
        if plan.problems:
            raise InvalidSpec("plan", "; ".join(plan.problems))
        # An imported VM is a q35 that boots its disks (see _spec).
        capability_check.require_machine(self.vms.driver, "q35", what=f"import vm '{plan.name}'")
        with contextlib.suppress(NotFound):
            self.db.get_vm(plan.name)
            raise Conflict(f"a VM named '{plan.name}' already exists; import with another name (--name)")
        pool = self.storage.repo.get_pool(plan.disks[0].pool)
        backend = self.storage.backend(pool)
        if not backend.supports_backing_files:
            raise Unsupported(f"{pool.spec.type} pools hold block devices: import into a dir pool, then copy")
        if plan.disks[0].format not in backend.formats:
            raise InvalidSpec("format", f"{pool.spec.type} pools hold {' or '.join(backend.formats)} volumes")
        for disk in plan.disks:
            with contextlib.suppress(NotFound):
                self.storage.repo.get_volume(pool.name, disk.volume)
                raise Conflict(f"a volume named '{pool.name}/{disk.volume}' already exists")
            if backend.volume_path(disk.volume).exists():
                raise Conflict(f"{backend.volume_path(disk.volume)} exists but is not a volume of pool '{pool.name}'")
        known = {network.name for network in self.networks.all()}
        taken = {nic.mac for vm in self.db.list_vms() for nic in vm.spec.nics if nic.mac}
        for nic in plan.nics:
            if nic.network not in known:
                raise InvalidSpec("network_map", f"{nic.label}: no virtfleet network named {nic.network}")
            if nic.mac in taken:
                raise InvalidSpec("nics", f"{nic.label}: the MAC {nic.mac} is already used by another VM on this host")

    # --- the job ------------------------------------------------------------------------------------------
    async def submit(self, request: ImportRequest) -> Job:
        plan = await self.plan(request)
        self._check(plan)
        pool_name = plan.disks[0].pool
        refs = [f"{pool_name}/{disk.volume}" for disk in plan.disks]
        locks = {f"volume:{ref}": f"volume '{ref}'" for ref in refs}
        source = await asyncio.to_thread(file_id, self.import_dir / request.path)
        if source is not None:  # the file read, by identity: an upload cannot be deleted while it is imported
            locks[_source_key(source)] = f"import source '{request.path}'"

        async def run(context: JobContext) -> str:
            return await asyncio.to_thread(self._run, plan, context)

        return self.runner.submit("vm.import", f"vm-import:{plan.name}", f"vm '{plan.name}'", run, locks=locks)

    def _run(self, plan: ImportPlan, context: JobContext) -> str:
        pool = self.storage.repo.get_pool(plan.disks[0].pool)
        backend = self.storage.backend(pool)
        intent = self.intents.begin(INTENT, f"vm:{plan.name}", {"vm": plan.name, "pool": pool.name,
                                                               "volumes": [disk.volume for disk in plan.disks]},
                                    job_id=context.job.id)
        staging = pool_staging(backend) / f"import-{context.job.id}"
        staging.mkdir(mode=0o700)
        created: list[Volume] = []
        try:
            imported = []
            root = self.root()
            count = len(plan.disks)
            show = ThrottledProgress(context)
            for index, (planned, source) in enumerate(zip(plan.disks, plan.source_vm.disks, strict=True)):
                def progress(pct: float, index: int = index, label: str = planned.label) -> None:
                    show(int((index + pct / 100) * 95 / count), f"{label}: converting, {pct:.0f}%")

                with self.storage.new_volume(pool, planned.volume, context.job.id):
                    final = backend.volume_path(planned.volume)
                    with transfer.atomic_destination(final) as temp:
                        convert_disk(root, source, temp, planned.format, staging, progress=progress,
                                     file=plan.source)
                    failpoints.hit("v2v.import.after-file")
                    size = qemu_img.info(final, planned.format).virtual_size
                    volume = self.storage.repo.add_volume(pool.name, planned.volume, planned.format, size, str(final))
                created.append(volume)
                imported.append(ImportedDisk(label=planned.label, volume=volume.ref, format=planned.format, size=size,
                                             checksum=source.checksum))
                failpoints.hit("v2v.import.after-disk")
                for leftover in staging.iterdir():  # each disk's temporary files go before the next disk's
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            vm = self.vms.create(self._spec(plan, created))
            self.intents.advance(intent, "vm-recorded", vm_id=vm.id)
            failpoints.hit("v2v.import.after-vm")
        except BaseException:
            for volume in created:  # all of the VM or none of it
                backend.delete_volume(volume.name)
                self.storage.repo.delete_volume(volume.id)
            self.intents.end(intent)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        report = ImportReport(job_id=context.job.id, vm=vm.name, source=plan.source, kind=plan.kind, disks=imported,
                              nics=plan.nics, warnings=plan.warnings, plan=plan)
        self._save_report(report)
        message = (f"imported {plan.kind} {plan.source} as vm '{vm.name}': "
                   f"{', '.join(f'{d.label} -> {d.volume}' for d in imported)}; {len(plan.nics)} NIC(s)")
        if plan.warnings:
            message += f"; not carried over or changed ({len(plan.warnings)}): " + "; ".join(plan.warnings)
            self.db.add_event(vm.id, "import-warnings", "; ".join(plan.warnings))
        self.intents.end(intent)
        return message

    @staticmethod
    def _spec(plan: ImportPlan, volumes: list[Volume]) -> VmSpec:
        disks = [DiskSpec(volume=volume.ref, bus=planned.bus, boot_index=0 if planned.boot else None)
                 for planned, volume in zip(plan.disks, volumes, strict=True)]
        nics = [NicSpec(network=nic.network or "", model=nic.model, mac=nic.mac) for nic in plan.nics]
        return VmSpec(name=plan.name, cpus=plan.cpus, memory=plan.memory_mib, machine="q35", image=None, disks=disks,
                      nics=nics, firmware=plan.firmware)

    # --- reports ------------------------------------------------------------------------------------------
    def _save_report(self, report: ImportReport) -> None:
        self.reports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.reports_dir / f"{report.job_id}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as out:
            out.write(report.model_dump_json(indent=2))

    def report(self, job_id: str) -> ImportReport:
        self.db.get_job(job_id)  # 404 for an unknown job
        path = self.reports_dir / f"{job_id}.json"
        if not _REPORT_ID.match(job_id) or not path.is_file():
            raise NotFound("import report", job_id)
        return ImportReport.model_validate(json.loads(path.read_text()))

    # --- crash recovery -----------------------------------------------------------------------------------
    def _recover(self, intent: Intent) -> Outcome:
        vm_id = intent.data.get("vm_id")
        if vm_id is not None:
            with contextlib.suppress(NotFound):
                self.db.get_vm(str(vm_id))
                return Outcome(True, f"vm '{intent.data['vm']}' was recorded before the stop")
        pool_name = str(intent.data["pool"])
        removed = []
        for name in intent.data.get("volumes", []):
            with contextlib.suppress(NotFound):
                volume = self.storage.repo.get_volume(pool_name, str(name))
                self.storage.backend(self.storage.repo.get_pool(pool_name)).delete_volume(volume.name)
                self.storage.repo.delete_volume(volume.id)
                removed.append(volume.ref)
        return Outcome(False, f"removed the volumes it had made ({', '.join(removed) or 'none'})")

    def register_recovery(self, recovery: Recovery) -> None:
        async def recover(intent: Intent) -> Outcome:
            return await asyncio.to_thread(self._recover, intent)

        recovery.register(INTENT, recover)


def _publish_upload(incoming: Path, final: Path) -> None:
    """Give a received upload its name: synced, never replacing a file (disk work: run it off the event loop)."""
    with transfer.atomic_destination(final) as temp:
        os.replace(incoming, temp)


def _source_key(identity: FileId) -> str:
    return f"import-source:{identity[0]}:{identity[1]}"


def _list_uploads(directory: Path) -> list[Upload]:
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    uploads = []
    for path in entries:
        if path.name.startswith(".") or not _UPLOAD_NAME.match(path.name):
            continue
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue  # deleted while we looked
        if stat.S_ISREG(info.st_mode):
            uploads.append(Upload(name=path.name, path=f"{UPLOADS}/{path.name}", size=info.st_size,
                                  modified=datetime.fromtimestamp(info.st_mtime, UTC)))
    return uploads


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
