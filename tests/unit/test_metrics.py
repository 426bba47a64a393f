"""Usage rates from cumulative samples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from virtfleet.model.metrics import Sample, rates

T0 = datetime(2026, 11, 26, tzinfo=UTC)


def sample(seconds: float, cpu: float, written: int, memory: int = 100) -> Sample:
    return Sample(time=T0 + timedelta(seconds=seconds), cpu_seconds=cpu, memory_bytes=memory, disk_read_bytes=0,
                  disk_write_bytes=written, net_rx_bytes=0, net_tx_bytes=0)


def test_rates_between_samples() -> None:
    points = rates([sample(0, 1.0, 0), sample(10, 6.0, 1000, memory=200)])
    assert len(points) == 1
    assert points[0].cpu_percent == 50.0 and points[0].disk_write_bps == 100.0 and points[0].memory_bytes == 200


def test_a_restart_never_gives_negative_rates_and_equal_times_are_skipped() -> None:
    points = rates([sample(0, 50.0, 5000), sample(10, 1.0, 10), sample(10, 2.0, 20), sample(20, 3.0, 30)])
    assert [p.cpu_percent for p in points] == [0.0, 10.0]
    assert rates([]) == [] and rates([sample(0, 1.0, 0)]) == []
