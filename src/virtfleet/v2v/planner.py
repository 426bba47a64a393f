"""SourceVm -> ImportPlan: virtfleet's choices for a foreign VM, and a warning for everything left behind. Pure.

Disks: virtfleet attaches virtio-blk or virtio-scsi only. Controllers whose guests name disks sdX (SCSI, SATA, IDE,
NVMe behind libata) map to virtio-scsi, so Linux keeps its device names; virtio and Xen PV disks to virtio-blk.
NICs: virtio for Linux and unknown guests; Windows guests get e1000 (their inbox driver) unless the old NIC was
already virtio, because a Windows guest without the virtio drivers would come up without a network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from virtfleet.model.names import NAME_PATTERN
from virtfleet.model.vm import MAX_CPUS, MAX_MEMORY_MIB, MIN_MEMORY_MIB
from virtfleet.v2v.model import GuestFamily, ImportPlan, PlannedDisk, PlannedNic, SourceDisk, SourceNic, SourceVm

_LINUX = ("linux", "ubuntu", "debian", "rhel", "redhat", "centos", "fedora", "suse", "sles", "oracle", "mandr",
          "gentoo", "arch", "alma", "rocky", "coreos", "photon", "asianux", "turbo", "amazon", "other26x", "other3x",
          "other4x", "other5x", "other6x")
_WINDOWS = ("windows", "win", "microsoft")
_OTHER = ("freebsd", "solaris", "netbsd", "openbsd", "darwin", "mac", "os2", "netware", "dos", "vmkernel", "sco")
MAX_DISKS = 16  # VmSpec.disks
MAX_NICS = 8  # VmSpec.nics
_VIRTIO_CONTROLLERS = ("virtio", "virtio-blk", "xen", "xen-pv", "vd", "xvd")


@dataclass(frozen=True)
class PlanOptions:
    pool: str = "default"
    format: Literal["qcow2", "raw"] = "qcow2"
    name: str | None = None
    network_map: dict[str, str] = field(default_factory=dict)
    networks: frozenset[str] | None = None  # virtfleet's networks: an unmapped source network of the same name maps


def guest_family(guest_os: str) -> GuestFamily:
    value = guest_os.lower()
    if not value:
        return "unknown"
    # "other" first: darwin contains "win".
    if any(word in value for word in _OTHER):
        return "other"
    if any(word in value for word in _WINDOWS):
        return "windows"
    if any(word in value for word in _LINUX):
        return "linux"
    return "unknown"


def vm_name(source: str, given: str | None) -> tuple[str, str | None]:
    """A valid virtfleet name for the VM, and a warning when the source's had to change."""
    if given is not None:
        return given, None
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", source).strip("-._")[:63] or "imported"
    if not cleaned[0].isalnum():
        cleaned = f"vm{cleaned}"[:63]
    note = None if cleaned == source else f"name: {source!r} is not a valid virtfleet name; the VM is called {cleaned}"
    return cleaned, note


def _bus(disk: SourceDisk) -> Literal["virtio-blk", "virtio-scsi"]:
    return "virtio-blk" if disk.controller.lower() in _VIRTIO_CONTROLLERS else "virtio-scsi"


def _conversion(disk: SourceDisk, fmt: str) -> str:
    if disk.device is not None:
        return f"host block device (raw) -> {fmt}"
    top = disk.layers[0]
    via = ""
    if disk.archive is not None:
        via = " (taken out of the OVA)"
    if len(disk.layers) > 1:
        via += f" (a chain of {len(disk.layers)} layers, flattened)"
    if top.format == fmt and len(disk.layers) == 1:
        return f"{top.format} copied{via}"
    return f"{top.format} -> {fmt}{via}"


def _nic_model(nic: SourceNic, family: GuestFamily) -> Literal["virtio", "e1000"]:
    if "virtio" in nic.model.lower() or family != "windows":
        return "virtio"
    return "e1000"


