"""The local agent's reconcile loop: what the host actually runs wins over what the store says.

Runs once at start-up (re-adopting every running VM after a daemon restart) and then every `interval` seconds, which
is how a QEMU killed behind our back shows up as crashed within two seconds. VMs with a job in flight are skipped:
the job owns their state until it ends.

Reading the host awaits, and jobs run meanwhile: a pass is applied only to VMs no job took or let go of since the
read began (the runner's watch window), so a stop, start or delete that finished during the read is never
overwritten with what the host looked like before it. That holds for adoption too: a domain the store does not
know is adopted only if no job touched its id during the read, so a VM deleted meanwhile never comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from virtfleet.drivers.base import DomainStatus, Driver
from virtfleet.errors import VirtfleetError
from virtfleet.jobs.runner import JobRunner, WatchWindow
from virtfleet.model.vm import VmState, is_live
from virtfleet.store.db import Database

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, db: Database, driver: Driver, runner: JobRunner, host: str, interval: float = 1.0) -> None:
        self.db = db
        self.driver = driver
        self.runner = runner
        self.host = host
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def recover(self) -> None:
        """After a (re)start: fail jobs the last daemon left behind, re-attach to running domains, resync."""
        for job in self.runner.fail_interrupted():
            log.warning("job %s (%s) was interrupted by a daemon restart", job.id, job.kind)
        await self._pass(self.driver.recover, adopting=True)

    async def reconcile_once(self) -> None:
        """One pass: read what the host runs, then bring the store in line with it."""
        await self._pass(self.driver.list_domains)

    async def _pass(self, read: Callable[[], Awaitable[list[DomainStatus]]], *, adopting: bool = False) -> None:
        with self.runner.watching() as window:
            statuses = await read()
            self.sync(statuses, window, adopting=adopting)  # never yields: no job can start in between

    def sync(self, statuses: list[DomainStatus], window: WatchWindow, *, adopting: bool = False) -> None:
        actual = {status.vm_id: status for status in statuses}
        for vm in self.db.list_vms():
            status = actual.pop(vm.id, None)  # known to the store, so never "adopted", even while busy
            if vm.host != self.host or window.unsettled(vm.id):
                continue
            if status is None:
                if is_live(vm.state):
                    self._change(vm.id, vm.state, VmState.CRASHED, "the host has no record of this VM")
                continue
            if status.state is not vm.state:
                self._change(vm.id, vm.state, status.state, status.reason, accel=status.accel)
            elif adopting and is_live(status.state):
                self.db.add_event(vm.id, "adopted", f"re-adopted {status.state.value} domain (pid {status.pid})")
        for status in actual.values():  # running on the host, unknown to the store
            if window.unsettled(status.vm_id):
                continue  # e.g. deleted while we read: the domain seen was already on its way out
            if is_live(status.state) and status.spec is not None:
                vm = self.db.adopt_vm(status.vm_id, status.spec, self.host, status.state,
                                      f"found {status.state.value} on the host with no record; adopted")
                log.warning("adopted unknown domain %s as vm '%s'", status.vm_id, vm.name)

    def _change(self, vm_id: str, old: VmState, new: VmState, reason: str, accel: str | None = None) -> None:
        kind = {VmState.CRASHED: "crashed", VmState.STOPPED: "stopped"}.get(new, "state-changed")
        message = f"{old.value} -> {new.value}" + (f": {reason}" if reason else "")
        self.db.set_vm_state(vm_id, new, reason or message, accel=accel or None)
        self.db.add_event(vm_id, kind, message)
        log.info("vm %s: %s", vm_id, message)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reconcile_once()
            except VirtfleetError as error:
                log.warning("reconcile failed: %s", error)
            except Exception:  # keep reconciling: one bad pass must not stop crash detection
                log.exception("reconcile pass crashed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
