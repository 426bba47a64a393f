"""Is KVM usable on this host? Decided honestly, once, from what the host shows; TCG is the fallback."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from virtfleet.errors import InvalidSpec


@dataclass(frozen=True)
class KvmProbe:
    usable: bool
    reason: str


def probe_kvm(cpuinfo: Path = Path("/proc/cpuinfo"), device: Path = Path("/dev/kvm")) -> KvmProbe:
    """KVM needs hardware virtualization exposed to this kernel (vmx/svm) and a /dev/kvm we can open read-write.

    A /dev/kvm alone is not enough: paravirtualized nested KVM (PVM) offers the device without vmx/svm, and
    ordinary guest kernels crash under it, so we do not use it.
    """
    try:
        flags = next(
            (line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")),
            [],
        )
    except OSError as exc:
        return KvmProbe(False, f"cannot read {cpuinfo}: {exc.strerror}")
    if "vmx" not in flags and "svm" not in flags:
        return KvmProbe(False, "the CPU exposes no hardware virtualization (no vmx/svm flag in /proc/cpuinfo)")
    if not device.exists():
        return KvmProbe(False, f"{device} does not exist (is the kvm_intel/kvm_amd module loaded?)")
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmProbe(False, f"cannot open {device} read-write: {exc.strerror}")
    os.close(fd)
    return KvmProbe(True, f"hardware virtualization ({'vmx' if 'vmx' in flags else 'svm'}) and {device} usable")


def choose_accel(requested: str, probe: KvmProbe) -> tuple[str, str]:
    """(accelerator, warning) for a spec's accel field: auto picks kvm when usable, else tcg with a warning."""
    if requested == "tcg":
        return "tcg", ""
    if probe.usable:
        return "kvm", ""
    if requested == "kvm":
        raise InvalidSpec("accel", f"kvm was requested but is not usable here: {probe.reason}")
    return "tcg", f"KVM is not usable ({probe.reason}); running under TCG software emulation, which is much slower"
