"""OVF descriptors (VMware, VirtualBox, XenServer/XCP-ng, oVirt flavours, OVF 0.9 to 2.0) -> SourceVm.

Sections are found by local name or by xsi:type (OVF 0.9 and oVirt write <Section xsi:type="ovf:DiskSection_Type">),
items of the VirtualHardwareSection by rasd:ResourceType. What a disk reads comes only from References: every href
is a relative name inside the package (no URL, no absolute path, no '..'), and the manifest's digests are checked.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from virtfleet.v2v import disks
from virtfleet.v2v.errors import SourceError, whole_number
from virtfleet.v2v.model import Firmware, ImageFormat, SourceDisk, SourceKind, SourceNic, SourceVm
from virtfleet.v2v.xmlsafe import attr, child, children, local, text

MAX_OVF = 8 << 20
_UNITS = {"byte": 0, "bytes": 0, "kilobytes": 10, "kb": 10, "megabytes": 20, "mb": 20, "gigabytes": 30, "gb": 30,
          "terabytes": 40, "tb": 40}
_POWER = re.compile(r"^byte\s*(?:\*\s*2\s*\^\s*(\d+))?$")
_MANIFEST = re.compile(r"^(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$")
_DIGEST_LENGTH = {"SHA1": 40, "SHA256": 64, "SHA512": 128}
# OVF disk format URLs -> qemu format (the fragment and case vary between writers).
_FORMATS: tuple[tuple[str, ImageFormat], ...] = (
    ("vmdk", "vmdk"), ("vhdx", "vhdx"), ("vhdspec", "vpc"), ("linkid=137171", "vpc"), ("/vhd", "vpc"),
    ("qcow", "qcow2"), ("vdi", "vdi"), ("wiki/byte", "raw"), ("raw", "raw"),
)
_LEFT_BEHIND = {"14": "floppy drive", "15": "CD/DVD drive", "16": "CD/DVD drive", "18": "tape drive",
                "21": "serial port", "22": "parallel port", "23": "USB controller", "25": "FireWire controller",
                "35": "sound card", "7": "Fibre Channel adapter", "8": "iSCSI adapter", "9": "InfiniBand adapter"}
_OVIRT_NICS = {"0": "rtl8139_pv", "1": "rtl8139", "2": "e1000", "3": "virtio"}
_WINDOWS_IDS = set(range(58, 79)) | {103, 105, 107, 109, 110, 111, 112, 113, 114, 115, 116}
_LINUX_IDS = {36, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 101, 106, 108}


@dataclass(frozen=True)
class Reference:
    href: str
    size: int | None


DiskSource = Callable[[str, ImageFormat, str, str | None], SourceDisk]  # href, format, label, checksum


def parse_manifest(data: bytes, file: str) -> dict[str, tuple[str, str]]:
    """name -> (algorithm, lowercase hex) from `SHA256(name)= hex` lines; any other line is refused."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise SourceError(file, "manifest", "is not UTF-8 text") from None
    digests = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        match = _MANIFEST.match(line)
        if match is None or len(match.group(3)) != _DIGEST_LENGTH[match.group(1)]:
            raise SourceError(file, f"line {number}", f"{line[:100]!r} is not 'SHA256(file)= hex'")
        digests[match.group(2).strip().removeprefix("./")] = (match.group(1), match.group(3).lower())
    return digests


def check_digest(data: bytes, expected: tuple[str, str] | None, name: str, file: str) -> None:
    if expected is None:
        return
    algorithm, digest = expected
    actual = hashlib.new(algorithm.lower(), data).hexdigest()
    if actual != digest:
        raise SourceError(file, "manifest", f"{name}: {algorithm} mismatch (manifest {digest}, file {actual})")


def _sections(parent: ET.Element, name: str) -> list[ET.Element]:
    found = []
    for element in parent:
        kind = attr(element, "type") or ""
        if local(element.tag) == name or (local(element.tag) in ("Section", "Content")
                                          and kind.rpartition(":")[2] == f"{name}_Type"):
            found.append(element)
    return found


