#!/usr/bin/env python3
"""Clone benchmark: linked and full clones of a template through the API vs. `qemu-img convert` run by hand.

    .venv/bin/python bench/clone.py [--rounds 3] [--size 1G] [--linked 5] [--driver qemu|libvirt]
                                    [--json-out bench/results/clone.json] [--keep]

A `virtfleet serve` runs as a subprocess on a free port with a throw-away data directory under /tmp. The source is a
qcow2 volume of --size filled with random data (written, not sparse): a raw file of random bytes is converted to qcow2
locally and uploaded (PUT .../data?format=qcow2 with its sha256), then marked a template. Then, after one uncounted
warm-up of each (which also checks the copies with `qemu-img compare`), --rounds rounds of:

  (a) linked clone through the API: POST /volumes/default/<template>/clone {"linked": true} until its job is done
      (--linked of them per round);
  (b) full clone through the API: the same with {"linked": false}. virtfleet runs
      `qemu-img convert -p -t none -f qcow2 -O qcow2 SRC TMP` (O_DIRECT writes, where the file system takes them),
      then fsyncs TMP, renames it into place and fsyncs the directory;
  (c) the like-for-like reference, run directly on the template's file into the same pool directory: the same
      `qemu-img convert -p -t none ...` (-t none only where virtfleet would use it: the same O_DIRECT probe), then
      an fsync of the copy and of the directory, all timed together;
  (d) the plain reference: `qemu-img convert -f qcow2 -O qcow2 SRC DST`, page cache and no fsync (what a user
      typing it by hand gets; the data is not on the disk when it returns). An fsync of DST is timed apart.

(b), (c) and (d) run in ABC CBA order (b first in odd rounds, last in even ones); the page cache is flushed (sync)
before every timed operation, and every copy is deleted again (through the API, or unlinked) before the next one.
Reported: medians and spread, the throughput (virtual size / time), the ratio full clone / (c), which is the
like-for-like one the target (<= 1.05) applies to, and full clone / (d) next to it, so both are visible; the linked
clone median (target < 0.2 s).

--driver picks the serve process's VM driver: qemu (default), libvirt (`--driver libvirt:qemu:///system`, the
system libvirtd), libvirt:URI or fake. It does not change what is measured: a volume clone is storage work (the
same qemu-img convert, fsyncs and rename in the same pool directory) whichever driver runs the VMs, and no VM runs
during the benchmark. The libvirt column only shows that a serve managing its VMs through libvirt clones at the
same cost; GET /host is recorded to show which driver served.

Whatever happens, the script deletes the volumes it made, stops the serve process, kills by pid any qemu-img still
running on its data directory and removes that directory (unless --keep). The table goes to stdout, every sample to
the JSON file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import libvirt_side
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
TEMPLATE = "golden"
JOB_TIMEOUT = 600.0
LINKED_TARGET_S = 0.2
RATIO_TARGET = 1.05

console = Console(width=None if sys.stdout.isatty() else 110)
Progress = Callable[[str], None]


# --- small helpers ------------------------------------------------------------------------------------------------


def run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BenchError(f"cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def fsync_file(path: Path) -> float:
    """fsync one file; returns the seconds it took."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def flush_page_cache_writes() -> None:
    """Write back every dirty page now, so a timed operation never pays for the previous one's data."""
    os.sync()


def supports_direct(directory: Path) -> bool:
    """Can files in `directory` be opened with O_DIRECT (tmpfs cannot)? The probe virtfleet's qemu_img.convert
    makes before it passes -t none."""
    probe = directory / ".bench-direct-probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink(missing_ok=True)
    return True


def fsync_dir(directory: Path) -> float:
    """fsync a directory (makes a new name in it durable); returns the seconds it took."""
    t0 = time.perf_counter()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def our_qemu_img_pids(marker: str) -> list[int]:
    """qemu-img processes (zombies too) whose command line names `marker` (the benchmark's unique data directory)."""
    return find_pids(lambda program: program == "qemu-img", marker, zombies=True)


def machine_facts(path: Path) -> dict[str, Any]:
    try:
        qemu_img = run(["qemu-img", "--version"]).splitlines()[0].strip()
    except BenchError as exc:
        qemu_img = f"unknown ({exc})"
    try:
        fs_type = run(["stat", "-f", "-c", "%T", str(path)]).strip()
    except BenchError:
        fs_type = "unknown"
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_mib": memory_mib(),
        "kernel": platform.release(),
        "qemu_img_version": qemu_img,
        "data_dir_fs": fs_type,
        **software_facts(),
    }




