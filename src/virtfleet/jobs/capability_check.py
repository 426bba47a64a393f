"""Can this host do it? Decided before a job exists, from the driver's Capabilities and the VM's spec.

Every service asks here before it submits a job or acts, so an operation a driver cannot do is refused up front
(Unsupported: 501, naming the capability) with nothing recorded and nothing changed, never half-way through a job.
Some limits depend on the VM as well as on the driver (microvm has no hot-plug bus; only virtio-blk disks hot-plug):
they are decided here too. The drivers keep their own checks as a last line of defence.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from virtfleet.drivers.base import Capabilities, Driver
from virtfleet.errors import Unsupported
from virtfleet.model.vm import DiskSpec, VmSpec

# The yes/no capabilities (every field of Capabilities but `machines`), by the names users see.
Flag = Literal[
    "pause", "reboot", "acpi_shutdown", "console", "vnc", "disk_hotplug", "nic_hotplug", "link_state", "snapshots",
    "memory_snapshots", "kernel_boot", "uefi", "cloud_init", "usage", "adopt", "live_migration",
]
MACHINES = "machines"

# Capabilities no operation needs yet, and why; an operation that comes to need one checks it here like the others.
NOT_YET_USED: dict[str, str] = {"live_migration": "virtfleet has no migrate operation yet"}

_HOTPLUG: frozenset[Flag] = frozenset({"disk_hotplug", "nic_hotplug"})
HOTPLUG_MACHINE = "q35"  # the machine with a hot-plug bus (PCIe root ports)
HOTPLUG_DISK_BUS = "virtio-blk"  # a virtio-scsi disk needs its controller, which only a start adds


def capability_names() -> list[str]:
    """Every capability name, as Capabilities declares them."""
    return [f.name for f in dataclasses.fields(Capabilities)]


def require(driver: Driver, capability: Flag, *, what: str, spec: VmSpec | None = None,
            disk: DiskSpec | None = None) -> None:
    """Raise Unsupported naming `capability` unless the driver has it (and, for hot-plug, the VM's `spec` and the
    `disk` allow it). `what` completes "cannot ...", e.g. "pause vm 'web'"."""
    if not getattr(driver.capabilities(), capability):
        raise Unsupported(f"cannot {what}: the {driver.name} driver on this host lacks the capability "
                          f"'{capability}'", capability)
    if capability in _HOTPLUG and spec is not None and spec.machine != HOTPLUG_MACHINE:
        raise Unsupported(f"cannot {what}: machine {spec.machine} has no hot-plug bus; do it while the VM is "
                          f"stopped, or use machine {HOTPLUG_MACHINE}", capability)
    if capability == "disk_hotplug" and disk is not None and disk.bus != HOTPLUG_DISK_BUS:
        raise Unsupported(f"cannot {what}: only {HOTPLUG_DISK_BUS} disks can be hot-plugged; attach a {disk.bus} "
                          "disk while the VM is stopped", capability)


def require_machine(driver: Driver, machine: str, *, what: str) -> None:
    machines = driver.capabilities().machines
    if machine not in machines:
        raise Unsupported(f"cannot {what}: the {driver.name} driver on this host boots machine "
                          f"{' or '.join(machines) or 'none'}, not {machine}", MACHINES)


def check_spec(driver: Driver, spec: VmSpec, *, what: str) -> None:
    """What running a VM of this spec needs from the driver (the driver-neutral part of Ganeti's hvparams check):
    its machine type, a kernel boot for an image, UEFI firmware, cloud-init, a graphical console, NICs that start
    unplugged."""
    require_machine(driver, spec.machine, what=what)
    if spec.image is not None:
        require(driver, "kernel_boot", what=f"{what} (it boots image '{spec.image}')")
    if spec.firmware == "uefi":
        require(driver, "uefi", what=f"{what} (it boots with UEFI firmware)")
    if spec.cloud_init is not None:
        require(driver, "cloud_init", what=f"{what} (it has cloud-init data)")
    if spec.display == "vnc":
        require(driver, "vnc", what=f"{what} (it has display vnc)")
    if any(not nic.link_up for nic in spec.nics):
        require(driver, "link_state", what=f"{what} (a NIC starts with its link down)")


def flag_names() -> tuple[str, ...]:
    return get_args(Flag)
