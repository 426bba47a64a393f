#!/usr/bin/env python3
"""Guest-to-guest TCP throughput on a virtfleet NAT network vs. the same QEMU command lines run by hand.

    .venv/bin/python bench/network.py [--seconds 5] [--rounds 3] [--count N] [--json-out bench/results/network.json]
                                      [--keep]

Everything runs inside network namespaces the benchmark creates (root privileges needed):

    root ns --veth (API only)--> "host" ns: virtfleet serve, the NAT network's bridge/taps/nftables/dnsmasq, the QEMUs
                                 "host" ns --veth (the NAT uplink)--> "outside" ns: a dead end, so guest traffic that
                                 leaves the bridge can only go there

A `virtfleet serve` runs in the host namespace with a throw-away data directory under /tmp, creates the NAT network
10.77.0.0/24 and two tiny guests on it (microvm, 256M, accel tcg, one virtio NIC each). A transfer is: guest B runs
`nc -l -p 5001 >/dev/null` (busybox nc), guest A runs `dd if=/dev/zero bs=64k count=N | nc <ip of B> 5001`; A's
elapsed time comes from /proc/uptime read by A's shell right before and after the pipeline (10 ms resolution), and
throughput is N * 65536 bytes / elapsed. Commands are typed on the serial consoles: over virtfleet's WebSocket console
API for (a), straight on QEMU's console socket for (b).

(a) virtfleet: both VMs started through the REST API.
(b) raw QEMU: the virtfleet VMs are stopped (still defined, so their taps stay on the bridge) and the exact argv
    virtfleet recorded in each VM's runtime.json runs again by hand in the same namespace, without -daemonize and
    -pidfile, with a fresh run directory and uuid: same taps, same MACs (so the same DHCP leases), same bridge.

One uncounted pair first (unless --count is given, the virtfleet one picks N from the faster of two 10 MiB transfers
so that a transfer takes about --seconds), then --rounds pairs, virtfleet first in odd rounds and raw
first in even ones (ABBA), each with freshly booted guests (so every counted transfer is the first one in its guests).
The table goes to stdout, every raw sample to the JSON file. Whatever happens, the VMs and the network are deleted
through the API, serve is stopped, every QEMU the benchmark started is killed by pid, and the namespaces are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from common import (
    BenchError,
    Serve,
    add_output_options,
    cpu_model,
    data_dir,
    find_pids,
    free_port,
    is_qemu_system,
    kill_by_pid,
    kill_procs,
    new_results,
    our_qemu_pids,
    proc_cpu_s,
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
from netlab import (
    GuestConsole,
    Namespaces,
    UnixConsole,
    WsConsole,
    guest_ip,
    pick_api_subnet,
    read_until,
    run,
    sh,
    this_boot,
    wait_shell,
)
from virtfleet.client import ApiError, Client
from virtfleet.config import Settings
from virtfleet.images.tiny import build_tiny_image
from virtfleet.network import host as nethost

NETWORK = "nbench"
SUBNET = "10.77.0.0/24"
VMS = ("nb-a", "nb-b")  # A sends, B receives
VM_SPEC: dict[str, Any] = {"memory": "256M", "accel": "tcg", "machine": "microvm", "nics": [{"network": NETWORK}]}
PORT = 5001
BLOCK = 65536  # dd bs
CALIBRATION_COUNT = 160  # 10 MiB
BOOT_TIMEOUT = 90.0
JOB_TIMEOUT = 60.0

console = Console(width=None if sys.stdout.isatty() else 120)

# What the guests' shells run. Every marker we wait for is computed by the guest's shell ($((6*7)) -> 42), so the
# echo of the typed command can never match it.
RX_BYTES = r"$(sed -n 's/^ *eth0: *\([0-9]*\).*/\1/p' /proc/net/dev)"
# B: a listener whose stdin stays open (a `sleep` writing nothing): busybox nc half-closes the connection when its
# stdin ends, and the sender's nc quits as soon as it reads that EOF, which would cut the transfer short.
LISTEN_CMD = ("sleep 99999 | { r0=@RX@; nc -l -p @PORT@ >/dev/null; rc=$?; r1=@RX@; "
              'echo "NETRX-$((6*7)) rc=$rc rx0=$r0 rx1=$r1"; } & '
              "until netstat -ltn | grep -q ':@PORT@ '; do usleep 20000; done; echo \"LISTEN-$((5*5))\""
              ).replace("@RX@", RX_BYTES).replace("@PORT@", str(PORT))
LISTEN_RE = re.compile(r"LISTEN-25")
RX_RE = re.compile(r"NETRX-42 rc=(\d+) rx0=(\d*) rx1=(\d*)\r?\n")  # whole line: it may arrive in pieces
SEND_CMD = ("t0=$(cat /proc/uptime); dd if=/dev/zero bs=@BLOCK@ count=@COUNT@ 2>/tmp/dd.err | nc @TARGET@ @PORT@; "
            "rc=$?; t1=$(cat /proc/uptime); echo \"NETTX-$((6*7)) rc=$rc t0=${t0%% *} t1=${t1%% *} "
            "out=$(grep -c '^@COUNT@+0 records out' /tmp/dd.err)\"")
TX_RE = re.compile(r"NETTX-42 rc=(\d+) t0=([\d.]+) t1=([\d.]+) out=(\d+)\r?\n")


# --- small helpers ------------------------------------------------------------------------------------------------


def delta(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


def machine_facts(binary: str) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        # others' guests share the CPUs and skew the numbers
        "qemu_processes_at_start": len(find_pids(is_qemu_system, zombies=True)),
        **qemu_facts(binary),
        **software_facts(),
    }


@dataclass
class Guest:
    """One running guest of a transfer: its console and the QEMU process behind it."""

    name: str
    ip: str
    pid: int
    open_console: Callable[[], GuestConsole]


@dataclass
class Bench:
    settings: Settings
    ns: Namespaces
    serve: Serve
    client: Client
    seconds: float
    count: int | None
    results: dict[str, Any]
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ips: dict[str, str] = field(default_factory=dict)
    boot_s: dict[str, float] = field(default_factory=dict)  # start -> DHCP lease on the console, last boot
    start_jobs_s: float | None = None  # virtfleet: POST start -> both start jobs succeeded, last boot

    def wait_ok(self, job: dict[str, Any], what: str, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
        return wait_ok(self.client, job, what, timeout)

    def runtime_record(self, vm_id: str) -> dict[str, Any]:
        return runtime_record(self.settings.run_dir, vm_id)

    def setup(self) -> None:
        net = self.client.post("/networks", json={"name": NETWORK, "mode": "nat", "subnet": SUBNET,
                                                  "uplink": "uplink0"})
        self.results["network"] = net
        for name in VMS:
            vm = self.client.post("/vms", json={"name": name, **VM_SPEC})
            self.templates[name] = {"vm_id": str(vm["id"])}

    def bridge(self) -> str:
        network = self.client.get(f"/networks/{NETWORK}")
        return str(network.get("bridge") or nethost.bridge_name(NETWORK))

    def bridge_ports(self) -> list[str]:
        found = json.loads(sh("ip", "-j", "link", "show", "master", self.bridge(), netns=self.ns.host) or "[]")
        return sorted(str(link["ifname"]) for link in found)

    # (a) virtfleet
    def start_virtfleet(self) -> list[Guest]:
        t0 = time.perf_counter()
        jobs = {name: self.client.post(f"/vms/{name}/start") for name in VMS}
        for name, job in jobs.items():
            self.wait_ok(job, f"start {name}")
        self.start_jobs_s = time.perf_counter() - t0
        guests = []
        deadline = time.monotonic() + BOOT_TIMEOUT
        for name in VMS:
            vm_id = self.templates[name]["vm_id"]
            record = self.runtime_record(vm_id)
            if "argv" not in self.templates[name]:
                self.templates[name]["argv"] = [str(arg) for arg in record["argv"]]
                self.templates[name]["root"] = str(self.settings.run_dir / vm_id)
            while (ip := guest_ip(this_boot(self.client.get(f"/vms/{name}/logs", max_bytes=1 << 20)))) is None:
                self.serve.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{name}: no READY and DHCP lease on the console within {BOOT_TIMEOUT:g}s")
                time.sleep(0.2)
            self.boot_s[name] = time.perf_counter() - t0
            url = f"ws://{self.serve.host}:{self.serve.port}/api/v1/vms/{name}/console"
            guests.append(Guest(name, ip, int(record["pid"]), partial(WsConsole, url, name, self.serve.token())))
        return guests

    def stop_virtfleet(self) -> None:
        jobs = {name: self.client.post(f"/vms/{name}/stop") for name in VMS}
        for name, job in jobs.items():
            self.wait_ok(job, f"stop {name}")

    # (b) raw QEMU
    def raw_argv(self, name: str, root: Path, new_id: str) -> list[str]:
        template = self.templates[name]
        return raw_argv(template["argv"], template["root"], template["vm_id"], root, new_id)

    def start_raw(self, label: str) -> list[Guest]:
        t0 = time.perf_counter()
        roots = {}
        for name in VMS:
            if "argv" not in self.templates[name]:
                raise BenchError("no argv template: the virtfleet warm-up did not record one")
            root = self.settings.data_dir / "raw" / label / name
            root.mkdir(parents=True, mode=0o700)
            argv = self.raw_argv(name, root, str(uuid.uuid4()))
            self.templates[name].setdefault("raw_argv_example", argv)
            with (root / "qemu.stderr").open("wb") as err:
                proc = subprocess.Popen(["ip", "netns", "exec", self.ns.host, *argv], stdin=subprocess.DEVNULL,
                                        stdout=err, stderr=err, start_new_session=True)
            self.raw_procs.append(proc)
            roots[name] = (root, proc)
        guests = []
        deadline = time.monotonic() + BOOT_TIMEOUT
        for name, (root, proc) in roots.items():
            while True:
                text = ""
                with contextlib.suppress(FileNotFoundError):
                    text = (root / "console.log").read_text(errors="replace")
                if (ip := guest_ip(text)) is not None:
                    break
                if proc.poll() is not None:
                    raise BenchError(f"raw QEMU {name} exited with {proc.returncode}: "
                                     f"{(root / 'qemu.stderr').read_text(errors='replace')[-500:]}")
                if time.monotonic() > deadline:
                    raise BenchError(f"raw {name}: no READY and DHCP lease within {BOOT_TIMEOUT:g}s: {text[-300:]!r}")
                time.sleep(0.2)
            self.boot_s[name] = time.perf_counter() - t0
            path = root / "console.sock"
            guests.append(Guest(name, ip, proc.pid, partial(UnixConsole, path)))
        return guests

    def stop_raw(self) -> None:
        for proc in list(self.raw_procs):
            proc.terminate()
        for proc in list(self.raw_procs):
            reap(proc, 10)
            self.raw_procs.remove(proc)

    # one transfer between two running guests
    def transfer(self, guests: list[Guest], count: int, *, serve_pid: int | None) -> dict[str, Any]:
        sender, receiver = guests
        rx_con = receiver.open_console()
        try:
            tx_con = sender.open_console()
            try:
                wait_shell(rx_con)
                wait_shell(tx_con)
                run(rx_con, LISTEN_CMD, LISTEN_RE, 30)
                command = (SEND_CMD.replace("@BLOCK@", str(BLOCK)).replace("@COUNT@", str(count))
                           .replace("@TARGET@", receiver.ip).replace("@PORT@", str(PORT)))
                cpu0 = {g.name: proc_cpu_s(g.pid) for g in guests}
                serve_cpu0 = proc_cpu_s(serve_pid) if serve_pid else None
                t0 = time.perf_counter()
                tx = run(tx_con, command, TX_RE, max(120.0, 20 * self.seconds))
                host_wall = time.perf_counter() - t0
                cpu1 = {g.name: proc_cpu_s(g.pid) for g in guests}
                serve_cpu1 = proc_cpu_s(serve_pid) if serve_pid else None
                rx = read_until(rx_con, RX_RE, 30)[0]
            finally:
                tx_con.close()
        finally:
            rx_con.close()
        tx_rc, g0, g1, records_out = int(tx[1]), float(tx[2]), float(tx[3]), int(tx[4])
        rx_rc = int(rx[1])
        rx_bytes = int(rx[3]) - int(rx[2]) if rx[2] and rx[3] else None
        payload = count * BLOCK
        elapsed = g1 - g0
        problems = []
        if tx_rc != 0 or rx_rc != 0:
            problems.append(f"nc exit status: sender {tx_rc}, receiver {rx_rc}")
        if records_out != 1:
            problems.append("dd did not write every block")
        if rx_bytes is not None and rx_bytes < payload:
            problems.append(f"B's eth0 received {rx_bytes} bytes, less than the {payload} sent")
        if elapsed <= 0:
            problems.append(f"elapsed time {elapsed} from /proc/uptime")
        if problems:
            raise BenchError(f"transfer {sender.name} -> {receiver.name} failed: {'; '.join(problems)}")
        cpu = {name: delta(cpu0[name], cpu1[name]) for name in cpu0}
        return {
            "count": count,
            "bytes": payload,
            "guest_elapsed_s": elapsed,
            "mb_per_s": payload / elapsed / 1e6,
            "host_wall_s": host_wall,  # typing the command -> result line seen, includes the console round trip
            "receiver_eth0_rx_bytes": rx_bytes,
            "sender_ip": sender.ip,
            "receiver_ip": receiver.ip,
            "qemu_pids": {g.name: g.pid for g in guests},
            "qemu_cpu_s": cpu,
            "serve_cpu_s": delta(serve_cpu0, serve_cpu1),
        }

    def virtfleet_round(self, label: str, count: int, *, repeat: int = 1) -> dict[str, Any]:
        """Boot both guests, run `repeat` transfers (the earlier ones kept under "earlier_transfers"), stop them."""
        guests = self.start_virtfleet()
        try:
            self.ips = {g.name: g.ip for g in guests}
            earlier = [self.transfer(guests, count, serve_pid=self.serve.pid) for _ in range(repeat - 1)]
            sample = self.transfer(guests, count, serve_pid=self.serve.pid)
            sample["earlier_transfers"] = earlier
            sample["boot_to_lease_s"] = dict(self.boot_s)
            sample["start_jobs_s"] = self.start_jobs_s
            sample["bridge_ports"] = self.bridge_ports()
        finally:
            self.stop_virtfleet()
        sample["round"] = label
        return sample

    def raw_round(self, label: str, count: int) -> dict[str, Any]:
        try:
            guests = self.start_raw(label)
            changed = {g.name: (self.ips.get(g.name), g.ip) for g in guests if self.ips.get(g.name) != g.ip}
            sample = self.transfer(guests, count, serve_pid=None)
            sample["boot_to_lease_s"] = dict(self.boot_s)
            sample["bridge_ports"] = self.bridge_ports()
            sample["ip_changed_from_virtfleet"] = changed
        finally:
            self.stop_raw()
        sample["round"] = label
        return sample

    def measure(self, rounds: int, progress: Callable[[str], None]) -> None:
        data: dict[str, Any] = {"virtfleet": [], "raw": [], "warmup": {}}
        self.results["throughput"] = data
        count = self.count
        if count is None:
            progress(f"warm-up: virtfleet, calibrating with 2 x {CALIBRATION_COUNT * BLOCK >> 20} MiB")
            cal = self.virtfleet_round("warmup", CALIBRATION_COUNT, repeat=2)
            rate = max(x["mb_per_s"] for x in [cal, *cal["earlier_transfers"]]) * 1e6  # the faster: less noise
            count = max(16, round(self.seconds * rate / BLOCK))
            progress(f"  {rate / 1e6:.1f} MB/s -> count={count} ({count * BLOCK / 1e6:.0f} MB) "
                     f"for ~{self.seconds:g}s")
        else:
            progress(f"warm-up: virtfleet (count={count})")
            cal = self.virtfleet_round("warmup", count)
        data["warmup"]["virtfleet"] = cal
        data["count"] = count
        data["bytes"] = count * BLOCK
        data["argv_templates"] = {name: t["argv"] for name, t in self.templates.items()}
        data["taps_on_bridge_while_stopped"] = self.bridge_ports()
        progress("warm-up: raw QEMU (same argv, same taps)")
        data["warmup"]["raw"] = self.raw_round("warmup", count)
        data["raw_argv_examples"] = {name: t.get("raw_argv_example") for name, t in self.templates.items()}
        for i in range(1, rounds + 1):
            # ABBA: odd rounds virtfleet first, even rounds raw first, so a drift in the machine's load or a
            # "second of the pair" effect does not always favour the same side.
            if i % 2:
                vf = self.virtfleet_round(str(i), count)
                raw = self.raw_round(str(i), count)
            else:
                raw = self.raw_round(str(i), count)
                vf = self.virtfleet_round(str(i), count)
            vf["first_in_round"], raw["first_in_round"] = bool(i % 2), not i % 2
            data["virtfleet"].append(vf)
            data["raw"].append(raw)
            progress(f"round {i}/{rounds} ({'virtfleet' if i % 2 else 'raw'} first): virtfleet {vf['mb_per_s']:.1f} "
                     f"MB/s ({vf['guest_elapsed_s']:.2f}s), raw {raw['mb_per_s']:.1f} MB/s "
                     f"({raw['guest_elapsed_s']:.2f}s)")

        def cpu(samples: list[dict[str, Any]], name: str) -> dict[str, float]:
            return summary([s["qemu_cpu_s"][name] for s in samples if s["qemu_cpu_s"].get(name) is not None])

        vf_s = summary([s["mb_per_s"] for s in data["virtfleet"]])
        raw_s = summary([s["mb_per_s"] for s in data["raw"]])
        data["summary"] = {
            "virtfleet_mb_per_s": vf_s,
            "raw_mb_per_s": raw_s,
            "ratio_median": vf_s["median"] / raw_s["median"],
            "ranges_overlap": vf_s["min"] <= raw_s["max"] and raw_s["min"] <= vf_s["max"],
            "virtfleet_elapsed_s": summary([s["guest_elapsed_s"] for s in data["virtfleet"]]),
            "raw_elapsed_s": summary([s["guest_elapsed_s"] for s in data["raw"]]),
            "virtfleet_host_wall_s": summary([s["host_wall_s"] for s in data["virtfleet"]]),
            "raw_host_wall_s": summary([s["host_wall_s"] for s in data["raw"]]),
            **{f"{mode}_boot_to_leases_s": summary([max(x["boot_to_lease_s"].values()) for x in data[mode]])
               for mode in ("virtfleet", "raw")},
            "virtfleet_serve_cpu_s": summary([s["serve_cpu_s"] for s in data["virtfleet"]
                                              if s["serve_cpu_s"] is not None]),
            **{f"{mode}_qemu_cpu_s_{name}": cpu(data[mode], name) for mode in ("virtfleet", "raw") for name in VMS},
        }

    # cleanup
    def cleanup(self) -> dict[str, Any]:
        report: dict[str, Any] = {"api_removed": [], "killed_qemu_pids": kill_procs(self.raw_procs), "errors": []}
        if self.serve.running:
            try:
                for vm in self.client.get("/vms"):
                    try:
                        done = self.client.wait_job(self.client.delete(f"/vms/{vm['name']}", force=True), timeout=30)
                        report["api_removed"].append(f"vm {vm['name']}: {done['status']}")
                    except ApiError as error:
                        report["errors"].append(f"deleting vm {vm['name']}: {error.message}")
                for net in self.client.get("/networks"):
                    try:
                        self.client.delete(f"/networks/{net['name']}")
                        report["api_removed"].append(f"network {net['name']}")
                    except ApiError as error:
                        report["errors"].append(f"deleting network {net['name']}: {error.message}")
                report["links_left_in_host_ns"] = sorted(
                    link["ifname"] for link in json.loads(sh("ip", "-j", "link", netns=self.ns.host) or "[]")
                    if link["ifname"].startswith("vf") and not link["ifname"].startswith("vfnb"))
            except (ApiError, BenchError) as error:
                report["errors"].append(f"API cleanup: {error}")
        self.serve.stop()
        killed, report["qemu_left"] = kill_by_pid(partial(our_qemu_pids, str(self.settings.data_dir)), wait=5)
        report["killed_qemu_pids"] += killed
        report["namespaces"] = self.ns.delete()
        return report


# --- output -------------------------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> None:
    facts = results["machine"]
    console.print(f"[bold]machine:[/bold] {facts['cpu_count']} CPUs ({facts['cpu_model']}), kernel {facts['kernel']}; "
                  f"{facts['qemu_version']}; accel={facts['accel']}; virtfleet {facts['virtfleet_version']}; "
                  f"load at start {facts['loadavg_at_start'][0]:.2f}, "
                  f"{facts['qemu_processes_at_start']} other QEMU processes running")
    data = results.get("throughput", {})
    s = data.get("summary")
    if not s:
        return
    mb = data["bytes"] / 1e6
    table = Table(title=f"Guest-to-guest TCP, busybox nc, {mb:.0f} MB per transfer (MB/s = 10^6 bytes/s, guest "
                  f"/proc/uptime), {results['config']['rounds']} rounds each, ABBA order")
    rounds = len(data["virtfleet"])
    for column in ("", "median", "min", "max", *(f"r{i}" for i in range(1, rounds + 1))):
        table.add_column(column, justify="left" if not column else "right")

    def row(label: str, stats: dict[str, float], values: list[float], fmt: str = "{:.1f}") -> None:
        if stats:
            table.add_row(label, *(fmt.format(stats[k]) for k in ("median", "min", "max")),
                          *(fmt.format(v) for v in values))

    vf, raw = data["virtfleet"], data["raw"]
    row("virtfleet (API-started, NAT network)", s["virtfleet_mb_per_s"], [x["mb_per_s"] for x in vf])
    row("raw QEMU (same argv, same taps)", s["raw_mb_per_s"], [x["mb_per_s"] for x in raw])
    table.add_row("[bold]ratio virtfleet / raw (medians)[/bold]", f"[bold]{s['ratio_median']:.3f}[/bold]", "", "",
                  *([""] * rounds))
    row("  guest elapsed (s), virtfleet", s["virtfleet_elapsed_s"], [x["guest_elapsed_s"] for x in vf], "{:.2f}")
    row("  guest elapsed (s), raw", s["raw_elapsed_s"], [x["guest_elapsed_s"] for x in raw], "{:.2f}")
    row("  host wall, command -> result (s), virtfleet", s["virtfleet_host_wall_s"], [x["host_wall_s"] for x in vf],
        "{:.2f}")
    row("  host wall, command -> result (s), raw", s["raw_host_wall_s"], [x["host_wall_s"] for x in raw], "{:.2f}")
    for name, role in zip(VMS, ("sender", "receiver"), strict=True):
        for mode in ("virtfleet", "raw"):
            row(f"  QEMU CPU (s) during transfer, {role}, {mode}", s[f"{mode}_qemu_cpu_s_{name}"],
                [x["qemu_cpu_s"][name] or 0.0 for x in data[mode]], "{:.2f}")
    for mode, how in (("virtfleet", "POST start"), ("raw", "spawn")):
        row(f"  {how} -> both guests leased (s), {mode}", s[f"{mode}_boot_to_leases_s"],
            [max(x["boot_to_lease_s"].values()) for x in data[mode]], "{:.1f}")
    row("  serve CPU (s) during transfer, virtfleet", s["virtfleet_serve_cpu_s"],
        [x["serve_cpu_s"] or 0.0 for x in vf], "{:.2f}")
    console.print(table)
    ratio = s["ratio_median"]
    if rounds < 2:
        console.print(f"virtfleet / raw = {ratio:.3f} from one sample each: too few rounds for a verdict.")
    elif s["ranges_overlap"]:
        console.print(f"virtfleet / raw = {ratio:.3f}; the min-max ranges of the two overlap: no difference measurable "
                      f"with {rounds} rounds. Both ran the same QEMU argv on the same taps and bridge.")
    else:
        faster = "virtfleet" if ratio > 1 else "raw QEMU"
        console.print(f"virtfleet / raw = {ratio:.3f}; the min-max ranges do not overlap ({faster} faster in every "
                      f"round of {rounds}).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="target duration of one transfer (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds of each kind (default 3)")
    parser.add_argument("--count", type=int, default=None, help="64 KiB blocks per transfer (default: calibrated)")
    add_output_options(parser, "network", "logs, run dirs")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or (args.count is not None and args.count < 1):
        parser.error("--rounds and --count must be >= 1, --seconds > 0")
    if os.geteuid() != 0:
        parser.error("needs root: it creates network namespaces, bridges and taps")
    for name in [k for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "all_proxy")]:
        del os.environ[name]  # the API is reached over our own veth, never through a proxy

    started = time.perf_counter()
    progress = progress_printer(console, started)

    results = new_results("network", {"seconds": args.seconds, "rounds": args.rounds, "count": args.count,
                                      "block": BLOCK, "subnet": SUBNET, "vm_spec": VM_SPEC, "port": PORT})
    with data_dir("vfn-", args.keep, console) as path:
        ns = Namespaces(api_net=pick_api_subnet())  # only picks the addresses: create() makes the namespaces
        settings = Settings.from_env(data_dir=path, driver="qemu")
        results["machine"] = machine_facts(settings.qemu_binary)
        results["config"]["data_dir"] = str(path)
        serve = Serve(path, free_port(), path / "serve.log", host=ns.api_ip, netns=ns.host, health_poll=0.1)
        client = Client(serve.url, timeout=30)
        bench = Bench(settings, ns, serve, client, args.seconds, args.count, results)

        def body() -> None:
            progress(f"building the tiny image into {settings.images_dir / 'tiny'}")
            build_tiny_image(settings.images_dir / "tiny")
            ns.create()
            results["namespaces"] = {"host": ns.host, "outside": ns.outside, "api": f"{ns.api_ip}:{serve.port}"}
            progress(f"starting `virtfleet serve` in namespace {ns.host} on {ns.api_ip}:{serve.port}")
            serve.start(client)
            bench.setup()
            bench.measure(args.rounds, progress)

        def clean_up() -> dict[str, Any]:
            progress("cleaning up")
            return bench.cleanup()

        status = run_and_record(body, clean_up, results=results, serve=serve, client=client, console=console,
                                json_out=args.json_out, started=started,
                                catch=(ApiError, BenchError, subprocess.SubprocessError, OSError))
    render(results)
    cleanup = results["cleanup"]
    left = cleanup["qemu_left"] or cleanup["namespaces"]["namespaces_left"] or cleanup["namespaces"]["root_link_left"]
    console.print(f"cleanup: {'nothing left' if not left else f'[red]left behind: {cleanup}[/red]'} (API removed: "
                  f"{cleanup['api_removed'] or 'nothing'}; QEMU killed by pid: "
                  f"{cleanup['killed_qemu_pids'] or 'none'}); total {results['duration_s']:.1f}s; "
                  f"JSON: {args.json_out}")
    return status if not left else 1


if __name__ == "__main__":
    sys.exit(main())
