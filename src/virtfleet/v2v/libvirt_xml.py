"""libvirt domain XML (KVM, Xen, VMware domains alike) -> SourceVm."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from virtfleet.v2v import disks, xmlsafe
from virtfleet.v2v.errors import SourceError
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import SourceDisk, SourceNic, SourceVm
from virtfleet.v2v.xmlsafe import attr, child, local, text

MAX_XML = 4 << 20
_UNITS = {"b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
          "mb": 1000**2, "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3, "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4}
_LEFT_BEHIND = {"graphics": "graphical console", "sound": "sound card", "hostdev": "host device passthrough",
                "serial": "serial port", "parallel": "parallel port", "channel": "guest agent channel",
                "filesystem": "shared file system", "tpm": "TPM", "watchdog": "watchdog", "smartcard": "smart card",
                "redirdev": "USB redirection", "rng": "random number generator", "vsock": "vsock",
                "shmem": "shared memory", "iommu": "IOMMU"}
_CONTROLLERS = {"vd": "virtio", "xvd": "xen", "hd": "ide", "sd": "scsi"}


def _int(value: str | None, file: str, field: str) -> int:
    try:
        number = int((value or "").strip())
    except ValueError:
        raise SourceError(file, field, f"{(value or '')[:40]!r} is not a whole number") from None
    if number < 1:
        raise SourceError(file, field, f"{number} must be at least 1")
    return number


def _memory_mib(domain: ET.Element, file: str) -> int:
    element = child(domain, "memory")
    if element is None:
        raise SourceError(file, "memory", "is missing")
    unit = (attr(element, "unit") or "KiB").lower()
    if unit not in _UNITS:
        raise SourceError(file, "memory.unit", f"{unit[:20]!r} is not a unit libvirt knows")
    return max(1, _int(element.text, file, "memory") * _UNITS[unit] >> 20)


@dataclass(frozen=True)
class DiskElement:
    """One <disk device='disk'> as the domain describes it, before anything on the host is looked at."""

    label: str  # its target device (vda, hdb ...)
    kind: str  # file, block, network, volume ...
    controller: str
    source: str | None  # the file or the block device
    driver_type: str | None  # the format libvirt opens it with
    protocol: str | None  # a network disk's


# Turns a disk element into the disk it is (or refuses it, SourceError): the import reads it inside the import
# directory, `host adopt` leaves it where it is on the host. Warnings go into the list.
DiskReader = Callable[[DiskElement, list[str]], SourceDisk]


def _disk_element(rel: str, element: ET.Element, index: int, warnings: list[str]) -> DiskElement | None:
    device = attr(element, "device") or "disk"
    target = child(element, "target")
    label = (attr(target, "dev") if target is not None else None) or f"disk{index}"
    if device != "disk":
        warnings.append(f"{label}: {device} is not carried over")
        return None
    kind = attr(element, "type") or "file"
    source = child(element, "source")
    bus = (attr(target, "bus") if target is not None else None) or \
        next((c for prefix, c in _CONTROLLERS.items() if label.startswith(prefix)), "unknown")
    driver = child(element, "driver")
    if child(element, "readonly") is not None:
        warnings.append(f"{label}: was read-only; imported writable")
    path = None
    if source is not None:
        path = attr(source, "dev") if kind == "block" else attr(source, "file")
    if kind == "block" and not path:
        raise SourceError(rel, f"{label}.source", "a block disk names no device")
    if kind == "file" and not path:
        warnings.append(f"{label}: has no source file; not carried over")
        return None
    return DiskElement(label=label, kind=kind, controller=bus, source=path,
                       driver_type=attr(driver, "type") if driver is not None else None,
                       protocol=attr(source, "protocol") if source is not None else None)


def _import_disk(root: ImportDir, rel: str, disk: DiskElement, warnings: list[str]) -> SourceDisk:
    """A disk of a domain XML in the import directory: its file beside the XML (relocated when the XML names its
    place on the old host), a host block device only when an admin allowed it."""
    label, path = disk.label, disk.source or ""
    if disk.kind == "block":
        if not root.device_allowed(path):
            raise SourceError(rel, f"{label}.source", f"{path} is a host block device; an admin must allow it "
                                                      "(VIRTFLEET_IMPORT_DEVICES) before it is read")
        return SourceDisk(label=label, layout="host block device", controller=disk.controller, device=path)
    if disk.kind != "file":
        protocol = disk.protocol
        raise SourceError(rel, f"{label}.type", f"a {disk.kind} disk{f' ({protocol})' if protocol else ''} cannot "
                                                "be imported; copy it into a file first")
    disk_rel, note = root.join(rel, path, file=rel, field=f"{label}.source", relocate=True)
    if note:
        warnings.append(note)
    fmt = disks.format_of(path, rel, f"{label}.driver", disk.driver_type)
    return disks.from_file(root, disk_rel, label=label, controller=disk.controller, fmt=fmt)


def read(root: ImportDir, rel: str, data: bytes | None = None) -> SourceVm:
    data = data if data is not None else root.read(rel, limit=MAX_XML, file=rel, field="xml")
    return parse(data, rel, lambda disk, warnings: _import_disk(root, rel, disk, warnings))


def parse(data: bytes, rel: str, read_disk: DiskReader) -> SourceVm:
    """A domain XML (named `rel` in errors and the plan) -> SourceVm, each disk made what it is by `read_disk`."""
    domain = xmlsafe.parse(data, rel)
    if local(domain.tag) != "domain":
        raise SourceError(rel, "domain", f"the document is a <{local(domain.tag)}>, not a libvirt domain")
    name = text(domain, "name") or disks.stem(rel)
    cpus = _int(text(domain, "vcpu") or "1", rel, "vcpu")
    sockets, cores = 1, cpus
    cpu = child(domain, "cpu")
    topology = child(cpu, "topology") if cpu is not None else None
    warnings: list[str] = []
    if topology is not None:
        sockets = _int(attr(topology, "sockets") or "1", rel, "cpu.topology.sockets")
        cores = _int(attr(topology, "cores") or "1", rel, "cpu.topology.cores")
        threads = _int(attr(topology, "threads") or "1", rel, "cpu.topology.threads")
        if threads > 1:
            warnings.append(f"cpu topology: {threads} threads per core are flattened into vCPUs")
        cores *= threads
    if cpu is not None and ((attr(cpu, "mode") or "custom") != "custom" or child(cpu, "model") is not None):
        warnings.append("cpu model: the CPU model and features are not carried over (virtfleet picks the CPU)")
    os_element = child(domain, "os")
    firmware = "bios"
    if os_element is not None:
        loader = child(os_element, "loader")
        if (attr(os_element, "firmware") or "").lower() == "efi" or \
                (loader is not None and (attr(loader, "type") == "pflash" or "ovmf" in (loader.text or "").lower())):
            firmware = "uefi"
        if child(os_element, "kernel") is not None:
            warnings.append("os.kernel: direct kernel boot from host files is not carried over; the VM boots its disk")
    found_disks: list[SourceDisk] = []
    nics: list[SourceNic] = []
    left: set[str] = set()
    devices = child(domain, "devices")
    for index, element in enumerate(list(devices) if devices is not None else []):
        tag = local(element.tag)
        if tag == "disk":
            described = _disk_element(rel, element, index, warnings)
            if described is not None:
                found_disks.append(read_disk(described, warnings))
        elif tag == "interface":
            mac_element = child(element, "mac")
            source = child(element, "source")
            network = ""
            if source is not None:
                network = attr(source, "network") or attr(source, "bridge") or attr(source, "dev") or ""
            model = child(element, "model")
            nics.append(SourceNic(
                label=f"interface{len(nics)}",
                mac=disks.mac(attr(mac_element, "address") if mac_element is not None else None, rel,
                              f"interface{len(nics)}.mac"),
                network=network or (attr(element, "type") or ""),
                model=(attr(model, "type") if model is not None else None) or "rtl8139"))
        elif tag in _LEFT_BEHIND:
            left.add(_LEFT_BEHIND[tag])
    warnings += [f"not carried over: {what}" for what in sorted(left)]
    metadata = child(domain, "metadata")
    guest = ""
    if metadata is not None:
        guest = next((attr(e, "id") or "" for e in metadata.iter() if local(e.tag) == "os" and attr(e, "id")), "")
    if not guest and os_element is not None and text(os_element, "type") == "linux":
        guest = "linux (Xen PV)"
    return SourceVm(kind="libvirt", file=rel, name=name, cpus=cpus,
                    sockets=sockets if sockets * cores == cpus else 1, cores=cores if sockets * cores == cpus else cpus,
                    memory_mib=_memory_mib(domain, rel), firmware=firmware, guest_os=guest, disks=found_disks,
                    nics=nics, warnings=warnings)

