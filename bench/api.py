"""API benchmark: what authentication and the event stream cost, measured side by side in one run.

    .venv/bin/python bench/api.py [--rounds 5] [--requests 300] [--vms 20] [--json-out bench/results/api.json]

Two apps on the fake driver, each in its own process (bench/api_server.py under uvicorn, throw-away data
directories under /tmp, loopback ports, the same argv but for --no-auth): one as shipped, one with the auth
middleware taken out. Each holds --vms stopped VMs. The load client is this process, a third one. Then --rounds
rounds in ABBA order (with auth first in odd rounds, without in even ones) of --requests keep-alive GET /api/v1/vms
(and as many GET /api/v1/vms/{name}) on each: the ratio with/without auth is the price of checking a token per
request. Reported: medians, min/max/stdev, the ratio of the medians and the per-round ratios, and the CPU time each
app's process spent per request.

Also measured on the shipped app: a password login (argon2id verify, off the event loop), and the event stream's
delivery latency: from sending POST /vms/{name}/start to the `job` message for that job arriving on an open
GET /api/v1/events (fake driver, so the job itself is instant).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from common import RESULTS_DIR, BenchError, free_port, new_results, proc_cpu_s, reap, summary
from virtfleet.client import parse_sse
from virtfleet.config import Settings

console = Console()
PASSWORD = "bench-password-123"  # noqa: S105 - the benchmark's throwaway user, in a temporary data directory
SERVER_SCRIPT = Path(__file__).resolve().parent / "api_server.py"
START_TIMEOUT = 30.0
WITH, WITHOUT = "with auth", "without auth"


class App:
    """One app under test: bench/api_server.py as a subprocess on its own data directory and port."""

    def __init__(self, data_dir: Path, *, auth: bool) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.with_suffix(".log")
        argv = [sys.executable, str(SERVER_SCRIPT), "--data-dir", str(data_dir), "--port", str(self.port),
                *([] if auth else ["--no-auth"])]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)

    def wait_ready(self) -> None:
        """Probe /health until it answers (start-up only; nothing is timed here)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the app on {self.url} exited with {self.proc.returncode}: "
                                 f"{self.log_path.read_text(errors='replace')[-500:]}")
            try:
                httpx.get(f"{self.url}/api/v1/health", timeout=2).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise BenchError(f"the app on {self.url} did not answer within {START_TIMEOUT:g}s")

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid) or 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            reap(self.proc, 15)


def timed_reads(client: httpx.Client, names: list[str], count: int) -> float:
    """Seconds per request over `count` list reads and `count` single-VM reads."""
    t0 = time.perf_counter()
    for i in range(count):
        client.get("/api/v1/vms").raise_for_status()
        client.get(f"/api/v1/vms/{names[i % len(names)]}").raise_for_status()
    return (time.perf_counter() - t0) / (2 * count)


