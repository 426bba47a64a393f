"""Xen xl.cfg and xm configuration files -> SourceVm.

Both look like Python; old xm files could even run Python. Nothing here evaluates them: the text is parsed into a
syntax tree (ast.parse never executes anything) and only `NAME = literal` statements are accepted, where a literal
is a string, a number, or a list of them. Any other statement (import, a call, an expression) is refused by line.
"""

from __future__ import annotations

import ast
import re

from virtfleet.v2v import disks
from virtfleet.v2v.errors import SourceError, whole_number
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import ImageFormat, SourceDisk, SourceNic, SourceVm

MAX_CFG = 1 << 20
MAX_NESTING = 8
Value = str | int | float | bool | list["Value"] | None
_PREFIXES: dict[str, ImageFormat | None] = {
    "phy:": None, "file:": "raw", "tap:aio:": "raw", "tap2:aio:": "raw", "aio:": "raw", "tap:qcow2:": "qcow2",
    "tap2:qcow2:": "qcow2", "qcow2:": "qcow2", "tap:vhd:": "vpc", "tap2:vhd:": "vpc", "vhd:": "vpc",
    "tap:qcow:": "qcow2",
}
_LEFT_BEHIND = {"vnc": "VNC console", "sdl": "SDL console", "spice": "SPICE console", "vfb": "graphical console",
                "soundhw": "sound card", "usb": "USB", "usbdevice": "USB devices", "usbctrl": "USB controllers",
                "pci": "PCI passthrough", "cpuid": "CPUID masks", "viridian": "Hyper-V enlightenments (viridian)",
                "nestedhvm": "nested virtualization", "vtpm": "TPM", "channel": "channels", "serial": "serial port",
                "parallel": "parallel port", "vnuma": "virtual NUMA", "cpus": "CPU pinning", "maxmem": "ballooning"}
_CONTROLLERS = (("xvd", "xen"), ("hd", "ide"), ("sd", "scsi"), ("vd", "virtio"))


def parse(text: str, file: str) -> dict[str, Value]:
    depth = 0
    for character in text:  # bound the nesting before the parser recurses into it
        depth += character in "[({"
        depth -= character in "])}"
        if depth > MAX_NESTING:
            raise SourceError(file, "syntax", f"values are nested deeper than {MAX_NESTING}")
    try:
        tree = ast.parse(text, filename=file, mode="exec")
    except SyntaxError as exc:
        raise SourceError(file, f"line {exc.lineno}", f"is not a KEY = VALUE setting: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise SourceError(file, "syntax", f"cannot be parsed: {type(exc).__name__}") from None
    values: dict[str, Value] = {}
    for statement in tree.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            raise SourceError(file, f"line {statement.lineno}", "is Python code, not a KEY = VALUE setting; refused")
        values[statement.targets[0].id.lower()] = _literal(statement.value, file, statement.targets[0].id)
    return values


def _literal(node: ast.expr, file: str, key: str) -> Value:
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, str | int | float | bool)):
        value: Value = node.value
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, int | float):
        return -node.operand.value
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(element, file, key) for element in node.elts]
    raise SourceError(file, key, f"line {node.lineno}: only strings, numbers and lists are read, not expressions")


def _string(values: dict[str, Value], key: str, file: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str | int | float):
        raise SourceError(file, key, "must be a string")
    return str(value)


def _int(values: dict[str, Value], key: str, file: str, default: int) -> int:
    return whole_number(values.get(key, default), file, key, minimum=1)


def _strings(values: dict[str, Value], key: str, file: str) -> list[str]:
    value = values.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SourceError(file, key, "must be a list of strings")
    return [item for item in value if isinstance(item, str)]


def _disk_spec(spec: str) -> dict[str, str]:
    """An xl disk spec ("target=..." last, key=value or positional) or an xm one ("phy:/dev/x,hda,w")."""
    fields: dict[str, str] = {}
    positional: list[str] = []
    parts = spec.split(",")
    for index, part in enumerate(parts):
        part = part.strip()
        if part.startswith("target="):
            fields["target"] = ",".join(parts[index:]).strip()[len("target="):]
            break
        key, sep, value = part.partition("=")
        if sep and re.fullmatch(r"[a-z_-]+", key.strip()):
            fields[key.strip()] = value.strip()
        else:
            positional.append(part)
    names = ("target", "vdev", "access") if len(positional) == 3 else ("target", "format", "vdev", "access")
    for name, value in zip(names, positional, strict=False):
        if value:
            fields.setdefault(name, value)
    return fields


