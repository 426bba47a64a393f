"""The libvirt side of bench/boot.py: what a user of virsh does with the domain XML virtfleet defined.

Every domain the benchmark makes (through virtfleet or virsh) is named with one prefix unique to the run
(`vfbench-<hex>-`), so `remove_domains` can find and remove them all without touching anybody else's.
"""

from __future__ import annotations

import contextlib
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from common import BenchError, find_pids, is_qemu_system

URI = "qemu:///system"
DRIVER = f"libvirt:{URI}"


def virsh(*args: str, timeout: float = 60.0) -> str:
    """Run `virsh -c URI ARGS...` (untimed plumbing); its stdout, or BenchError with its stderr."""
    done = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise BenchError(f"virsh {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def create_argv(xml_path: Path) -> list[str]:
    """The command a virsh user starts a transient domain with (the timed raw side)."""
    return ["virsh", "-c", URI, "create", str(xml_path)]


def domain_type(name: str) -> str:
    """The <domain type=...> of a defined domain: "qemu" is TCG, "kvm" KVM."""
    return ET.fromstring(virsh("dumpxml", "--inactive", name)).get("type", "")  # noqa: S314 - libvirt output


def raw_domain_xml(template: str, name: str, new_uuid: str, template_root: str, root: Path) -> str:
    """The domain XML virtfleet defined (`virsh dumpxml --inactive`), for a transient domain of its own: a fresh
    name and uuid, virtfleet's <metadata> removed and its run directory `template_root` (console socket, console
    log) replaced by `root`. Everything else, devices and the seclabel included, is kept as libvirt stored it."""
    domain = ET.fromstring(template)  # noqa: S314 - libvirt output
    for tag, value in (("name", name), ("uuid", new_uuid)):
        element = domain.find(tag)
        if element is None:
            raise BenchError(f"the template domain XML has no <{tag}>")
        element.text = value
    metadata = domain.find("metadata")
    if metadata is not None:
        domain.remove(metadata)
    kept = 0
    for element in domain.iter():
        for key, value in element.attrib.items():
            if template_root in value:
                element.set(key, value.replace(template_root, str(root)))
                kept += 1
        if element.text and template_root in element.text:
            element.text = element.text.replace(template_root, str(root))
            kept += 1
    if not kept:
        raise BenchError(f"the template domain XML names no path under {template_root}: no console to follow")
    return ET.tostring(domain, encoding="unicode") + "\n"


def qemu_pid(domain_uuid: str) -> int | None:
    """The pid of the QEMU running a domain (libvirt passes it -uuid UUID); None when there is none."""
    pids = find_pids(is_qemu_system, domain_uuid)
    return pids[0] if len(pids) == 1 else None


def remove_domains(prefix: str) -> tuple[list[str], list[str]]:
    """Destroy and undefine every domain whose name starts with `prefix`; returns (removed, errors)."""
    removed: list[str] = []
    errors: list[str] = []
    try:
        names = [line.strip() for line in virsh("list", "--all", "--name").splitlines()]
    except (BenchError, OSError, subprocess.TimeoutExpired) as error:
        return removed, [f"listing libvirt domains: {error}"]
    for name in names:
        if not name.startswith(prefix):
            continue
        try:
            with contextlib.suppress(BenchError):  # not running, or transient and already gone
                virsh("destroy", name)
            if name in virsh("list", "--all", "--name").split():
                virsh("undefine", "--nvram", name)
            removed.append(name)
        except (BenchError, OSError, subprocess.TimeoutExpired) as error:
            errors.append(f"{name}: {error}")
    return removed, errors
