"""The agent's usage sampler: every `interval` seconds, the counters of each running VM go into the store, and
samples older than `keep` are pruned. Charts and /metrics read from there, never from QEMU directly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from virtfleet.drivers.base import Driver
from virtfleet.errors import VirtfleetError
from virtfleet.model.vm import VmState
from virtfleet.store.db import Database, utcnow
from virtfleet.store.metrics_repo import MetricsRepo

log = logging.getLogger(__name__)


class MetricsSampler:
    def __init__(self, db: Database, driver: Driver, interval: float = 10.0, keep: float = 3600.0) -> None:
        self.db = db
        self.repo = MetricsRepo(db)
        self.driver = driver
        self.interval = interval
        self.keep = timedelta(seconds=keep)
        self._task: asyncio.Task[None] | None = None

    async def sample_once(self) -> int:
        now = utcnow()
        taken = 0
        if not self.driver.capabilities().usage:  # nothing to read: the metrics API says so (501, "usage")
            self.repo.prune(now, self.keep)
            return taken
        for vm in self.db.list_vms():
            if vm.state not in (VmState.RUNNING, VmState.PAUSED):
                continue
            try:
                usage = await self.driver.usage(vm.id)
            except VirtfleetError:
                continue  # gone between the listing and the read: the reconcile loop reports that
            if usage is not None:
                self.repo.add(vm.id, now, usage)
                taken += 1
        self.repo.prune(now, self.keep)
        return taken

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception:  # keep sampling: one bad pass must not end the charts
                log.exception("usage sampling failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
