"""Repository for VM usage samples: a rolling window, pruned as it goes."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select

from virtfleet.drivers.base import UsageSample
from virtfleet.model.metrics import Sample
from virtfleet.store.db import Database, as_utc
from virtfleet.store.tables import SampleRow


def _sample(row: SampleRow) -> Sample:
    return Sample(time=as_utc(row.time), cpu_seconds=row.cpu_seconds, memory_bytes=row.memory_bytes,
                  disk_read_bytes=row.disk_read_bytes, disk_write_bytes=row.disk_write_bytes,
                  net_rx_bytes=row.net_rx_bytes, net_tx_bytes=row.net_tx_bytes)


class MetricsRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, vm_id: str, time: datetime, usage: UsageSample) -> None:
        with self.db.session() as session:
            session.add(SampleRow(vm_id=vm_id, time=time, cpu_seconds=usage.cpu_seconds,
                                  memory_bytes=usage.memory_bytes, disk_read_bytes=usage.disk_read_bytes,
                                  disk_write_bytes=usage.disk_write_bytes, net_rx_bytes=usage.net_rx_bytes,
                                  net_tx_bytes=usage.net_tx_bytes))

    def since(self, vm_id: str, start: datetime) -> list[Sample]:
        with self.db.session() as session:
            rows = session.scalars(select(SampleRow).where(SampleRow.vm_id == vm_id, SampleRow.time >= start)
                                   .order_by(SampleRow.time))
            return [_sample(r) for r in rows]

    def latest(self) -> dict[str, Sample]:
        """The newest sample of every VM that has one."""
        newest: dict[str, Sample] = {}
        with self.db.session() as session:
            for r in session.scalars(select(SampleRow).order_by(SampleRow.time)):
                newest[r.vm_id] = _sample(r)
        return newest

    def prune(self, now: datetime, keep: timedelta) -> None:
        with self.db.session() as session:
            session.execute(delete(SampleRow).where(SampleRow.time < now - keep))
