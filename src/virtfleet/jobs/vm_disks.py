"""VM disks: turning what a spec names (a volume, by name or by the path of its file) into what QEMU opens, safely.

Identity, not spelling: a path is the volume whose file it is (compared by device and inode, so links, `.`/`..`,
repeated slashes and bind mounts all lead to the one record), and that volume decides how the file is opened (its
format), whether it may be written (templates) and who holds it (one VM). A request's format is never used.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from virtfleet.errors import InvalidSpec, NotFound
from virtfleet.images.cloudinit import CloudInit, build_seed_iso
from virtfleet.jobs.storage import DEFAULT_POOL, StorageService, volume_key
from virtfleet.model.storage import Volume
from virtfleet.model.vm import BackingLayer, CloudInitSpec, DiskSpec, Vm, VmSpec
from virtfleet.storage import qemu_img
from virtfleet.storage.identity import FileId, file_id, same_file
from virtfleet.store.db import Database


def _is_file(disk: DiskSpec, path: str, wanted: FileId | None) -> bool:
    if disk.path is None:
        return False
    return disk.path == path or (wanted is not None and file_id(disk.path) == wanted)


def vm_using(db: Database, path: str, *, except_vm: str | None = None) -> str | None:
    """The VM with a disk that is the file at `path`, however either is spelled (one host holds few VMs: a scan,
    one stat per disk, is cheap and never stale)."""
    wanted = file_id(path)
    for vm in db.list_vms():
        if vm.template:
            continue  # a template never runs: its clones read its volumes, it does not
        if vm.name != except_vm and any(_is_file(disk, path, wanted) for disk in vm.spec.disks):
            return vm.name
    return None


MAX_CHAIN = 32


def backing_chain(disk: DiskSpec, roots: list[Path], field: str) -> list[BackingLayer]:
    """Walk a disk's backing files one header at a time (qemu-img info never opens a backing file), refusing any
    that leaves the pools, names a protocol, or has no explicit qcow2/raw format, and any layer that keeps its data
    in an external data file (QEMU would open that file, and -blockdev cannot say "none")."""
    assert disk.path is not None  # noqa: S101 - callers pass resolved disks
    layers: list[BackingLayer] = []
    current, fmt = Path(disk.path), str(disk.format)
    for _ in range(MAX_CHAIN):
        info = qemu_img.info(current, fmt)
        if info.data_file is not None:
            raise InvalidSpec(field, f"{current} keeps its data in another file ({info.data_file}); refused")
        if info.backing_file is None:
            return layers
        name = info.backing_file
        if qemu_img.has_protocol(name):
            raise InvalidSpec(field, f"{current} names a backing file by protocol ({name}); refused")
        if info.backing_format not in ("qcow2", "raw"):
            raise InvalidSpec(field, f"{current} has a backing file without an explicit qcow2/raw format")
        backing = (current.parent / name).resolve()
        if not qemu_img.inside(str(backing), roots):
            raise InvalidSpec(field, f"the backing file of {current} points outside the storage pools: {backing}")
        layers.append(BackingLayer(path=str(backing), format=info.backing_format))
        current, fmt = backing, info.backing_format
    raise InvalidSpec(field, f"the backing chain of {disk.path} is deeper than {MAX_CHAIN}")


def cloud_init_for(name: str, vm_id: str, spec: CloudInitSpec) -> CloudInit:
    """The validated cloud-init data of a VM; errors name the spec field."""
    try:
        return CloudInit(spec.hostname or name, spec.user_data, tuple(spec.ssh_keys), instance_id=vm_id)
    except InvalidSpec as error:
        raise InvalidSpec(f"cloud_init.{error.field}", error.problem) from None


class DiskResolver:
    def __init__(self, db: Database, storage: StorageService, seed_dir: Path) -> None:
        self.db = db
        self.storage = storage
        self.seed_dir = seed_dir

    def boot_spec(self, vm: Vm) -> VmSpec:
        """The spec QEMU runs: the VM's own with each disk checked again and its backing chain walked, plus the
        cloud-init seed disk (rebuilt at each start from the spec). Slow (qemu-img): call it off the event loop."""
        roots = [root.resolve() for root in self.storage.pool_roots()]
        disks = []
        for index, disk in enumerate(vm.spec.disks):
            field = f"disks[{index}]"
            opened = self._as_its_volume(disk, field, vm.name)
            disks.append(opened.model_copy(update={"backing_chain": backing_chain(opened, roots, field)}))
        if vm.spec.cloud_init is not None:
            self.seed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            seed = self.seed_dir / f"{vm.id}.iso"
            build_seed_iso(cloud_init_for(vm.name, vm.id, vm.spec.cloud_init), seed)
            disks.append(DiskSpec(path=str(seed), format="raw", readonly=True))
        return vm.spec.model_copy(update={"disks": disks})

    def _as_its_volume(self, disk: DiskSpec, field: str, vm_name: str) -> DiskSpec:
        """A stored disk as its volume says to open it: a spec written before disks were resolved by identity may
        carry a request's format or a second spelling of a template or of another VM's volume."""
        assert disk.path is not None  # noqa: S101 - resolved disks have their volume's path
        volume = self.storage.volume_by_path(disk.path)
        if volume is None:
            return disk  # not a volume's file (an older spec): its chain is still checked
        self._check_use(volume, disk, field, vm_name)
        return disk if disk.format == volume.format else disk.model_copy(update={"format": volume.format})

    def chain_of(self, disk: DiskSpec, field: str) -> list[BackingLayer]:
        """A resolved disk's checked backing chain (qemu-img: call it off the event loop)."""
        return backing_chain(disk, [root.resolve() for root in self.storage.pool_roots()], field)

    def locks(self, disks: Iterable[DiskSpec]) -> dict[str, str]:
        """What a job touching these disks locks (key -> label): each volume by its id, a plain file by its path."""
        keys: dict[str, str] = {}
        for disk in disks:
            if disk.volume is not None:
                try:
                    volume = self.storage.volume(disk.volume)
                except NotFound:
                    pass  # gone: nothing to lock, and the job's own checks refuse to use it
                else:
                    keys[volume_key(volume)] = f"volume '{volume.ref}'"
                    continue
            if disk.path is not None:
                keys[f"file:{disk.path}"] = f"disk {disk.path}"
        return keys

    def forget_seed(self, vm: Vm) -> None:
        (self.seed_dir / f"{vm.id}.iso").unlink(missing_ok=True)

    def resolve(self, spec: VmSpec, *, vm_name: str | None = None) -> VmSpec:
        """Resolve every disk to its volume; refuse what a VM must not open. Changes nothing."""
        if spec.cloud_init is not None:
            cloud_init_for(spec.name, "check", spec.cloud_init)
        disks = [self.resolve_disk(disk, f"disks[{index}]", vm_name=vm_name) for index, disk in enumerate(spec.disks)]
        for index, disk in enumerate(disks):
            if any(disk.volume == earlier.volume for earlier in disks[:index]):
                raise InvalidSpec(f"disks[{index}]", f"{disk.volume} is attached twice")
        return spec.model_copy(update={"disks": disks})

    def with_disk(self, vm: Vm, disk: DiskSpec) -> VmSpec:
        """The VM's spec with one more disk, resolved and checked; the disks it has already stay as they are."""
        field = f"disks[{len(vm.spec.disks)}]"
        added = self.resolve_disk(disk, field, vm_name=vm.name)
        assert added.path is not None  # noqa: S101 - resolved disks have their volume's path
        wanted = file_id(added.path)
        if any(d.volume == added.volume or _is_file(d, added.path, wanted) for d in vm.spec.disks):
            raise InvalidSpec(field, f"{added.volume} is attached to vm '{vm.name}' already")
        return vm.spec.model_copy(update={"disks": [*vm.spec.disks, added]})

    def find_disk(self, vm: Vm, disk_ref: str) -> DiskSpec | None:
        """The VM's disk that `disk_ref` names: its volume (POOL/NAME, or NAME in the default pool) or its file, by
        any path to it (a path taken from a URL arrives without its leading slash)."""
        refs = {disk_ref, f"{DEFAULT_POOL}/{disk_ref}"}
        path = disk_ref if disk_ref.startswith("/") else f"/{disk_ref}"
        wanted = file_id(path)
        return next((d for d in vm.spec.disks if d.volume in refs or _is_file(d, path, wanted)), None)

    def resolve_disk(self, disk: DiskSpec, field: str, *, vm_name: str | None = None) -> DiskSpec:
        """The disk as the one volume it names, with that volume's path and format; the rules (templates only
        read-only, one VM per volume) are the volume's. Backing chains are never taken from a request."""
        volume = self._volume_of(disk, field)
        self._check_use(volume, disk, field, vm_name)
        return disk.model_copy(update={"volume": volume.ref, "path": volume.path, "format": volume.format,
                                       "backing_chain": []})

    def _volume_of(self, disk: DiskSpec, field: str) -> Volume:
        if disk.volume is not None:
            try:
                volume = self.storage.volume(disk.volume)
            except NotFound:
                raise InvalidSpec(f"{field}.volume", f"no volume named {disk.volume}") from None
            if disk.path is not None and not same_file(disk.path, volume.path):
                raise InvalidSpec(f"{field}.path", f"{disk.path} is not the file of volume {volume.ref}; name the "
                                                   "volume or its file, not two things")
            return volume
        assert disk.path is not None  # noqa: S101 - resolved disks have their volume's path
        path = Path(disk.path)
        if not path.is_absolute():
            raise InvalidSpec(f"{field}.path", "must be the absolute path of a volume's file in a storage pool")
        found = self.storage.volume_by_path(disk.path)
        if found is not None:
            return found
        real = path.resolve()  # follows symlinks, so a link out of the pool is caught too
        roots = [root.resolve() for root in self.storage.pool_roots()]
        if not any(real.is_relative_to(root) for root in roots):
            raise InvalidSpec(f"{field}.path", f"{disk.path} is outside every storage pool "
                                               f"({', '.join(str(r) for r in roots)})")
        if not real.exists():
            raise InvalidSpec(f"{field}.path", f"{disk.path} does not exist")
        # A pool also holds files that are not volumes (transfers in progress, frozen snapshot layers): none of
        # them may be opened by a VM, and nothing records how they should be.
        raise InvalidSpec(f"{field}.path", f"{disk.path} is not the file of any volume; a disk is a volume: "
                                           "create, upload or import one")

    def _check_use(self, volume: Volume, disk: DiskSpec, field: str, vm_name: str | None) -> None:
        if volume.template and not disk.readonly:
            raise InvalidSpec(f"{field}.volume", f"{volume.ref} is a template; clone it (vm create --from-template) "
                                                 "or attach it read-only")
        user = vm_using(self.db, volume.path, except_vm=vm_name)
        if user is not None:
            raise InvalidSpec(field, f"{volume.ref} is already attached to vm '{user}'")