def _number(value: str | None, file: str, field: str) -> int:
    if value is None:
        raise SourceError(file, field, "is missing")
    return whole_number(value, file, field, minimum=0)


def _units(value: str | None, file: str, field: str, default: int) -> int:
    """An allocation unit ("byte * 2^20", "MegaBytes", "MB") as a power of two."""
    if value is None or not value.strip():
        return default
    unit = value.strip().lower()
    if unit in _UNITS:
        return _UNITS[unit]
    match = _POWER.match(unit)
    if match is None:
        raise SourceError(file, field, f"allocation unit {value[:40]!r} is not understood")
    power = int(match.group(1) or 0)
    if power > 50:
        raise SourceError(file, field, f"allocation unit {value[:40]!r} is too large")
    return power


def _format(url: str | None, href: str, file: str, field: str) -> ImageFormat:
    lowered = (url or "").lower()
    for needle, fmt in _FORMATS:
        if needle in lowered:
            return fmt
    return disks.format_of(href, file, field)


def _item_fields(item: ET.Element) -> dict[str, str]:
    # rasd/epasd/sasd children by lowercased local name (oVirt writes InstanceId where others write InstanceID).
    return {local(c.tag).lower(): (c.text or "").strip() for c in item if local(c.tag) != "Config"}


def _guest_os(system: ET.Element) -> str:
    section = next(iter(_sections(system, "OperatingSystemSection")), None)
    if section is None:
        return ""
    described = attr(section, "osType") or text(section, "Description") or ""
    os_id = (attr(section, "id") or "").strip()
    if described:
        return described
    if os_id.isdigit():
        number = int(os_id)
        return "Windows" if number in _WINDOWS_IDS else "Linux" if number in _LINUX_IDS else f"CIM OS {number}"
    return ""


def _firmware(system: ET.Element, hardware: ET.Element) -> Firmware:
    for config in hardware.iter():
        if local(config.tag) == "Config" and attr(config, "key") == "firmware":
            return "uefi" if (attr(config, "value") or "").lower() == "efi" else "bios"
    for element in system.iter():
        name = local(element.tag)
        if name == "Firmware" and (attr(element, "type") or "").upper().startswith("EFI"):
            return "uefi"  # VirtualBox: vbox:Machine/Hardware/Firmware
        if name == "BiosType" and (element.text or "").strip() in ("3", "4"):
            return "uefi"  # oVirt: Q35 with OVMF (3) or OVMF with secure boot (4)
        if attr(element, "Name") == "HVM_boot_params" and "uefi" in "".join(element.itertext()):
            return "uefi"  # XenServer: <xenovf:VirtualSystemOtherConfigurationData Name=...><xenovf:Value>
    return "bios"


def _vbox_macs(system: ET.Element) -> list[str]:
    macs = []
    for element in system.iter():
        if local(element.tag) == "Adapter" and (attr(element, "enabled") or "true") == "true":
            address = attr(element, "MACAddress")
            if address:
                macs.append(address)
    return macs


def _flavour(root: ET.Element, system: ET.Element) -> str:
    namespaces = " ".join(element.tag for element in root.iter()) + " ".join(root.attrib)
    if "virtualbox.org" in namespaces:
        return "VirtualBox"
    if "citrix.com" in namespaces:
        return "XenServer"
    if "ovirt.org" in namespaces or any(local(e.tag) == "BiosType" for e in system.iter()):
        return "oVirt"
    if "vmware.com" in namespaces:
        return "VMware"
    return "OVF"


