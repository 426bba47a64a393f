#!/usr/bin/env python3
"""Boot latency and memory benchmark: virtfleet vs. the same QEMU command line run by hand.

    .venv/bin/python bench/boot.py [--rounds 5] [--vms 10] [--driver qemu|libvirt] [--json-out bench/results/boot.json]
                                   [--keep]

1. Boot latency. A `virtfleet serve` runs as a subprocess on a free port with a throw-away data directory under /tmp
   (short, so the unix sockets in the run directory stay under 108 bytes). Both sides learn that the guest is up the
   same way: by following its serial console as a byte stream, with no polling of anything.
   - virtfleet: a fresh VM per round (256M, accel tcg) created through the REST API; timed from
     POST /vms/{name}/start until the readiness line arrives on the console WebSocket /vms/{name}/console, as a
     client follows a boot: it waits for the start job (long-poll GET /jobs/{id}?wait=, answered when the job
     ends), attaches the WebSocket (bearer token), reads GET /vms/{name}/logs once for what the guest printed
     before it attached, then reads frames. The VM is then shut down (ACPI) and deleted.
   - raw: the argv virtfleet recorded in the warm-up VM's runtime.json, byte for byte except a fresh run directory
     and uuid and without -daemonize and -pidfile (so its serial is the same unix-socket server chardev with a
     logfile); timed from process spawn until the readiness line arrives on that console.sock, which the bench
     connects to as soon as QEMU listens, then reads console.log once for what came before, then reads the
     socket. QEMU is then stopped with SIGTERM.
   Costs alike: each side attaches a stream once, reads the history once, and is then woken by the kernel when
   bytes arrive; nothing is polled during the boot (the raw side retries connect() every 2 ms until QEMU's socket
   exists, which only decides when it attaches: the readiness line comes seconds later, on the stream). What
   virtfleet adds is real client cost: the API call, the job, the WebSocket handshake and the relay by serve.
   After one uncounted warm-up of each, --rounds rounds in ABBA order: virtfleet first in odd rounds, raw first in
   even ones. Each side runs in its own processes (serve + its QEMU; the raw QEMU), the bench client in this one.
   With --driver libvirt, the same comparison on libvirt (the system libvirtd, qemu:///system):
   - virtfleet: `virtfleet serve --driver libvirt:qemu:///system`; the VMs are q35 (libvirt boots no microvm), the
     rest as above (its console is the libvirt serial socket in the VM's run directory, which serve relays).
   - virsh: what a virsh user does with the same domain: the XML libvirt stored for the warm-up VM
     (`virsh dumpxml --inactive`, taken after virtfleet started it, so with the boot image), with a fresh name and
     uuid, virtfleet's <metadata> removed and a fresh run directory for the console socket and its log, everything
     else (devices, seclabel, emulator) as stored; timed from spawning `virsh create FILE` until the readiness line
     arrives on that console.sock, followed exactly as the raw QEMU's; `virsh destroy` after each round (it is
     transient: gone with it). When `virsh create` returned is recorded too (a thread blocked in wait()).
   Every domain is named `vfbench-<random>-...`: libvirt's names are host-wide and shared with other users of the
   libvirtd. serve on a shared libvirtd also lists the domains other virtfleets defined (it adopts any domain with
   virtfleet's metadata), so the benchmark only ever touches names with its own prefix, and the finally block
   destroys and undefines every domain that has it.
2. Memory. RSS (VmRSS) of the serve process idle, then with --vms tiny VMs (128M) running and READY, and the QEMU
   RSS per VM. All VMs are then stopped and deleted.

Always TCG. Every QEMU (and libvirt domain) the benchmark started is gone when it exits (the finally block kills
whatever is left whose command line names the benchmark's data directory, by pid). The table goes to stdout, all
raw samples to JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import libvirt_side
from console_stream import (
    ATTACH_TIMEOUT,
    ConsoleFollower,
    attach_unix,
    attached_ws,
    follow_unix,
    follow_ws,
    read_text,
    ready_line,
)
from rich.console import Console
from rich.table import Table
from websockets.exceptions import ConnectionClosed

from common import (
    BenchError,
    Serve,
    add_output_options,
    cpu_model,
    data_dir,
    free_port,
    job_seconds,
    kill_by_pid,
    kill_procs,
    memory_mib,
    new_results,
    our_qemu_pids,
    proc_cpu_s,
    proc_memory,
    proc_status_kib,
    progress_printer,
    qemu_facts,
    raw_argv,
    reap,
    run_and_record,
    runtime_record,
    software_facts,
    summary,
    wait_ok,
)
from virtfleet.client import ApiError, Client
from virtfleet.config import Settings
from virtfleet.images.tiny import READY_MARKER, build_tiny_image

FLEET_POLL = 0.25  # the memory phase only needs "all ready", not a precise time
BOOT_TIMEOUT = 60.0
JOB_TIMEOUT = 60.0

console = Console(width=None if sys.stdout.isatty() else 110)


# --- small helpers ------------------------------------------------------------------------------------------------


def machine_facts(binary: str) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_mib": memory_mib(),
        "kernel": platform.release(),
        **qemu_facts(binary),
        **software_facts(),
    }


# --- the benchmark ------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    rounds: int
    vms: int
    settings: Settings
    serve: Serve
    client: Client
    results: dict[str, Any] = field(default_factory=dict)
    raw_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    raw_template: list[str] = field(default_factory=list)
    template_root: str = ""
    template_id: str = ""
    libvirt: bool = False  # serve runs the libvirt driver; the raw side is `virsh create` of the same domain XML
    prefix: str = ""  # of every VM / domain name (unique per run on libvirt, whose domain names are host-wide)
    template_xml: str = ""  # libvirt: `virsh dumpxml --inactive` of the warm-up VM's domain

    @property
    def raw_label(self) -> str:
        return "virsh" if self.libvirt else "raw QEMU"

    def vm_json(self, name: str, memory: str) -> dict[str, Any]:
        """A VM as the benchmark creates it: tiny image, TCG; q35 on libvirt, which boots no microvm."""
        return {"name": self.prefix + name, "memory": memory, "accel": "tcg",
                **({"machine": "q35"} if self.libvirt else {})}

    def ours(self, vms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The VMs this run made: serve on a shared libvirtd also lists domains another virtfleet defined."""
        return [vm for vm in vms if str(vm["name"]).startswith(self.prefix)]

    def qemu_pid(self, vm_id: str) -> int:
        """The pid of a running VM's QEMU: from runtime.json (qemu driver), or by its -uuid (libvirt)."""
        if not self.libvirt:
            return int(self.runtime_record(vm_id)["pid"])
        pid = libvirt_side.qemu_pid(vm_id)
        if pid is None:
            raise BenchError(f"no single QEMU process runs with -uuid {vm_id}")
        return pid

    # API plumbing
    def wait_ok(self, job: dict[str, Any], what: str, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
        return wait_ok(self.client, job, what, timeout)

    def logs(self, name: str) -> str:
        text: str = self.client.get(f"/vms/{name}/logs", max_bytes=1 << 20)
        return text

    def runtime_record(self, vm_id: str) -> dict[str, Any]:
        return runtime_record(self.settings.run_dir, vm_id)

    def remove_vm(self, name: str, *, graceful: bool) -> dict[str, Any]:
        """Shut down (ACPI, forced after 20 s) or stop, then delete; returns the timings."""
        t0 = time.perf_counter()
        if graceful:
            job = self.wait_ok(self.client.post(f"/vms/{name}/shutdown", timeout=20), f"shutdown {name}")
        else:
            job = self.wait_ok(self.client.post(f"/vms/{name}/stop"), f"stop {name}")
        t_down = time.perf_counter() - t0
        self.wait_ok(self.client.delete(f"/vms/{name}"), f"delete {name}")
        return {"down_s": t_down, "down_job_s": job_seconds(job), "down_message": job.get("message", "")}

    # 1a. virtfleet boot round
    def virtfleet_boot(self, name: str, *, keep_template: bool = False) -> dict[str, Any]:
        vm = self.client.post("/vms", json=self.vm_json(name, "256M"))
        name = str(vm["name"])
        vm_id = str(vm["id"])
        token = self.serve.token()
        serve_cpu0, client_cpu0 = proc_cpu_s(self.serve.pid) or 0.0, time.process_time()
        t0 = time.perf_counter()
        deadline = time.monotonic() + BOOT_TIMEOUT
        job = self.client.post(f"/vms/{name}/start")
        t_posted = time.perf_counter() - t0
        start_job = self.wait_ok(job, f"start {name}")  # long-poll: answered when the job ends
        t_running = time.perf_counter() - t0
        with attached_ws(self.serve.url, name, token) as ws:
            t_attached = time.perf_counter() - t0
            follower = ConsoleFollower(self.logs(name))
            try:
                follow_ws(ws, follower, deadline)
            except (TimeoutError, ConnectionClosed) as exc:
                self.serve.check_alive()
                state = self.client.get(f"/vms/{name}")
                raise BenchError(f"vm {name}: no {READY_MARKER} on the console within {BOOT_TIMEOUT:g}s ({exc!r}; "
                                 f"state {state['state']}: {state['state_reason']}); it ends with: "
                                 f"{follower.text[-300:]!r}") from exc
            t_ready = time.perf_counter() - t0
        text = follower.text
        serve_cpu = (proc_cpu_s(self.serve.pid) or 0.0) - serve_cpu0
        client_cpu = time.process_time() - client_cpu0
        pid = self.qemu_pid(vm_id)
        qemu_cpu = proc_cpu_s(pid)
        if self.libvirt:
            accel = {"qemu": "tcg"}.get(libvirt_side.domain_type(name), "kvm")
        else:
            accel = str(self.runtime_record(vm_id).get("accel"))
        if accel != "tcg":
            raise BenchError(f"vm {name} runs with accel {accel!r}, expected tcg")
        sample: dict[str, Any] = {
            "name": name,
            "vm_id": vm_id,
            "ready_s": t_ready,
            "start_post_s": t_posted,
            "start_job_s": job_seconds(start_job),
            "running_s": t_running,  # the start job seen done
            "attached_s": t_attached,  # the console WebSocket attached
            "marker_in_history": READY_MARKER in follower.history,  # False: it came on the stream
            "serve_cpu_s": serve_cpu,
            "bench_client_cpu_s": client_cpu,
            "qemu_pid": pid,
            "qemu_cpu_s_at_ready": qemu_cpu,
            "qemu_memory_kib_at_ready": proc_memory(pid),
            "ready_line": ready_line(text),
        }
        if keep_template:
            self.template_root = str(self.settings.run_dir / vm_id)
            self.template_id = vm_id
            if self.libvirt:  # what libvirt stored when serve started it (the start defines the boot image too)
                self.template_xml = libvirt_side.virsh("dumpxml", "--inactive", name)
            else:
                self.raw_template = [str(arg) for arg in self.runtime_record(vm_id)["argv"]]
        sample.update(self.remove_vm(name, graceful=True))
        return sample

    # 1b. raw QEMU round
    def raw_argv(self, root: Path, new_id: str) -> list[str]:
        return raw_argv(self.raw_template, self.template_root, self.template_id, root, new_id)

    def raw_boot(self, index: int | str) -> dict[str, Any]:
        return self.virsh_boot(index) if self.libvirt else self.raw_qemu_boot(index)

    def raw_qemu_boot(self, index: int | str) -> dict[str, Any]:
        if not self.raw_template:
            raise BenchError("no argv template: the virtfleet warm-up did not record one")
        root = self.settings.data_dir / "raw" / str(index)
        root.mkdir(parents=True, mode=0o700)
        new_id = str(uuid.uuid4())
        argv = self.raw_argv(root, new_id)
        log_path = root / "console.log"
        stderr_path = root / "qemu.stderr"
        t0 = time.perf_counter()
        deadline = time.monotonic() + BOOT_TIMEOUT
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        self.raw_procs.append(proc)
        sock = attach_unix(root / "console.sock", proc, time.monotonic() + ATTACH_TIMEOUT)
        try:
            t_attached = time.perf_counter() - t0
            follower = ConsoleFollower(read_text(log_path))
            try:
                follow_unix(sock, follower, deadline)
            except (TimeoutError, OSError, BenchError) as exc:
                if proc.poll() is not None:
                    raise BenchError(f"raw QEMU exited with {proc.returncode}: "
                                     f"{stderr_path.read_text()[-500:]}") from exc
                raise BenchError(f"raw QEMU: no {READY_MARKER} on the console within {BOOT_TIMEOUT:g}s ({exc!r}); "
                                 f"it ends with {follower.text[-300:]!r}") from exc
            t_ready = time.perf_counter() - t0
        finally:
            sock.close()
        text = follower.text
        rss = proc_memory(proc.pid)
        qemu_cpu = proc_cpu_s(proc.pid)
        t1 = time.perf_counter()
        proc.terminate()  # SIGTERM: QEMU quits cleanly
        reap(proc, 10)
        self.raw_procs.remove(proc)
        return {
            "index": index,
            "ready_s": t_ready,
            "attached_s": t_attached,  # connected to console.sock
            "marker_in_history": READY_MARKER in follower.history,
            "qemu_pid": proc.pid,
            "qemu_cpu_s_at_ready": qemu_cpu,
            "qemu_memory_kib_at_ready": rss,
            "ready_line": ready_line(text),
            "down_s": time.perf_counter() - t1,
        }

    # 1b'. libvirt: a transient domain of the same XML, as a virsh user starts one
    def raw_domain_xml(self, root: Path, name: str, new_id: str) -> str:
        return libvirt_side.raw_domain_xml(self.template_xml, name, new_id, self.template_root, root)

    def virsh_boot(self, index: int | str) -> dict[str, Any]:
        if not self.template_xml:
            raise BenchError("no domain XML template: the virtfleet warm-up did not record one")
        root = self.settings.data_dir / "raw" / str(index)
        root.mkdir(parents=True, mode=0o700)
        name, new_id = f"{self.prefix}virsh-{index}", str(uuid.uuid4())
        sample = libvirt_side.virsh_boot(self.raw_domain_xml(root, name, new_id), root, name, new_id,
                                         self.raw_procs, BOOT_TIMEOUT)
        return {"index": index, **sample}

    def boot_latency(self, progress: Callable[[str], None]) -> None:
        boot: dict[str, Any] = {"readiness": "console stream (WebSocket / console.sock)", "order": "ABBA",
                                "virtfleet": [], "raw": [], "warmup": {}}
        self.results["boot"] = boot
        progress(f"warm-up: virtfleet boot (records the {'domain XML' if self.libvirt else 'argv'} template)")
        boot["warmup"]["virtfleet"] = self.virtfleet_boot("warmup", keep_template=True)
        if self.libvirt:
            boot["raw_side"] = "virsh create of the warm-up VM's domain XML (dumpxml --inactive)"
            boot["domain_xml_template"] = self.template_xml
        else:
            boot["raw_argv_template"] = self.raw_template
        progress(f"warm-up: {self.raw_label} boot")
        boot["warmup"]["raw"] = self.raw_boot("warmup")
        example = self.settings.data_dir / "raw" / "N"
        if self.libvirt:
            boot["raw_domain_xml_example"] = self.raw_domain_xml(example, f"{self.prefix}virsh-N",
                                                                 "<fresh-uuid>")
        else:
            boot["raw_argv_example"] = self.raw_argv(example, "<fresh-uuid>")
        for i in range(1, self.rounds + 1):
            order = ("virtfleet", "raw") if i % 2 else ("raw", "virtfleet")  # ABBA: virtfleet first in odd rounds
            for side in order:
                sample = self.virtfleet_boot(f"boot-{i}") if side == "virtfleet" else self.raw_boot(i)
                sample.update(round=i, first=side == order[0])
                boot[side].append(sample)
            progress(f"round {i}/{self.rounds} ({' then '.join(order)}): virtfleet "
                     f"{boot['virtfleet'][-1]['ready_s']:.3f}s, {self.raw_label} {boot['raw'][-1]['ready_s']:.3f}s")
        vf = summary([s["ready_s"] for s in boot["virtfleet"]])
        raw_s = summary([s["ready_s"] for s in boot["raw"]])
        boot["summary"] = {
            "virtfleet_ready_s": vf,
            "raw_ready_s": raw_s,
            "ratio_median": vf["median"] / raw_s["median"],
            "ratio_per_round": summary([v["ready_s"] / r["ready_s"]
                                        for v, r in zip(boot["virtfleet"], boot["raw"], strict=True)]),
            "overhead_median_s": vf["median"] - raw_s["median"],
            "virtfleet_start_job_s": summary([s["start_job_s"] for s in boot["virtfleet"] if s["start_job_s"]]),
            "virtfleet_start_post_s": summary([s["start_post_s"] for s in boot["virtfleet"]]),
            "virtfleet_shutdown_s": summary([s["down_s"] for s in boot["virtfleet"]]),
            "virtfleet_running_s": summary([s["running_s"] for s in boot["virtfleet"]]),
            "virtfleet_attached_s": summary([s["attached_s"] for s in boot["virtfleet"]]),
            "raw_attached_s": summary([s["attached_s"] for s in boot["raw"]]),
            "virsh_returned_s": summary([s["virsh_returned_s"] for s in boot["raw"] if s.get("virsh_returned_s")]),
            "virtfleet_serve_cpu_s": summary([s["serve_cpu_s"] for s in boot["virtfleet"]]),
            "virtfleet_qemu_cpu_s": summary(
                [s["qemu_cpu_s_at_ready"] for s in boot["virtfleet"] if s["qemu_cpu_s_at_ready"] is not None]),
            "raw_qemu_cpu_s": summary(
                [s["qemu_cpu_s_at_ready"] for s in boot["raw"] if s["qemu_cpu_s_at_ready"] is not None]),
        }

    # 2. memory
    def sample_rss(self, count: int = 5, interval: float = 0.4) -> list[int]:
        samples = []
        for i in range(count):
            if i:
                time.sleep(interval)
            samples.append(self.serve.rss_kib())
        return samples

    def memory(self, idle_cold: list[int], progress: Callable[[str], None]) -> None:
        mem: dict[str, Any] = {"vms": self.vms, "vm_memory": "128M", "serve_pid": self.serve.pid}
        self.results["memory"] = mem
        mem["serve_rss_idle_cold_kib"] = idle_cold
        if self.ours(self.client.get("/vms")):
            raise BenchError("VMs left over from the boot rounds; the idle measurement would be wrong")
        time.sleep(1.5)  # let a reconcile pass run with 0 VMs
        mem["serve_rss_idle_kib"] = self.sample_rss()
        mem["serve_memory_idle_kib"] = proc_memory(self.serve.pid)
        names = [f"{self.prefix}fleet-{i}" for i in range(1, self.vms + 1)]
        ids = {}
        for name in names:
            ids[name] = str(self.client.post("/vms", json={**self.vm_json("", "128M"), "name": name})["id"])
        progress(f"starting {self.vms} VMs at once")
        t0 = time.perf_counter()
        jobs = {name: self.client.post(f"/vms/{name}/start") for name in names}
        ready: dict[str, float] = {}
        deadline = time.monotonic() + 60.0 + 15.0 * self.vms
        while len(ready) < len(names):
            for name in names:
                if name not in ready and READY_MARKER in self.logs(name):
                    ready[name] = time.perf_counter() - t0
            if time.monotonic() > deadline:
                self.serve.check_alive()
                missing = sorted(set(names) - set(ready))
                raise BenchError(f"VMs not READY after {deadline - t0:.0f}s: {missing}")
            time.sleep(FLEET_POLL)
        mem["fleet_ready_s"] = ready
        mem["fleet_all_ready_s"] = max(ready.values())
        mem["fleet_start_jobs_s"] = {name: job_seconds(self.wait_ok(job, f"start {name}"))
                                     for name, job in jobs.items()}
        progress(f"all {self.vms} VMs READY after {mem['fleet_all_ready_s']:.1f}s; sampling RSS")
        time.sleep(2.0)  # a couple of reconcile passes over all VMs
        states = {vm["name"]: vm["state"] for vm in self.client.get("/vms")}
        mem["vm_states"] = states
        if any(states.get(name) != "running" for name in names):
            raise BenchError(f"not every VM is running: {states}")
        mem["serve_rss_fleet_kib"] = self.sample_rss()
        mem["serve_memory_fleet_kib"] = proc_memory(self.serve.pid)
        qemu_mem: dict[str, dict[str, int]] = {}
        for name, vm_id in ids.items():
            qemu_mem[name] = proc_memory(self.qemu_pid(vm_id))
        mem["qemu_memory_kib"] = qemu_mem
        idle = statistics.median(mem["serve_rss_idle_kib"])
        fleet = statistics.median(mem["serve_rss_fleet_kib"])

        def per_vm(key: str) -> list[float]:
            return [float(m[key]) for m in qemu_mem.values() if key in m]

        mem["summary"] = {
            "serve_rss_idle_cold_kib": statistics.median(idle_cold),
            "serve_rss_idle_kib": idle,
            "serve_rss_fleet_kib": fleet,
            "serve_growth_per_vm_kib": (fleet - idle) / self.vms,
            "qemu_rss_kib": summary(per_vm("VmRSS")),
            "qemu_rss_anon_kib": summary(per_vm("RssAnon")),
            "qemu_pss_kib": summary(per_vm("Pss")),
            "qemu_rss_total_kib": sum(per_vm("VmRSS")),
            "qemu_pss_total_kib": sum(per_vm("Pss")),
        }
        progress("stopping and deleting the fleet")
        t1 = time.perf_counter()
        stops = [self.client.post(f"/vms/{name}/stop") for name in names]
        for name, job in zip(names, stops, strict=True):
            self.wait_ok(job, f"stop {name}")
        deletes = [self.client.delete(f"/vms/{name}") for name in names]
        for name, job in zip(names, deletes, strict=True):
            self.wait_ok(job, f"delete {name}")
        mem["fleet_teardown_s"] = time.perf_counter() - t1
        time.sleep(1.5)
        mem["serve_rss_after_teardown_kib"] = self.sample_rss(3)
        mem["serve_vm_hwm_kib"] = proc_status_kib(self.serve.pid, "VmHWM")

    # cleanup
    def cleanup(self) -> dict[str, Any]:
        report: dict[str, Any] = {"api_removed": [], "killed_qemu_pids": kill_procs(self.raw_procs), "errors": []}
        if self.serve.running:
            try:
                # Ours only: on a shared libvirtd, serve also lists (adopts) other virtfleets' domains.
                for vm in self.ours(self.client.get("/vms")):
                    with contextlib.suppress(ApiError, BenchError):
                        self.client.wait_job(self.client.delete(f"/vms/{vm['name']}", force=True), timeout=20)
                        report["api_removed"].append(vm["name"])
            except ApiError as error:
                report["errors"].append(f"listing VMs for cleanup: {error.message}")
        self.serve.stop()
        if self.libvirt:  # the virsh domains, and whatever the API did not remove (each named with our prefix)
            report["libvirt_removed"], errors = libvirt_side.remove_domains(self.prefix)
            report["errors"] += errors
            try:
                report["libvirt_left"] = [name for name in libvirt_side.virsh("list", "--all", "--name").split()
                                          if name.startswith(self.prefix)]
            except BenchError as error:
                report["errors"].append(str(error))
        killed, report["qemu_left"] = kill_by_pid(partial(our_qemu_pids, str(self.settings.data_dir)), wait=5)
        report["killed_qemu_pids"] += killed
        return report


# --- output -------------------------------------------------------------------------------------------------------


def _s(value: float) -> str:
    return f"{value:.3f}"


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def render(results: dict[str, Any]) -> None:
    facts = results["machine"]
    console.print(f"[bold]machine:[/bold] {facts['cpu_count']} CPUs ({facts['cpu_model']}), {facts['memory_mib']} MiB, "
                  f"kernel {facts['kernel']}; {facts['qemu_version']}; accel={facts['accel']}; "
                  f"virtfleet {facts['virtfleet_version']}, Python {facts['python']}")
    boot = results.get("boot", {}).get("summary")
    if boot:
        libvirt = results["config"].get("driver") == "libvirt"
        on, raw = (" on libvirt", "virsh") if libvirt else ("", "raw")
        raw_label = ("virsh create of the same domain XML (spawn -> marker on console.sock)" if libvirt
                     else "raw QEMU (spawn -> marker on console.sock)")
        table = Table(title=f"Boot to {READY_MARKER} (seconds, {results['config']['rounds']} rounds each, ABBA; "
                      "both followed on the console stream)")
        for column in ("", "median", "min", "max", "mean", "stdev"):
            table.add_column(column, justify="left" if not column else "right")
        rows = [
            (f"virtfleet{on} (POST start -> marker on the WebSocket)", boot["virtfleet_ready_s"]),
            (raw_label, boot["raw_ready_s"]),
            ("  virtfleet POST /start round trip", boot["virtfleet_start_post_s"]),
            ("  virtfleet start job (server side)", boot["virtfleet_start_job_s"]),
            ("  virtfleet start job seen done (client)", boot["virtfleet_running_s"]),
            ("  virtfleet console WebSocket attached", boot["virtfleet_attached_s"]),
            (f"  {raw} console.sock connected", boot["raw_attached_s"]),
            ("  virsh create returned (the domain runs)", boot.get("virsh_returned_s")),
            ("  virtfleet ACPI shutdown (job wait)", boot["virtfleet_shutdown_s"]),
            ("  CPU: serve process during a virtfleet boot", boot["virtfleet_serve_cpu_s"]),
            ("  CPU: QEMU at READY, virtfleet", boot["virtfleet_qemu_cpu_s"]),
            (f"  CPU: QEMU at READY, {raw}", boot["raw_qemu_cpu_s"]),
        ]
        for label, stats in rows:
            if stats:
                table.add_row(label, *(_s(stats[key]) for key in ("median", "min", "max", "mean", "stdev")))
        table.add_row(f"[bold]ratio virtfleet / {raw} (medians)[/bold]", f"[bold]{boot['ratio_median']:.3f}[/bold]",
                      "", "", "", "")
        per_round = boot["ratio_per_round"]
        table.add_row(f"  ratio per round (virtfleet / {raw} of the same round)",
                      *(f"{per_round[key]:.3f}" for key in ("median", "min", "max", "mean", "stdev")))
        table.add_row("overhead (difference of medians)", _s(boot["overhead_median_s"]), "", "", "", "")
        console.print(table)
    mem = results.get("memory", {}).get("summary")
    if mem:
        m = results["memory"]
        table = Table(title=f"Memory (MiB RSS), {m['vms']} VMs of {m['vm_memory']}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("virtfleet serve, just started", _mib(mem["serve_rss_idle_cold_kib"]))
        table.add_row("virtfleet serve, idle, 0 VMs (after boot rounds)", _mib(mem["serve_rss_idle_kib"]))
        table.add_row(f"virtfleet serve, {m['vms']} VMs running", _mib(mem["serve_rss_fleet_kib"]))
        growth = mem["serve_growth_per_vm_kib"]
        table.add_row("[bold]serve growth per VM[/bold]", f"[bold]{_mib(growth)} ({growth:.0f} KiB)[/bold]")
        for label, key in (("QEMU per VM, VmRSS", "qemu_rss_kib"), ("QEMU per VM, RssAnon (guest RAM, TCG code)",
                           "qemu_rss_anon_kib"), ("QEMU per VM, Pss (shared pages split)", "qemu_pss_kib")):
            q = mem[key]
            if q:
                table.add_row(f"{label}, median (min-max)",
                              f"{_mib(q['median'])} ({_mib(q['min'])}-{_mib(q['max'])})")
        table.add_row(f"QEMU total VmRSS / Pss, {m['vms']} VMs",
                      f"{_mib(mem['qemu_rss_total_kib'])} / {_mib(mem['qemu_pss_total_kib'])}")
        table.add_row("serve after teardown (median)", _mib(statistics.median(m["serve_rss_after_teardown_kib"])))
        table.add_row("serve VmHWM", _mib(m["serve_vm_hwm_kib"] or 0))
        table.add_row(f"all {m['vms']} VMs READY after (s, started together)", f"{m['fleet_all_ready_s']:.1f}")
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="counted boot rounds of each kind (default 5)")
    parser.add_argument("--vms", type=int, default=10, help="VMs for the memory phase (default 10; 0 skips it)")
    parser.add_argument("--driver", choices=("qemu", "libvirt"), default="qemu",
                        help=f"serve's VM driver (default qemu); libvirt: {libvirt_side.DRIVER}, q35 VMs, and the "
                        "raw side is `virsh create` of the same domain XML")
    add_output_options(parser, "boot", "logs, run dirs")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.vms < 0:
        parser.error("--rounds must be >= 1 and --vms >= 0")

    started = time.perf_counter()
    progress = progress_printer(console, started)

    libvirt = args.driver == "libvirt"
    driver = libvirt_side.DRIVER if libvirt else "qemu"
    prefix = f"vfbench-{uuid.uuid4().hex[:8]}-" if libvirt else ""  # libvirt's domain names are host-wide
    results = new_results("boot", {"rounds": args.rounds, "vms": args.vms, "order": "ABBA", "driver": args.driver,
                                   "serve_driver": driver, "name_prefix": prefix, "readiness": "console stream"})
    with data_dir("vfb-", args.keep, console) as path:
        settings = Settings.from_env(data_dir=path, driver=driver, port=free_port())
        results["machine"] = machine_facts(settings.qemu_binary)
        results["config"]["data_dir"] = str(path)
        serve = Serve(path, settings.port, path / "serve.log", driver=driver, stop_grace=10.0)
        client = Client(serve.url, timeout=30)
        bench = Bench(args.rounds, args.vms, settings, serve, client, results, libvirt=libvirt, prefix=prefix)

        def body() -> None:
            progress(f"building the tiny image into {settings.images_dir / 'tiny'}")
            t0 = time.perf_counter()
            image = build_tiny_image(settings.images_dir / "tiny")
            results["image"] = {
                "kernel_release": image.kernel_release, "build_s": time.perf_counter() - t0,
                "kernel_bytes": image.kernel.stat().st_size, "initrd_bytes": image.initrd.stat().st_size,
            }
            progress(f"starting `virtfleet serve --driver {driver}` on port {serve.port}")
            results["serve_startup_s"] = serve.start(client)
            idle_cold = bench.sample_rss(3, 0.3)
            results["host_api"] = client.get("/host")
            bench.boot_latency(progress)
            if args.vms:
                bench.memory(idle_cold, progress)

        status = run_and_record(body, bench.cleanup, results=results, serve=serve, client=client, console=console,
                                json_out=args.json_out, started=started)
    render(results)
    cleanup = results["cleanup"]
    left = cleanup["qemu_left"] + cleanup.get("libvirt_left", [])
    console.print(f"cleanup: {'no benchmark QEMU left' if not left else f'[red]still there: {left}[/red]'}"
                  f" (killed by pid: {cleanup['killed_qemu_pids'] or 'none'}"
                  + (f"; libvirt domains removed: {', '.join(cleanup['libvirt_removed']) or 'none'}" if libvirt else "")
                  + f"); total {results['duration_s']:.1f}s; JSON: {args.json_out}")
    if cleanup["errors"]:
        console.print(f"[red]cleanup errors:[/red] {cleanup['errors']}")
    return status if not left else 1


if __name__ == "__main__":
    sys.exit(main())
