"""VMware .vmx: `key = "value"` lines (keys case-insensitive, |XX escapes) -> SourceVm."""

from __future__ import annotations

import re

from virtfleet.v2v import disks
from virtfleet.v2v.errors import SourceError, whole_number
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import SourceDisk, SourceNic, SourceVm

MAX_VMX = 1 << 20
_LINE = re.compile(r'^([A-Za-z0-9_.:\-]+)\s*=\s*(?:"([^"]*)"|([^"#\s]*))\s*$')
_ESCAPE = re.compile(r"\|([0-9A-Fa-f]{2})")
_DISK = re.compile(r"^(scsi|sata|ide|nvme)(\d+):(\d+)\.present$")
_NIC = re.compile(r"^ethernet(\d+)\.present$")
_CD_TYPES = ("cdrom-image", "cdrom-raw", "atapi-cdrom")
_DISK_TYPES = ("scsi-harddisk", "disk", "ata-harddisk", "plaindisk", "")
# Which disk boots when bios.hddOrder does not say: VMware puts the system disk on scsi0:0 (or nvme0:0) unless the VM
# has IDE or SATA disks only.
_BUS_ORDER = {"scsi": 0, "nvme": 1, "sata": 2, "ide": 3}
# Settings we read; the groups below are what a VM may have that virtfleet does not carry over.
_LEFT_BEHIND = (
    (re.compile(r"^sound\.present$"), "sound card"),
    (re.compile(r"^(usb|usb_xhci|ehci)\.present$"), "USB controller and devices"),
    (re.compile(r"^serial\d+\.present$"), "serial port"),
    (re.compile(r"^parallel\d+\.present$"), "parallel port"),
    (re.compile(r"^floppy\d+\.present$"), "floppy drive"),
    (re.compile(r"^sharedfolder\d*\.present$"), "shared folders"),
    (re.compile(r"^pcipassthru\d+\.present$"), "PCI passthrough device"),
    (re.compile(r"^mks\.enable3d$"), "3D graphics"),
    (re.compile(r"^vhv\.enable$"), "nested virtualization (vhv.enable)"),
    (re.compile(r"^(mem|vcpu)\.hotadd$"), "CPU/memory hot add"),
    (re.compile(r"^sched\.(cpu|mem)\.(min|max|shares|minsize|reservation|affinity|latencysensitivity)$"),
     "CPU/memory reservations, limits and shares (sched.*)"),
    (re.compile(r"^cpuid\.\d+\."), "CPUID masks (cpuid.*)"),
    (re.compile(r"^isolation\."), "isolation settings (copy/paste, drag and drop)"),
    (re.compile(r"^uefi\.securebootenabled$|^uefi\.secureboot\.enabled$"), "UEFI secure boot"),
    (re.compile(r"^annotation$"), "annotation"),
)


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)