def login_seconds(url: str, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        with httpx.Client(base_url=url) as anonymous:
            t0 = time.perf_counter()
            anonymous.post("/api/v1/auth/login", json={"username": "bench", "password": PASSWORD}).raise_for_status()
            samples.append(time.perf_counter() - t0)
    return samples


def event_latency(client: httpx.Client, url: str, headers: dict[str, str], rounds: int) -> list[float]:
    """From sending POST start to the job's first message on the event stream."""
    samples: list[float] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as streamer, \
            streamer.stream("GET", "/api/v1/events") as stream:
        lines = stream.iter_lines()
        for i in range(rounds):
            name = f"ev{i}"
            client.post("/api/v1/vms", json={"name": name}).raise_for_status()
            t0 = time.perf_counter()
            job = client.post(f"/api/v1/vms/{name}/start").json()
            for message in parse_sse(lines):
                if message["event"] == "job" and message["data"]["id"] == job["id"]:
                    samples.append(time.perf_counter() - t0)
                    break
            client.get(f"/api/v1/jobs/{job['id']}", params={"wait": 10}).raise_for_status()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="list + show requests per round and app")
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--json-out", type=Path, default=RESULTS_DIR / "api.json")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < 1 or args.vms < 1:
        parser.error("--rounds, --requests and --vms must be >= 1")
    results = new_results("api", {"rounds": args.rounds, "requests": args.requests, "vms": args.vms,
                                  "order": "ABBA", "processes": "one per app, the client in a third"})
    root = Path(tempfile.mkdtemp(prefix="vfa-", dir="/tmp"))
    apps: dict[str, App] = {}
    try:
        apps = {WITH: App(root / "auth", auth=True), WITHOUT: App(root / "open", auth=False)}
        for app in apps.values():
            app.wait_ready()
        token = Settings(data_dir=apps[WITH].data_dir).admin_token_path.read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        clients = {WITH: httpx.Client(base_url=apps[WITH].url, headers=headers, timeout=30),
                   WITHOUT: httpx.Client(base_url=apps[WITHOUT].url, timeout=30)}
        results["pids"] = {label: app.proc.pid for label, app in apps.items()}
        try:
            names = [f"vm{i}" for i in range(args.vms)]
            for client in clients.values():
                build = client.post("/api/v1/images/tiny/build").json()  # the real builder: the VMs need an image
                client.get(f"/api/v1/jobs/{build['id']}", params={"wait": 60}).raise_for_status()
                for name in names:
                    client.post("/api/v1/vms", json={"name": name}).raise_for_status()
                timed_reads(client, names, 20)  # warm-up
            per_request: dict[str, list[float]] = {WITH: [], WITHOUT: []}
            cpu_per_request: dict[str, list[float]] = {WITH: [], WITHOUT: []}
            for round_no in range(1, args.rounds + 1):
                order = (WITH, WITHOUT) if round_no % 2 else (WITHOUT, WITH)  # ABBA
                for label in order:
                    cpu0 = apps[label].cpu_s()
                    per_request[label].append(timed_reads(clients[label], names, args.requests))
                    cpu_per_request[label].append((apps[label].cpu_s() - cpu0) / (2 * args.requests))
                console.print(f"[dim]round {round_no}/{args.rounds} ({' then '.join(order)}): "
                              + ", ".join(f"{label} {per_request[label][-1] * 1000:.2f} ms" for label in order)
                              + "[/dim]")
            ratios = [a / b for a, b in zip(per_request[WITH], per_request[WITHOUT], strict=True)]
            auth_client = clients[WITH]
            auth_client.post("/api/v1/users", json={"name": "bench", "role": "viewer", "password": PASSWORD})
            results["login_s"] = summary(login_seconds(apps[WITH].url, 10))
            results["event_latency_s"] = summary(event_latency(auth_client, apps[WITH].url, headers, 20))
            results["request_samples_s"] = per_request
            results["request_s"] = {label: summary(values) for label, values in per_request.items()}
            results["app_cpu_per_request_s"] = {label: summary(values) for label, values in cpu_per_request.items()}
            results["auth_ratio_of_medians"] = (results["request_s"][WITH]["median"]
                                                / results["request_s"][WITHOUT]["median"])
            results["auth_ratio"] = summary(ratios)
        finally:
            for client in clients.values():
                client.close()
    finally:
        for app in apps.values():
            app.stop()
        shutil.rmtree(root, ignore_errors=True)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    render(results, args.json_out)
    return 0


def render(results: dict[str, Any], json_out: Path) -> None:
    config = results["config"]
    table = Table("measure", "median", "min", "max", "stdev", box=None, header_style="bold",
                  title=f"{config['rounds']} rounds (ABBA) of {config['requests']} list + {config['requests']} "
                  "show requests per app; each app in its own process, the client in a third")
    for label, stats in results["request_s"].items():
        table.add_row(f"GET /vms, /vms/NAME {label} (ms)",
                      *(f"{stats[k] * 1000:.3f}" for k in ("median", "min", "max", "stdev")))
    for label, stats in results["app_cpu_per_request_s"].items():
        table.add_row(f"  app process CPU per request, {label} (ms)",
                      *(f"{stats[k] * 1000:.3f}" for k in ("median", "min", "max", "stdev")))
    table.add_row("[bold]ratio with / without auth (medians)[/bold]",
                  f"[bold]{results['auth_ratio_of_medians']:.3f}[/bold]", "", "", "")
    ratio = results["auth_ratio"]
    table.add_row("  ratio per round", *(f"{ratio[k]:.3f}" for k in ("median", "min", "max", "stdev")))
    for key, label in (("login_s", "password login (ms)"), ("event_latency_s", "start -> job event (ms)")):
        stats = results[key]
        table.add_row(label, *(f"{stats[k] * 1000:.1f}" for k in ("median", "min", "max", "stdev")))
    console.print(table)
    console.print(f"[dim]every sample in {json_out}[/dim]")


if __name__ == "__main__":
    raise SystemExit(main())
