"""Storage operations: pools and volumes, templates and clones, uploads and imports.

Checks that can fail fast (unknown pool, name taken, no room, attached volume, dependents) raise before a job
exists; the slow part (qemu-img, copies, downloads) runs as a job in a worker thread. Every copy lands under a
temporary name and is renamed into place only once it is complete and checked, so a failure leaves nothing behind.

A job on an existing volume locks it by its id (volume_key), with the VM using it, and checks again once it runs
that the volume still exists and may still be changed; VM jobs lock the volumes they touch under the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from virtfleet import failpoints
from virtfleet.config import DEFAULT_MAX_VOLUME_SIZE
from virtfleet.errors import Conflict, InvalidSpec, NotFound, Unsupported
from virtfleet.hostcmd import in_thread
from virtfleet.jobs.recovery import Outcome, Recovery
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.model.job import Job
from virtfleet.model.storage import Pool, PoolSpec, Volume, VolumeFormat, VolumeSpec, parse_volume_ref
from virtfleet.model.units import format_size
from virtfleet.private_files import PRIVATE_FILE, make_private_dir
from virtfleet.storage import qemu_img, transfer
from virtfleet.storage.addresses import IPNetwork
from virtfleet.storage.archive import extract_ova_disks
from virtfleet.storage.backends import STAGING_DIR, PoolBackend, create_backend, default_mount_path
from virtfleet.storage.identity import file_id
from virtfleet.storage.pool_paths import check_pool_path
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import Intent, IntentLog
from virtfleet.store.storage_repo import StorageRepo

T = TypeVar("T")

DEFAULT_POOL = "default"
# What users may hand us (stored as qcow2 or raw); an OVA is a tar whose disk image is taken out, checked, converted.
IMPORT_FORMATS = ("qcow2", "raw", "vmdk", "vhdx", "vpc", "vdi", "ova")


@dataclass(frozen=True)
class VolumeDetails:
    volume: Volume
    actual_size: int
    chain: list[str]  # the backing chain, top first, as file paths
    attached_to: str | None


@dataclass(frozen=True)
class VolumePlan:
    """A new volume, checked and not made yet: where it goes, and what it is made from."""

    pool: Pool
    backend: PoolBackend
    name: str
    format: VolumeFormat
    size: int
    source: Volume | None = None  # a clone of this volume
    linked: bool = False

    @property
    def ref(self) -> str:
        return f"{self.pool.name}/{self.name}"

    @property
    def room(self) -> int:
        """Bytes it needs free in a pool that does not overcommit (a linked clone starts empty)."""
        return 0 if self.source is not None and self.linked else self.size


AttachedLookup = Callable[[str], str | None]  # volume path -> name of the VM using it


def volume_key(volume: Volume) -> str:
    """The lock key of an existing volume: its id, which a snapshot moving its top image does not change. (A volume
    being made has no id yet: its job holds "volume:POOL/NAME", the name it will take.)"""
    return f"volume:{volume.id}"


class StorageService:
    def __init__(self, db: Database, runner: JobRunner, data_dir: Path, attached_to: AttachedLookup,
                 intents: IntentLog, *, max_volume_size: int = DEFAULT_MAX_VOLUME_SIZE,
                 pool_roots: Sequence[Path] = (), import_allow: Sequence[IPNetwork] = ()) -> None:
        self.db = db
        self.repo = StorageRepo(db)
        self.intents = intents
        self.import_allow = tuple(import_allow)  # non-public networks imports may fetch from (admin's choice)
        self.runner = runner
        self.data_dir = data_dir
        self.attached_to = attached_to
        self.max_volume_size = max_volume_size
        self.allowed_pool_roots = tuple(pool_roots)  # where dir and nfs pools may be, besides the data dir's pools/
        self._backends: dict[str, PoolBackend] = {}
        self._uploading: set[str] = set()  # uploads stream inside a request, not a job: their own lock

    # --- pools ---------------------------------------------------------------------------------------------
    def backend(self, pool: Pool) -> PoolBackend:
        backend = self._backends.get(pool.name)
        if backend is None:
            backend = self._backends[pool.name] = create_backend(pool.spec, Path(pool.mount_path))
        return backend

    def ensure_default_pool(self, path: Path) -> None:
        try:
            self.repo.get_pool(DEFAULT_POOL)
        except NotFound:
            spec = PoolSpec(name=DEFAULT_POOL, type="dir", path=str(path))
            create_backend(spec, path).activate()
            self.repo.add_pool(spec, str(path))

    async def activate_all(self) -> list[str]:
        """At start-up: make every pool usable again (mounts do not survive a reboot); returns the problems."""
        problems = []
        for pool in self.repo.list_pools():
            try:
                backend = self.backend(pool)
                await asyncio.to_thread(backend.activate)
                for leftover in await asyncio.to_thread(remove_partial_files, backend):
                    problems.append(f"pool {pool.name}: removed {leftover}, left by a transfer the last daemon "
                                    "did not finish")
            except Exception as error:  # one broken pool must not stop the daemon
                problems.append(f"pool {pool.name}: {error}")
        return problems

    async def create_pool(self, spec: PoolSpec) -> Pool:
        with contextlib.suppress(NotFound):
            self.repo.get_pool(spec.name)
            raise Conflict(f"a pool named '{spec.name}' already exists")
        mount = default_mount_path(spec, self.data_dir)
        owns_path = False
        if spec.type != "lvm":
            # As the user spelled it; a mount point we chose (nfs) is ours, checked as what it resolves to.
            check_pool_path(spec.path or os.path.realpath(mount), roots=self.allowed_pool_roots, data_dir=self.data_dir,
                            internal=[self.data_dir / "pools", self.data_dir / "mnt"],
                            existing=[Path(p.mount_path) for p in self.repo.list_pools()])
            # Deleting the pool removes its directory only if it was virtfleet that made it.
            owns_path = not await asyncio.to_thread(os.path.lexists, mount)
        backend = create_backend(spec, mount)
        await asyncio.to_thread(backend.activate)
        try:
            pool = self.repo.add_pool(spec, str(mount), owns_path=owns_path)
        except BaseException:
            await asyncio.to_thread(backend.deactivate)
            await asyncio.to_thread(backend.destroy, owns_directory=owns_path)
            raise
        self._backends[pool.name] = backend
        return await self.pool_with_usage(pool.name)

    async def pool_with_usage(self, name: str) -> Pool:
        pool = self.repo.get_pool(name)
        try:
            usage = await asyncio.to_thread(self.backend(pool).usage)
        except Exception as error:
            return pool.model_copy(update={"state": "inactive", "state_reason": str(error)})
        return pool.model_copy(update={"usage": usage})

    async def list_pools(self) -> list[Pool]:
        return [await self.pool_with_usage(pool.name) for pool in self.repo.list_pools()]

    async def delete_pool(self, name: str) -> None:
        pool = self.repo.get_pool(name)
        if name == DEFAULT_POOL:
            raise Conflict("the default pool cannot be deleted")
        volumes = self.repo.list_volumes(name)
        if volumes:
            names = ", ".join(v.name for v in volumes[:10])
            raise Conflict(f"pool '{name}' still holds {len(volumes)} volume(s): {names}")
        backend = self.backend(pool)
        await asyncio.to_thread(backend.deactivate)
        await asyncio.to_thread(backend.destroy, owns_directory=pool.owns_path)
        self.repo.delete_pool(name)
        self._backends.pop(name, None)

    # --- volumes: reads ------------------------------------------------------------------------------------
    def volume(self, ref: str) -> Volume:
        pool, name = parse_volume_ref(ref, DEFAULT_POOL)
        return self._attached(self.repo.get_volume(pool, name))

    def _attached(self, volume: Volume) -> Volume:
        return volume.model_copy(update={"attached_to": self.attached_to(volume.path)})

    def list_volumes(self, pool: str | None = None) -> list[Volume]:
        if pool is not None:
            self.repo.get_pool(pool)
        return [self._attached(v) for v in self.repo.list_volumes(pool)]

    async def details(self, ref: str) -> VolumeDetails:
        volume = self.volume(ref)
        images = await asyncio.to_thread(qemu_img.chain, Path(volume.path), volume.format)
        return VolumeDetails(volume, images[0].actual_size, [str(image.path) for image in images],
                             volume.attached_to)

    def volume_by_path(self, path: str) -> Volume | None:
        """The volume whose file `path` is, however it is spelled: compared by file identity, never as text."""
        wanted = file_id(path)
        if wanted is None:
            return None
        found = [v for v in self.repo.list_volumes() if file_id(v.path) == wanted]
        if len(found) > 1:
            raise Conflict(f"{path} is the file of several volumes: {', '.join(v.ref for v in found)}")
        return found[0] if found else None

    def pool_roots(self) -> list[Path]:
        return [Path(pool.mount_path) for pool in self.repo.list_pools()]

    # --- volumes: changes ----------------------------------------------------------------------------------
    def check_size(self, size: int, field: str = "size") -> None:
        """Every way a volume comes to be (or grows) passes here: no volume is larger than max_volume_size."""
        if size > self.max_volume_size:
            raise InvalidSpec(field, f"{format_size(size)} ({size} bytes) is more than the largest volume this "
                                     f"server accepts ({format_size(self.max_volume_size)})")

    def _check_new(self, pool: Pool, name: str, fmt: str, size: int | None) -> PoolBackend:
        backend = self.backend(pool)
        with contextlib.suppress(NotFound):
            self.repo.get_volume(pool.name, name)
            raise Conflict(f"a volume named '{pool.name}/{name}' already exists")
        if fmt not in backend.formats:
            raise InvalidSpec("format", f"{pool.spec.type} pools hold {' or '.join(backend.formats)} volumes")
        if backend.volume_path(name).exists():
            raise Conflict(f"{backend.volume_path(name)} exists but is not a volume of pool '{pool.name}'")
        if size is not None:
            self.check_size(size)
            usage = backend.usage()
            if not usage.thin and size > usage.available:
                raise InvalidSpec("size", f"{size} bytes do not fit: pool '{pool.name}' has {usage.available} free")
        return backend

    def _submit(self, kind: str, ref: str, work: Callable[[JobContext], object], *,
                locks: dict[str, str] | None = None, within: Job | None = None) -> Job:
        async def run(context: JobContext) -> str:
            # in_thread: a cancelled job kills its qemu-img and lets the thread remove its partial files.
            return str(await in_thread(work, context))

        return self.runner.submit(kind, f"volume:{ref}", f"volume '{ref}'", run, locks=locks, within=within)

    def locks_for(self, volume: Volume) -> dict[str, str]:
        """What a job on `volume` locks: the volume, and the VM using it (key -> label)."""
        locks = {volume_key(volume): f"volume '{volume.ref}'"}
        if volume.attached_to is not None:
            with contextlib.suppress(NotFound):
                vm = self.db.get_vm(volume.attached_to)
                locks[vm.id] = f"vm '{vm.name}'"
        return locks

    def _reread(self, volume: Volume) -> Volume:
        """The volume as it is now, inside its job: gone, or changed, since the request was checked?"""
        try:
            return self._attached(self.repo.get_volume_by_id(volume.id))
        except NotFound:
            raise NotFound("volume", volume.ref) from None

    def plan_blank(self, pool_name: str, name: str, fmt: VolumeFormat, size: int) -> VolumePlan:
        """Check a new blank volume (pool, name free, format, room); nothing is made."""
        pool = self.repo.get_pool(pool_name)
        return VolumePlan(pool, self._check_new(pool, name, fmt, size), name, fmt, size)

    def plan_clone(self, ref: str, new_name: str, *, linked: bool = True, pool_name: str | None = None
                   ) -> VolumePlan:
        """Check a clone of `ref` (a linked clone needs a template, in its pool); nothing is made."""
        source = self.volume(ref)
        pool = self.repo.get_pool(pool_name or source.pool)
        if linked:
            if not source.template:
                raise InvalidSpec("linked", f"{source.ref} is not a template; mark it first (volume template) or "
                                            "make a full clone")
            if pool.name != source.pool:
                raise InvalidSpec("pool", "a linked clone lives in its template's pool")
        backend = self.backend(pool)
        # A linked clone is a qcow2 overlay where files can back each other, a thin snapshot on lvm.
        fmt: VolumeFormat = "qcow2" if linked and backend.supports_backing_files else source.format
        if not backend.supports_backing_files and (not linked or getattr(backend, "snapshot_volume", None) is None):
            raise Unsupported(f"{pool.spec.type} pools only make linked clones (thin snapshots); copy into a dir pool")
        self.check_size(source.size)  # a linked clone is as large as its template, though thin
        backend = self._check_new(pool, new_name, fmt, None if linked else source.size)
        return VolumePlan(pool, backend, new_name, fmt, source.size, source, linked)

    def make_file(self, plan: VolumePlan, progress: Callable[[float], None] | None = None) -> Path:
        """Make a planned volume's file under its final name (no record yet: the caller brackets it in an intent);
        a failure here leaves no file."""
        backend, source = plan.backend, plan.source
        if source is None:
            return backend.create_volume(plan.name, plan.format, plan.size)
        if plan.linked:
            if backend.supports_backing_files:
                return backend.create_volume(plan.name, "qcow2", source.size, backing=Path(source.path),
                                             backing_format=source.format)
            return Path(backend.snapshot_volume(plan.name, source.name))  # type: ignore[attr-defined]
        final = backend.volume_path(plan.name)
        with transfer.atomic_destination(final) as temp:
            temp.unlink(missing_ok=True)  # qemu-img convert creates its own target
            qemu_img.convert(Path(source.path), source.format, temp, plan.format, direct=True, progress=progress)
        return final

    def record(self, plan: VolumePlan, path: Path) -> Volume:
        base_id = plan.source.id if plan.source is not None and plan.linked else None
        return self.repo.add_volume(plan.pool.name, plan.name, plan.format, plan.size, str(path), base_id=base_id)

    def create_volume(self, pool_name: str, spec: VolumeSpec) -> Job:
        plan = self.plan_blank(pool_name, spec.name, spec.format, spec.size)

        def work(context: JobContext) -> str:
            with self.new_volume(plan.pool, plan.name, context.job.id):
                failpoints.hit("volume.create.after-intent")
                path = self.make_file(plan)
                failpoints.hit("volume.create.after-file")
                self.record(plan, path)
            return f"created volume {plan.ref} ({spec.format}, {spec.size} bytes)"

        return self._submit("volume.create", plan.ref, work)

    def resize_volume(self, ref: str, size: int, *, shrink: bool = False) -> Job:
        volume = self.volume(ref)
        self.check_size(size)
        if size < volume.size and not shrink:
            raise InvalidSpec("size", f"{size} is smaller than the current {volume.size} bytes: shrinking loses "
                                      "data, add --force (shrink=true) if you mean it")
        self._check_resizable(volume, size)
        backend = self.backend(self.repo.get_pool(volume.pool))

        def work(context: JobContext) -> str:
            current = self._reread(volume)
            self._check_resizable(current, size)
            backend.resize_volume(current.name, current.format, size, shrink=size < current.size)
            self.repo.update_volume(current.id, size=size)
            return f"resized {current.ref} to {size} bytes"

        return self._submit("volume.resize", volume.ref, work, locks=self.locks_for(volume))

    def _check_resizable(self, volume: Volume, size: int) -> None:
        if volume.attached_to is not None:
            raise Conflict(f"volume {volume.ref} is attached to vm '{volume.attached_to}'; detach it first")
        dependents = self.repo.dependents(volume.id)
        if dependents and size < volume.size:
            clones = ", ".join(d.ref for d in dependents)
            raise Conflict(f"volume {volume.ref} is the base of linked clones ({clones}); shrinking it would cut "
                           "the data they read")

    def _check_deletable(self, volume: Volume) -> None:
        if volume.attached_to is not None:
            raise Conflict(f"volume {volume.ref} is attached to vm '{volume.attached_to}'; detach or delete it first")
        dependents = self.repo.dependents(volume.id)
        if dependents:
            names = ", ".join(d.ref for d in dependents)
            raise Conflict(f"volume {volume.ref} is the base of linked clones: {names}; delete them first")

    def delete_volume(self, ref: str, *, within: Job | None = None) -> Job:
        """Delete a volume (`within`: on behalf of that job, e.g. a VM delete holding the volume's lock)."""
        volume = self.volume(ref)
        self._check_deletable(volume)

        def work(context: JobContext) -> str:
            self._check_deletable(self._reread(volume))
            self.remove_volume(volume)
            return f"deleted volume {volume.ref}"

        return self._submit("volume.delete", volume.ref, work, locks=self.locks_for(volume), within=within)

    def remove_volume(self, volume: Volume) -> None:
        """Delete a volume's files, then its record (idempotent: a retry after a crash in between finishes it).
        The caller has checked it may go and holds its lock."""
        self.backend(self.repo.get_pool(volume.pool)).delete_volume(volume.name)
        self.repo.delete_volume(volume.id)

    def delete_unused_volume(self, ref: str) -> str | None:
        """Delete `ref` now if nothing needs it: None once it is gone (or was), else why it was kept."""
        try:
            volume = self.volume(ref)
            self._check_deletable(volume)
        except NotFound:
            return None
        except Conflict as error:
            return error.message
        self.remove_volume(volume)
        return None

    def move_volume_top(self, ref: str, path: str, fmt: VolumeFormat) -> None:
        """A snapshot put a new image on top of the volume (or merged one away): it is the volume's image now."""
        volume = self.volume(ref)
        self.repo.update_volume(volume.id, path=path, format=fmt)

    def set_template(self, ref: str, template: bool) -> Volume:
        volume = self.volume(ref)
        self.runner.check_all_free(self.locks_for(volume))  # e.g. a linked clone being made on it
        if template and volume.attached_to is not None:
            raise Conflict(f"volume {volume.ref} is attached to vm '{volume.attached_to}'; a template must be "
                           "free (linked clones read it while their VMs run)")
        if not template and self.repo.dependents(volume.id):
            raise Conflict(f"volume {volume.ref} has linked clones; it stays a template while they exist")
        path = Path(volume.path)
        if path.is_file():
            # Clones share it: make accidental writes fail at the file-system level too.
            path.chmod(0o400 if template else PRIVATE_FILE)
        return self._attached(self.repo.update_volume(volume.id, template=template))

    def clone_volume(self, ref: str, new_name: str, *, linked: bool = True, pool_name: str | None = None,
                     within: Job | None = None) -> Job:
        plan = self.plan_clone(ref, new_name, linked=linked, pool_name=pool_name)
        source = plan.source
        assert source is not None  # noqa: S101 - a clone plan has its source

        def work(context: JobContext) -> str:
            if linked and not self._reread(source).template:  # again, now that the source is locked
                raise Conflict(f"{source.ref} is no longer a template; a linked clone needs one")
            with self.new_volume(plan.pool, plan.name, context.job.id):
                path = self.make_file(plan, lambda pct: context.progress(int(pct), f"copying {source.ref}: {pct:.0f}%"))
                failpoints.hit("volume.clone.after-file")
                self.record(plan, path)
            return f"{'linked' if linked else 'full'} clone {plan.ref} of {source.ref}"

        return self._submit("volume.clone", plan.ref, work, locks=self.locks_for(source), within=within)

    def build_volume(self, pool_name: str, name: str, fmt: VolumeFormat,
                     build: Callable[[Path, Callable[[str], None]], object], kind: str, *,
                     size: int | None = None) -> Job:
        """Make a volume with a builder (e.g. a bootable disk of `size` bytes) that writes the file it is given."""
        pool = self.repo.get_pool(pool_name)
        backend = self._check_new(pool, name, fmt, size)
        if not backend.supports_backing_files:
            raise Unsupported(f"{pool.spec.type} pools hold raw block devices; build disk images in a dir pool")

        def work(context: JobContext) -> str:
            final = backend.volume_path(name)
            with self.new_volume(pool, name, context.job.id):
                with transfer.atomic_destination(final) as temp:
                    build(temp, lambda message: context.progress(min(90, context.job.progress + 15), message))
                built = qemu_img.info(final, fmt).virtual_size
                self.check_size(built)
                volume = self.repo.add_volume(pool.name, name, fmt, built, str(final))
            return f"built {kind} {volume.ref} ({built} bytes)"

        return self._submit("volume.build", f"{pool.name}/{name}", work)

    def import_url(self, pool_name: str, name: str, url: str, fmt: str, *, sha256: str | None = None) -> Job:
        check_sha256(sha256)
        transfer.check_url(url, self.import_allow)
        pool = self.repo.get_pool(pool_name)
        stored = stored_format(fmt)
        backend = self._check_new(pool, name, stored, None)
        staging = pool_staging(backend)
        ref = f"{pool.name}/{name}"

        def work(context: JobContext) -> str:
            def progress(done: int, total: int) -> None:
                if total:
                    context.progress(int(done * 90 / total), f"downloading: {done >> 20} of {total >> 20} MiB")
                else:
                    context.progress(0, f"downloading: {done >> 20} MiB")

            incoming = staging / f"{name}.download"
            try:
                digest = transfer.download_url(url, incoming, progress=progress, expected_sha256=sha256,
                                               max_bytes=self.max_volume_size, allow=self.import_allow)
                volume = self._register_incoming(pool, backend, name, incoming, fmt, stored, context)
            finally:
                incoming.unlink(missing_ok=True)
            return f"imported {url} as {volume.ref} (sha256 {digest})"

        return self._submit("volume.import", ref, work)

    async def upload(self, pool_name: str, name: str, fmt: str, body: AsyncIterator[bytes], *,
                     sha256: str | None = None, length: int | None = None,
                     client_gone: Callable[[], Awaitable[bool]] | None = None) -> Volume:
        """Receive an upload (the request body) into the pool; checked and registered, or nothing is left.
        `client_gone` tells whether the client has hung up: then the check or conversion is stopped."""
        check_sha256(sha256)
        pool = self.repo.get_pool(pool_name)
        stored = stored_format(fmt)
        if length is not None:
            self.check_size(length, "content-length")  # no image within the limit takes more bytes than that
        backend = self._check_new(pool, name, stored, length)
        ref = f"{pool.name}/{name}"
        self.runner.check_free(f"volume:{ref}", f"volume '{ref}'")
        if ref in self._uploading:
            raise Conflict(f"volume '{ref}' is being uploaded by another request")
        self._uploading.add(ref)
        incoming = pool_staging(backend) / f"{name}.upload-{secrets.token_hex(8)}"
        digest = hashlib.sha256()
        received = 0
        try:
            try:
                with incoming.open("xb") as out:
                    async for chunk in body:
                        received += len(chunk)
                        self.check_size(received, "body")  # a chunked upload declares no length: count it
                        digest.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
            except OSError as error:
                raise transfer.write_failure(error, f"cannot store the upload of {ref} after {received} bytes") \
                    from error
            if sha256 is not None and digest.hexdigest() != sha256.lower():
                raise InvalidSpec("sha256", f"the data does not match: expected {sha256}, got {digest.hexdigest()}")
            registering = in_thread(self._register_incoming, pool, backend, name, incoming, fmt, stored, None)
            return await _unless_abandoned(registering, client_gone, f"the upload of {ref}")
        finally:
            self._uploading.discard(ref)
            incoming.unlink(missing_ok=True)

    def _register_ova(self, pool: Pool, backend: PoolBackend, name: str, incoming: Path,
                      context: JobContext | None) -> Volume:
        """Each disk of the OVA becomes a volume (NAME, NAME-1, ...); members are checked before any is taken out."""
        unpacked = incoming.with_name(f"{incoming.name}.ova")
        unpacked.mkdir()
        try:
            disks = extract_ova_disks(incoming, unpacked)
            names = _ova_volume_names(name, len(disks))
            for extra in names[1:]:
                self._check_new(pool, extra, "qcow2", None)
            volumes: list[Volume] = []
            try:
                for volume_name, disk in zip(names, disks, strict=True):
                    volumes.append(self._register_incoming(pool, backend, volume_name, disk.path, disk.format,
                                                           stored_format(disk.format), context))
            except BaseException:
                for volume in volumes:  # all of the OVA or none of it
                    backend.delete_volume(volume.name)
                    self.repo.delete_volume(volume.id)
                raise
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
        return volumes[0]

    def _register_incoming(self, pool: Pool, backend: PoolBackend, name: str, incoming: Path, fmt: str,
                           stored: VolumeFormat, context: JobContext | None) -> Volume:
        """Check an untrusted image, then move or convert it into place and record it."""
        if fmt == "ova":
            return self._register_ova(pool, backend, name, incoming, context)
        info = qemu_img.inspect_untrusted(incoming, fmt, self.pool_roots(), max_virtual_size=self.max_volume_size)
        if info.backing_file is not None:
            raise InvalidSpec("backing_file", "imported images must be self-contained (no backing file)")
        final = backend.volume_path(name)
        with self.new_volume(pool, name, context.job.id if context else None):
            if fmt == stored:
                with transfer.atomic_destination(final) as temp:
                    os.replace(incoming, temp)
            else:
                with transfer.atomic_destination(final) as temp:
                    temp.unlink(missing_ok=True)

                    def progress(pct: float) -> None:
                        if context is not None:
                            context.progress(90 + int(pct / 10), f"converting {fmt} to {stored}: {pct:.0f}%")

                    qemu_img.convert(incoming, fmt, temp, stored, progress=progress)
            failpoints.hit("volume.register.after-file")
            volume = self.repo.add_volume(pool.name, name, stored, info.virtual_size, str(final))
            failpoints.hit("volume.register.after-record")
        return volume

    # --- crash safety of new volumes ----------------------------------------------------------------------
    @contextlib.contextmanager
    def new_volume(self, pool: Pool, name: str, job_id: str | None) -> Iterator[Intent]:
        """Bracket the making of a volume: intent first, then the file, then the record; a failure here or a crash
        anywhere in between ends with the file gone unless the record exists (never a file blocking the name)."""
        intent = self.intents.begin("volume.new", f"{pool.name}/{name}", {"pool": pool.name, "name": name},
                                    job_id=job_id)
        try:
            yield intent
        except BaseException:
            self._settle_new_volume(intent)
            self.intents.end(intent)
            raise
        self.intents.end(intent)

    def _settle_new_volume(self, intent: Intent) -> Outcome:
        pool_name, name = str(intent.data["pool"]), str(intent.data["name"])
        with contextlib.suppress(NotFound):
            volume = self.repo.get_volume(pool_name, name)
            return Outcome(True, f"volume {volume.ref} is recorded")
        if self.discard_made(pool_name, name):
            return Outcome(False, f"removed {pool_name}/{name}, made but never recorded")
        return Outcome(False, f"nothing of {pool_name}/{name} was left")

    def discard_made(self, pool_name: str, name: str) -> bool:
        """Roll back the making of a volume whose operation did not finish: its file and, if it got that far, its
        record go (idempotent). The caller's intent proves it made this name. True if anything was removed."""
        backend = self.backend(self.repo.get_pool(pool_name))
        removed = backend.volume_path(name).exists()
        backend.delete_volume(name)  # idempotent, and it never touches what the pool does not own
        with contextlib.suppress(NotFound):
            self.repo.delete_volume(self.repo.get_volume(pool_name, name).id)
            removed = True
        return removed

    def register_recovery(self, recovery: Recovery) -> None:
        async def recover(intent: Intent) -> Outcome:
            return await asyncio.to_thread(self._settle_new_volume, intent)

        recovery.register("volume.new", recover)


CLIENT_POLL_SECONDS = 1.0


async def _unless_abandoned(work: Awaitable[T], client_gone: Callable[[], Awaitable[bool]] | None, what: str) -> T:
    """Await `work`, cancelled (its qemu-img killed, its files removed) if the client hangs up meanwhile, or if this
    request is itself cancelled: a conversion nobody waits for must not keep a core busy."""
    task = asyncio.ensure_future(work)
    try:
        while client_gone is not None and not task.done():
            done, _ = await asyncio.wait([task], timeout=CLIENT_POLL_SECONDS)
            if not done and await client_gone():
                raise transfer.TransferError(f"{what} was stopped: the client hung up; nothing was kept")
        return await task
    except BaseException:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        raise


def remove_partial_files(backend: PoolBackend) -> list[str]:
    """At start-up nothing is being copied: temporary files from an interrupted copy or upload are garbage."""
    if not backend.supports_backing_files or not backend.mount_path.is_dir():
        return []
    partial = [*backend.mount_path.glob(".*.part-*")]
    staging = backend.mount_path / STAGING_DIR
    if staging.is_dir():
        partial += list(staging.iterdir())
    for path in partial:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return [path.name for path in partial]


def _ova_volume_names(name: str, count: int) -> list[str]:
    return [name] + [f"{name}-{index}" for index in range(1, count)]


def check_sha256(value: str | None) -> None:
    if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise InvalidSpec("sha256", f"{value!r} is not a sha256 digest (64 hex digits)")


def stored_format(fmt: str) -> VolumeFormat:
    """What an imported image is kept as: qcow2 and raw as they are, other formats converted to qcow2."""
    if fmt not in IMPORT_FORMATS:
        raise InvalidSpec("format", f"one of {', '.join(IMPORT_FORMATS)}")
    return "raw" if fmt == "raw" else "qcow2"  # an OVA's disks are each converted on their own


def pool_staging(backend: PoolBackend) -> Path:
    """Where incoming data waits while it is checked: inside the pool (same file system, so the final move is a
    rename), in a directory volumes never live in."""
    if not backend.supports_backing_files:
        raise Unsupported(f"{backend.spec.type} pools hold block devices: upload or import into a dir pool, "
                          "then copy")
    staging = backend.mount_path / STAGING_DIR
    try:
        make_private_dir(staging)
    except OSError as error:
        raise transfer.write_failure(error, f"cannot make {staging}") from error
    return staging