# --- the benchmark ------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    size: int
    rounds: int
    linked_per_round: int
    data_dir: Path
    serve: Serve
    client: Client
    results: dict[str, Any]
    template_path: Path = Path()
    made: list[str] = field(default_factory=list)  # volume names to remove at the end, in creation order
    samples: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"linked": [], "full": [], "qemu_img_durable": [], "qemu_img": []})
    counter: int = 0

    @property
    def pool_dir(self) -> Path:
        return self.data_dir / "pools" / "default"

    @property
    def size_mib(self) -> float:
        return self.size / MiB

    def next_name(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}{self.counter:03d}"

    def wait_ok(self, job: dict[str, Any], what: str) -> dict[str, Any]:
        return wait_ok(self.client, job, what, JOB_TIMEOUT, self.serve)

    def delete_volume(self, name: str) -> None:
        self.wait_ok(self.client.delete(f"/volumes/default/{name}"), f"delete volume {name}")
        self.made.remove(name)

    # setup: a template full of random data
    def make_template(self, work: Path, progress: Progress) -> None:
        raw = work / "source.raw"
        qcow = work / "source.qcow2"
        progress(f"writing {self.size_mib:.0f} MiB of random data")
        t0 = time.perf_counter()
        with raw.open("xb") as out:
            left = self.size
            while left:
                n = min(CHUNK, left)
                out.write(os.urandom(n))
                left -= n
        random_s = time.perf_counter() - t0
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)])
        raw.unlink()
        digest = hashlib.sha256()
        with qcow.open("rb") as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
        file_bytes = qcow.stat().st_size
        progress(f"uploading it as qcow2 ({file_bytes / MiB:.0f} MiB file) into the default pool")
        t0 = time.perf_counter()
        self.client.upload(f"/pools/default/volumes/{TEMPLATE}/data", qcow, format="qcow2",
                           sha256=digest.hexdigest())
        upload_s = time.perf_counter() - t0
        self.made.append(TEMPLATE)
        qcow.unlink()
        self.client.post(f"/volumes/default/{TEMPLATE}/template", json={"template": True})
        details = self.client.get(f"/volumes/default/{TEMPLATE}")
        self.template_path = Path(details["volume"]["path"])
        actual = int(details["actual_size"])
        if details["volume"]["format"] != "qcow2" or details["volume"]["size"] != self.size:
            raise BenchError(f"the uploaded template is not a {self.size}-byte qcow2: {details['volume']}")
        if actual < self.size * 0.95:
            raise BenchError(f"the template holds only {actual} bytes of {self.size}: it is sparse, not written")
        self.results["template"] = {
            "ref": f"default/{TEMPLATE}", "path": str(self.template_path), "virtual_size": self.size,
            "actual_size": actual, "file_size": file_bytes, "random_data_s": random_s, "upload_s": upload_s,
            "upload_mib_s": file_bytes / MiB / upload_s,
        }

    # (a) and (b): a clone through the API
    def api_clone(self, *, linked: bool, verify: bool = False) -> dict[str, Any]:
        name = self.next_name("linked" if linked else "full")
        flush_page_cache_writes()
        t0 = time.perf_counter()
        job = self.client.post(f"/volumes/default/{TEMPLATE}/clone", json={"name": name, "linked": linked})
        self.made.append(name)
        posted = time.perf_counter() - t0
        done = self.wait_ok(job, f"{'linked' if linked else 'full'} clone {name}")
        seconds = time.perf_counter() - t0
        path = self.pool_dir / name
        sample: dict[str, Any] = {"name": name, "seconds": seconds, "post_s": posted, "job_s": job_seconds(done)}
        if linked:
            chain = self.client.get(f"/volumes/default/{name}")["backing_chain"]
            if chain != [str(path), str(self.template_path)]:
                raise BenchError(f"linked clone {name} has the backing chain {chain}")
        else:
            sample["fsync_after_s"] = fsync_file(path)  # ~0: the product fsyncs before it publishes
            sample["mib_s"] = self.size_mib / seconds
            sample["file_size"] = path.stat().st_size
        if verify:
            run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(self.template_path), str(path)])
            sample["verified"] = True
        self.delete_volume(name)
        return sample

    # (c) and (d): qemu-img convert by hand, on the same source, into the same directory
    def qemu_img_convert(self, *, durable: bool, verify: bool = False) -> dict[str, Any]:
        """durable: as virtfleet's full clone does it (-p, -t none where O_DIRECT works, fsync of the copy and of
        the directory, all timed); else a plain convert through the page cache, its fsync timed apart."""
        dst = self.pool_dir / f".bench-{self.next_name('convert')}"
        direct = durable and supports_direct(self.pool_dir)
        flags = ["-p", *(["-t", "none"] if direct else [])] if durable else []
        flush_page_cache_writes()
        try:
            t0 = time.perf_counter()
            run(["qemu-img", "convert", *flags, "-f", "qcow2", "-O", "qcow2", str(self.template_path), str(dst)])
            convert_s = time.perf_counter() - t0
            fsync_s = fsync_file(dst)
            if durable:
                fsync_s += fsync_dir(self.pool_dir)
            seconds = time.perf_counter() - t0 if durable else convert_s
            sample: dict[str, Any] = {
                "seconds": seconds, "convert_s": convert_s, "fsync_after_s": fsync_s,
                "with_fsync_s": convert_s + fsync_s, "direct": direct, "flags": flags,
                "mib_s": self.size_mib / seconds, "file_size": dst.stat().st_size,
            }
            if verify:
                run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(self.template_path), str(dst)])
                sample["verified"] = True
            return sample
        finally:
            dst.unlink(missing_ok=True)

    def measure(self, progress: Progress) -> None:
        progress("warm-up (uncounted): one linked clone, one full clone, one convert of each kind, each verified")
        self.results["warmup"] = {
            "linked": self.api_clone(linked=True, verify=True),
            "full": self.api_clone(linked=False, verify=True),
            "qemu_img_durable": self.qemu_img_convert(durable=True, verify=True),
            "qemu_img": self.qemu_img_convert(durable=False, verify=True),
        }
        self.results["o_direct"] = self.results["warmup"]["qemu_img_durable"]["direct"]
        for index in range(self.rounds):
            for _ in range(self.linked_per_round):
                self.samples["linked"].append(self.api_clone(linked=True))
            order = ("full", "qemu_img_durable", "qemu_img")
            order = order if index % 2 == 0 else order[::-1]  # ABC CBA
            for kind in order:
                if kind == "full":
                    sample = self.api_clone(linked=False)
                else:
                    sample = self.qemu_img_convert(durable=kind == "qemu_img_durable")
                sample["round"] = index
                self.samples[kind].append(sample)
            full, durable, plain = (self.samples[kind][-1] for kind in ("full", "qemu_img_durable", "qemu_img"))
            linked = statistics.median(s["seconds"] for s in self.samples["linked"][-self.linked_per_round:])
            progress(f"round {index + 1}/{self.rounds} ({' then '.join(order)}): full clone {full['seconds']:.2f}s, "
                     f"convert like it {durable['seconds']:.2f}s, plain convert {plain['seconds']:.2f}s "
                     f"(+ fsync {plain['fsync_after_s']:.2f}s), linked clone median {linked * 1000:.0f} ms")
        self.results["samples"] = self.samples
        self.results["summary"] = self.summarize()

    def summarize(self) -> dict[str, Any]:
        linked = [s["seconds"] for s in self.samples["linked"]]
        full = [s["seconds"] for s in self.samples["full"]]
        durable = [s["seconds"] for s in self.samples["qemu_img_durable"]]
        plain = [s["seconds"] for s in self.samples["qemu_img"]]
        plain_sync = [s["with_fsync_s"] for s in self.samples["qemu_img"]]

        def per_round(reference: str) -> dict[str, float]:
            return summary([f["seconds"] / r["seconds"]
                            for f, r in zip(self.samples["full"], self.samples[reference], strict=True)])

        ratio = statistics.median(full) / statistics.median(durable)
        ratio_plain = statistics.median(full) / statistics.median(plain)
        return {
            "linked_s": summary(linked),
            "linked_job_s": summary([s["job_s"] for s in self.samples["linked"] if s["job_s"] is not None]),
            "full_s": summary(full),
            "full_job_s": summary([s["job_s"] for s in self.samples["full"] if s["job_s"] is not None]),
            "full_mib_s": summary([s["mib_s"] for s in self.samples["full"]]),
            "qemu_img_durable_s": summary(durable),
            "qemu_img_durable_fsync_s": summary([s["fsync_after_s"] for s in self.samples["qemu_img_durable"]]),
            "qemu_img_durable_mib_s": summary([s["mib_s"] for s in self.samples["qemu_img_durable"]]),
            "qemu_img_s": summary(plain),
            "qemu_img_with_fsync_s": summary(plain_sync),
            "qemu_img_mib_s": summary([s["mib_s"] for s in self.samples["qemu_img"]]),
            # Like with like: the same qemu-img flags and the same fsyncs.
            "ratio_full_to_durable": ratio,
            "ratio_per_round_full_to_durable": per_round("qemu_img_durable"),
            # Against what a plain convert by hand costs (its data still in the page cache when it returns).
            "ratio_full_to_plain": ratio_plain,
            "ratio_per_round_full_to_plain": per_round("qemu_img"),
            "ratio_full_to_plain_with_fsync": statistics.median(full) / statistics.median(plain_sync),
            "targets": {
                "linked_median_below_s": LINKED_TARGET_S,
                "linked_met": statistics.median(linked) < LINKED_TARGET_S,
                "ratio_at_most": RATIO_TARGET,
                "ratio_met": ratio <= RATIO_TARGET,
                "ratio_met_against_plain": ratio_plain <= RATIO_TARGET,
            },
        }

    def cleanup(self) -> dict[str, Any]:
        report: dict[str, Any] = {"api_removed": [], "killed_qemu_img_pids": [], "errors": []}
        if self.serve.running:
            for name in list(reversed(self.made)):
                try:
                    if name == TEMPLATE:
                        self.client.post(f"/volumes/default/{name}/template", json={"template": False})
                    self.delete_volume(name)
                    report["api_removed"].append(name)
                except (ApiError, BenchError) as error:
                    report["errors"].append(f"deleting volume {name}: {error}")
        self.serve.stop()
        report["killed_qemu_img_pids"], report["qemu_img_left"] = kill_by_pid(
            partial(our_qemu_img_pids, str(self.data_dir)))
        return report