def _network(nic: SourceNic, options: PlanOptions) -> str | None:
    if nic.network in options.network_map:
        return options.network_map[nic.network]
    if "*" in options.network_map:
        return options.network_map["*"]
    if options.networks is not None and nic.network in options.networks:
        return nic.network
    return None


def make_plan(source: SourceVm, options: PlanOptions) -> ImportPlan:
    warnings = list(source.warnings)
    problems: list[str] = []
    name, renamed = vm_name(source.name, options.name)
    if renamed:
        warnings.append(renamed)
    if not re.fullmatch(NAME_PATTERN, name):
        problems.append(f"name: {name!r} is not a valid VM name (letters, digits, '.', '_', '-'; at most 63)")
    family = guest_family(source.guest_os)
    if family == "unknown":
        warnings.append("guest OS: unknown; assumed to have virtio drivers (every Linux since 2.6.25 has)")
    elif family == "windows":
        warnings.append("guest OS: Windows needs the virtio drivers (virtio-win) installed before the move: "
                        "virtfleet attaches disks as virtio only, and Windows will not find its boot disk without them")
    cpus = source.cpus
    if cpus > MAX_CPUS:
        problems.append(f"cpus: {cpus} is more than virtfleet's limit of {MAX_CPUS}")
    if source.sockets > 1 and source.cores > 1:
        warnings.append(f"cpu topology: {source.sockets} sockets x {source.cores} cores is flattened to {cpus} vCPUs")
    memory = source.memory_mib
    if memory < MIN_MEMORY_MIB:
        warnings.append(f"memory: {memory} MiB is raised to virtfleet's minimum of {MIN_MEMORY_MIB} MiB")
        memory = MIN_MEMORY_MIB
    if memory > MAX_MEMORY_MIB:
        problems.append(f"memory: {memory} MiB is more than virtfleet's limit of {MAX_MEMORY_MIB} MiB")
    if source.firmware == "uefi":
        warnings.append("firmware: UEFI is kept, with a new, empty variable store: the guest's own boot entries are "
                        "not carried over, so its firmware boots the disk's default loader (\\EFI\\BOOT\\BOOTX64.EFI)")
    if not source.disks:
        problems.append("disks: the VM has no disk to import")
    if len(source.disks) > MAX_DISKS:
        problems.append(f"disks: {len(source.disks)} is more than the {MAX_DISKS} disks a virtfleet VM can have")
    if len(source.nics) > MAX_NICS:
        problems.append(f"nics: {len(source.nics)} is more than the {MAX_NICS} NICs a virtfleet VM can have")

    disks = []
    for index, disk in enumerate(source.disks):
        bus = _bus(disk)
        disks.append(PlannedDisk(
            label=disk.label,
            source=disk.device or (f"{disk.archive}:{disk.layers[0].file}" if disk.archive else disk.layers[0].file),
            source_format="raw" if disk.device else disk.layers[0].format,
            layout=disk.layout,
            layers=max(1, len(disk.layers)),
            controller=disk.controller,
            bus=bus,
            size=disk.size,
            pool=options.pool,
            volume=f"{name}-disk{index + 1}"[:63] if len(source.disks) > 1 else name,
            format=options.format,
            conversion=_conversion(disk, options.format),
            checksum=disk.checksum,
            boot=index == 0,
        ))

    nics = []
    for nic in source.nics:
        network = _network(nic, options)
        if network is None:
            problems.append(f"{nic.label}: source network {nic.network or '(none)'!r} is not mapped to a virtfleet "
                            f"network; use --network-map '{nic.network or '*'}=NETWORK'")
        model = _nic_model(nic, family)
        nics.append(PlannedNic(label=nic.label, mac=nic.mac, source_network=nic.network, network=network,
                               source_model=nic.model, model=model))
    return ImportPlan(kind=source.kind, source=source.file, name=name, cpus=cpus, sockets=source.sockets,
                      cores=source.cores, memory_mib=memory, firmware=source.firmware, guest_os=source.guest_os,
                      guest_family=family, disks=disks, nics=nics, warnings=warnings, problems=problems,
                      source_vm=source)
