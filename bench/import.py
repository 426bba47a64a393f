#!/usr/bin/env python3
"""Import benchmark: a VMware disk (monolithicSparse VMDK) and a Hyper-V disk (dynamic VHDX) through `virtfleet
import` vs. a plain `qemu-img convert` of the same file.

    .venv/bin/python bench/import.py [--rounds 4] [--size 1G] [--formats vmdk,vhdx] [--keep]
                                     [--json-out bench/results/import.json]

A `virtfleet serve` runs as a subprocess on a free port with a throw-away data directory under /tmp. For each format
a source disk of --size filled with random data (written, not sparse) is made with qemu-img and put in the serve's
import directory. After one uncounted warm-up of each side (which also checks the result with `qemu-img compare`),
--rounds rounds in ABBA order (A, B, B, A, ...) of:

  (A) import through the API: POST /api/v1/imports {"path": the disk} until its job is done: the disk is opened,
      checked, converted to a qcow2 volume (written with O_DIRECT and fsynced before it is published), the VM is
      recorded. The VM and its volume are deleted again through the API before the next sample.
  (B) `qemu-img convert -f FMT -O qcow2 SRC DST` run directly, DST in the pool directory; then an fsync of DST timed
      on its own (the import's volume is durable when its job ends).

Each side runs in its own process (serve for A, qemu-img for B); dirty pages are written back (sync) before every
timed operation. Reported per format: medians and spread, throughput, the ratio import / qemu-img convert (target
<= 1.05) and import / (convert + fsync). Whatever happens, the script deletes what it made, stops serve, kills by pid
any qemu-img still running on its data directory and removes the directory (unless --keep).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
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
    job_seconds,
    kill_by_pid,
    memory_mib,
    new_results,
    progress_printer,
    run_and_record,
    software_facts,
    summary,
    wait_ok,
)
from virtfleet.client import ApiError, Client
from virtfleet.model.units import parse_size_bytes

MiB = 1024 * 1024
CHUNK = 4 * MiB
JOB_TIMEOUT = 900.0
RATIO_TARGET = 1.05
CREATE_OPTIONS = {"vmdk": ["-o", "subformat=monolithicSparse"], "vhdx": ["-o", "subformat=dynamic"]}

console = Console(width=None if sys.stdout.isatty() else 110)
Progress = Callable[[str], None]


def run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BenchError(f"cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def fsync_file(path: Path) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


@dataclass
class Bench:
    size: int
    rounds: int
    formats: list[str]
    data_dir: Path
    serve: Serve
    client: Client
    results: dict[str, Any]
    vms: list[str] = field(default_factory=list)  # VMs (with their volume) to remove at the end
    counter: int = 0

    @property
    def pool_dir(self) -> Path:
        return self.data_dir / "pools" / "default"

    @property
    def import_dir(self) -> Path:
        return self.data_dir / "import"

    def make_source(self, fmt: str, progress: Progress) -> Path:
        raw = self.data_dir / "source.raw"
        if not raw.exists():
            progress(f"writing {self.size // MiB} MiB of random data")
            with raw.open("xb") as out:
                left = self.size
                while left:
                    n = min(CHUNK, left)
                    out.write(os.urandom(n))
                    left -= n
        self.import_dir.mkdir(exist_ok=True)
        source = self.import_dir / f"disk.{fmt}"
        progress(f"making the {fmt} source ({' '.join(CREATE_OPTIONS[fmt])})")
        run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *CREATE_OPTIONS[fmt], str(raw), str(source)])
        return source

    # (A) through the API
    def api_import(self, source: Path, fmt: str, *, verify: bool = False) -> dict[str, Any]:
        self.counter += 1
        name = f"imp{self.counter:03d}"
        os.sync()
        t0 = time.perf_counter()
        job = self.client.post("/imports", json={"path": source.name, "name": name})
        self.vms.append(name)
        done = wait_ok(self.client, job, f"import {name}", JOB_TIMEOUT, self.serve)
        seconds = time.perf_counter() - t0
        volume = self.pool_dir / name
        sample: dict[str, Any] = {"seconds": seconds, "job_s": job_seconds(done), "mib_s": self.size / MiB / seconds,
                                  "fsync_after_s": fsync_file(volume), "file_size": volume.stat().st_size}
        if verify:
            run(["qemu-img", "compare", "-f", fmt, "-F", "qcow2", str(source), str(volume)])
            sample["verified"] = True
        self.delete_vm(name)
        return sample

    def delete_vm(self, name: str) -> None:
        job = self.client.delete(f"/vms/{name}", delete_volumes="true")
        wait_ok(self.client, job, f"delete {name}", JOB_TIMEOUT, self.serve)
        self.vms.remove(name)

    # (B) qemu-img by hand
    def qemu_img(self, source: Path, fmt: str, *, verify: bool = False) -> dict[str, Any]:
        self.counter += 1
        dst = self.pool_dir / f".bench-{self.counter:03d}"
        os.sync()
        try:
            t0 = time.perf_counter()
            run(["qemu-img", "convert", "-f", fmt, "-O", "qcow2", str(source), str(dst)])
            seconds = time.perf_counter() - t0
            fsync_s = fsync_file(dst)
            sample: dict[str, Any] = {"seconds": seconds, "fsync_after_s": fsync_s, "with_fsync_s": seconds + fsync_s,
                                      "mib_s": self.size / MiB / seconds, "file_size": dst.stat().st_size}
            if verify:
                run(["qemu-img", "compare", "-f", fmt, "-F", "qcow2", str(source), str(dst)])
                sample["verified"] = True
            return sample
        finally:
            dst.unlink(missing_ok=True)

    def measure(self, progress: Progress) -> None:
        per_format: dict[str, Any] = {}
        for fmt in self.formats:
            source = self.make_source(fmt, progress)
            progress(f"{fmt}: warm-up (uncounted), each side verified with qemu-img compare")
            warmup = {"import": self.api_import(source, fmt, verify=True), "qemu_img": self.qemu_img(source, fmt,
                                                                                                      verify=True)}
            samples: dict[str, list[dict[str, Any]]] = {"import": [], "qemu_img": []}
            for index in range(self.rounds):
                # ABBA: A B, B A, A B, ...
                order = ("import", "qemu_img") if index % 2 == 0 else ("qemu_img", "import")
                for kind in order:
                    sample = self.api_import(source, fmt) if kind == "import" else self.qemu_img(source, fmt)
                    sample["round"] = index
                    samples[kind].append(sample)
                a, b = samples["import"][-1], samples["qemu_img"][-1]
                progress(f"{fmt} round {index + 1}/{self.rounds} ({' then '.join(order)}): import {a['seconds']:.2f}s, "
                         f"qemu-img convert {b['seconds']:.2f}s (+ fsync {b['fsync_after_s']:.2f}s)")
            per_format[fmt] = {"warmup": warmup, "samples": samples, "summary": self.summarize(samples)}
            source.unlink()
        self.results["formats"] = per_format

    @staticmethod
    def summarize(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        imp = [s["seconds"] for s in samples["import"]]
        raw = [s["seconds"] for s in samples["qemu_img"]]
        raw_sync = [s["with_fsync_s"] for s in samples["qemu_img"]]
        ratio = statistics.median(imp) / statistics.median(raw)
        return {
            "import_s": summary(imp),
            "import_job_s": summary([s["job_s"] for s in samples["import"] if s["job_s"] is not None]),
            "import_mib_s": summary([s["mib_s"] for s in samples["import"]]),
            "qemu_img_s": summary(raw),
            "qemu_img_with_fsync_s": summary(raw_sync),
            "qemu_img_mib_s": summary([s["mib_s"] for s in samples["qemu_img"]]),
            "ratio_import_to_qemu_img": ratio,
            "ratio_import_to_qemu_img_with_fsync": statistics.median(imp) / statistics.median(raw_sync),
            "ratio_min_import_to_qemu_img": min(imp) / min(raw),
            "ratio_per_round": [a["seconds"] / b["seconds"]
                                for a, b in zip(samples["import"], samples["qemu_img"], strict=True)],
            "target": {"ratio_at_most": RATIO_TARGET, "met": ratio <= RATIO_TARGET},
        }

    def cleanup(self) -> dict[str, Any]:
        report: dict[str, Any] = {"api_removed": [], "errors": []}
        if self.serve.running:
            for name in list(self.vms):
                try:
                    self.delete_vm(name)
                    report["api_removed"].append(name)
                except (ApiError, BenchError) as error:
                    report["errors"].append(f"deleting vm {name}: {error}")
        self.serve.stop()
        marker = str(self.data_dir)
        report["killed_qemu_img_pids"], report["qemu_img_left"] = kill_by_pid(
            partial(find_pids, lambda program: program == "qemu-img", marker, zombies=True))
        return report


def render(results: dict[str, Any]) -> None:
    facts = results.get("machine", {})
    if facts:
        console.print(f"[bold]machine:[/bold] {facts['cpu_count']} CPUs ({facts['cpu_model']}), "
                      f"{facts['memory_mib']} MiB, data dir on {facts['data_dir_fs']}; {facts['qemu_img_version']}; "
                      f"virtfleet {facts['virtfleet_version']}")
    config = results["config"]
    for fmt, data in results.get("formats", {}).items():
        s = data["summary"]
        table = Table(title=f"{fmt}: {config['size']} of random data -> qcow2 (seconds; {config['rounds']} rounds, "
                            "ABBA)")
        for column in ("", "median", "min", "max", "stdev", "MiB/s (median)"):
            table.add_column(column, justify="left" if not column else "right")

        def row(label: str, stats: dict[str, float], rate: dict[str, float] | None = None,
                table: Table = table) -> None:
            if stats:
                table.add_row(label, f"{stats['median']:.3f}", f"{stats['min']:.3f}", f"{stats['max']:.3f}",
                              f"{stats['stdev']:.3f}", f"{rate['median']:.0f}" if rate else "")

        row("(A) virtfleet import, API (POST -> job done)", s["import_s"], s["import_mib_s"])
        row("    import job (server side)", s["import_job_s"])
        row("(B) qemu-img convert, direct", s["qemu_img_s"], s["qemu_img_mib_s"])
        row("    qemu-img convert + fsync of the copy", s["qemu_img_with_fsync_s"])
        met = "[green]met[/green]" if s["target"]["met"] else "[red]missed[/red]"
        table.add_row("[bold]ratio import / qemu-img convert (medians)[/bold]",
                      f"[bold]{s['ratio_import_to_qemu_img']:.3f}[/bold]", "", "", "",
                      f"target <= {s['target']['ratio_at_most']}: {met}")
        table.add_row("ratio import / (convert + fsync); of the minimums",
                      f"{s['ratio_import_to_qemu_img_with_fsync']:.3f}; {s['ratio_min_import_to_qemu_img']:.3f}",
                      "", "", "", "")
        console.print(table)
        console.print("per-round ratio import / convert: " + ", ".join(f"{v:.3f}" for v in s["ratio_per_round"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=4, help="counted rounds per format, ABBA (default 4)")
    parser.add_argument("--size", default="1G", help="virtual size of the source disks, all written (default 1G)")
    parser.add_argument("--formats", default="vmdk,vhdx", help="comma-separated: vmdk, vhdx (default both)")
    add_output_options(parser, "import", "serve log, import directory, pool")
    args = parser.parse_args(argv)
    try:
        size = parse_size_bytes(args.size)
    except ValueError as error:
        parser.error(f"--size: {error}")
    formats = [fmt.strip() for fmt in args.formats.split(",") if fmt.strip()]
    if args.rounds < 1 or size < MiB or size % MiB or not formats or set(formats) - set(CREATE_OPTIONS):
        parser.error("--rounds >= 1, --size a whole number of MiB, --formats among vmdk,vhdx")
    started = time.perf_counter()
    results = new_results("import", {"rounds": args.rounds, "size": args.size, "formats": formats})
    with data_dir("vfimport", args.keep, console) as root:
        serve = Serve(root, free_port(), root / "serve.log", driver="fake")
        client = Client(serve.url, timeout=60.0)
        bench = Bench(size, args.rounds, formats, root, serve, client, results)
        progress = progress_printer(console, started)

        def body() -> None:
            fs_type = run(["stat", "-f", "-c", "%T", str(root)]).strip()
            results["machine"] = {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "memory_mib": memory_mib(),
                                  "qemu_img_version": run(["qemu-img", "--version"]).splitlines()[0],
                                  "data_dir_fs": fs_type, **software_facts()}
            progress(f"starting virtfleet serve (fake VM driver; storage runs real qemu-img) in {root}")
            serve.start(client)
            bench.measure(progress)

        status = run_and_record(body, bench.cleanup, results=results, serve=serve, client=client, console=console,
                                json_out=args.json_out, started=started)
    render(results)
    console.print(f"results: {args.json_out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
