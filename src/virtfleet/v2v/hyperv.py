"""Hyper-V: an exported VM directory, its XML configuration (Windows Server 2012 exports), or bare VHD(X) disks.

An export holds "Virtual Machines/<GUID>.xml" (2012) or "<GUID>.vmcx" (2012 R2 and later) and "Virtual Hard
Disks/". The XML is read tolerantly: processors/count, memory/bank/size, every drive with a <pathname>, every NIC
with an <address>. The .vmcx format is binary and undocumented; it is not read. Then the disks of the export are
imported (each disk is the top of its differencing chain: a file no other disk names as its parent) with 1 vCPU,
1 GiB and no NIC, and the plan says the configuration was not read.
"""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET

from virtfleet.v2v import disks, vhd, xmlsafe
from virtfleet.v2v.errors import SourceError, whole_number
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import Firmware, ImageFormat, Layer, SourceDisk, SourceNic, SourceVm
from virtfleet.v2v.xmlsafe import child, local, text

MAX_XML = 4 << 20
DEFAULT_CPUS = 1
DEFAULT_MEMORY_MIB = 1024
VM_DIR = "Virtual Machines"
DISK_DIR = "Virtual Hard Disks"
_IDE = "83f8638b-8dca-4152-9eda-2ca8b33039b4"
_SCSI = "d422512d-2bf2-4752-809d-7b82b5fcb1b4"
_DISK_EXTENSIONS = (".vhdx", ".vhd", ".avhdx", ".avhd")


def _path_text(element: ET.Element, *names: str) -> str | None:
    current: ET.Element | None = element
    for name in names:
        current = child(current, name) if current is not None else None
    return text(current)


def _number(value: str | None, file: str, field: str, default: int) -> int:
    if value is None:
        return default
    return whole_number(value, file, field, minimum=1)


def _controller(parents: list[ET.Element]) -> str:
    for element in reversed(parents):
        tag = local(element.tag).lower()
        if _IDE in tag:
            return "ide"
        if _SCSI in tag:
            return "scsi"
    return "unknown"


def _label(parents: list[ET.Element], element: ET.Element) -> str:
    """ide0:1 from <_83f8638b-..._0_0_><controller0><drive1>: the controller kind and the drive's place on it."""
    numbers = [re.sub(r"\D", "", local(e.tag)) or "0" for e in [*parents[-1:], element]]
    return f"{_controller(parents)}{numbers[0]}:{numbers[1]}"


def read_xml(root: ImportDir, rel: str, data: bytes | None = None, *, disk_dir: str | None = None) -> SourceVm:
    data = data if data is not None else root.read(rel, limit=MAX_XML, file=rel, field="xml")
    config = xmlsafe.parse(data, rel)
    if local(config.tag) != "configuration":
        raise SourceError(rel, "configuration", f"the document is a <{local(config.tag)}>, not a Hyper-V configuration")
    warnings = ["not carried over: Hyper-V integration services, checkpoints' configurations, automatic start/stop "
                "actions"]
    name = _path_text(config, "properties", "name") or disks.stem(rel)
    settings = child(config, "settings")
    cpus = _number(_path_text(settings, "processors", "count") if settings is not None else None, rel,
                   "settings/processors/count", DEFAULT_CPUS)
    memory = _number(_path_text(settings, "memory", "bank", "size") if settings is not None else None, rel,
                     "settings/memory/bank/size", DEFAULT_MEMORY_MIB)
    if settings is not None and (_path_text(settings, "memory", "bank", "dynamic_memory_enabled") or "").lower() \
            == "true":
        warnings.append("memory: dynamic memory is not carried over; the startup size is used")
    subtype = _path_text(config, "properties", "subtype")
    firmware: Firmware = "uefi" if subtype == "1" else "bios"  # generation 2 VMs boot with UEFI
    found: list[SourceDisk] = []
    nics: list[SourceNic] = []
    base = f"{disk_dir}/config" if disk_dir is not None else rel
    stack: list[tuple[ET.Element, list[ET.Element]]] = [(config, [])]
    while stack:
        element, parents = stack.pop()
        pathname = text(element, "pathname")
        if pathname and (text(element, "type") or "VHD").upper() == "VHD" \
                and pathname.lower().endswith(_DISK_EXTENSIONS):
            label = _label(parents, element)
            disk_rel, note = root.join(base, pathname, file=rel, field=f"{label}/pathname", relocate=True)
            if note:
                warnings.append(note)
            fmt: ImageFormat = "vhdx" if pathname.lower().endswith(("vhdx", "avhdx")) else "vpc"
            found.append(disks.from_file(root, disk_rel, label=label, controller=_controller(parents), fmt=fmt,
                                         file=rel))
        elif pathname:
            warnings.append(f"{local(element.tag)}: {pathname} (not a virtual hard disk) is not carried over")
        address = text(element, "address")
        if address and re.fullmatch(r"[0-9A-Fa-f]{12}", address):
            network = text(element, "SwitchName") or _path_text(element, "Connection", "AltPortName") or ""
            nics.append(SourceNic(label=f"nic{len(nics)}", mac=disks.mac(address, rel, "address"), network=network,
                                  model=("legacy" if text(element, "Legacy") == "True" else "hyperv-synthetic")))
        stack.extend((c, [*parents, element]) for c in reversed(list(element)))
    return SourceVm(kind="hyperv", file=rel, name=name, cpus=cpus, sockets=1, cores=cpus, memory_mib=memory,
                    firmware=firmware, guest_os="", disks=found, nics=nics, warnings=warnings)


