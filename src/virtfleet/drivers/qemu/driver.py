"""The QEMU driver: one daemonized QEMU per VM, found again after an agent restart through its run directory.

QEMU is never our child for long: it is started with -daemonize, so it survives the agent, and re-adopted from its
pidfile and QMP socket. The truth about a domain is the process: alive and carrying our -uuid means it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from virtfleet.drivers.base import (
    BOOT_SEPARATOR,
    BeforePivot,
    BootImage,
    Capabilities,
    ConsoleStreams,
    DiskChain,
    DomainStatus,
    DriverConfig,
    ForeignDomain,
    HostInfo,
    MemoryAction,
    UsageSample,
)
from virtfleet.drivers.qemu import blockjobs
from virtfleet.drivers.qemu.accel import KvmProbe, choose_accel, probe_kvm
from virtfleet.drivers.qemu.argv import (
    HOTPLUG_PORTS,
    blockdev_nodes,
    build_argv,
    disk_device,
    nic_device,
    nic_forwards,
    nic_netdev,
)
from virtfleet.drivers.qemu.firmware import UefiFirmware, find_uefi
from virtfleet.drivers.qemu.monitor import DeviceNotFound, Monitor, MonitorGone
from virtfleet.drivers.qemu.runtime import (
    RunPaths,
    is_our_qemu,
    read_pid,
    read_record,
    read_tail,
    trim_log,
    write_record,
)
from virtfleet.errors import Conflict, DriverError, InvalidSpec, NotFound, OperationTimeout, Unsupported
from virtfleet.model.network import NicSpec
from virtfleet.model.vm import DiskSpec, VmSpec, VmState

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # QEMU's own start-up (until -daemonize returns), not the guest's boot
QUIT_TIMEOUT = 5.0
CONSOLE_LOG_MAX = 2 << 20  # the console log is trimmed to its last CONSOLE_LOG_KEEP bytes past this size
CONSOLE_LOG_KEEP = 1 << 20

# QMP run states (query-status) -> ours. Anything not listed counts as paused: the vCPUs stopped, QEMU still there.
# Reading the state never acts on it: a guest stopped on a full disk goes on once space is freed and it is resumed.
_RUN_STATES = {
    "running": VmState.RUNNING,
    "paused": VmState.PAUSED,
    "shutdown": VmState.STOPPING,
    "prelaunch": VmState.STARTING,
    "inmigrate": VmState.STARTING,
}
# Why QEMU stopped the vCPUs on its own, for the paused states a user did not ask for ("io-error" names its disk).
_STOP_REASONS = {
    "internal-error": "QEMU stopped the guest on an internal error of the hypervisor; stop it, then start it again",
    "guest-panicked": "the guest kernel panicked; stop it, then start it again",
}

# QEMU's SHUTDOWN event reasons -> what we tell the user.
_SHUTDOWN_REASONS = {
    "guest-shutdown": "guest powered off",
    "host-qmp-quit": "powered off by the host",
    "host-signal": "QEMU was terminated by a signal",
    "guest-panic": "guest kernel panicked",
    "guest-reset": "guest reset with -no-reboot",
}


def process_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return cpu, rss


def tap_counters(argv: list[str]) -> tuple[int, int]:
    """Bytes (received by, sent by) the guest over its taps: a tap's tx is the guest's rx."""
    received = sent = 0
    for arg in argv:
        if arg.startswith("tap,") and "ifname=" in arg:
            ifname = arg.split("ifname=", 1)[1].split(",", 1)[0]
            stats = Path("/sys/class/net") / ifname / "statistics"
            with contextlib.suppress(OSError, ValueError):
                received += int((stats / "tx_bytes").read_text())
                sent += int((stats / "rx_bytes").read_text())
    return received, sent


async def _io_error_reason(monitor: Monitor, spec: VmSpec | None) -> str:
    """Which disk stopped the guest, and why (query-block's io-status): a full disk is the usual cause."""
    try:
        devices: list[dict[str, Any]] = await monitor.execute("query-block", timeout=3.0)
    except DriverError:
        devices = []
    names = {disk.node_name: str(disk.volume or disk.path) for disk in spec.disks} if spec is not None else {}
    for device in devices:
        inserted = device.get("inserted") or {}
        disk = names.get(str(inserted.get("node-name"))) or inserted.get("file") or device.get("qdev") or "a disk"
        if device.get("io-status") == "nospace":
            return f"disk full (ENOSPC) on {disk}: free space, then resume"
        if device.get("io-status") == "failed":
            return f"I/O error on {disk}: fix the storage, then resume"
    return "stopped on a disk I/O error: fix the storage, then resume"


def _meminfo_kib(field: str, meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


class QemuDriver:
    name = "qemu"

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.binary = config.qemu_binary
        self._monitors: dict[str, Monitor] = {}
        self._consoles: dict[str, asyncio.StreamWriter] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._announcing: set[asyncio.Task[None]] = set()  # exits waited for, to be announced
        self._on_change: Callable[[str], None] = lambda vm_id: None

    # --- host ----------------------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        return Capabilities(uefi=self.uefi is not None)

    @cached_property
    def kvm(self) -> KvmProbe:
        return probe_kvm()

    @cached_property
    def uefi(self) -> UefiFirmware | None:
        return find_uefi()

    def _uefi_for(self, spec: VmSpec, boot: BootImage | None, paths: RunPaths) -> UefiFirmware | None:
        """The firmware a UEFI spec boots, with the VM's own variable store made from the template once."""
        if spec.firmware != "uefi":
            return None
        if self.uefi is None:
            raise Unsupported("no UEFI firmware is installed (Debian: apt-get install ovmf)")
        if boot is not None and boot.efi_kernel is None:
            raise InvalidSpec("firmware", f"image '{boot.name}' was built without a kernel UEFI can load; "
                                          f"rebuild it: virtfleet image build {boot.name}")
        if not paths.uefi_vars.exists():
            partial = paths.uefi_vars.with_suffix(".partial")
            shutil.copyfile(self.uefi.vars_template, partial)
            partial.chmod(0o600)
            partial.replace(paths.uefi_vars)  # never a half-copied store: a VM would lose its boot entries
        return self.uefi

    def _require_binary(self) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise DriverError(f"{self.binary} not found", "install it with: apt-get install qemu-system-x86")
        return path

    async def host_info(self) -> HostInfo:
        binary = self._require_binary()
        proc = await asyncio.create_subprocess_exec(
            binary, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        first = out.decode(errors="replace").splitlines()[0] if out else "QEMU (unknown version)"
        version = first.split("version", 1)[-1].split()[0] if "version" in first else "unknown"
        memory_kib = _meminfo_kib("MemTotal")
        return HostInfo(
            hostname=socket.gethostname(),
            cpus=os.cpu_count() or 1,
            memory_mib=memory_kib // 1024,
            driver=self.name,
            hypervisor=f"QEMU {version}",
            kvm_usable=self.kvm.usable,
            kvm_reason=self.kvm.reason,
        )

    # --- records -------------------------------------------------------------------------------------------
    def _paths(self, vm_id: str) -> RunPaths:
        return RunPaths(self.config.run_dir / vm_id)

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _spec(self, paths: RunPaths) -> VmSpec | None:
        record = read_record(paths.domain)
        if record is None:
            return None
        return VmSpec.model_validate(record["spec"])

    def _require_defined(self, vm_id: str) -> RunPaths:
        paths = self._paths(vm_id)
        if read_record(paths.domain) is None:
            raise NotFound("domain", vm_id)
        return paths

    def _live_pid(self, vm_id: str, paths: RunPaths) -> int | None:
        runtime = read_record(paths.runtime)
        pid = runtime.get("pid") if runtime else read_pid(paths.pidfile)
        if isinstance(pid, int) and is_our_qemu(pid, vm_id):
            return pid
        return None

    def _record_exit(self, paths: RunPaths, state: VmState, reason: str) -> None:
        # The first cause seen wins: a SHUTDOWN event's reason beats the later "process gone".
        if read_record(paths.exit) is None and paths.root.is_dir():
            write_record(paths.exit, {"state": state.value, "reason": reason, "time": time.time()})

    # --- observing -----------------------------------------------------------------------------------------
    async def _monitor(self, vm_id: str, paths: RunPaths) -> Monitor:
        monitor = self._monitors.get(vm_id)
        if monitor is not None and monitor.connected:
            return monitor
        if monitor is not None:
            await monitor.close()

        def on_event(event: str, data: Mapping[str, Any]) -> None:
            if event != "SHUTDOWN":
                self._on_change(vm_id)
                return
            # QEMU exits next: only its cause is recorded here, and the hang-up announces the change (announced
            # now, a read would catch the short "shutdown" run state and report a VM stopping).
            cause = str(data.get("reason", ""))
            reason = _SHUTDOWN_REASONS.get(cause, f"QEMU shut down ({cause or 'no reason given'})")
            crashed = cause in ("guest-panic",)
            self._record_exit(paths, VmState.CRASHED if crashed else VmState.STOPPED, reason)

        monitor = Monitor(f"vm-{vm_id[:8]}", on_event, lambda: self._announce_exit(vm_id, paths))
        await monitor.connect(paths.qmp)
        self._monitors[vm_id] = monitor
        return monitor

    async def _observe(self, vm_id: str, paths: RunPaths, spec: VmSpec | None) -> DomainStatus:
        pid = self._live_pid(vm_id, paths)
        runtime = read_record(paths.runtime) or {}
        accel = str(runtime.get("accel", ""))
        if pid is None:
            return self._down_status(vm_id, paths, spec, runtime)
        try:
            monitor = await self._monitor(vm_id, paths)
            run_state = str((await monitor.execute("query-status", timeout=3.0))["status"])
        except MonitorGone:
            if self._live_pid(vm_id, paths) is None:
                return self._down_status(vm_id, paths, spec, runtime)
            return DomainStatus(vm_id, VmState.RUNNING, pid, "QMP monitor not answering", accel, spec)
        except DriverError as error:
            return DomainStatus(vm_id, VmState.RUNNING, pid, f"QMP monitor unavailable: {error.message}", accel, spec)
        state = _RUN_STATES.get(run_state, VmState.PAUSED)
        reason = ""
        if run_state == "io-error":
            reason = await _io_error_reason(monitor, spec)
        elif state is VmState.PAUSED and run_state != "paused":
            reason = _STOP_REASONS.get(run_state, f"QEMU run state {run_state}")
        return DomainStatus(vm_id, state, pid, reason or str(runtime.get("warning", "")), accel, spec)

    def _down_status(
        self, vm_id: str, paths: RunPaths, spec: VmSpec | None, runtime: Mapping[str, Any]
    ) -> DomainStatus:
        if runtime:  # it was started: find out how it ended (a cause seen as it happened was recorded already)
            pid = runtime.get("pid")
            unwatched = "" if vm_id in self._monitors else " while the daemon was down"
            # QEMU removes its pidfile when it exits normally (guest power-off, quit, SIGTERM), never when it is
            # killed or crashes: the one trace of how it ended that outlives a daemon that was not watching.
            if read_pid(paths.pidfile) == pid:
                self._record_exit(paths, VmState.CRASHED, f"QEMU process {pid} died{unwatched} (killed?)")
            else:
                self._record_exit(paths, VmState.STOPPED, f"QEMU exited normally{unwatched} (guest powered off?)")
        exit_record = read_record(paths.exit)
        self._forget(vm_id)
        if exit_record is None:
            return DomainStatus(vm_id, VmState.STOPPED, None, "", "", spec)
        return DomainStatus(vm_id, VmState(exit_record["state"]), None, str(exit_record["reason"]), "", spec)

    def _announce_exit(self, vm_id: str, paths: RunPaths) -> None:
        """QEMU hung up its monitor: announce the change once the process is gone (it closes the socket a moment
        before it exits, and a read in between would find it alive with no monitor), or after QUIT_TIMEOUT if it
        lingers: then what is read is QEMU alive without a monitor."""
        async def announce() -> None:
            await self._wait_exit(vm_id, paths, QUIT_TIMEOUT)
            self._on_change(vm_id)

        task = asyncio.get_running_loop().create_task(announce(), name=f"qemu-exit-{vm_id}")
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    def _forget(self, vm_id: str) -> None:
        monitor = self._monitors.pop(vm_id, None)
        if monitor is not None:
            task = asyncio.get_running_loop().create_task(monitor.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _defined_ids(self) -> list[str]:
        if not self.config.run_dir.is_dir():
            return []
        return sorted(p.name for p in self.config.run_dir.iterdir() if (p / "domain.json").is_file())

    async def recover(self) -> list[DomainStatus]:
        return await self.list_domains()

    async def list_domains(self) -> list[DomainStatus]:
        statuses = []
        for vm_id in self._defined_ids():
            paths = self._paths(vm_id)
            if self._lock(vm_id).locked():  # an operation is under way; report what the files say
                statuses.append(self._quick_status(vm_id, paths))
                continue
            statuses.append(await self._observe(vm_id, paths, self._spec(paths)))
            trim_log(paths.console_log, CONSOLE_LOG_MAX, CONSOLE_LOG_KEEP)
        return statuses

    def _quick_status(self, vm_id: str, paths: RunPaths) -> DomainStatus:
        pid = self._live_pid(vm_id, paths)
        state = VmState.RUNNING if pid else VmState.STOPPED
        return DomainStatus(vm_id, state, pid, "operation in progress", "", self._spec(paths))

    async def status(self, vm_id: str) -> DomainStatus:
        paths = self._require_defined(vm_id)
        return await self._observe(vm_id, paths, self._spec(paths))

    # --- definition ----------------------------------------------------------------------------------------
    async def define(self, vm_id: str, spec: VmSpec) -> None:
        paths = self._paths(vm_id)
        paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_record(paths.domain, {"vm_id": vm_id, "spec": spec.model_dump(mode="json")})

    async def undefine(self, vm_id: str) -> None:
        paths = self._paths(vm_id)
        if not paths.root.exists():
            return
        if self._live_pid(vm_id, paths) is not None:
            raise Conflict(f"domain {vm_id} is running; stop it first")
        self._forget(vm_id)
        self._consoles.pop(vm_id, None)
        shutil.rmtree(paths.root, ignore_errors=True)

    # --- power ---------------------------------------------------------------------------------------------
    async def start(self, vm_id: str, spec: VmSpec, boot: BootImage | None, *, restore: str | None = None
                    ) -> DomainStatus:
        paths = self._require_defined(vm_id)
        async with self._lock(vm_id):
            if self._live_pid(vm_id, paths) is not None:
                raise Conflict(f"domain {vm_id} is already running")
            binary = self._require_binary()
            accel, warning = choose_accel(spec.accel, self.kvm)
            if warning:
                log.warning("vm %s: %s", spec.name, warning)
            for stale in paths.transient():
                stale.unlink(missing_ok=True)
            uefi = await asyncio.to_thread(self._uefi_for, spec, boot, paths)
            argv = build_argv(vm_id, spec, boot, paths, accel=accel, binary=binary, uefi=uefi)
            if restore is not None:
                argv += ["-loadvm", restore]  # resume the saved RAM and devices instead of booting
            # The console history spans boots; a separator lets readers find where this boot starts.
            with paths.console_log.open("ab") as history:
                history.write(f"\n{BOOT_SEPARATOR} {spec.name} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
            await self._spawn(argv, paths.startup_log)
            pid = read_pid(paths.pidfile)
            if pid is None or not is_our_qemu(pid, vm_id):
                raise DriverError("QEMU started but is not running", f"no live process in {paths.pidfile}")
            write_record(
                paths.runtime,
                {"vm_id": vm_id, "pid": pid, "accel": accel, "warning": warning, "argv": argv, "started": time.time()},
            )
            try:
                await self._monitor(vm_id, paths)
            except DriverError:
                await self._terminate(vm_id, paths, pid)
                raise
            return DomainStatus(vm_id, VmState.RUNNING, pid, warning, accel, spec)

    async def _spawn(self, argv: list[str], log_path: Path) -> None:
        """Run QEMU until -daemonize hands over. Its start-up messages go to a file, not a pipe: the daemonized
        child would hold a pipe open, and some event loops (uvloop) then never report the parent's exit."""
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            returncode = await asyncio.wait_for(proc.wait(), START_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise DriverError("QEMU did not finish starting", f"no answer after {START_TIMEOUT:g}s") from None
        if returncode != 0:
            text = log_path.read_text(errors="replace").strip().replace("\n", "; ")
            raise DriverError("QEMU failed to start", text or f"exit status {returncode}")

    async def _wait_exit(self, vm_id: str, paths: RunPaths, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._live_pid(vm_id, paths) is not None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _terminate(self, vm_id: str, paths: RunPaths, pid: int) -> None:
        """Ask QEMU to quit over QMP; kill it if it does not."""
        monitor = self._monitors.get(vm_id)
        if monitor is not None:
            with contextlib.suppress(DriverError):
                await monitor.execute("quit", timeout=QUIT_TIMEOUT)
        if not await self._wait_exit(vm_id, paths, QUIT_TIMEOUT) and is_our_qemu(pid, vm_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await self._wait_exit(vm_id, paths, QUIT_TIMEOUT)

    async def _require_running(self, vm_id: str) -> tuple[RunPaths, Monitor, int]:
        paths = self._require_defined(vm_id)
        pid = self._live_pid(vm_id, paths)
        if pid is None:
            raise Conflict(f"domain {vm_id} is not running")
        return paths, await self._monitor(vm_id, paths), pid

    async def shutdown(self, vm_id: str, timeout: float) -> None:
        paths, monitor, _ = await self._require_running(vm_id)
        async with self._lock(vm_id):
            await monitor.execute("system_powerdown")
            if not await self._wait_exit(vm_id, paths, timeout):
                raise OperationTimeout(f"guest did not power off within {timeout:g}s")
            self._record_exit(paths, VmState.STOPPED, "guest powered off")
            self._forget(vm_id)

    async def stop(self, vm_id: str) -> None:
        paths = self._require_defined(vm_id)
        pid = self._live_pid(vm_id, paths)
        if pid is None:
            return
        async with self._lock(vm_id):
            with contextlib.suppress(DriverError):
                await self._monitor(vm_id, paths)
            self._record_exit(paths, VmState.STOPPED, "powered off by the host")
            await self._terminate(vm_id, paths, pid)
            if self._live_pid(vm_id, paths) is not None:
                raise DriverError(f"QEMU process {pid} did not exit", "even after SIGKILL")
            self._forget(vm_id)

    async def reboot(self, vm_id: str) -> None:
        _, monitor, _ = await self._require_running(vm_id)
        await monitor.execute("system_reset")

    async def pause(self, vm_id: str) -> None:
        _, monitor, _ = await self._require_running(vm_id)
        await monitor.execute("stop")

    async def resume(self, vm_id: str) -> None:
        _, monitor, _ = await self._require_running(vm_id)
        await monitor.execute("cont")

    # --- disks ---------------------------------------------------------------------------------------------
    def _hotplug_machine(self, paths: RunPaths) -> str:
        spec = self._spec(paths)
        if spec is None or spec.machine != "q35":
            raise Unsupported("microvm has no hot-plug bus: attach or detach disks while the VM is stopped, "
                              "or use machine q35")
        return spec.machine

    async def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        paths, monitor, _ = await self._require_running(vm_id)
        machine = self._hotplug_machine(paths)
        if disk.bus != "virtio-blk":
            raise Unsupported("only virtio-blk disks can be hot-plugged; attach virtio-scsi disks while stopped")
        async with self._lock(vm_id):
            added: list[str] = []
            try:
                for node in blockdev_nodes(disk):
                    await monitor.execute("blockdev-add", node)
                    added.append(str(node["node-name"]))
                await self._plug_into_free_port(monitor, disk_device(disk, machine))
            except BaseException:
                for node_name in reversed(added):  # leave nothing half-attached
                    with contextlib.suppress(DriverError):
                        await monitor.execute("blockdev-del", {"node-name": node_name})
                raise

    async def _plug_into_free_port(self, monitor: Monitor, device: dict[str, object]) -> None:
        """A hot-plugged PCIe device needs an empty root port. QEMU accepts a second device on a busy port (the
        guest then never sees it), so the free ports are read from query-pci first."""
        free = await self._free_hotplug_ports(monitor)
        if not free:
            raise Conflict(f"all {HOTPLUG_PORTS} hot-plug slots are in use; detach a device or attach while stopped")
        await monitor.execute("device_add", {**device, "bus": free[0]})

    async def _free_hotplug_ports(self, monitor: Monitor) -> list[str]:
        buses: list[dict[str, Any]] = await monitor.execute("query-pci")
        ports = [device for bus in buses for device in bus["devices"]
                 if str(device.get("qdev_id", "")).startswith("hp") and "pci_bridge" in device]
        return sorted(str(port["qdev_id"]) for port in ports if not port["pci_bridge"].get("devices"))

    async def detach_disk(self, vm_id: str, disk: DiskSpec, timeout: float) -> None:
        paths, monitor, _ = await self._require_running(vm_id)
        self._hotplug_machine(paths)
        async with self._lock(vm_id):
            await self._unplug(monitor, f"{disk.node_name}-dev", timeout, str(disk.volume or disk.path))
            for node in reversed(blockdev_nodes(disk)):
                with contextlib.suppress(DriverError):
                    await monitor.execute("blockdev-del", {"node-name": node["node-name"]})

    async def _unplug(self, monitor: Monitor, device_id: str, timeout: float, what: str) -> None:
        """device_del, then wait until the guest has let go (hot-unplug goes through the guest's ACPI handling)."""
        try:
            await monitor.execute("device_del", {"id": device_id})
        except DeviceNotFound:
            raise NotFound("device", what) from None
        deadline = time.monotonic() + timeout
        while await self._device_present(monitor, device_id):
            if time.monotonic() >= deadline:
                raise OperationTimeout(f"the guest did not release {what} within {timeout:g}s")
            await asyncio.sleep(0.2)

    async def _device_present(self, monitor: Monitor, device_id: str) -> bool:
        try:
            await monitor.execute("qom-get", {"path": f"/machine/peripheral/{device_id}", "property": "type"})
        except MonitorGone:
            raise
        except DriverError:
            return False
        return True

    # --- NICs ----------------------------------------------------------------------------------------------
    async def attach_nic(self, vm_id: str, nic: NicSpec) -> None:
        paths, monitor, _ = await self._require_running(vm_id)
        machine = self._hotplug_machine(paths)
        async with self._lock(vm_id):
            netdev = nic_netdev(nic)
            if nic.user_mode:  # QMP takes each forward as {"str": ...}, the command line as repeated keys
                netdev["hostfwd"] = [{"str": forward} for forward in nic_forwards(nic)]
            await monitor.execute("netdev_add", netdev)
            try:
                await self._plug_into_free_port(monitor, nic_device(nic, machine))
            except BaseException:
                with contextlib.suppress(DriverError):
                    await monitor.execute("netdev_del", {"id": nic.netdev_id})
                raise

    async def detach_nic(self, vm_id: str, nic: NicSpec, timeout: float) -> None:
        paths, monitor, _ = await self._require_running(vm_id)
        self._hotplug_machine(paths)
        async with self._lock(vm_id):
            await self._unplug(monitor, f"{nic.netdev_id}-dev", timeout, f"NIC {nic.mac}")
            with contextlib.suppress(DriverError):
                await monitor.execute("netdev_del", {"id": nic.netdev_id})

    async def set_link(self, vm_id: str, nic: NicSpec, up: bool) -> None:
        _, monitor, _ = await self._require_running(vm_id)
        try:
            await monitor.execute("set_link", {"name": f"{nic.netdev_id}-dev", "up": up})
        except DeviceNotFound:
            raise NotFound("NIC", str(nic.mac)) from None

    # --- snapshots -----------------------------------------------------------------------------------------
    async def snapshot_disks(self, vm_id: str, overlays: list[tuple[str, str]]) -> None:
        _, monitor, _ = await self._require_running(vm_id)
        async with self._lock(vm_id):
            named = [(top, overlay, "s" + hashlib.sha256(overlay.encode()).hexdigest()[:12])
                     for top, overlay in overlays]
            await blockjobs.external_snapshot(monitor, named)

    async def commit_disk(self, vm_id: str, top: str, base: str, *, before_pivot: BeforePivot | None = None
                          ) -> None:
        _, monitor, _ = await self._require_running(vm_id)
        async with self._lock(vm_id):
            # Named after the merge, not the attempt: a retry finds the job an interrupted attempt left.
            job_id = "commit-" + hashlib.sha256(f"{top}\0{base}".encode()).hexdigest()[:12]
            await blockjobs.commit(monitor, top, base, job_id, before_pivot=before_pivot)

    async def disk_chains(self, vm_id: str) -> list[DiskChain]:
        _, monitor, _ = await self._require_running(vm_id)
        return [chain for _, chain in await blockjobs.devices(monitor)]

    async def settle_block_jobs(self, vm_id: str) -> list[str]:
        _, monitor, _ = await self._require_running(vm_id)
        async with self._lock(vm_id):
            return await blockjobs.settle_jobs(monitor)

    async def release_images(self, vm_id: str, paths: list[str]) -> None:
        _, monitor, _ = await self._require_running(vm_id)
        async with self._lock(vm_id):
            await blockjobs.release(monitor, paths)

    async def memory_snapshot(self, vm_id: str, action: MemoryAction, tag: str, images: list[str]) -> None:
        _, monitor, _ = await self._require_running(vm_id)
        if not images:
            raise Unsupported("a memory snapshot needs a qcow2 disk to hold the VM state; attach one")
        async with self._lock(vm_id):
            try:
                await blockjobs.internal_snapshot(monitor, f"snapshot-{action}", tag, images,
                                                  f"{action}-{secrets.token_hex(4)}")
            finally:
                if action == "load" and (await monitor.execute("query-status"))["status"] != "running":
                    await monitor.execute("cont")  # a failed load leaves the vCPUs stopped

    # --- usage ---------------------------------------------------------------------------------------------
    async def usage(self, vm_id: str) -> UsageSample | None:
        paths = self._require_defined(vm_id)
        pid = self._live_pid(vm_id, paths)
        monitor = self._monitors.get(vm_id)
        if pid is None or monitor is None or not monitor.connected:
            return None
        cpu, memory = process_usage(pid)
        read = written = 0
        with contextlib.suppress(DriverError):
            for device in await monitor.execute("query-blockstats", {"query-nodes": False}, timeout=3.0):
                stats = device.get("stats", {})
                read += int(stats.get("rd_bytes", 0))
                written += int(stats.get("wr_bytes", 0))
        runtime = read_record(paths.runtime) or {}
        received, sent = tap_counters(runtime.get("argv", []))
        return UsageSample(cpu, memory, read, written, received, sent)

    # --- console -------------------------------------------------------------------------------------------
    async def open_console(self, vm_id: str) -> ConsoleStreams:
        paths, _, _ = await self._require_running(vm_id)
        attached = self._consoles.get(vm_id)
        if attached is not None and not attached.is_closing():
            raise Conflict(f"the console of {vm_id} is already attached by another client")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(paths.console)), 5.0)
        except (OSError, TimeoutError) as exc:
            raise DriverError("cannot attach to the serial console", str(exc) or type(exc).__name__) from exc
        self._consoles[vm_id] = writer
        return reader, writer

    async def open_vnc(self, vm_id: str) -> ConsoleStreams:
        paths, _, _ = await self._require_running(vm_id)
        # What the running QEMU was started with decides, not the spec on record (which a restart would apply).
        argv = (read_record(paths.runtime) or {}).get("argv", [])
        if "-vnc" not in argv:
            raise Conflict(f"domain {vm_id} has no graphical console: it was started with display 'none'")
        try:
            return await asyncio.wait_for(asyncio.open_unix_connection(str(paths.vnc)), 5.0)
        except (OSError, TimeoutError) as exc:
            raise DriverError("cannot attach to the graphical console", str(exc) or type(exc).__name__) from exc

    async def console_log(self, vm_id: str, max_bytes: int) -> bytes:
        paths = self._require_defined(vm_id)
        return read_tail(paths.console_log, max_bytes)

    async def foreign_domains(self) -> list[ForeignDomain]:
        return []  # a QEMU this driver did not start has no run directory: nothing here to take over

    async def take_over(self, name: str, vm_id: str, spec: VmSpec) -> None:
        raise Unsupported("the qemu driver cannot take over domains made by other tools (capability 'adopt'); "
                          "run the server with the libvirt driver")

    def watch(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change

    async def close(self) -> None:
        for task in self._announcing:
            task.cancel()
        await asyncio.gather(*self._announcing, return_exceptions=True)
        for monitor in self._monitors.values():
            await monitor.close()
        self._monitors.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
        for writer in self._consoles.values():
            writer.close()
        self._consoles.clear()