# --- output -------------------------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> None:
    facts = results.get("machine", {})
    if facts:
        console.print(f"[bold]machine:[/bold] {facts['cpu_count']} CPUs ({facts['cpu_model']}), "
                      f"{facts['memory_mib']} MiB, kernel {facts['kernel']}, data dir on {facts['data_dir_fs']}; "
                      f"{facts['qemu_img_version']}; virtfleet {facts['virtfleet_version']}, Python {facts['python']}")
    template = results.get("template")
    if template:
        console.print(f"[bold]template:[/bold] {template['ref']}, qcow2, {template['virtual_size'] / MiB:.0f} MiB "
                      f"virtual, {template['actual_size'] / MiB:.0f} MiB allocated (random data); uploaded in "
                      f"{template['upload_s']:.2f}s ({template['upload_mib_s']:.0f} MiB/s)")
    s = results.get("summary")
    if not s:
        return
    config = results["config"]
    table = Table(title=f"Clones of a {config['size']} qcow2 template (serve driver {config['driver']}; seconds; "
                  f"{config['rounds']} rounds, ABC CBA, "
                  f"{config['linked_per_round']} linked clones per round; O_DIRECT "
                  f"{'used' if results.get('o_direct') else 'not available here'})")
    for column in ("", "median", "min", "max", "stdev", "MiB/s (median)"):
        table.add_column(column, justify="left" if not column else "right")

    def row(label: str, stats: dict[str, float], rate: dict[str, float] | None = None) -> None:
        if stats:
            table.add_row(label, f"{stats['median']:.3f}", f"{stats['min']:.3f}", f"{stats['max']:.3f}",
                          f"{stats['stdev']:.3f}", f"{rate['median']:.0f}" if rate else "")

    row("(a) linked clone, API (POST -> job done)", s["linked_s"])
    row("    linked clone job (server side)", s["linked_job_s"])
    row("(b) full clone, API (POST -> job done)", s["full_s"], s["full_mib_s"])
    row("    full clone job (server side)", s["full_job_s"])
    row("(c) qemu-img convert -p -t none + fsync (like b)", s["qemu_img_durable_s"], s["qemu_img_durable_mib_s"])
    row("    of which the fsyncs (file, directory)", s["qemu_img_durable_fsync_s"])
    row("(d) qemu-img convert, plain (page cache)", s["qemu_img_s"], s["qemu_img_mib_s"])
    row("    plain convert + fsync timed apart", s["qemu_img_with_fsync_s"])
    targets = s["targets"]

    def verdict(met: bool) -> str:
        return "[green]met[/green]" if met else "[red]missed[/red]"

    def ratio_rows(label: str, of_medians: float, per_round: dict[str, float], met: bool) -> None:
        table.add_row(f"[bold]{label} (medians)[/bold]", f"[bold]{of_medians:.3f}[/bold]", "", "", "",
                      f"<= {targets['ratio_at_most']}: {verdict(met)}")
        table.add_row("    per round", f"{per_round['median']:.3f}", f"{per_round['min']:.3f}",
                      f"{per_round['max']:.3f}", f"{per_round['stdev']:.3f}", "")

    ratio_rows("ratio (b) / (c), like with like", s["ratio_full_to_durable"], s["ratio_per_round_full_to_durable"],
               targets["ratio_met"])
    ratio_rows("ratio (b) / (d), against plain", s["ratio_full_to_plain"], s["ratio_per_round_full_to_plain"],
               targets["ratio_met_against_plain"])
    table.add_row("ratio (b) / (d + its fsync) (medians)", f"{s['ratio_full_to_plain_with_fsync']:.3f}",
                  "", "", "", "")
    table.add_row("[bold]linked clone median[/bold]", f"[bold]{s['linked_s']['median']:.3f}[/bold]", "", "", "",
                  f"< {targets['linked_median_below_s']}: {verdict(targets['linked_met'])}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds (default 3)")
    parser.add_argument("--size", default="1G", help="virtual size of the template, all of it written (default 1G)")
    parser.add_argument("--linked", type=int, default=5, help="linked clones per round (default 5)")
    parser.add_argument("--driver", default="qemu", help="the serve process's VM driver: qemu (default), libvirt "
                        f"(= {libvirt_side.DRIVER}), libvirt:URI or fake; storage runs the same qemu-img either way")
    add_output_options(parser, "clone", "serve log, pool")
    args = parser.parse_args(argv)
    try:
        size = parse_size_bytes(args.size)
    except ValueError as error:
        parser.error(f"--size: {error}")
    if args.rounds < 1 or args.linked < 1 or size < MiB or size % MiB:
        parser.error("--rounds and --linked must be >= 1, --size a whole number of MiB (at least 1M)")

    driver = libvirt_side.DRIVER if args.driver == "libvirt" else args.driver
    started = time.perf_counter()
    progress = progress_printer(console, started)

    results = new_results("clone", {"rounds": args.rounds, "size": args.size, "size_bytes": size,
                                    "linked_per_round": args.linked, "driver": driver})
    with data_dir("vfc-", args.keep, console) as path:
        results["machine"] = machine_facts(path)
        results["config"]["data_dir"] = str(path)
        serve = Serve(path / "data", free_port(), path / "serve.log", driver=driver)
        client = Client(serve.url, timeout=60)
        bench = Bench(size, args.rounds, args.linked, serve.data_dir, serve, client, results)
        work = path / "work"
        work.mkdir()

        def body() -> None:
            progress(f"starting `virtfleet serve` (driver {driver}) on port {serve.port}")
            results["serve_startup_s"] = serve.start(client)
            host = client.get("/host")
            results["host_api"] = {key: host.get(key) for key in ("driver", "hypervisor", "version")}
            bench.make_template(work, progress)
            bench.measure(progress)

        status = run_and_record(body, bench.cleanup, results=results, serve=serve, client=client, console=console,
                                json_out=args.json_out, started=started)
    render(results)
    cleanup = results["cleanup"]
    left = cleanup["qemu_img_left"]
    console.print(f"cleanup: volumes removed through the API: {', '.join(cleanup['api_removed']) or 'none'}; "
                  f"{'no qemu-img left' if not left else f'[red]qemu-img still alive: {left}[/red]'}; "
                  f"total {results['duration_s']:.1f}s; JSON: {args.json_out}")
    if cleanup["errors"]:
        console.print(f"[red]cleanup errors:[/red] {cleanup['errors']}")
    return status if not left else 1


if __name__ == "__main__":
    sys.exit(main())
