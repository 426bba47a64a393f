"""Pure: a VM spec, its boot image and its run directory -> the QEMU command line. Golden-file tested."""

from __future__ import annotations

import json

from virtfleet.drivers.base import BootImage
from virtfleet.drivers.qemu.firmware import UefiFirmware
from virtfleet.drivers.qemu.runtime import RunPaths
from virtfleet.model.network import NicSpec
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
    if spec.firmware == "uefi":
        return "q35,pflash0=fw-code,pflash1=fw-vars"
    return "q35"


def _firmware_args(spec: VmSpec, uefi: UefiFirmware | None, paths: RunPaths) -> list[str]:
    if spec.firmware != "uefi":
        return []
    if uefi is None:
        raise ValueError("firmware uefi needs the UEFI firmware: the caller finds it first")
    # Both flash chips are block nodes opened explicitly as raw: nothing is probed, the code is read-only and
    # the variable store is the VM's own copy.
    nodes = [
        {"driver": "file", "filename": str(uefi.code), "node-name": "fw-code-file", "read-only": True},
        {"driver": "raw", "file": "fw-code-file", "node-name": "fw-code", "read-only": True},
        {"driver": "file", "filename": str(paths.uefi_vars), "node-name": "fw-vars-file"},
        {"driver": "raw", "file": "fw-vars-file", "node-name": "fw-vars"},
    ]
    return [arg for node in nodes for arg in ("-blockdev", json.dumps(node, separators=(",", ":")))]


HOTPLUG_PORTS = 4  # free PCIe root ports on q35: a device can only be hot-plugged into an empty port

# cache mode -> (O_DIRECT on the host file, ignore flushes, guest-visible write cache)
_CACHE = {
    "writeback": (False, False, True),
    "none": (True, False, True),
    "writethrough": (False, False, False),
    "directsync": (True, False, False),
    "unsafe": (False, True, True),
}


def blockdev_nodes(disk: DiskSpec) -> list[dict[str, object]]:
    """The -blockdev / blockdev-add options of a disk, lowest layer first: per layer a file node and a format node.

    Every layer is named explicitly and the lowest has "backing": null, so QEMU opens exactly the files virtfleet
    checked, never one named inside an image header. A qcow2 external data file cannot be pinned the same way: QEMU
    opens one only when the header names it, and takes no option that says "none" ("data-file": null is refused,
    a node given for an image without one too), so every layer is checked for one before it gets here
    (vm_disks.backing_chain, at each start and each attach) and refused.
    """
    if disk.path is None:
        raise ValueError(f"disk {disk.volume} has no resolved path")
    direct, no_flush, _ = _CACHE[disk.cache]
    cache = {"direct": direct, "no-flush": no_flush}
    layers = [(disk.path, disk.format, disk.node_name)] + [
        (layer.path, layer.format, f"{disk.node_name}-b{depth}") for depth, layer in enumerate(disk.backing_chain, 1)
    ]
    nodes: list[dict[str, object]] = []
    below: str | None = None
    for path, fmt, node in reversed(layers):
        file_node: dict[str, object] = {"driver": "file", "filename": path, "node-name": f"{node}-file",
                                        "read-only": disk.readonly, "cache": cache, "discard": disk.discard}
        if node != disk.node_name and not disk.readonly:
            # Backing layers are opened read-only, but may be reopened read-write when a snapshot is merged
            # into them (block-commit); the guest never writes them.
            file_node["auto-read-only"] = True
        nodes.append(file_node)
        format_node: dict[str, object] = {"driver": fmt, "file": f"{node}-file", "node-name": node,
                                          "read-only": disk.readonly, "cache": cache, "discard": disk.discard}
        if fmt == "qcow2":
            format_node["backing"] = below
        nodes.append(format_node)
        below = node
    return nodes


def disk_device(disk: DiskSpec, machine: str, *, bus: str | None = None) -> dict[str, object]:
    """The -device / device_add options of a disk (`bus`: a hot-plug port or the SCSI controller)."""
    _, _, write_cache = _CACHE[disk.cache]
    device: dict[str, object] = {"id": f"{disk.node_name}-dev", "drive": disk.node_name,
                                 "write-cache": "on" if write_cache else "off"}
    if disk.bus == "virtio-scsi":
        device.update(driver="scsi-hd", bus=bus or "scsi0.0")
    else:
        device["driver"] = f"virtio-blk-{_VIRTIO_BUS[machine]}"
        if bus is not None:
            device["bus"] = bus
    if disk.boot_index is not None:
        device["bootindex"] = disk.boot_index
    return device


