"""The VM domain: its spec (what the user asked for), its state machine and its record."""

from __future__ import annotations

import enum
import hashlib
import re
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from virtfleet.errors import InvalidState
from virtfleet.model.names import NAME_PATTERN
from virtfleet.model.network import NicSpec
from virtfleet.model.storage import SizeBytes, VolumeFormat
from virtfleet.model.units import parse_size_mib

VOLUME_REF_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,62}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
MAX_CPUS = 256
MIN_MEMORY_MIB = 32
MAX_MEMORY_MIB = 4 * 1024 * 1024  # 4 TiB


_MICROVM_LACKS = {
    "display": "a graphical console needs machine q35: microvm has no graphics card",
    "firmware": "UEFI needs machine q35: microvm boots its kernel without firmware",
}


def _memory_mib(value: object) -> object:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return parse_size_mib(value)
    return value


MemoryMiB = Annotated[int, BeforeValidator(_memory_mib), Field(ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB)]


class BackingLayer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    format: Literal["raw", "qcow2"]


CacheMode = Literal["writeback", "none", "writethrough", "directsync", "unsafe"]


class DiskSpec(BaseModel):
    """A disk attached to a VM: a volume, named "pool/name" or by the path of its file (any spelling of it). The
    service resolves either to the one volume and fills `volume`, `path` and `format` in from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    volume: str | None = Field(default=None, pattern=VOLUME_REF_PATTERN, description="pool/name, or name in 'default'")
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    format: Literal["raw", "qcow2"] = Field(
        default="qcow2", description="the volume's, filled in by virtfleet: a disk is opened as its volume says"
    )
    readonly: bool = False
    bus: Literal["virtio-blk", "virtio-scsi"] = "virtio-blk"
    cache: CacheMode = "writeback"
    discard: Literal["ignore", "unmap"] = "ignore"
    boot_index: int | None = Field(default=None, ge=0, le=255, description="firmware boot order (disk boot only)")
    backing_chain: list[BackingLayer] = Field(
        default_factory=list, max_length=32,
        description="filled in by virtfleet at each start (checked to stay inside the pools): the files below `path`",
    )

    @field_validator("path")
    @classmethod
    def _no_control_chars(cls, value: str | None) -> str | None:
        if value is not None and any(ord(ch) < 32 for ch in value):
            raise ValueError("must not contain control characters")
        return value

    @model_validator(mode="after")
    def _volume_or_path(self) -> DiskSpec:
        if self.volume is None and self.path is None:
            raise ValueError("a disk needs a volume (pool/name) or a path")
        return self

    @property
    def node_name(self) -> str:
        """A QEMU node name that stays the same while other disks come and go (hot-plug needs that)."""
        key = self.path or self.volume or ""
        return "d" + hashlib.sha256(key.encode()).hexdigest()[:12]


class CloudInitSpec(BaseModel):
    """cloud-init NoCloud data, served to the guest on a 'cidata' seed disk built at each start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hostname: str | None = Field(default=None, max_length=253, description="default: the VM name")
    user_data: str | None = Field(default=None, max_length=65536, description="#cloud-config or a #! script")
    ssh_keys: list[str] = Field(default_factory=list, max_length=32)


class NewVolume(BaseModel):
    """A volume made for a VM as it is created: blank (`size`) or a clone of another volume (`clone_of`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="default: VMNAME-diskINDEX")
    pool: str | None = Field(default=None, pattern=NAME_PATTERN,
                             description="default: the pool of clone_of, else 'default'")
    size: SizeBytes | None = Field(default=None, description="a blank volume of this size (bytes, or e.g. 10G)")
    format: VolumeFormat | None = Field(default=None, description="of a blank volume (default qcow2)")
    clone_of: str | None = Field(default=None, pattern=VOLUME_REF_PATTERN, description="POOL/NAME to clone")
    linked: bool = Field(default=True, description="with clone_of: a linked clone of a template, or a full copy")

    @model_validator(mode="after")
    def _blank_or_clone(self) -> NewVolume:
        if (self.size is None) == (self.clone_of is None):
            raise ValueError("give a size (a blank volume) or clone_of (a copy of a volume)"
                             + (", not both" if self.size is not None else ""))
        if self.clone_of is not None and self.format is not None:
            raise ValueError("a clone keeps the format of what it clones: leave format out")
        return self


class DiskRequest(DiskSpec):
    """A disk in a create request: a volume or path as in DiskSpec, or `new`, a volume to make for the VM (made
    and attached by one job, or nothing is left). The recorded spec names the made volume."""

    new: NewVolume | None = Field(default=None, description="make this volume (instead of volume or path)")

    @model_validator(mode="after")
    def _volume_or_path(self) -> DiskRequest:  # replaces DiskSpec's: `new` is a third way
        given = [self.new is not None, self.volume is not None, self.path is not None]
        if not any(given):
            raise ValueError("a disk needs a volume (pool/name), a path, or new (a volume to make)")
        if self.new is None:
            return self
        if sum(given) > 1:
            raise ValueError("give new, volume or path, only one")
        if "format" in self.model_fields_set:
            raise ValueError("the format of a new volume goes inside new")
        return self


DiskT = TypeVar("DiskT", bound=DiskSpec)


class VmFields(BaseModel, Generic[DiskT]):
    """The fields of a VM spec, generic in what a disk may be (a create request may ask for new volumes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, '.', '_' or '-'; at most 63")
    cpus: int = Field(default=1, ge=1, le=MAX_CPUS)
    memory: MemoryMiB = Field(default=256, description="MiB, or a size with a unit such as 256M or 2G")
    machine: Literal["microvm", "q35"] = "microvm"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    image: str | None = Field(
        default="tiny", pattern=NAME_PATTERN, description="a built guest image (kernel + initramfs); null: boot a disk"
    )
    kernel_args: str = Field(default="", max_length=1024, description="appended to the kernel command line")
    disks: list[DiskT] = Field(default_factory=list, max_length=16, validate_default=True)
    cloud_init: CloudInitSpec | None = None
    nics: list[NicSpec] = Field(default_factory=list, max_length=8)
    display: Literal["none", "vnc"] = Field(
        default="none", description="vnc: a graphics card and a VNC server (q35 only), reached through the API"
    )
    firmware: Literal["bios", "uefi"] = Field(
        default="bios", description="uefi: UEFI firmware with a variable store of the VM's own (q35 only)"
    )

    @field_validator("nics")
    @classmethod
    def _nic_models(cls, value: list[NicSpec], info: ValidationInfo) -> list[NicSpec]:
        if info.data.get("machine") == "microvm" and any(nic.model == "e1000" for nic in value):
            raise ValueError("e1000 is a PCI card: use machine q35, or the virtio model")
        return value

    @field_validator("disks")
    @classmethod
    def _disk_boot(cls, value: list[DiskT], info: ValidationInfo) -> list[DiskT]:
        if "image" in info.data and info.data["image"] is None:
            if info.data.get("machine") != "q35":
                raise ValueError("booting from a disk (image: null) needs machine q35: microvm has no boot firmware")
            if not value:
                raise ValueError("booting from a disk (image: null) needs at least one disk")
        return value

    @field_validator("display", "firmware")
    @classmethod
    def _needs_q35(cls, value: str, info: ValidationInfo) -> str:
        """What microvm does not have: a graphics card, and firmware other than its own kernel loader."""
        if value not in ("none", "bios") and info.data.get("machine") == "microvm":
            raise ValueError(_MICROVM_LACKS[info.field_name or ""])
        return value

    @field_validator("kernel_args")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(ch) < 32 for ch in value):
            raise ValueError("must not contain control characters")
        return value


