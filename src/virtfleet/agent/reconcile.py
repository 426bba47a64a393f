"""The local agent's reconcile loop: what the host actually runs wins over what the store says.

State changes come from the hypervisor's events: the driver announces a domain whose state may have changed
(driver.watch) and a targeted pass re-reads that one domain and that one record, so a QEMU killed behind our back
shows up as crashed at once and the work per event does not grow with the fleet. Bursts coalesce: a VM announced
again before its read began is read once; announced during the read, once more after it. A job letting go of a VM
announces it too (its domain may have changed while the job owned it, when passes leave it alone).

The full pass (every domain against every record) runs once at start-up, re-adopting every running VM after a
daemon restart, and then every `interval` seconds as the fallback for what no event announces: a domain started
outside virtfleet, an event lost with a monitor connection.

Reading the host awaits, and jobs run meanwhile: a pass, full or targeted, is applied only to VMs no job took or
let go of since the read began (the runner's watch window), so a stop, start or delete that finished during the read
is never overwritten with what the host looked like before it. That holds for adoption too: a domain the store does
not know is adopted only if no job touched its id during the read, so a VM deleted meanwhile never comes back. The
store is read and written without yielding once the host has been read (synchronously, on the loop: a primary-key
read per VM), so no job can start between the check and the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from virtfleet.drivers.base import DomainStatus, Driver
from virtfleet.errors import NotFound, VirtfleetError
from virtfleet.jobs.runner import JobRunner, WatchWindow
from virtfleet.model.vm import Vm, VmState, is_live
from virtfleet.store.db import Database

log = logging.getLogger(__name__)

TARGETED_CONCURRENCY = 8  # domains read at once after a burst of events (one stuck monitor must not hold up all)


class Reconciler:
    def __init__(self, db: Database, driver: Driver, runner: JobRunner, host: str, interval: float = 30.0) -> None:
        self.db = db
        self.driver = driver
        self.runner = runner
        self.host = host
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._accepting = False
        self._pending: set[str] = set()  # announced; its read has not begun
        self._reading: set[str] = set()  # its read is under way
        self._again: set[str] = set()  # announced while being read: read once more afterwards
        self._targeted: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(TARGETED_CONCURRENCY)

    async def recover(self) -> None:
        """After a (re)start: fail jobs the last daemon left behind, re-attach to running domains, resync."""
        for job in self.runner.fail_interrupted():
            log.warning("job %s (%s) was interrupted by a daemon restart", job.id, job.kind)
        self._listen()  # before the read: a change right after it is announced, not left to the fallback
        await self._pass(self.driver.recover, adopting=True)

    def _listen(self) -> None:
        self._accepting = True
        if not self._listening:
            self._listening = True
            self.driver.watch(self.notify)
            self.runner.on_release(self._released)

    def notify(self, vm_id: str) -> None:
        """The domain of `vm_id` may have changed state: re-read it soon (on the event loop; never blocks)."""
        if not self._accepting:
            return
        if vm_id in self._reading:
            self._again.add(vm_id)
        elif vm_id not in self._pending:
            self._pending.add(vm_id)
            task = asyncio.get_running_loop().create_task(self._targeted_pass(vm_id), name=f"reconcile-{vm_id}")
            self._targeted.add(task)
            task.add_done_callback(self._targeted.discard)

    def _released(self, key: str) -> None:
        # Jobs lock volumes, names and images too: only a key that is a VM's id is worth a read of the host.
        if not self._accepting:
            return
        try:
            known = self.db.find_vm(key) is not None
        except VirtfleetError as error:  # runs as a job ends: never let it break the runner's bookkeeping
            log.warning("cannot look up %s after its job: %s", key, error)
            return
        if known:
            self.notify(key)

    async def _targeted_pass(self, vm_id: str) -> None:
        async with self._limit:
            while True:
                self._pending.discard(vm_id)
                self._reading.add(vm_id)
                try:
                    await self.reconcile_vm(vm_id)
                except VirtfleetError as error:
                    log.warning("reconcile of vm %s failed: %s", vm_id, error)
                except Exception:  # keep reconciling: one bad read must not stop crash detection
                    log.exception("reconcile of vm %s crashed", vm_id)
                finally:
                    self._reading.discard(vm_id)
                if vm_id not in self._again:
                    return
                self._again.discard(vm_id)

    async def reconcile_vm(self, vm_id: str) -> None:
        """A targeted pass: read one domain, then bring that one record in line with it."""
        with self.runner.watching() as window:
            if window.unsettled(vm_id):
                return  # a job owns it: its outcome is recorded by the job, and its release announces the VM
            try:
                status: DomainStatus | None = await self.driver.status(vm_id)
            except NotFound:
                status = None  # the host has no record of it
            self._apply(vm_id, self.db.find_vm(vm_id), status, window)  # never yields: no job starts in between

    async def reconcile_once(self) -> None:
        """One full pass: read everything the host runs, then bring the whole store in line with it."""
        await self._pass(self.driver.list_domains)

    async def _pass(self, read: Callable[[], Awaitable[list[DomainStatus]]], *, adopting: bool = False) -> None:
        with self.runner.watching() as window:
            statuses = await read()
            self.sync(statuses, window, adopting=adopting)  # never yields: no job can start in between

    def sync(self, statuses: list[DomainStatus], window: WatchWindow, *, adopting: bool = False) -> None:
        actual = {status.vm_id: status for status in statuses}
        for vm in self.db.list_vms():
            self._apply(vm.id, vm, actual.pop(vm.id, None), window, adopting=adopting)
        for status in actual.values():  # running on the host, unknown to the store
            self._apply(status.vm_id, None, status, window, adopting=adopting)

    def _apply(self, vm_id: str, vm: Vm | None, status: DomainStatus | None, window: WatchWindow, *,
               adopting: bool = False) -> None:
        """Bring one record (None: the store has none) in line with one domain (None: the host has none)."""
        if window.unsettled(vm_id):
            return  # e.g. deleted while we read: the domain seen was already on its way out
        if vm is None:
            if status is not None and is_live(status.state) and status.spec is not None:
                adopted = self.db.adopt_vm(vm_id, status.spec, self.host, status.state,
                                           f"found {status.state.value} on the host with no record; adopted")
                log.warning("adopted unknown domain %s as vm '%s'", vm_id, adopted.name)
            return
        if vm.host != self.host:
            return
        if status is None:
            if is_live(vm.state):
                self._change(vm_id, vm.state, VmState.CRASHED, "the host has no record of this VM")
            return
        if status.state is not vm.state:
            self._change(vm_id, vm.state, status.state, status.reason, accel=status.accel)
        elif adopting and is_live(status.state):
            self.db.add_event(vm_id, "adopted", f"re-adopted {status.state.value} domain (pid {status.pid})")

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
        self._listen()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="reconcile")

    async def stop(self) -> None:
        self._accepting = False  # what jobs and monitors announce while the daemon winds down is left alone
        tasks = [*self._targeted, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._pending.clear()
        self._reading.clear()
        self._again.clear()
