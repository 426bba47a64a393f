"""VM usage over time: what the agent samples and what the API serves as rates."""

from __future__ import annotations

import itertools
from datetime import datetime

from pydantic import BaseModel


class Sample(BaseModel):
    """Cumulative counters at one instant."""

    time: datetime
    cpu_seconds: float
    memory_bytes: int
    disk_read_bytes: int
    disk_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int


class UsagePoint(BaseModel):
    """Rates between two samples, stamped with the later one."""

    time: datetime
    cpu_percent: float  # of one host CPU
    memory_bytes: int
    disk_read_bps: float
    disk_write_bps: float
    net_rx_bps: float
    net_tx_bps: float


def rates(samples: list[Sample]) -> list[UsagePoint]:
    """Per-interval rates; an interval where a counter went down (the VM restarted) counts as zero, never negative."""
    points = []
    for before, after in itertools.pairwise(samples):
        seconds = (after.time - before.time).total_seconds()
        if seconds <= 0:
            continue

        def per_second(a: float, b: float, seconds: float = seconds) -> float:
            return max(0.0, b - a) / seconds

        points.append(UsagePoint(
            time=after.time,
            cpu_percent=100 * per_second(before.cpu_seconds, after.cpu_seconds),
            memory_bytes=after.memory_bytes,
            disk_read_bps=per_second(before.disk_read_bytes, after.disk_read_bytes),
            disk_write_bps=per_second(before.disk_write_bytes, after.disk_write_bytes),
            net_rx_bps=per_second(before.net_rx_bytes, after.net_rx_bytes),
            net_tx_bps=per_second(before.net_tx_bytes, after.net_tx_bytes),
        ))
    return points