def _images(root: ImportDir, directory: str) -> list[str]:
    if root.kind(directory) != "dir":
        return []
    return [f"{directory}/{name}" for name in root.listdir(directory) if name.lower().endswith(_DISK_EXTENSIONS)
            and root.kind(f"{directory}/{name}") == "file"]


def leaf_disks(root: ImportDir, paths: list[str], file: str) -> list[SourceDisk]:
    """Each image that is no other's parent, with its chain: the current state of each disk of the VM."""
    chains = {}
    for path in paths:
        fmt = "vhdx" if path.lower().endswith(("vhdx", "avhdx")) else "vpc"
        chains[path] = vhd.chain(root, path, fmt, file=file, field=posixpath.basename(path))
    parents = {image.rel for chain in chains.values() for image in chain[1:]}
    found: list[SourceDisk] = []
    for path, chain in sorted(chains.items()):
        if path in parents:
            continue
        layers = [Layer(file=image.rel, format="vhdx" if image.format == "vhdx" else "vpc") for image in chain]
        found.append(SourceDisk(label=f"disk{len(found)}", layers=layers, layout=vhd.layout(chain),
                                controller="unknown", size=chain[0].size))
    return found


def read_export(root: ImportDir, rel: str) -> SourceVm:
    vm_dir = posixpath.join(rel, VM_DIR) if rel else VM_DIR
    disk_dir = posixpath.join(rel, DISK_DIR) if rel else DISK_DIR
    configs = [f"{vm_dir}/{name}" for name in root.listdir(vm_dir)] if root.kind(vm_dir) == "dir" else []
    xml_configs = [path for path in configs if path.lower().endswith(".xml")]
    binary = [path for path in configs if path.lower().endswith(".vmcx")]
    if len(xml_configs) > 1:
        raise SourceError(rel or ".", VM_DIR, "holds more than one VM configuration; export one VM at a time")
    if xml_configs:
        return read_xml(root, xml_configs[0], disk_dir=disk_dir)
    images = _images(root, disk_dir) or _images(root, rel)
    if not images:
        raise SourceError(rel or ".", DISK_DIR, "no .vhdx or .vhd disk found: this is not a Hyper-V export")
    warnings = []
    if binary:
        warnings.append(f"{binary[0]}: the binary Hyper-V configuration (.vmcx) is not read: CPUs, memory, NICs and "
                        f"firmware are not carried over; the VM gets {DEFAULT_CPUS} vCPU, {DEFAULT_MEMORY_MIB} MiB and "
                        "no NIC (change them before starting it); a generation 2 VM also needs UEFI")
    found = leaf_disks(root, images, rel or ".")
    return SourceVm(kind="hyperv", file=rel or ".", name=posixpath.basename(rel) or "imported", cpus=DEFAULT_CPUS,
                    memory_mib=DEFAULT_MEMORY_MIB, disks=found, warnings=warnings)


def read_disk(root: ImportDir, rel: str) -> SourceVm:
    """A bare disk image (any format we read): a VM with that disk and defaults for everything else."""
    fmt = disks.format_of(rel, rel, "disk")
    disk = disks.from_file(root, rel, label="disk0", controller="unknown", fmt=fmt)
    return SourceVm(kind="disk", file=rel, name=disks.stem(rel), cpus=DEFAULT_CPUS, memory_mib=DEFAULT_MEMORY_MIB,
                    disks=[disk], warnings=[f"a bare disk carries no configuration: the VM gets {DEFAULT_CPUS} vCPU, "
                                            f"{DEFAULT_MEMORY_MIB} MiB and no NIC"])
