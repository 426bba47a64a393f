"""The driver interface: what the agent needs from a hypervisor, and nothing more.

Modelled on Ganeti's lib/hypervisor: a small set of async methods, capabilities declared up front so the API can
answer "unsupported" before trying, and hypervisor-specific ids kept inside the driver (callers only know vm_id).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from virtfleet.model.network import NicSpec
from virtfleet.model.vm import DiskSpec, VmSpec, VmState


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do on this host. Read before a job is submitted: an operation a driver cannot do is refused
    up front (Unsupported, 501, naming the capability), never discovered half-way through a job. The field names
    are the capability names users see."""

    pause: bool = True
    reboot: bool = True
    acpi_shutdown: bool = True
    console: bool = True  # serial console stream and its history
    vnc: bool = True  # graphical console (display "vnc")
    disk_hotplug: bool = True  # q35 only: microvm has no hot-plug bus
    nic_hotplug: bool = True  # q35 only
    link_state: bool = True  # set_link: plug or pull a NIC's virtual cable
    snapshots: bool = True  # live external disk snapshots and merges (snapshot_disks, commit_disk, ...)
    memory_snapshots: bool = True  # memory_snapshot: RAM and device state saved with the disks
    kernel_boot: bool = True  # boot a kernel + initramfs (BootImage) rather than a disk
    uefi: bool = True  # firmware "uefi": UEFI firmware is installed and the driver boots it
    cloud_init: bool = True  # a NoCloud seed disk attached at start
    usage: bool = True  # usage() counters for metrics
    live_migration: bool = False
    adopt: bool = False  # foreign_domains / take_over: take over domains made by other tools (libvirt only)
    machines: tuple[str, ...] = ("microvm", "q35")  # machine types this driver boots


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpus: int
    memory_mib: int
    driver: str
    hypervisor: str  # e.g. "QEMU 7.2.0"
    kvm_usable: bool
    kvm_reason: str  # why KVM is (not) usable, shown to users as-is


@dataclass(frozen=True)
class DomainStatus:
    """What the hypervisor actually runs for one VM."""

    vm_id: str
    state: VmState
    pid: int | None = None
    reason: str = ""
    accel: str = ""
    spec: VmSpec | None = None  # the spec the host recorded, so a domain unknown to the store can be adopted


@dataclass(frozen=True)
class ForeignDomain:
    """A domain on the host that virtfleet does not manage (made by virt-manager, VDSM, virsh ...), as the
    hypervisor describes it: `xml` is its libvirt domain XML, read by the v2v libvirt reader."""

    name: str
    uuid: str
    state: VmState
    persistent: bool  # a transient domain vanishes when it stops: it cannot be taken over
    xml: str


@dataclass(frozen=True)
class UsageSample:
    """Cumulative counters of one running domain, read cheaply from the host (rates are the caller's business)."""

    cpu_seconds: float  # host CPU time the hypervisor process used
    memory_bytes: int  # its resident memory
    disk_read_bytes: int
    disk_write_bytes: int
    net_rx_bytes: int  # received by the guest
    net_tx_bytes: int  # sent by the guest


@dataclass(frozen=True)
class BootImage:
    """A resolved guest image: what the driver boots."""

    name: str
    kernel: Path
    initrd: Path
    cmdline: str
    efi_kernel: Path | None = None  # the same kernel as UEFI firmware loads it (a PE image); None: none was built


@dataclass(frozen=True)
class DriverConfig:
    run_dir: Path  # one sub-directory per VM: pidfile, sockets, console log, runtime record
    qemu_binary: str = "qemu-system-x86_64"
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OpenImage:
    """One image file a running domain has open in a disk's chain, with the names of its internal snapshots."""

    path: str
    snapshots: tuple[str, ...] = ()


ConsoleStreams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
MemoryAction = Literal["save", "load", "delete"]
DiskChain = tuple[OpenImage, ...]  # one disk's images as the hypervisor has them open: the active layer first
BeforePivot = Callable[[], Awaitable[None]]

# Drivers write this line into the console history before each boot, so "this boot's output" is findable.
BOOT_SEPARATOR = "[virtfleet] starting"


