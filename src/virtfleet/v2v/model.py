"""What a foreign VM description says (SourceVm) and what virtfleet will make of it (ImportPlan).

Readers fill a SourceVm with what the file says, in the file's own terms (controllers, NIC models, network names);
planner.make_plan turns it into an ImportPlan: virtfleet's choices, and a warning for every setting not carried over.
Paths are relative to the import directory (POSIX), so a plan reads the same on every host and in golden files.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from virtfleet.model.names import NAME_PATTERN

Firmware = Literal["bios", "uefi"]
SourceKind = Literal["vmx", "ovf", "ova", "libvirt", "xl", "hyperv", "disk"]
GuestFamily = Literal["linux", "windows", "other", "unknown"]
# qemu format names of what we read; each is opened with the format named, never probed.
ImageFormat = Literal["vmdk", "vhdx", "vpc", "qcow2", "raw", "vdi"]


class Extent(BaseModel):
    """One extent of a VMDK layer: a file (or zeros) holding `sectors` 512-byte sectors of the disk."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE", "ZERO"]
    sectors: int = Field(ge=1)
    file: str | None = None  # None for ZERO
    offset: int = Field(default=0, ge=0)  # FLAT/VMFS: where the extent starts in its file, in sectors
    access: Literal["RW", "RDONLY"] = "RW"


class Layer(BaseModel):
    """One image of a disk. A disk is a chain of layers, the current state first (a snapshot or differencing disk
    on top of its parents); importing flattens the chain into one volume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str  # relative to the import directory; for an OVA, the member name
    format: ImageFormat
    extents: list[Extent] = Field(default_factory=list)  # VMDK descriptors only
    # VMDK content ids, to check the parent link; random per image, so kept out of plans shown and compared.
    cid: str | None = Field(default=None, exclude=True)
    parent_cid: str | None = Field(default=None, exclude=True)


class SourceDisk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str  # where the old VM had it: scsi0:0, hda, "Hard disk 1"
    layers: list[Layer] = Field(default_factory=list)  # empty for a host block device
    layout: str  # human: "vmdk monolithicSparse", "vhdx differencing chain of 2 layers"
    controller: str  # the old controller, as the file names it: lsilogic, pvscsi, ide, sata, xen, virtio ...
    size: int | None = None  # virtual size in bytes, when the description or the header says
    checksum: str | None = None  # "SHA256:hex" from a manifest; checked before conversion
    archive: str | None = None  # the OVA the layers are members of
    device: str | None = None  # a host block device (Xen phy:), read only when an admin allowed it


class SourceNic(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    mac: str | None = None
    network: str  # the old network's name (port group, bridge, switch); "" when the file names none
    model: str  # e1000, vmxnet3, virtio, netfront, ...


class SourceVm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SourceKind
    file: str
    name: str
    cpus: int = Field(ge=1)
    sockets: int = Field(default=1, ge=1)
    cores: int = Field(default=1, ge=1)  # per socket
    memory_mib: int = Field(ge=1)
    firmware: Firmware = "bios"
    guest_os: str = ""
    disks: list[SourceDisk] = Field(default_factory=list)
    nics: list[SourceNic] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)  # settings the file has that virtfleet does not carry over


class PlannedDisk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    source: str  # the file holding the current state (or the OVA member, or the device)
    source_format: str
    layout: str
    layers: int
    controller: str
    bus: Literal["virtio-blk", "virtio-scsi"]
    size: int | None
    pool: str
    volume: str
    format: Literal["qcow2", "raw"]
    conversion: str
    checksum: str | None
    boot: bool


class PlannedNic(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    mac: str | None  # kept; None: virtfleet gives it one
    source_network: str
    network: str | None  # None while unmapped: the import is refused until it is mapped
    source_model: str
    model: Literal["virtio", "e1000"]


class ImportPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SourceKind
    source: str
    name: str
    cpus: int
    sockets: int
    cores: int
    memory_mib: int
    firmware: Firmware
    machine: Literal["q35"] = "q35"
    guest_os: str
    guest_family: GuestFamily
    disks: list[PlannedDisk]
    nics: list[PlannedNic]
    warnings: list[str]  # every setting not carried over, and every choice made for the user
    problems: list[str]  # what stops the import as planned (unmapped networks ...); empty when it can run
    source_vm: SourceVm  # what the file said, for the job that converts it


class ImportRequest(BaseModel):
    """What `virtfleet import` and POST /api/v1/imports ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=4096, description="inside the server's import directory")
    dry_run: bool = Field(default=False, description="only answer the plan; nothing changes")
    pool: str = Field(default="default", pattern=NAME_PATTERN)
    format: Literal["qcow2", "raw"] = "qcow2"
    network_map: dict[str, str] = Field(default_factory=dict, max_length=64,
                                        description="source network name -> virtfleet network ('*': any other)")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="default: the source VM's name")


class ImportedDisk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    volume: str  # pool/name
    format: str
    size: int
    checksum: str | None  # the manifest digest that was checked, when the package had one


class ImportReport(BaseModel):
    """The result of an import job: what was made, and every setting that was not carried over."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    vm: str
    source: str
    kind: SourceKind
    disks: list[ImportedDisk]
    nics: list[PlannedNic]
    warnings: list[str]
    plan: ImportPlan


class Upload(BaseModel):
    """An OVA uploaded into the import directory, waiting to be imported (or removed)."""

    name: str
    path: str = Field(description="what to import: the upload's path in the import directory")
    size: int
    modified: datetime