def _disk(root: ImportDir, rel: str, spec: str, index: int, warnings: list[str]) -> SourceDisk | None:
    field = f"disk[{index}]"
    fields = _disk_spec(spec)
    vdev = fields.get("vdev", f"xvd{chr(97 + index % 26)}")
    label = vdev.split(":")[0]
    if fields.get("devtype") == "cdrom" or vdev.endswith(":cdrom"):
        warnings.append(f"{label}: CD-ROM ({fields.get('target') or 'empty'}) is not carried over")
        return None
    target = fields.get("target", "")
    if not target:
        raise SourceError(rel, field, "names no target")
    fmt: ImageFormat | None = disks.format_of(target, rel, field, fields["format"]) if fields.get("format") else None
    device = fields.get("backendtype") == "phy"
    for prefix, prefix_format in _PREFIXES.items():
        if target.startswith(prefix):
            target = target[len(prefix):]
            device = device or prefix == "phy:"
            fmt = fmt or prefix_format
            break
    controller = next((name for prefix, name in _CONTROLLERS if label.startswith(prefix)), "xen")
    if device or target.startswith("/dev/"):
        if not root.device_allowed(target):
            raise SourceError(rel, field, f"{target} is a host block device (phy:); an admin must allow it "
                                          "(VIRTFLEET_IMPORT_DEVICES) before it is read")
        return SourceDisk(label=label, layout="host block device", controller=controller, device=target)
    if fmt is None:
        fmt = disks.format_of(target, rel, field) if "." in target.rsplit("/", 1)[-1] else "raw"
    disk_rel, note = root.join(rel, target, file=rel, field=field, relocate=True)
    if note:
        warnings.append(note)
    return disks.from_file(root, disk_rel, label=label, controller=controller, fmt=fmt)


def _vif(spec: str, index: int, rel: str, hvm: bool) -> SourceNic:
    fields = {}
    for part in spec.split(","):
        key, _, value = part.strip().partition("=")
        fields[key.strip().lower()] = value.strip()
    model = fields.get("model") or ("rtl8139" if hvm and fields.get("type") == "ioemu" else "netfront")
    return SourceNic(label=f"vif{index}", mac=disks.mac(fields.get("mac"), rel, f"vif[{index}].mac"),
                     network=fields.get("bridge") or fields.get("network") or "", model=model)


def read(root: ImportDir, rel: str) -> SourceVm:
    data = root.read(rel, limit=MAX_CFG, file=rel, field="cfg")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(rel, "cfg", "is not UTF-8 text") from None
    values = parse(text, rel)
    warnings: list[str] = []
    builder = (_string(values, "type", rel) or _string(values, "builder", rel) or "pv").lower()
    hvm = builder == "hvm"
    firmware = "uefi" if (_string(values, "bios", rel) or "").lower() == "ovmf" else "bios"
    if not hvm:
        warnings.append(f"type {builder}: a paravirtualized guest; it boots here as a full VM from its disk "
                        "(it needs a boot loader on the disk, as guests booted with pygrub have)")
    for key in ("kernel", "ramdisk", "cmdline", "bootloader"):
        path = _string(values, key, rel)
        if path and not path.endswith("hvmloader") and not (key == "bootloader" and "pygrub" in path):
            warnings.append(f"{key}: {path} on the Xen host is not carried over; the VM boots from its disk")
    cpus = _int(values, "vcpus", rel, 1)
    memory = _int(values, "memory", rel, 128)
    if "memory" not in values:
        warnings.append("memory: missing; xl's default of 128 MiB is used")
    found = [disk for index, spec in enumerate(_strings(values, "disk", rel))
             if (disk := _disk(root, rel, spec, index, warnings)) is not None]
    nics = [_vif(spec, index, rel, hvm) for index, spec in enumerate(_strings(values, "vif", rel))]
    left = sorted({what for key, what in _LEFT_BEHIND.items() if values.get(key) not in (None, 0, "", [], "none")})
    warnings += [f"not carried over: {what}" for what in left]
    return SourceVm(kind="xl", file=rel, name=_string(values, "name", rel) or disks.stem(rel), cpus=cpus, sockets=1,
                    cores=cpus, memory_mib=memory, firmware=firmware, guest_os="" if hvm else "linux (Xen PV)",
                    disks=found, nics=nics, warnings=warnings)