def read_descriptor(data: bytes, file: str, *, kind: SourceKind, disk_source: DiskSource,
                    digests: dict[str, tuple[str, str]] | None, parse: Callable[[bytes, str], ET.Element]
                    ) -> SourceVm:
    root = parse(data, file)
    if local(root.tag) != "Envelope":
        raise SourceError(file, "Envelope", f"the document is a <{local(root.tag)}>, not an OVF envelope")
    references = {}
    for section in children(root, "References"):
        for element in children(section, "File"):
            file_id, href = attr(element, "id"), attr(element, "href")
            if not file_id or not href:
                raise SourceError(file, "References/File", "needs an ovf:id and an ovf:href")
            if attr(element, "compression"):
                raise SourceError(file, f"File {file_id}", f"is {attr(element, 'compression')}-compressed; "
                                                           "decompress the package first")
            if attr(element, "chunkSize"):
                raise SourceError(file, f"File {file_id}", "is split into chunks; join them first")
            size = attr(element, "size")
            references[file_id] = Reference(href, _number(size, file, f"File {file_id}.size") if size else None)
    disk_section = {}
    for section in _sections(root, "DiskSection"):
        for element in children(section, "Disk"):
            disk_id = attr(element, "diskId")
            if not disk_id:
                raise SourceError(file, "DiskSection/Disk", "needs an ovf:diskId")
            if attr(element, "parentRef"):
                raise SourceError(file, f"Disk {disk_id}", "is a delta disk (parentRef); export the VM "
                                                           "without snapshots")
            disk_section[disk_id] = element
    systems = [element for element in root.iter() if local(element.tag) == "VirtualSystem"
               or (local(element.tag) == "Content" and (attr(element, "type") or "").endswith("VirtualSystem_Type"))]
    if len(systems) != 1:
        found = ", ".join(attr(s, "id") or "?" for s in systems) or "none"
        raise SourceError(file, "VirtualSystem", f"the package must describe exactly one VM (found: {found})")
    system = systems[0]
    hardware_sections = _sections(system, "VirtualHardwareSection")
    if not hardware_sections:
        raise SourceError(file, "VirtualHardwareSection", "is missing")
    hardware = hardware_sections[0]
    flavour = _flavour(root, system)
    warnings = [f"VirtualHardwareSection: {len(hardware_sections)} alternatives; the first is imported"
                ] if len(hardware_sections) > 1 else []

    items = [item for item in hardware if local(item.tag) in ("Item", "StorageItem", "EthernetPortItem")]
    cpus, cores, memory = 1, 0, 0
    controllers: dict[str, str] = {}
    found_disks: list[tuple[int, SourceDisk]] = []
    nics: list[SourceNic] = []
    left: set[str] = set()
    vbox_macs = _vbox_macs(system)
    for index, item in enumerate(items):
        fields = _item_fields(item)
        resource = fields.get("resourcetype", "")
        where = f"Item {fields.get('instanceid', index + 1)}"
        if resource == "3":
            per_socket = fields.get("corespersocket") or fields.get("cpu_per_socket")
            cores = _number(per_socket, file, f"{where}.CoresPerSocket") if per_socket else 0
            if "virtualquantity" not in fields and "num_of_sockets" in fields:  # oVirt
                cpus = _number(fields["num_of_sockets"], file, f"{where}.num_of_sockets") * max(1, cores)
            else:
                cpus = _number(fields.get("virtualquantity"), file, f"{where}.VirtualQuantity")
            if cpus < 1:
                raise SourceError(file, f"{where}.VirtualQuantity", "a VM needs at least one CPU")
        elif resource == "4":
            quantity = _number(fields.get("virtualquantity"), file, f"{where}.VirtualQuantity")
            power = _units(fields.get("allocationunits"), file, f"{where}.AllocationUnits", 20)
            memory = (quantity << power) >> 20
        elif resource in ("5", "6", "20"):
            subtype = fields.get("resourcesubtype", "").lower()
            base = {"5": "ide", "6": "scsi", "20": "sata" if "ahci" in subtype else "storage"}[resource]
            controllers[fields.get("instanceid", "")] = f"{base} {subtype}".strip()
        elif resource == "17" or (resource == "19" and fields.get("hostresource")):  # XenServer: 19
            disk = _disk_item(fields, where, file, references, disk_section, controllers, disk_source, digests)
            if any(other.layers == disk.layers for _, other in found_disks):
                warnings.append(f"{where}: attaches {disk.layers[0].file} a second time; it is imported once")
            else:
                found_disks.append((index, disk))
        elif resource in ("10", "11"):
            network = fields.get("connection", "")
            mac = fields.get("address") or fields.get("macaddress") or \
                (vbox_macs[len(nics)] if len(nics) < len(vbox_macs) else None)
            model = fields.get("resourcesubtype", "").lower() or "e1000"
            if flavour == "oVirt":
                model = _OVIRT_NICS.get(model, model)
            nics.append(SourceNic(label=fields.get("elementname") or fields.get("name") or f"nic{len(nics)}",
                                  mac=disks.mac(mac, file, f"{where}.Address"), network=network, model=model))
        elif resource in _LEFT_BEHIND:
            left.add(_LEFT_BEHIND[resource])
    if memory == 0:
        raise SourceError(file, "VirtualHardwareSection", "declares no memory (ResourceType 4)")
    warnings += [f"not carried over: {what}" for what in sorted(left)]
    extra = {"VirtualBox": "VirtualBox machine settings (vbox:Machine)", "XenServer": "XenServer settings (xenovf)",
             "oVirt": "oVirt settings outside the OVF hardware section"}.get(flavour)
    if extra:
        warnings.append(f"not carried over: {extra}")
    name_element = child(system, "Name")
    name = text(name_element) or next((attr(e, "name") for e in system.iter() if local(e.tag) == "Machine"
                                       and attr(e, "name")), None) or attr(system, "id") or disks.stem(file)
    sockets, per = (cpus // cores, cores) if cores and cpus % cores == 0 else (cpus, 1)
    return SourceVm(kind=kind, file=file, name=name, cpus=cpus, sockets=sockets, cores=per, memory_mib=memory,
                    firmware=_firmware(system, hardware), guest_os=_guest_os(system),
                    disks=[disk for _, disk in found_disks], nics=nics, warnings=warnings)


def _disk_item(fields: dict[str, str], where: str, file: str, references: dict[str, Reference],
               disk_section: dict[str, ET.Element], controllers: dict[str, str], disk_source: DiskSource,
               digests: dict[str, tuple[str, str]] | None) -> SourceDisk:
    resource = fields.get("hostresource", "")
    key = resource.removeprefix("ovf:").removeprefix("/disk/").removeprefix("/file/")
    disk = disk_section.get(key)
    if disk is None:  # an Element with no children is falsy: never `or` them
        disk = next((d for d in disk_section.values() if attr(d, "fileRef") == key), None)
    if disk is None and key in references:
        reference, capacity, url = references[key], None, None
    else:
        if disk is None:
            raise SourceError(file, f"{where}.HostResource", f"{resource[:100]!r} names no disk of the DiskSection")
        ref_id = attr(disk, "fileRef")
        if not ref_id:
            raise SourceError(file, f"Disk {key}", "has no file (an empty disk); create it in virtfleet instead")
        by_href = {reference.href: reference for reference in references.values()}
        if ref_id not in references and ref_id not in by_href:  # oVirt's fileRef names the href, not the id
            raise SourceError(file, f"Disk {key}.fileRef", f"{ref_id!r} is not in the References section")
        reference, url = references.get(ref_id) or by_href[ref_id], attr(disk, "format")
        power = _units(attr(disk, "capacityAllocationUnits"), file, f"Disk {key}.capacityAllocationUnits", 0)
        raw_capacity = attr(disk, "capacity")
        capacity = _number(raw_capacity, file, f"Disk {key}.capacity") << power if raw_capacity else None
    fmt = _format(url, reference.href, file, f"Disk {key}.format")
    checksum = None
    if digests is not None:
        if reference.href not in digests:
            raise SourceError(file, "manifest", f"{reference.href} is not listed: the manifest protects nothing "
                                                "for it")
        algorithm, digest = digests[reference.href]
        checksum = f"{algorithm}:{digest}"
    source = disk_source(reference.href, fmt, fields.get("elementname") or where, checksum)
    controller = controllers.get(fields.get("parent", ""), "unknown")
    if controller == "unknown" and disk is not None and attr(disk, "disk-interface"):
        controller = (attr(disk, "disk-interface") or "").lower().replace("_", "-")  # oVirt: VirtIO, VirtIO_SCSI
    return source.model_copy(update={"controller": controller, "size": source.size or capacity})
