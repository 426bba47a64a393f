"""libvirt's domain states and their reasons -> ours, with the reason users are shown."""

from __future__ import annotations

import libvirt

from virtfleet.model.vm import VmState

_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: (VmState.STOPPED, "guest powered off"),
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: (VmState.STOPPED, "powered off by the host"),
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: (VmState.CRASHED, "the QEMU process died (killed or crashed)"),
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: (VmState.CRASHED, "QEMU failed to start"),
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: (VmState.STOPPED, "saved to a file by libvirt"),
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: (VmState.STOPPED, "migrated to another host"),
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: (VmState.STOPPED, "reverted to a snapshot of a stopped domain"),
    libvirt.VIR_DOMAIN_SHUTOFF_DAEMON: (VmState.CRASHED, "libvirtd stopped it while starting up"),
}
_PAUSED_REASONS = {
    libvirt.VIR_DOMAIN_PAUSED_IOERROR: "stopped on a disk I/O error (a full disk?): fix the storage, then resume",
    libvirt.VIR_DOMAIN_PAUSED_CRASHED: "the guest kernel panicked; stop it, then start it again",
    libvirt.VIR_DOMAIN_PAUSED_WATCHDOG: "the guest's watchdog fired",
}


def map_state(state: int, reason: int) -> tuple[VmState, str]:
    """(our state, why) for a domain's virDomainState and its reason code."""
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return VmState.RUNNING, ""
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP:
            return VmState.STARTING, ""
        return VmState.PAUSED, _PAUSED_REASONS.get(reason, "")
    if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return VmState.PAUSED, "the guest suspended itself (ACPI S3/S4)"
    if state == libvirt.VIR_DOMAIN_SHUTDOWN:
        return VmState.STOPPING, "the guest is shutting down"
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return VmState.CRASHED, "the guest crashed"
    # shut off (or no state): never started, or stopped for the reason libvirt recorded
    return _SHUTOFF_REASONS.get(reason, (VmState.STOPPED, ""))
