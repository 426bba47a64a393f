#!/usr/bin/env python3
"""CLI start-up benchmark: `virtfleet` commands against `python -c pass` and a plain HTTP GET, side by side in one run.

    .venv/bin/python bench/cli_start.py [--rounds 20] [--vms 5] [--baseline-src /work/main/src]
                                        [--json-out bench/results/cli_start.json]

One `virtfleet serve` on the fake driver (a subprocess on a throw-away data directory under /tmp, a loopback port) holds
--vms stopped VMs. Each sample is one process, timed from spawn to exit (wall) with its CPU time (user + system, from
wait4): `python -c pass`, `python -c 'import typer'` (the CLI's framework alone), `virtfleet version`,
`virtfleet --help`, `virtfleet vm list --json`, and the same GET /api/v1/vms by a one-line httpx script and a one-line
http.client script (what any Python client pays). With
--baseline-src the three virtfleet commands also run from that source tree (e.g. main's), in the same rounds.
Rounds alternate the order (ABBA: forward, then backward), so drift on a shared machine hits every case alike.
Prints medians, spread (min-max) and ratios; writes every sample to the JSON file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from common import (
    BenchError,
    Serve,
    add_output_options,
    data_dir,
    free_port,
    new_results,
    progress_printer,
    run_and_record,
    software_facts,
    summary,
)
from virtfleet.client import Client

console = Console(width=None if sys.stdout.isatty() else 132)
SRC = Path(__file__).resolve().parents[1] / "src"
HTTPX_GET = ("import httpx, os; httpx.get(os.environ['VIRTFLEET_URL'] + '/api/v1/vms', headers={'Authorization': "
             "'Bearer ' + os.environ['VIRTFLEET_TOKEN']}).raise_for_status()")
HTTP_CLIENT_GET = ("import http.client, os; c = http.client.HTTPConnection(os.environ['VIRTFLEET_URL'][7:]); "
                   "c.request('GET', '/api/v1/vms', "
                   "headers={'Authorization': 'Bearer ' + os.environ['VIRTFLEET_TOKEN']}); "
                   "r = c.getresponse(); r.read(); assert r.status == 200")


def virtfleet(*args: str) -> list[str]:
    """The command as installed (the venv's console script), else `python -m virtfleet`; PYTHONPATH picks the code."""
    script = Path(sys.prefix) / "bin" / "virtfleet"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "virtfleet", *args]


def cases(baseline: Path | None) -> dict[str, tuple[list[str], Path]]:
    """name -> (argv, the source tree on PYTHONPATH)."""
    commands = {"version": virtfleet("version"), "--help": virtfleet("--help"),
                "vm list --json": virtfleet("vm", "list", "--json")}
    chosen = {"python -c pass": ([sys.executable, "-c", "pass"], SRC),
              "python -c 'import typer'": ([sys.executable, "-c", "import typer"], SRC),
              **{f"virtfleet {name}": (argv, SRC) for name, argv in commands.items()},
              "httpx GET /vms": ([sys.executable, "-c", HTTPX_GET], SRC),
              "http.client GET /vms": ([sys.executable, "-c", HTTP_CLIENT_GET], SRC)}
    if baseline is not None:
        chosen.update({f"baseline: virtfleet {name}": (argv, baseline) for name, argv in commands.items()})
    return chosen


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of `argv` (its output discarded; a failure stops the benchmark)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    errors = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with {proc.returncode}: {errors[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="samples per case (half forward, half backward)")
    parser.add_argument("--vms", type=int, default=5, help="stopped VMs `vm list` shows")
    parser.add_argument("--baseline-src", type=Path, help="also run the virtfleet commands from this src/ tree")
    add_output_options(parser, "cli_start", "the serve log")
    args = parser.parse_args()
    chosen = cases(args.baseline_src)
    results = new_results("cli_start", {"rounds": args.rounds, "vms": args.vms, "src": str(SRC),
                                        "baseline_src": str(args.baseline_src) if args.baseline_src else None,
                                        "cases": {name: argv for name, (argv, _) in chosen.items()}})
    results["software"] = software_facts()
    started = time.perf_counter()
    progress = progress_printer(console, started)
    with data_dir("vfcli", args.keep, console) as root:
        serve = Serve(root / "data", free_port(), root / "serve.log", driver="fake")
        client = Client(serve.url, timeout=30.0)

        def body() -> None:
            results["serve_start_s"] = serve.start(client)
            for index in range(args.vms):
                client.create_vm({"name": f"bench{index}", "image": None, "machine": "q35",  # no image is built here
                                  "disks": [{"new": {"size": "1M"}}]})
            env = {**os.environ, "VIRTFLEET_URL": serve.url, "VIRTFLEET_TOKEN": serve.token()}
            env.pop("VIRTFLEET_DATA_DIR", None)
            samples: dict[str, dict[str, list[float]]] = {name: {"wall_s": [], "cpu_s": []} for name in chosen}
            progress(f"serve up with {args.vms} VMs; {args.rounds} rounds of {len(chosen)} processes")
            for round_no in range(args.rounds):
                order = list(chosen) if round_no % 2 == 0 else list(reversed(chosen))
                for name in order:
                    argv, src = chosen[name]
                    wall, cpu = timed(argv, {**env, "PYTHONPATH": str(src)})
                    samples[name]["wall_s"].append(wall)
                    samples[name]["cpu_s"].append(cpu)
            results["samples"] = samples
            results["summary"] = {name: {kind: summary(values) for kind, values in sample.items()}
                                  for name, sample in samples.items()}
            show(results["summary"])

        def cleanup() -> dict[str, Any]:
            serve.stop()
            return {"serve_stopped": not serve.running}

        status = run_and_record(body, cleanup, results=results, serve=serve, client=client, console=console,
                                json_out=args.json_out, started=started)
    console.print(f"results: {args.json_out}")
    return status


def show(stats: dict[str, dict[str, dict[str, float]]]) -> None:
    grid = Table("case", "wall median", "wall min-max", "CPU median", "CPU min-max", "wall / python -c pass",
                 "wall / httpx GET", title="one process from spawn to exit, milliseconds (CPU: user + system)")
    floor = stats["python -c pass"]["wall_s"]["median"]
    httpx_get = stats["httpx GET /vms"]["wall_s"]["median"]
    for name, kinds in stats.items():
        wall, cpu = kinds["wall_s"], kinds["cpu_s"]
        grid.add_row(name, f"{wall['median'] * 1000:.1f}", f"{wall['min'] * 1000:.0f}-{wall['max'] * 1000:.0f}",
                     f"{cpu['median'] * 1000:.1f}", f"{cpu['min'] * 1000:.0f}-{cpu['max'] * 1000:.0f}",
                     f"{wall['median'] / floor:.2f}", f"{wall['median'] / httpx_get:.2f}")
    console.print(grid)


if __name__ == "__main__":
    sys.exit(main())
