"""Storage operations: pools and volumes, templates and clones, uploads and imports.

Checks that can fail fast (unknown pool, name taken, no room, attached volume, dependents) raise before a job
exists; the slow part (qemu-img, copies, downloads) runs as a job in a worker thread. Every copy lands under a
temporary name and is renamed into place only once it is complete and checked, so a failure leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from virtfleet import failpoints
from virtfleet.errors import Conflict, InvalidSpec, NotFound, Unsupported
from virtfleet.jobs.recovery import Outcome, Recovery
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.model.job import Job
from virtfleet.model.storage import Pool, PoolSpec, Volume, VolumeFormat, VolumeSpec, parse_volume_ref
from virtfleet.storage import qemu_img, transfer
from virtfleet.storage.archive import extract_ova_disks
from virtfleet.storage.backends import PoolBackend, create_backend, default_mount_path
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import Intent, IntentLog
from virtfleet.store.storage_repo import StorageRepo

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


class StorageService:
    def __init__(self, db: Database, runner: JobRunner, data_dir: Path, attached_to: AttachedLookup,
                 intents: IntentLog) -> None:
        self.repo = StorageRepo(db)
        self.intents = intents
        self.runner = runner
        self.data_dir = data_dir
        self.attached_to = attached_to
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
        if spec.type != "lvm":
            check_pool_path(mount, [Path(p.mount_path) for p in self.repo.list_pools()], self.data_dir)
        backend = create_backend(spec, mount)
        await asyncio.to_thread(backend.activate)
        pool = self.repo.add_pool(spec, str(mount))
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
        await asyncio.to_thread(backend.destroy)
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
        return next((v for v in self.repo.list_volumes() if v.path == path), None)

    def pool_roots(self) -> list[Path]:
        return [Path(pool.mount_path) for pool in self.repo.list_pools()]

    # --- volumes: changes ----------------------------------------------------------------------------------
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
            usage = backend.usage()
            if not usage.thin and size > usage.available:
                raise InvalidSpec("size", f"{size} bytes do not fit: pool '{pool.name}' has {usage.available} free")
        return backend

    def _submit(self, kind: str, ref: str, work: Callable[[JobContext], object]) -> Job:
        async def run(context: JobContext) -> str:
            return str(await asyncio.to_thread(work, context))

        return self.runner.submit(kind, f"volume:{ref}", f"volume '{ref}'", run)

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
        if size < volume.size and not shrink:
            raise InvalidSpec("size", f"{size} is smaller than the current {volume.size} bytes: shrinking loses "
                                      "data, add --force (shrink=true) if you mean it")
        if volume.attached_to is not None:
            raise Conflict(f"volume {volume.ref} is attached to vm '{volume.attached_to}'; detach it first")
        dependents = self.repo.dependents(volume.id)
        if dependents and size < volume.size:
            clones = ", ".join(d.ref for d in dependents)
            raise Conflict(f"volume {volume.ref} is the base of linked clones ({clones}); shrinking it would cut "
                           "the data they read")
        backend = self.backend(self.repo.get_pool(volume.pool))

        def work(context: JobContext) -> str:
            backend.resize_volume(volume.name, volume.format, size, shrink=size < volume.size)
            self.repo.update_volume(volume.id, size=size)
            return f"resized {volume.ref} to {size} bytes"

        return self._submit("volume.resize", volume.ref, work)

    def _check_deletable(self, volume: Volume) -> None:
        if volume.attached_to is not None:
            raise Conflict(f"volume {volume.ref} is attached to vm '{volume.attached_to}'; detach or delete it first")
        dependents = self.repo.dependents(volume.id)
        if dependents:
            names = ", ".join(d.ref for d in dependents)
            raise Conflict(f"volume {volume.ref} is the base of linked clones: {names}; delete them first")

    def delete_volume(self, ref: str) -> Job:
        volume = self.volume(ref)
        self._check_deletable(volume)

        def work(context: JobContext) -> str:
            self.remove_volume(volume)
            return f"deleted volume {volume.ref}"

        return self._submit("volume.delete", volume.ref, work)

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
        if template and volume.attached_to is not None:
            raise Conflict(f"volume {volume.ref} is attached to vm '{volume.attached_to}'; a template must be "
                           "free (linked clones read it while their VMs run)")
        if not template and self.repo.dependents(volume.id):
            raise Conflict(f"volume {volume.ref} has linked clones; it stays a template while they exist")
        path = Path(volume.path)
        if path.is_file():
            # Clones share it: make accidental writes fail at the file-system level too.
            path.chmod(0o444 if template else 0o644)
        return self._attached(self.repo.update_volume(volume.id, template=template))

    def clone_volume(self, ref: str, new_name: str, *, linked: bool = True, pool_name: str | None = None) -> Job:
        plan = self.plan_clone(ref, new_name, linked=linked, pool_name=pool_name)
        source = plan.source
        assert source is not None

        def work(context: JobContext) -> str:
            with self.new_volume(plan.pool, plan.name, context.job.id):
                path = self.make_file(plan, lambda pct: context.progress(int(pct), f"copying {source.ref}: {pct:.0f}%"))
                failpoints.hit("volume.clone.after-file")
                self.record(plan, path)
            return f"{'linked' if linked else 'full'} clone {plan.ref} of {source.ref}"

        return self._submit("volume.clone", plan.ref, work)

    def build_volume(self, pool_name: str, name: str, fmt: VolumeFormat,
                     build: Callable[[Path, Callable[[str], None]], object], kind: str) -> Job:
        """Make a volume with a builder (e.g. a bootable disk) that writes the image file it is given."""
        pool = self.repo.get_pool(pool_name)
        backend = self._check_new(pool, name, fmt, None)
        if not backend.supports_backing_files:
            raise Unsupported(f"{pool.spec.type} pools hold raw block devices; build disk images in a dir pool")

        def work(context: JobContext) -> str:
            final = backend.volume_path(name)
            with self.new_volume(pool, name, context.job.id):
                with transfer.atomic_destination(final) as temp:
                    build(temp, lambda message: context.progress(min(90, context.job.progress + 15), message))
                size = qemu_img.info(final, fmt).virtual_size
                volume = self.repo.add_volume(pool.name, name, fmt, size, str(final))
            return f"built {kind} {volume.ref} ({size} bytes)"

        return self._submit("volume.build", f"{pool.name}/{name}", work)

    def import_url(self, pool_name: str, name: str, url: str, fmt: str, *, sha256: str | None = None) -> Job:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise InvalidSpec("url", f"{url!r} is not an http or https URL")
        check_sha256(sha256)
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
                digest = transfer.download_url(url, incoming, progress=progress, expected_sha256=sha256)
                volume = self._register_incoming(pool, backend, name, incoming, fmt, stored, context)
            finally:
                incoming.unlink(missing_ok=True)
            return f"imported {url} as {volume.ref} (sha256 {digest})"

        return self._submit("volume.import", ref, work)

    async def upload(self, pool_name: str, name: str, fmt: str, body: AsyncIterator[bytes], *,
                     sha256: str | None = None, length: int | None = None) -> Volume:
        """Receive an upload (the request body) into the pool; checked and registered, or nothing is left."""
        check_sha256(sha256)
        pool = self.repo.get_pool(pool_name)
        stored = stored_format(fmt)
        backend = self._check_new(pool, name, stored, length)
        ref = f"{pool.name}/{name}"
        self.runner.check_free(f"volume:{ref}", f"volume '{ref}'")
        if ref in self._uploading:
            raise Conflict(f"volume '{ref}' is being uploaded by another request")
        self._uploading.add(ref)
        incoming = pool_staging(backend) / f"{name}.upload-{secrets.token_hex(8)}"
        digest = hashlib.sha256()
        try:
            with incoming.open("wb") as out:
                async for chunk in body:
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            if sha256 is not None and digest.hexdigest() != sha256.lower():
                raise InvalidSpec("sha256", f"the data does not match: expected {sha256}, got {digest.hexdigest()}")
            return await asyncio.to_thread(self._register_incoming, pool, backend, name, incoming, fmt, stored, None)
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
        info = qemu_img.inspect_untrusted(incoming, fmt, self.pool_roots())
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


# A pool's files can be attached to VMs: never let a pool cover the system.
_SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run", "/sbin", "/sys", "/usr",
                "/var/lib/dpkg", "/var/log")


def check_pool_path(path: Path, existing: list[Path], data_dir: Path) -> None:
    real = path.resolve()
    if real == Path("/") or any(real == Path(d) or real.is_relative_to(d) for d in _SYSTEM_DIRS):
        raise InvalidSpec("path", f"{path} is a system directory; pools need a directory of their own")
    for other in existing:
        other_real = other.resolve()
        if real == other_real or real.is_relative_to(other_real) or other_real.is_relative_to(real):
            raise InvalidSpec("path", f"{path} overlaps the pool at {other}")
    if data_dir.resolve().is_relative_to(real):
        raise InvalidSpec("path", f"{path} contains virtfleet's own data directory")


def remove_partial_files(backend: PoolBackend) -> list[str]:
    """At start-up nothing is being copied: temporary files from an interrupted copy or upload are garbage."""
    if not backend.supports_backing_files or not backend.mount_path.is_dir():
        return []
    partial = [*backend.mount_path.glob(".*.part-*")]
    staging = backend.mount_path / ".incoming"
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
    staging = backend.mount_path / ".incoming"
    staging.mkdir(exist_ok=True)
    return staging