@runtime_checkable
class Driver(Protocol):
    name: str

    def capabilities(self) -> Capabilities: ...

    async def host_info(self) -> HostInfo: ...

    async def recover(self) -> list[DomainStatus]:
        """Re-attach to every domain this host runs (after an agent restart) and report them all."""
        ...

    async def list_domains(self) -> list[DomainStatus]:
        """Every defined domain with its actual state; cheap enough to call every second."""
        ...

    async def status(self, vm_id: str) -> DomainStatus: ...

    async def define(self, vm_id: str, spec: VmSpec) -> None:
        """Record the domain on the host (its run directory); idempotent."""
        ...

    async def undefine(self, vm_id: str) -> None:
        """Forget a stopped domain and remove what define() created; idempotent."""
        ...

    async def start(self, vm_id: str, spec: VmSpec, boot: BootImage | None, *, restore: str | None = None
                    ) -> DomainStatus:
        """Boot the domain: from `boot` (kernel + initramfs), or from its disks when None; with `restore`, resume
        from that memory snapshot (internal snapshot tag) instead of booting."""
        ...

    async def shutdown(self, vm_id: str, timeout: float) -> None:
        """Ask the guest to power off (ACPI); raise OperationTimeout if it is still up after `timeout`."""
        ...

    async def stop(self, vm_id: str) -> None:
        """Power off at once (pull the plug)."""
        ...

    async def reboot(self, vm_id: str) -> None: ...

    async def pause(self, vm_id: str) -> None: ...

    async def resume(self, vm_id: str) -> None: ...

    async def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        """Hot-plug a disk (path and backing chain resolved) into a running domain; Unsupported where the machine
        has no hot-plug bus."""
        ...

    async def detach_disk(self, vm_id: str, disk: DiskSpec, timeout: float) -> None:
        """Hot-unplug a disk from a running domain; the guest must release it within `timeout`."""
        ...

    async def attach_nic(self, vm_id: str, nic: NicSpec) -> None:
        """Hot-plug a NIC (its tap or user mode resolved) into a running q35 domain."""
        ...

    async def detach_nic(self, vm_id: str, nic: NicSpec, timeout: float) -> None: ...

    async def set_link(self, vm_id: str, nic: NicSpec, up: bool) -> None:
        """Plug or pull the virtual cable of a NIC (the guest sees carrier go up or down)."""
        ...

    async def snapshot_disks(self, vm_id: str, overlays: list[tuple[str, str]]) -> None:
        """Live external snapshot of a running domain: each (current top image, new empty overlay backed by it)
        pair switches to the overlay, all disks at the same instant."""
        ...

    async def commit_disk(self, vm_id: str, top: str, base: str, *, before_pivot: BeforePivot | None = None
                          ) -> None:
        """Live merge of the image `top` into `base` below it, in the disk whose chain holds both. Idempotent: a
        merge an earlier call left unfinished is completed first, and a `top` no longer in the chain is merged
        already. When `top` is the active image, `before_pivot` is awaited once `base` holds all its data, right
        before the disk switches to `base`."""
        ...

    async def disk_chains(self, vm_id: str) -> list[DiskChain]:
        """What a running domain really has open, per disk (after a crash this, not the store, says which image
        the guest writes)."""
        ...

    async def settle_block_jobs(self, vm_id: str) -> list[str]:
        """End the block jobs an earlier agent left on a running domain (wait for them; a merge that is ready is
        completed: its data is in the base already); returns the errors of those that failed."""
        ...

    async def release_images(self, vm_id: str, paths: list[str]) -> None:
        """Close these images where a running domain has them open outside every disk's chain (left over from
        an interrupted snapshot or merge); images still in a chain stay open."""
        ...

    async def memory_snapshot(self, vm_id: str, action: MemoryAction, tag: str, images: list[str]) -> None:
        """Save, load or delete an internal snapshot with RAM and device state in the qcow2 `images`."""
        ...

    async def usage(self, vm_id: str) -> UsageSample | None:
        """Counters of a running domain, or None when it is not running."""
        ...

    async def open_console(self, vm_id: str) -> ConsoleStreams:
        """A bidirectional byte stream to the serial console; one client at a time."""
        ...

    async def open_vnc(self, vm_id: str) -> ConsoleStreams:
        """A bidirectional RFB (VNC) byte stream to the graphical console of a running domain whose spec has
        display "vnc"; several clients may attach at once. Conflict when it is not running or has no display."""
        ...

    async def console_log(self, vm_id: str, max_bytes: int) -> bytes:
        """The tail of the console history (kept by the host, so nothing is lost while nobody watches)."""
        ...

    async def foreign_domains(self) -> list[ForeignDomain]:
        """The host's domains that are not virtfleet's (capability adopt; [] where the driver has none)."""
        ...

    async def take_over(self, name: str, vm_id: str, spec: VmSpec) -> None:
        """Mark the foreign domain `name` as virtfleet's VM `vm_id` (recorded with `spec`), in its persistent
        definition and, when it runs, in the live one; nothing is restarted. `vm_id` is the domain's uuid as
        foreign_domains() gives it (the host keeps a domain's identity: InvalidSpec naming vm_id otherwise).
        Refuses a transient domain, and one that is virtfleet's already (Conflict); Unsupported without the adopt
        capability."""
        ...

    def watch(self, on_change: Callable[[str], None]) -> None:
        """Report state changes as the hypervisor announces them (QMP events, libvirt domain events, a QEMU that
        exited): call `on_change(vm_id)` on the event loop whenever a domain's state may have changed. The caller
        then reads that one domain with status(); polling list_domains() is only the slow fallback."""
        ...

    async def close(self) -> None:
        """Release monitor connections; running domains keep running."""
        ...


# Static registry: name -> "module:factory". Imported lazily so the fake driver needs no QEMU.
_REGISTRY: dict[str, str] = {
    "qemu": "virtfleet.drivers.qemu.driver:QemuDriver",
    "fake": "virtfleet.drivers.fake:FakeDriver",
    "libvirt": "virtfleet.drivers.libvirt.driver:LibvirtDriver",
}


def driver_names() -> list[str]:
    return sorted(_REGISTRY)


def create_driver(name: str, config: DriverConfig) -> Driver:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown driver '{name}' (known: {', '.join(driver_names())})") from None
    module_name, _, attr = target.partition(":")
    factory: Callable[[DriverConfig], Driver] = getattr(importlib.import_module(module_name), attr)
    return factory(config)