class VmSpec(VmFields[DiskSpec]):
    """What a user asks for. The same fields come from the CLI flags, a spec.yaml and the API body."""


class VmCreate(VmFields[DiskRequest]):
    """A VM to create: a VmSpec whose disks may also be volumes to make first (`new`)."""

    def new_disks(self) -> list[tuple[int, NewVolume]]:
        """(index in disks, what to make) for each disk to make."""
        return [(index, disk.new) for index, disk in enumerate(self.disks) if disk.new is not None]


class VmState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    CRASHED = "crashed"


class VmOperation(enum.StrEnum):
    START = "start"
    SHUTDOWN = "shutdown"
    STOP = "stop"
    REBOOT = "reboot"
    PAUSE = "pause"
    RESUME = "resume"
    DELETE = "delete"
    CONSOLE = "console"
    ATTACH_DISK = "attach-disk"
    DETACH_DISK = "detach-disk"
    ATTACH_NIC = "attach-nic"
    DETACH_NIC = "detach-nic"
    SET_LINK = "set-link"


_LIVE = frozenset({VmState.RUNNING, VmState.PAUSED, VmState.STARTING, VmState.STOPPING})
_DOWN = frozenset({VmState.STOPPED, VmState.CRASHED})

# The states in which each operation is allowed; anything else is refused with the current state named.
ALLOWED: dict[VmOperation, frozenset[VmState]] = {
    VmOperation.START: _DOWN,
    VmOperation.SHUTDOWN: frozenset({VmState.RUNNING}),
    VmOperation.STOP: _LIVE,
    VmOperation.REBOOT: frozenset({VmState.RUNNING}),
    VmOperation.PAUSE: frozenset({VmState.RUNNING}),
    VmOperation.RESUME: frozenset({VmState.PAUSED}),
    VmOperation.DELETE: _DOWN,
    VmOperation.CONSOLE: frozenset({VmState.RUNNING, VmState.PAUSED}),
    VmOperation.ATTACH_DISK: frozenset({VmState.STOPPED, VmState.CRASHED, VmState.RUNNING}),
    VmOperation.DETACH_DISK: frozenset({VmState.STOPPED, VmState.CRASHED, VmState.RUNNING}),
    VmOperation.ATTACH_NIC: frozenset({VmState.STOPPED, VmState.CRASHED, VmState.RUNNING}),
    VmOperation.DETACH_NIC: frozenset({VmState.STOPPED, VmState.CRASHED, VmState.RUNNING}),
    VmOperation.SET_LINK: frozenset({VmState.STOPPED, VmState.CRASHED, VmState.RUNNING, VmState.PAUSED}),
}


def require(operation: VmOperation, state: VmState, target: str) -> None:
    """Raise InvalidState unless `operation` is allowed in `state`."""
    allowed = ALLOWED[operation]
    if state not in allowed:
        raise InvalidState(target, operation.value, state.value, (s.value for s in allowed))


def is_live(state: VmState) -> bool:
    """True when a hypervisor process exists for the VM."""
    return state in _LIVE


class Vm(BaseModel):
    """A VM as the store knows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    spec: VmSpec
    state: VmState
    state_reason: str = ""
    host: str
    accel: str = ""
    template: bool = False  # a template VM never runs: VMs are created from it (linked clones of its disks)
    created_at: datetime
    updated_at: datetime


def valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None
