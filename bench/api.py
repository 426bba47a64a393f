#!/usr/bin/env python3
"""API benchmark: what authentication and the event stream cost, measured side by side in one run.

    .venv/bin/python bench/api.py [--rounds 5] [--requests 300] [--vms 20] [--json-out bench/results/api.json]

Two `virtfleet serve` apps on the fake driver run in this process (uvicorn in threads, throw-away data directories
under /tmp, loopback ports): one as shipped, one with the auth middleware taken out. Each holds --vms stopped VMs.
Then --rounds rounds, alternating which app goes first, of --requests keep-alive GET /api/v1/vms (and as many
GET /api/v1/vms/{name}) on each: the ratio with/without auth is the price of checking a token per request (a hashed
lookup in SQLite).

Also measured on the shipped app: a password login (argon2id verify, off the event loop), and the event stream's
delivery latency: from sending POST /vms/{name}/start to the `job` message for that job arriving on an open
GET /api/v1/events (fake driver, so the job itself is instant).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table

from common import RESULTS_DIR, free_port, new_results, summary
from virtfleet.api.app import create_app
from virtfleet.api.auth import AuthMiddleware
from virtfleet.api.events import UvicornServer
from virtfleet.client import parse_sse
from virtfleet.config import Settings

console = Console()
PASSWORD = "bench-password-123"  # noqa: S105 - the benchmark's throwaway user, in a temporary data directory


@contextmanager
def serving(data_dir: Path, *, auth: bool) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(Settings(data_dir=data_dir, driver="fake", reconcile_interval=0.5, metrics_interval=3600))
    if not auth:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not AuthMiddleware]
    port = free_port()
    server = UvicornServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"), app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(15)


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
    results = new_results("api", {"rounds": args.rounds, "requests": args.requests, "vms": args.vms})
    root = Path(tempfile.mkdtemp(prefix="vfa-", dir="/tmp"))
    try:
        with serving(root / "auth", auth=True) as (auth_url, _), serving(root / "open", auth=False) as (open_url, _):
            token = Settings(data_dir=root / "auth").admin_token_path.read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            clients = {"with auth": httpx.Client(base_url=auth_url, headers=headers, timeout=30),
                       "without auth": httpx.Client(base_url=open_url, timeout=30)}
            names = [f"vm{i}" for i in range(args.vms)]
            for client in clients.values():
                build = client.post("/api/v1/images/tiny/build").json()  # the real builder: the VMs need an image
                client.get(f"/api/v1/jobs/{build['id']}", params={"wait": 60}).raise_for_status()
                for name in names:
                    client.post("/api/v1/vms", json={"name": name}).raise_for_status()
                timed_reads(client, names, 20)  # warm-up
            per_request: dict[str, list[float]] = {label: [] for label in clients}
            for round_no in range(args.rounds):
                order = list(clients) if round_no % 2 == 0 else list(reversed(clients))
                for label in order:
                    per_request[label].append(timed_reads(clients[label], names, args.requests))
            ratios = [a / b for a, b in zip(per_request["with auth"], per_request["without auth"], strict=True)]
            auth_client = clients["with auth"]
            auth_client.post("/api/v1/users", json={"name": "bench", "role": "viewer", "password": PASSWORD})
            results["login_s"] = summary(login_seconds(auth_url, 10))
            results["event_latency_s"] = summary(event_latency(auth_client, auth_url, headers, 20))
            results["request_s"] = {label: summary(values) for label, values in per_request.items()}
            results["auth_ratio"] = summary(ratios)
            for client in clients.values():
                client.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    render(results)
    return 0


def render(results: dict[str, Any]) -> None:
    table = Table("measure", "median", "min", "max", box=None, header_style="bold")
    for label, stats in results["request_s"].items():
        table.add_row(f"GET /vms, /vms/NAME {label} (ms)",
                      *(f"{stats[k] * 1000:.2f}" for k in ("median", "min", "max")))
    ratio = results["auth_ratio"]
    table.add_row("ratio with / without auth", *(f"{ratio[k]:.3f}" for k in ("median", "min", "max")))
    for key, label in (("login_s", "password login (ms)"), ("event_latency_s", "start -> job event (ms)")):
        stats = results[key]
        table.add_row(label, *(f"{stats[k] * 1000:.1f}" for k in ("median", "min", "max")))
    console.print(table)
    console.print(f"[dim]every sample in {RESULTS_DIR / 'api.json'}[/dim]")


if __name__ == "__main__":
    raise SystemExit(main())
