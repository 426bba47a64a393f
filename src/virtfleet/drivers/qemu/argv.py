"""Pure: a VM spec, its boot image and its run directory -> the QEMU command line. Golden-file tested."""

from __future__ import annotations

import json

from virtfleet.drivers.base import BootImage
from virtfleet.drivers.qemu.runtime import RunPaths
from virtfleet.model.vm import DiskSpec, VmSpec

# Per machine type: how virtio devices attach (microvm has virtio-mmio only, q35 has PCI).
_VIRTIO_BUS = {"microvm": "device", "q35": "pci"}


def _opt(value: object) -> str:
    """A value inside a QEMU -option list, where a literal comma is written twice."""
    return str(value).replace(",", ",,")


def _machine(spec: VmSpec) -> str:
    if spec.machine == "microvm":
        # rtc is needed by the guest clock; ACPI stays on for the power button (shutdown relies on it).
        return "microvm,rtc=on,acpi=on"
    return "q35"


def _disk_args(index: int, disk: DiskSpec, bus: str) -> list[str]:
    file_node, format_node = f"disk{index}-file", f"disk{index}"
    file_opts = {"driver": "file", "filename": disk.path, "node-name": file_node, "read-only": disk.readonly}
    # The format is always explicit, and a qcow2 never opens a backing file named in its own header.
    format_opts: dict[str, object] = {
        "driver": disk.format, "file": file_node, "node-name": format_node, "read-only": disk.readonly,
    }
    if disk.format == "qcow2":
        format_opts["backing"] = None
    return [
        "-blockdev", json.dumps(file_opts, separators=(",", ":")),
        "-blockdev", json.dumps(format_opts, separators=(",", ":")),
        "-device", f"virtio-blk-{bus},drive={format_node},id=virtio-disk{index}",
    ]


def build_argv(
    vm_id: str, spec: VmSpec, boot: BootImage, paths: RunPaths, *, accel: str, binary: str = "qemu-system-x86_64"
) -> list[str]:
    argv = [
        binary,
        "-name", f"{spec.name},process=vf-{spec.name}",
        "-uuid", vm_id,  # also lets us tell our QEMU from an unrelated process that reused its pid
        "-machine", _machine(spec),
        "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", f"{spec.memory}M",
        "-smp", str(spec.cpus),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-daemonize",
        "-pidfile", str(paths.pidfile),
        "-qmp", f"unix:{_opt(paths.qmp)},server=on,wait=off",
        # The serial console: a socket clients attach to, and a log that records everything, attached or not.
        "-chardev",
        f"socket,id=serial0,path={_opt(paths.console)},server=on,wait=off,logfile={_opt(paths.console_log)},logappend=on",
        "-serial", "chardev:serial0",
        "-kernel", str(boot.kernel),
        "-initrd", str(boot.initrd),
        "-append", boot.cmdline,
    ]
    bus = _VIRTIO_BUS[spec.machine]
    for index, disk in enumerate(spec.disks):
        argv += _disk_args(index, disk, bus)
    return argv
