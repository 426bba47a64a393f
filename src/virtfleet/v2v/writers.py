"""Describing a virtfleet VM in the other platforms' terms: OVF (for an OVA), .vmx, xl.cfg, libvirt domain XML. Pure.

The OVF follows the DMTF schema's rules (DSP8023): the Envelope holds References, DiskSection, NetworkSection and one
VirtualSystem with its VirtualHardwareSection; rasd and vssd elements come in the schema's (alphabetical) order,
which VMware's and VirtualBox's importers check. Disks sit on an LSI Logic SCSI controller and NICs are E1000: the
devices both of them emulate and every guest has drivers for; the MACs are kept.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW = "http://www.vmware.com/schema/ovf"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
for _prefix, _uri in (("ovf", OVF), ("rasd", RASD), ("vssd", VSSD), ("vmw", VMW), ("xsi", XSI)):
    ET.register_namespace(_prefix, _uri)


class ExportDisk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str  # its name in the package, beside the description
    capacity: int = Field(ge=1)  # virtual size in bytes
    size: int = Field(default=0, ge=0)  # the file's size in bytes (OVF References)
    format: Literal["vmdk", "qcow2", "raw"]
    bus: Literal["virtio-blk", "virtio-scsi"] = "virtio-blk"
    path: str = ""  # where the file is for platforms that name disks by path (libvirt); default: `file`


class ExportNic(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mac: str | None
    network: str
    model: Literal["virtio", "e1000"] = "virtio"


class ExportVm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    cpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    disks: list[ExportDisk]
    nics: list[ExportNic] = Field(default_factory=list)
    firmware: Literal["bios", "uefi"] = "bios"


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _rasd(parent: ET.Element, fields: dict[str, str], tag: str = "Item") -> None:
    item = ET.SubElement(parent, _q(OVF, tag))
    for name in sorted(fields):  # the CIM schema is a sequence in alphabetical order
        ET.SubElement(item, _q(RASD, name)).text = fields[name]


def _scsi_unit(index: int) -> int:
    return index if index < 7 else index + 1  # unit 7 is the SCSI controller itself


def ovf(vm: ExportVm) -> str:
    envelope = ET.Element(_q(OVF, "Envelope"), {_q(OVF, "version"): "1.0",
                                                "{http://www.w3.org/XML/1998/namespace}lang": "en-US"})
    references = ET.SubElement(envelope, _q(OVF, "References"))
    disk_section = ET.SubElement(envelope, _q(OVF, "DiskSection"))
    ET.SubElement(disk_section, _q(OVF, "Info")).text = "Virtual disk information"
    for index, disk in enumerate(vm.disks, 1):
        ET.SubElement(references, _q(OVF, "File"), {_q(OVF, "href"): disk.file, _q(OVF, "id"): f"file{index}",
                                                    _q(OVF, "size"): str(disk.size)})
        ET.SubElement(disk_section, _q(OVF, "Disk"), {
            _q(OVF, "capacity"): str(disk.capacity), _q(OVF, "capacityAllocationUnits"): "byte",
            _q(OVF, "diskId"): f"vmdisk{index}", _q(OVF, "fileRef"): f"file{index}",
            _q(OVF, "format"): STREAM_OPTIMIZED})
    networks = ET.SubElement(envelope, _q(OVF, "NetworkSection"))
    ET.SubElement(networks, _q(OVF, "Info")).text = "The list of logical networks"
    for name in dict.fromkeys(nic.network for nic in vm.nics):
        network = ET.SubElement(networks, _q(OVF, "Network"), {_q(OVF, "name"): name})
        ET.SubElement(network, _q(OVF, "Description")).text = f"The {name} network"
    system = ET.SubElement(envelope, _q(OVF, "VirtualSystem"), {_q(OVF, "id"): vm.name})
    ET.SubElement(system, _q(OVF, "Info")).text = "A virtual machine exported by virtfleet"
    ET.SubElement(system, _q(OVF, "Name")).text = vm.name
    os_section = ET.SubElement(system, _q(OVF, "OperatingSystemSection"), {_q(OVF, "id"): "1",
                                                                          _q(VMW, "osType"): "otherGuest64"})
    ET.SubElement(os_section, _q(OVF, "Info")).text = "The kind of installed guest operating system"
    hardware = ET.SubElement(system, _q(OVF, "VirtualHardwareSection"))
    ET.SubElement(hardware, _q(OVF, "Info")).text = "Virtual hardware requirements"
    system_data = ET.SubElement(hardware, _q(OVF, "System"))
    for name, value in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                        ("VirtualSystemIdentifier", vm.name), ("VirtualSystemType", "vmx-10 virtualbox-2.2")):
        ET.SubElement(system_data, _q(VSSD, name)).text = value
    if vm.firmware == "uefi":  # VMware's own key; VirtualBox and oVirt read it too
        ET.SubElement(hardware, _q(VMW, "Config"), {_q(OVF, "required"): "false", _q(VMW, "key"): "firmware",
                                                    _q(VMW, "value"): "efi"})
    _rasd(hardware, {"AllocationUnits": "hertz * 10^6", "Description": "Number of Virtual CPUs",
                     "ElementName": f"{vm.cpus} virtual CPU(s)", "InstanceID": "1", "ResourceType": "3",
                     "VirtualQuantity": str(vm.cpus)})
    _rasd(hardware, {"AllocationUnits": "byte * 2^20", "Description": "Memory Size",
                     "ElementName": f"{vm.memory_mib}MB of memory", "InstanceID": "2", "ResourceType": "4",
                     "VirtualQuantity": str(vm.memory_mib)})
    _rasd(hardware, {"Address": "0", "Description": "SCSI Controller", "ElementName": "SCSI controller 0",
                     "InstanceID": "3", "ResourceSubType": "lsilogic", "ResourceType": "6"})
    instance = 4
    for index, _ in enumerate(vm.disks, 1):
        _rasd(hardware, {"AddressOnParent": str(_scsi_unit(index - 1)), "ElementName": f"Hard disk {index}",
                         "HostResource": f"ovf:/disk/vmdisk{index}", "InstanceID": str(instance), "Parent": "3",
                         "ResourceType": "17"})
        instance += 1
    for index, nic in enumerate(vm.nics):
        fields = {"AddressOnParent": str(7 + index), "AutomaticAllocation": "true", "Connection": nic.network,
                  "Description": f"E1000 ethernet adapter on \"{nic.network}\"",
                  "ElementName": f"Network adapter {index + 1}", "InstanceID": str(instance),
                  "ResourceSubType": "E1000", "ResourceType": "10"}
        if nic.mac:
            fields["Address"] = nic.mac
        _rasd(hardware, fields)
        instance += 1
    ET.indent(envelope)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(envelope, encoding="unicode") + "\n"


def manifest(digests: dict[str, str]) -> str:
    """An OVF manifest: `SHA256(name)= hex` for the descriptor and every file, in package order."""
    return "".join(f"SHA256({name})= {digest}\n" for name, digest in digests.items())


def _vmx_value(value: str) -> str:
    return value.replace("|", "|7C").replace('"', "|22").replace("#", "|23")


def vmx(vm: ExportVm) -> str:
    values = [(".encoding", "UTF-8"), ("config.version", "8"), ("virtualHW.version", "10"),
              ("displayName", vm.name), ("guestOS", "other-64"), ("numvcpus", str(vm.cpus)),
              ("memsize", str(vm.memory_mib)), ("scsi0.present", "TRUE"), ("scsi0.virtualDev", "lsilogic")]
    if vm.firmware == "uefi":
        values.append(("firmware", "efi"))
    for index, disk in enumerate(vm.disks):
        slot = f"scsi0:{_scsi_unit(index)}"
        values += [(f"{slot}.present", "TRUE"), (f"{slot}.fileName", disk.file),
                   (f"{slot}.deviceType", "scsi-hardDisk")]
    for index, nic in enumerate(vm.nics):
        values += [(f"ethernet{index}.present", "TRUE"), (f"ethernet{index}.virtualDev", "e1000"),
                   (f"ethernet{index}.networkName", nic.network)]
        if nic.mac:
            # "generated" with the address kept: VMware refuses static MACs outside its own 00:50:56 range.
            values += [(f"ethernet{index}.addressType", "generated"),
                       (f"ethernet{index}.generatedAddress", nic.mac),
                       (f"ethernet{index}.generatedAddressOffset", "0")]
    return "".join(f'{key} = "{_vmx_value(value)}"\n' for key, value in values)


def _xl_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def xl(vm: ExportVm) -> str:
    disks = [f"format={disk.format},vdev=xvd{chr(97 + index)},access=rw,target={disk.path or disk.file}"
             for index, disk in enumerate(vm.disks)]
    vifs = [",".join([*([f"mac={nic.mac}"] if nic.mac else []), f"bridge={nic.network}",
                      f"model={'e1000' if nic.model == 'e1000' else 'virtio-net'}"])
            for nic in vm.nics]
    lines = [f"name = {_xl_string(vm.name)}", 'type = "hvm"', f"memory = {vm.memory_mib}", f"vcpus = {vm.cpus}",
             *(['bios = "ovmf"'] if vm.firmware == "uefi" else []),
             "disk = [ " + ", ".join(_xl_string(disk) for disk in disks) + " ]",
             "vif = [ " + ", ".join(_xl_string(vif) for vif in vifs) + " ]"]
    return "# written by virtfleet export\n" + "\n".join(lines) + "\n"


def libvirt(vm: ExportVm) -> str:
    domain = ET.Element("domain", {"type": "kvm"})
    ET.SubElement(domain, "name").text = vm.name
    ET.SubElement(domain, "memory", {"unit": "MiB"}).text = str(vm.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(vm.cpus)
    os_element = ET.SubElement(domain, "os", {"firmware": "efi"} if vm.firmware == "uefi" else {})
    ET.SubElement(os_element, "type", {"arch": "x86_64", "machine": "q35"}).text = "hvm"
    ET.SubElement(os_element, "boot", {"dev": "hd"})
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    devices = ET.SubElement(domain, "devices")
    blk, scsi = 0, 0
    for disk in vm.disks:
        element = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
        ET.SubElement(element, "driver", {"name": "qemu", "type": disk.format})
        ET.SubElement(element, "source", {"file": disk.path or disk.file})
        if disk.bus == "virtio-scsi":
            ET.SubElement(element, "target", {"dev": f"sd{chr(97 + scsi)}", "bus": "scsi"})
            scsi += 1
        else:
            ET.SubElement(element, "target", {"dev": f"vd{chr(97 + blk)}", "bus": "virtio"})
            blk += 1
    if scsi:
        ET.SubElement(devices, "controller", {"type": "scsi", "index": "0", "model": "virtio-scsi"})
    for nic in vm.nics:
        interface = ET.SubElement(devices, "interface", {"type": "network"})
        if nic.mac:
            ET.SubElement(interface, "mac", {"address": nic.mac})
        ET.SubElement(interface, "source", {"network": nic.network})
        ET.SubElement(interface, "model", {"type": nic.model})
    ET.SubElement(devices, "serial", {"type": "pty"})
    console = ET.SubElement(devices, "console", {"type": "pty"})
    ET.SubElement(console, "target", {"type": "serial"})
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"
