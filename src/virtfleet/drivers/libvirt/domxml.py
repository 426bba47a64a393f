"""Pure: a VM spec, its boot image and its run directory -> libvirt domain XML. Golden-file tested.

Built with xml.etree only, so no user-given text (names, paths, kernel arguments) can change the document's
structure. Our identity lives in <metadata> under our own namespace, never in the name users see in virsh.
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

from virtfleet.drivers.base import BootImage
from virtfleet.drivers.qemu.runtime import RunPaths
from virtfleet.errors import InvalidSpec, Unsupported
from virtfleet.model.network import NicSpec
from virtfleet.model.vm import DiskSpec, VmSpec

NAMESPACE = "https://virtfleet.org/xmlns/domain/1"
ET.register_namespace("virtfleet", NAMESPACE)

DomainType = Literal["kvm", "qemu"]
HOTPLUG_PORTS = 4  # empty PCIe root ports left for hot-plug (libvirt fills the others with the cold-plugged devices)
# One virtio-blk/NIC per root port; a device a hot-plug would need a port for is counted as well.
_VIRTIO_DISK_PREFIX = {"virtio-blk": "vd", "virtio-scsi": "sd"}


def domain_uuid(vm_id: str) -> str:
    """The libvirt UUID of a VM: its id when that is a UUID (as the store makes them; QEMU then runs with
    -uuid VM_ID, so the process can be told apart like the qemu driver does), else one derived from it."""
    try:
        return str(uuid.UUID(vm_id))
    except ValueError:
        return str(uuid.uuid5(uuid.UUID(int=0), f"virtfleet:{vm_id}"))


def owner_of(paths: RunPaths) -> str:
    """The virtfleet a domain belongs to: the run directory its VMs live under (one per data directory)."""
    return str(paths.root.parent)


@dataclass(frozen=True)
class DomainMeta:
    """What our <metadata> element carries."""

    vm_id: str
    spec: VmSpec
    owner: str = ""  # which virtfleet (its run directory) manages the domain: several may share one libvirtd


def target_dev(bus: str, index: int) -> str:
    """vda, vdb, ..., vdz, vdaa, ... (libvirt's own disk name scheme, by index)."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return _VIRTIO_DISK_PREFIX[bus] + letters


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def disk_element(disk: DiskSpec, dev: str, *, boot_order: int | None = None) -> ET.Element:
    """A <disk> with its backing chain pinned: every layer named with its format, and an empty <backingStore/>
    below the last, so libvirt never probes an image header for a backing file (the qemu driver's
    "backing": null). Layers are checked for qcow2 data files before they get here (vm_disks.backing_chain)."""
    if disk.path is None:
        raise ValueError(f"disk {disk.volume} has no resolved path")
    element = ET.Element("disk", {"type": "file", "device": "disk"})
    _sub(element, "driver", name="qemu", type=disk.format, cache=disk.cache, discard=disk.discard)
    _sub(element, "source", file=disk.path)
    below = element
    for layer in disk.backing_chain:
        below = _sub(below, "backingStore", type="file")
        _sub(below, "format", type=layer.format)
        _sub(below, "source", file=layer.path)
    _sub(below, "backingStore")
    _sub(element, "target", dev=dev, bus="virtio" if disk.bus == "virtio-blk" else "scsi")
    if disk.readonly:
        _sub(element, "readonly")
    if boot_order is not None:
        _sub(element, "boot", order=str(boot_order))
    _sub(element, "alias", name=f"ua-{disk.node_name}")
    return element


def nic_element(nic: NicSpec) -> ET.Element:
    """A tap virtfleet made on the network's bridge (libvirt must not touch it: managed='no'), or user mode."""
    if nic.user_mode:
        if nic.forwards:
            raise Unsupported(f"port forwards ({', '.join(nic.forwards)}) on a user-mode NIC need passt, which "
                              "libvirt 9 does not use for this: use the qemu driver, or a nat network")
        element = ET.Element("interface", {"type": "user"})
    elif nic.tap is None:
        raise ValueError(f"NIC on {nic.network} has no tap")
    else:
        element = ET.Element("interface", {"type": "ethernet"})
        _sub(element, "target", dev=nic.tap, managed="no")
    if nic.mac is not None:
        _sub(element, "mac", address=nic.mac)
    _sub(element, "model", type=nic.model)
    _sub(element, "link", state="up" if nic.link_up else "down")
    _sub(element, "alias", name=f"ua-{nic.netdev_id}")
    return element


def _metadata(parent: ET.Element, vm_id: str, spec: VmSpec, owner: str) -> None:
    holder = _sub(_sub(parent, "metadata"), f"{{{NAMESPACE}}}vm")
    _sub(holder, f"{{{NAMESPACE}}}id", vm_id)
    _sub(holder, f"{{{NAMESPACE}}}owner", owner)
    _sub(holder, f"{{{NAMESPACE}}}spec", json.dumps(spec.model_dump(mode="json"), sort_keys=True))


def read_metadata(holder: ET.Element) -> DomainMeta | None:
    """Our <virtfleet:vm> element (as libvirt returns it from metadata()) -> its contents; None if not ours."""
    if holder.tag != f"{{{NAMESPACE}}}vm":
        return None
    vm_id = holder.findtext(f"{{{NAMESPACE}}}id")
    spec_text = holder.findtext(f"{{{NAMESPACE}}}spec")
    if not vm_id or not spec_text:
        return None
    try:
        spec = VmSpec.model_validate_json(spec_text)
    except ValueError:
        return None
    return DomainMeta(vm_id, spec, holder.findtext(f"{{{NAMESPACE}}}owner") or "")


def metadata_xml(vm_id: str, spec: VmSpec, owner: str) -> str:
    """Only our metadata element: what setMetadata() takes. Written in our namespace as the default one, never
    with a prefix: libvirt declares the prefix it is given itself, and fails ("failed to create a new XML
    namespace") when the element declares that prefix already."""
    holder = ET.Element("metadata")
    _metadata(holder, vm_id, spec, owner)
    return ET.tostring(holder[0][0], encoding="unicode", default_namespace=NAMESPACE)


def _os(domain: ET.Element, spec: VmSpec, boot: BootImage | None, paths: RunPaths) -> None:
    uefi = spec.firmware == "uefi"
    os_element = _sub(domain, "os", **({"firmware": "efi"} if uefi else {}))
    _sub(os_element, "type", "hvm", arch="x86_64", machine="q35")
    if uefi:
        # libvirt picks the firmware from QEMU's descriptors as the qemu driver does: plain UEFI, no Secure Boot
        # (it needs SMM and enrolled keys the spec does not have); the variable store is the VM's own.
        features = _sub(os_element, "firmware")
        _sub(features, "feature", enabled="no", name="secure-boot")
        _sub(features, "feature", enabled="no", name="enrolled-keys")
        _sub(os_element, "nvram", str(paths.uefi_vars))
    if boot is not None:
        kernel = boot.efi_kernel if uefi else boot.kernel
        if kernel is None:
            raise InvalidSpec("firmware", f"image '{boot.name}' was built without a kernel UEFI can load; "
                                          f"rebuild it: virtfleet image build {boot.name}")
        _sub(os_element, "kernel", str(kernel))
        _sub(os_element, "initrd", str(boot.initrd))
        _sub(os_element, "cmdline", boot.cmdline)


def _disks(devices: ET.Element, disks: list[DiskSpec], boot: BootImage | None) -> int:
    """The disks (and a virtio-scsi controller when one needs it); returns how many PCIe slots they take."""
    counters = {"virtio-blk": 0, "virtio-scsi": 0}
    for disk in disks:
        # The boot order only means something to firmware booting a disk; with a kernel image it is left out.
        order = None if boot is not None or disk.boot_index is None else disk.boot_index + 1
        devices.append(disk_element(disk, target_dev(disk.bus, counters[disk.bus]), boot_order=order))
        counters[disk.bus] += 1
    if counters["virtio-scsi"]:
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    return counters["virtio-blk"] + (1 if counters["virtio-scsi"] else 0)


def build_domain_xml(vm_id: str, spec: VmSpec, boot: BootImage | None, paths: RunPaths, domain_type: DomainType,
                     *, defined_spec: VmSpec | None = None, run_as: tuple[int, int] | None = None) -> str:
    """The domain XML for `spec` (the devices it runs with). The metadata keeps `defined_spec`, what define() was
    given (default `spec`): status() reports that, as the qemu driver's domain.json does.

    `run_as` (uid, gid): QEMU runs as this user and libvirt relabels nothing. virtfleet's files (kernel images,
    pool volumes, the run directory) live under a private data directory only its own user can enter, and
    libvirt's dynamic ownership would chown pool volumes back and forth under virtfleet's feet: so a local
    libvirt runs QEMU as virtfleet's user, as the qemu driver does."""
    if spec.machine != "q35":
        raise Unsupported("libvirt boots machine q35 only (libvirt 9 has no microvm): set machine: q35")
    domain = ET.Element("domain", {"type": domain_type})
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", domain_uuid(vm_id))
    _metadata(domain, vm_id, defined_spec or spec, owner_of(paths))
    _sub(domain, "memory", str(spec.memory), unit="MiB")
    _sub(domain, "vcpu", str(spec.cpus))
    _os(domain, spec, boot, paths)
    _sub(_sub(domain, "features"), "acpi")  # the power button: shutdown() relies on it
    # Like the qemu driver's -cpu host / -cpu max: everything the accelerator can give.
    _sub(domain, "cpu", mode="host-passthrough" if domain_type == "kvm" else "maximum")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    pcie_devices = _disks(devices, spec.disks, boot)
    for nic in spec.nics:
        devices.append(nic_element(nic))
    pcie_devices += len(spec.nics)
    # libvirt puts each cold-plugged PCIe device into a root port of its own; the extra ones stay empty for
    # hot-plug (a device can only be hot-plugged into an empty port).
    _sub(devices, "controller", type="pci", index="0", model="pcie-root")
    for index in range(1, pcie_devices + HOTPLUG_PORTS + 1):
        _sub(devices, "controller", type="pci", index=str(index), model="pcie-root-port")
    _sub(devices, "controller", type="usb", model="none")  # like -nodefaults: no devices nobody asked for
    # The serial console: a socket clients attach to, and a log virtlogd keeps, attached or not.
    serial = _sub(devices, "serial", type="unix")
    _sub(serial, "source", mode="bind", path=str(paths.console))
    _sub(serial, "log", file=str(paths.console_log), append="on")
    _sub(serial, "target", type="isa-serial", port="0")
    if spec.display == "vnc":
        # VNC listens on a unix socket only: the API proxies it (with auth), a TCP port would bypass that.
        _sub(devices, "graphics", type="vnc", socket=str(paths.vnc))
        _sub(_sub(devices, "video"), "model", type="vga")
    _sub(devices, "memballoon", model="none")
    if run_as is not None:
        label = _sub(domain, "seclabel", type="static", model="dac", relabel="no")
        _sub(label, "label", f"+{run_as[0]}:+{run_as[1]}")
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"
