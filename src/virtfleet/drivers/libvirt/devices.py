"""Finding and changing devices in a domain's XML (hot-plug), and reading its stats: no libvirt calls here."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from virtfleet.drivers.base import UsageSample
from virtfleet.drivers.libvirt.domxml import target_dev

Finder = Callable[[ET.Element], ET.Element | None]


def free_target(trees: list[ET.Element], bus: str) -> str:
    """A target name no disk uses in any of `trees` (live and next-boot XML). Target names are hints only (the
    guest names disks by bus order), so they need not stay stable; disks are found by their file instead."""
    taken = {target.get("dev") for tree in trees for target in tree.iterfind("devices/disk/target")}
    return next(target_dev(bus, i) for i in range(len(taken) + 1) if target_dev(bus, i) not in taken)


def disk_by_file(path: str | None) -> Finder:
    def find(tree: ET.Element) -> ET.Element | None:
        return next((disk for disk in tree.iterfind("devices/disk")
                     if (source := disk.find("source")) is not None and source.get("file") == path), None)
    return find


def nic_by_mac(mac: str | None) -> Finder:
    def find(tree: ET.Element) -> ET.Element | None:
        return next((nic for nic in tree.iterfind("devices/interface")
                     if (address := nic.find("mac")) is not None and address.get("address") == mac), None)
    return find


def with_link(interface: ET.Element, up: bool) -> str:
    """The interface's XML with its link state set (what updateDeviceFlags takes)."""
    link = interface.find("link")
    if link is None:
        link = ET.SubElement(interface, "link")
    link.set("state", "up" if up else "down")
    return ET.tostring(interface, encoding="unicode")


def usage_from_stats(stats: dict[str, Any]) -> UsageSample:
    """One domain's record of virConnectGetAllDomainStats (cpu, balloon, block, interface groups) -> counters."""

    def total(prefix: str, suffix: str) -> int:
        return sum(int(value) for key, value in stats.items() if key.startswith(prefix) and key.endswith(suffix))

    return UsageSample(cpu_seconds=int(stats.get("cpu.time", 0)) / 1e9,  # nanoseconds
                       memory_bytes=int(stats.get("balloon.rss", 0)) * 1024,  # KiB
                       disk_read_bytes=total("block.", ".rd.bytes"), disk_write_bytes=total("block.", ".wr.bytes"),
                       net_rx_bytes=total("net.", ".rx.bytes"), net_tx_bytes=total("net.", ".tx.bytes"))