def parse(text: str, file: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise SourceError(file, f"line {number}", f"{line[:80]!r} is not a 'key = \"value\"' line")
        value = match.group(2) if match.group(2) is not None else match.group(3)
        values[match.group(1).lower()] = _unescape(value)
    return values


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def _int(values: dict[str, str], key: str, file: str, default: int | None) -> int:
    raw = values.get(key)
    if raw is None or raw.strip() == "":
        if default is None:
            raise SourceError(file, key, "is missing")
        return default
    return whole_number(raw, file, key, minimum=1)


def _disk_name(name: str) -> str:
    # "[datastore1] vm/vm.vmdk": a datastore path on the old host, relocated like any absolute path.
    match = re.match(r"^\[[^\]]*\]\s*(.+)$", name)
    return f"/{match.group(1)}" if match else name


def read(root: ImportDir, rel: str) -> SourceVm:
    data = root.read(rel, limit=MAX_VMX, file=rel, field="vmx")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if "\0" in text:
        raise SourceError(rel, "vmx", "is binary data, not a .vmx file")
    values = parse(text, rel)
    warnings: list[str] = []
    cpus = _int(values, "numvcpus", rel, 1)
    cores = _int(values, "cpuid.corespersocket", rel, 1)
    if "memsize" not in values:
        warnings.append("memsize: missing; VMware's default of 32 MiB is used")
    memory = _int(values, "memsize", rel, 32)
    firmware = "uefi" if values.get("firmware", "bios").strip().lower() == "efi" else "bios"
    if firmware == "uefi" and values.get("nvram"):
        warnings.append("nvram: the UEFI variables (boot entries) are not carried over")

    found: list[tuple[tuple[int, int, int], SourceDisk]] = []
    for key, present in values.items():
        match = _DISK.match(key)
        if match is None or not _true(present):
            continue
        bus, controller, unit = match.group(1), int(match.group(2)), int(match.group(3))
        label = f"{bus}{controller}:{unit}"
        device_type = values.get(f"{label}.devicetype", "").lower()
        file_name = values.get(f"{label}.filename", "")
        if device_type in _CD_TYPES or (not device_type and not file_name.lower().endswith(".vmdk")):
            warnings.append(f"{label}: CD-ROM/other device ({file_name or 'empty'}) is not carried over")
            continue
        if device_type not in _DISK_TYPES:
            warnings.append(f"{label}: device type {device_type!r} is not carried over")
            continue
        if not file_name:
            raise SourceError(rel, f"{label}.fileName", "is missing for a present disk")
        mode = values.get(f"{label}.mode", "persistent").lower()
        if "nonpersistent" in mode:
            warnings.append(f"{label}: the disk was {mode} (changes dropped at power-off); imported as a normal disk")
        disk_rel, note = root.join(rel, _disk_name(file_name), file=rel, field=f"{label}.fileName", relocate=True)
        if note:
            warnings.append(note)
        kind = values.get(f"{bus}{controller}.virtualdev", "lsilogic" if bus == "scsi" else bus).lower()
        controller_name = f"{bus} {kind}" if bus == "scsi" else bus
        disk = disks.from_file(root, disk_rel, label=label, controller=controller_name, fmt="vmdk")
        found.append(((_BUS_ORDER[bus], controller, unit), disk))
        if len(disk.layers) > 1:
            warnings.append(f"{label}: {len(disk.layers) - 1} snapshot(s) under the current state are merged into "
                            "one volume; the snapshot history is not kept")
    boot = values.get("bios.hddorder", "").split(",")[0].strip().lower()
    found.sort(key=lambda item: (item[1].label != boot, item[0]))
    if len(found) > 1 and not boot:
        warnings.append(f"boot disk: {found[0][1].label} (bios.hddOrder does not say; the first SCSI disk is taken)")

    nics = []
    for key, present in sorted(values.items()):
        match = _NIC.match(key)
        if match is None or not _true(present):
            continue
        label = f"ethernet{match.group(1)}"
        address_type = values.get(f"{label}.addresstype", "generated").lower()
        mac = values.get(f"{label}.address") if address_type == "static" else values.get(f"{label}.generatedaddress")
        network = values.get(f"{label}.networkname") or values.get(f"{label}.vnet") or \
            values.get(f"{label}.connectiontype", "bridged")
        if values.get(f"{label}.startconnected", "true").lower() == "false":
            warnings.append(f"{label}: was disconnected at power-on; the imported NIC starts connected")
        nics.append(SourceNic(label=label, mac=disks.mac(mac, rel, f"{label}.address"), network=network,
                              model=values.get(f"{label}.virtualdev", "e1000").lower()))

    left = sorted({what for key, value in values.items() for pattern, what in _LEFT_BEHIND
                   if pattern.match(key) and value.strip().lower() not in ("false", "0", "")})
    warnings += [f"not carried over: {what}" for what in left]
    return SourceVm(kind="vmx", file=rel, name=values.get("displayname") or disks.stem(rel), cpus=cpus,
                    sockets=cpus // cores if cpus % cores == 0 else 1, cores=cores if cpus % cores == 0 else cpus,
                    memory_mib=memory, firmware=firmware, guest_os=values.get("guestos", ""),
                    disks=[disk for _, disk in found], nics=nics, warnings=warnings)
