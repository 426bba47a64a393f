"""VM disks: turning what a spec names (a volume, or a file in a pool) into what QEMU opens, safely."""

from __future__ import annotations

from pathlib import Path

from virtfleet.errors import InvalidSpec, NotFound
from virtfleet.images.cloudinit import CloudInit, build_seed_iso
from virtfleet.jobs.storage import StorageService
from virtfleet.model.storage import Volume
from virtfleet.model.vm import BackingLayer, CloudInitSpec, DiskSpec, Vm, VmSpec
from virtfleet.storage import qemu_img
from virtfleet.store.db import Database


def vm_using(db: Database, path: str, *, except_vm: str | None = None) -> str | None:
    """The VM whose spec has a disk at `path` (one host holds few VMs: a scan is cheap and never stale)."""
    for vm in db.list_vms():
        if vm.template:
            continue  # a template never runs: its clones read its volumes, it does not
        if vm.name != except_vm and any(disk.path == path for disk in vm.spec.disks):
            return vm.name
    return None


MAX_CHAIN = 32


def backing_chain(disk: DiskSpec, roots: list[Path], field: str) -> list[BackingLayer]:
    """Walk a disk's backing files one header at a time (qemu-img info never opens a backing file), refusing any
    that leaves the pools, names a protocol, or has no explicit qcow2/raw format."""
    assert disk.path is not None
    layers: list[BackingLayer] = []
    current, fmt = Path(disk.path), str(disk.format)
    for _ in range(MAX_CHAIN):
        info = qemu_img.info(current, fmt)
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
        """The spec QEMU runs: the VM's own with each disk's checked backing chain, plus the cloud-init seed disk
        (rebuilt at each start from the spec)."""
        roots = [root.resolve() for root in self.storage.pool_roots()]
        disks = [disk.model_copy(update={"backing_chain": backing_chain(disk, roots, f"disks[{index}]")})
                 for index, disk in enumerate(vm.spec.disks)]
        if vm.spec.cloud_init is not None:
            self.seed_dir.mkdir(parents=True, exist_ok=True)
            seed = self.seed_dir / f"{vm.id}.iso"
            build_seed_iso(cloud_init_for(vm.name, vm.id, vm.spec.cloud_init), seed)
            disks.append(DiskSpec(path=str(seed), format="raw", readonly=True))
        return vm.spec.model_copy(update={"disks": disks})

    def chain_of(self, disk: DiskSpec, field: str) -> list[BackingLayer]:
        return backing_chain(disk, [root.resolve() for root in self.storage.pool_roots()], field)

    def forget_seed(self, vm: Vm) -> None:
        (self.seed_dir / f"{vm.id}.iso").unlink(missing_ok=True)

    def resolve(self, spec: VmSpec, *, vm_name: str | None = None) -> VmSpec:
        """Fill in path and format of every disk; refuse what a VM must not open. Changes nothing."""
        if spec.cloud_init is not None:
            cloud_init_for(spec.name, "check", spec.cloud_init)
        disks = [self.resolve_disk(disk, f"disks[{index}]", vm_name=vm_name) for index, disk in enumerate(spec.disks)]
        paths = [disk.path for disk in disks]
        for index, path in enumerate(paths):
            if path in paths[:index]:
                raise InvalidSpec(f"disks[{index}]", f"{path} is attached twice")
        return spec.model_copy(update={"disks": disks})

    def resolve_disk(self, disk: DiskSpec, field: str, *, vm_name: str | None = None) -> DiskSpec:
        volume: Volume | None
        if disk.volume is not None:
            try:
                volume = self.storage.volume(disk.volume)
            except NotFound:
                raise InvalidSpec(f"{field}.volume", f"no volume named {disk.volume}") from None
            resolved = disk.model_copy(update={"volume": volume.ref, "path": volume.path, "format": volume.format})
        else:
            assert disk.path is not None
            path = Path(disk.path)
            if not path.is_absolute():
                raise InvalidSpec(f"{field}.path", "must be an absolute path inside a storage pool")
            real = path.resolve()  # follows symlinks, so a link out of the pool is caught too
            roots = [root.resolve() for root in self.storage.pool_roots()]
            if not any(real.is_relative_to(root) for root in roots):
                raise InvalidSpec(f"{field}.path", f"{disk.path} is outside every storage pool "
                                                   f"({', '.join(str(r) for r in roots)})")
            if not real.exists():
                raise InvalidSpec(f"{field}.path", f"{disk.path} does not exist")
            volume = self.storage.volume_by_path(disk.path)
            resolved = disk if volume is None else disk.model_copy(update={"volume": volume.ref,
                                                                            "format": volume.format})
        if volume is not None and volume.template and not disk.readonly:
            raise InvalidSpec(f"{field}.volume", f"{volume.ref} is a template; clone it (vm create --from-template) "
                                                 "or attach it read-only")
        assert resolved.path is not None
        user = vm_using(self.db, resolved.path, except_vm=vm_name)
        if user is not None:
            raise InvalidSpec(field, f"{resolved.volume or resolved.path} is already attached to vm '{user}'")
        return resolved