_NIC_DRIVERS = {("virtio", "microvm"): "virtio-net-device", ("virtio", "q35"): "virtio-net-pci",
                ("e1000", "q35"): "e1000"}


def nic_forwards(nic: NicSpec) -> list[str]:
    # Forwards listen on loopback only: exposing a guest port to the network is a decision, not a default.
    return [f"{proto}:127.0.0.1:{host}-:{guest}" for proto, host, guest in (f.split(":") for f in nic.forwards)]


def nic_netdev(nic: NicSpec) -> dict[str, object]:
    """The -netdev / netdev_add options of a NIC: the tap virtfleet made on the network's bridge, or user mode."""
    if nic.user_mode:
        return {"type": "user", "id": nic.netdev_id, "hostfwd": nic_forwards(nic)}
    if nic.tap is None:
        raise ValueError(f"NIC on {nic.network} has no tap")
    return {"type": "tap", "id": nic.netdev_id, "ifname": nic.tap, "script": "no", "downscript": "no"}


def nic_device(nic: NicSpec, machine: str) -> dict[str, object]:
    return {"driver": _NIC_DRIVERS[(nic.model, machine)], "id": f"{nic.netdev_id}-dev", "netdev": nic.netdev_id,
            "mac": nic.mac}


def _netdev_arg(options: dict[str, object]) -> str:
    parts = [str(options["type"])]
    for key, value in options.items():
        if key == "type":
            continue
        values = value if isinstance(value, list) else [value]
        parts += [f"{key}={_opt(item)}" for item in values]
    return ",".join(parts)


def _nic_args(nics: list[NicSpec], machine: str) -> list[str]:
    args: list[str] = []
    for nic in nics:
        args += ["-netdev", _netdev_arg(nic_netdev(nic)), "-device", _device_arg(nic_device(nic, machine))]
    return args


def _device_arg(options: dict[str, object]) -> str:
    driver = options["driver"]
    rest = ",".join(f"{key}={_opt(value)}" for key, value in options.items() if key != "driver")
    return f"{driver},{rest}"


def _disk_args(disks: list[DiskSpec], machine: str) -> list[str]:
    args: list[str] = []
    if any(disk.bus == "virtio-scsi" for disk in disks):
        args += ["-device", f"virtio-scsi-{_VIRTIO_BUS[machine]},id=scsi0"]
    for disk in disks:
        for node in blockdev_nodes(disk):
            args += ["-blockdev", json.dumps(node, separators=(",", ":"))]
        args += ["-device", _device_arg(disk_device(disk, machine))]
    return args


def _display_args(spec: VmSpec, paths: RunPaths) -> list[str]:
    if spec.display != "vnc":
        return []
    # Standard VGA: SeaBIOS has a VGA BIOS for it, so the screen shows from the firmware on. VNC listens on a
    # unix socket only: the API proxies it (with auth), a TCP port would bypass that.
    return ["-device", "VGA,id=video0", "-vnc", f"unix:{_opt(paths.vnc)}"]


def build_argv(
    vm_id: str, spec: VmSpec, boot: BootImage | None, paths: RunPaths, *, accel: str,
    binary: str = "qemu-system-x86_64", uefi: UefiFirmware | None = None,
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
    ]
    argv += _firmware_args(spec, uefi, paths)
    if boot is not None:
        kernel = boot.efi_kernel if spec.firmware == "uefi" else boot.kernel
        if kernel is None:
            raise ValueError(f"image {boot.name} has no kernel UEFI firmware can load: the caller checks first")
        argv += ["-kernel", str(kernel), "-initrd", str(boot.initrd), "-append", boot.cmdline]
    if spec.machine == "q35":
        for port in range(HOTPLUG_PORTS):
            argv += ["-device", f"pcie-root-port,id=hp{port},chassis={port + 1}"]
    argv += _display_args(spec, paths)  # after the hot-plug ports, so their PCI addresses stay the same
    # The boot order only means something to firmware booting a disk; with a kernel image it is left out.
    disks = spec.disks if boot is None else [d.model_copy(update={"boot_index": None}) for d in spec.disks]
    return argv + _disk_args(disks, spec.machine) + _nic_args(spec.nics, spec.machine)
