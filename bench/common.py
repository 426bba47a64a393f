"""Helpers shared by the benchmark scripts next to this file (boot.py, clone.py, network.py).

They import it as `common`: Python puts a script's own directory first on sys.path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from virtfleet import __version__
from virtfleet.client import ApiError, Client
from virtfleet.config import Settings


class BenchError(Exception):
    """The benchmark cannot go on; the message says what failed."""


# --- processes ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_cmdline(pid: int) -> list[str]:
    """The argv of a process ([] when it is gone or unreadable)."""
    try:
        return [part.decode(errors="replace") for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return []


def proc_status_kib(pid: int, field_name: str = "VmRSS") -> int | None:
    """One kiB field of /proc/<pid>/status (None when the process is gone or has no such field)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and its split (RssAnon, RssFile, RssShmem) from /proc/<pid>/status, plus Pss from smaps_rollup (kiB).

    QEMU's VmRSS counts the page-cache pages of the kernel file it maps, which every VM shares; Pss splits them."""
    memory: dict[str, int] = {}
    for field_name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
        value = proc_status_kib(pid, field_name)
        if value is not None:
            memory[field_name] = value
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                memory["Pss"] = int(line.split()[1])
    return memory


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU time of a process so far (seconds)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def is_qemu_system(program: str) -> bool:
    """A `find_pids` filter: qemu-system-<arch>."""
    return "qemu-system" in program


def find_pids(program: Callable[[str], bool], marker: str | None = None, *, zombies: bool = False) -> list[int]:
    """Processes whose program (file name of argv[0]) passes `program` and, if given, whose command line names
    `marker` (a benchmark's unique data directory). Zombies are left out unless `zombies`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = proc_cmdline(int(entry.name))
        if not (argv and program(Path(argv[0]).name) and (marker is None or any(marker in arg for arg in argv))):
            continue
        if not zombies:
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            except (OSError, IndexError):
                continue
            if state == "Z":
                continue
        pids.append(int(entry.name))
    return pids


def our_qemu_pids(marker: str) -> list[int]:
    """Live qemu-system processes whose command line names `marker` (the benchmark's unique data directory)."""
    return find_pids(is_qemu_system, marker)


def kill_by_pid(find: Callable[[], list[int]], wait: float = 0.0) -> tuple[list[int], list[int]]:
    """SIGKILL every pid `find` returns, give them up to `wait` seconds to go; returns (killed, still there)."""
    killed = []
    for pid in find():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    deadline = time.monotonic() + wait
    while wait and find() and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed, find()


def kill_procs(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGKILL (and reap) those of our child processes that still run; returns their pids."""
    killed = []
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            killed.append(proc.pid)
    return killed


def reap(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Wait `grace` seconds for a process that was asked to quit, then SIGKILL it."""
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --- numbers ------------------------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    """n, median, min, max, mean and stdev of the samples ({} for none)."""
    if not values:
        return {}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def parse_time(value: str | None) -> datetime | None:
    """An API timestamp (ISO 8601, "Z" for UTC) as a datetime; None for none."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def job_seconds(job: dict[str, Any]) -> float | None:
    """Server-side duration of a job (created -> finished)."""
    created, finished = parse_time(job.get("created_at")), parse_time(job.get("finished_at"))
    return (finished - created).total_seconds() if created and finished else None


# --- machine facts ------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo ("" when there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def memory_mib() -> int:
    """MemTotal of /proc/meminfo in MiB (0 when unreadable)."""
    mem_total_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_kib = int(line.split()[1])
    return mem_total_kib // 1024


def qemu_facts(binary: str) -> dict[str, Any]:
    """Which QEMU runs the guests (path and first line of --version) and how (always TCG here)."""
    try:
        qemu = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
        qemu_version = qemu.splitlines()[0].strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        qemu_version = f"unknown ({exc})"
    return {"qemu_binary": shutil.which(binary) or binary, "qemu_version": qemu_version, "accel": "tcg"}


def software_facts() -> dict[str, Any]:
    """The Python and virtfleet versions (the last entries of every benchmark's machine facts)."""
    return {"python": platform.python_version(), "virtfleet_version": __version__}


# --- the API ------------------------------------------------------------------------------------------------------


def wait_ok(client: Client, job: dict[str, Any], what: str, timeout: float,
            serve: Serve | None = None) -> dict[str, Any]:
    """Wait for a job; BenchError unless it succeeded (first checking, if given, that `serve` still runs)."""
    done = client.wait_job(job, timeout=timeout)
    if done["status"] != "succeeded":
        if serve is not None:
            serve.check_alive()
        raise BenchError(f"{what}: job {done['id']} ({done['kind']}) ended {done['status']}: "
                         f"[{done.get('error_code')}] {done.get('error')}")
    return done


def runtime_record(run_dir: Path, vm_id: str) -> dict[str, Any]:
    """The QEMU driver's runtime.json of a running VM (its argv, pid, accel...)."""
    path = run_dir / vm_id / "runtime.json"
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read the runtime record {path}: {exc}") from exc
    return record


def raw_argv(template: list[str], template_root: str, template_id: str, root: Path, new_id: str) -> list[str]:
    """A QEMU argv recorded by virtfleet, to run by hand: without -daemonize and -pidfile, its run directory
    `template_root` replaced by `root` and the VM's uuid `template_id` by `new_id`."""
    argv: list[str] = []
    args = iter(template)
    for arg in args:
        if arg == "-daemonize":
            continue
        if arg == "-pidfile":
            next(args)
            continue
        argv.append(arg.replace(template_root, str(root)).replace(template_id, new_id))
    return argv


# --- the serve process --------------------------------------------------------------------------------------------


@dataclass
class Serve:
    """`virtfleet serve` as a subprocess on its own data directory, its output in `log_path`.

    With `netns` it runs inside that network namespace (`ip netns exec`, which execs: the pid stays serve's own) and
    listens on `host`, an address of that namespace."""

    data_dir: Path
    port: int
    log_path: Path
    driver: str = "qemu"
    host: str = "127.0.0.1"
    netns: str | None = None
    health_poll: float = 0.05  # seconds between /health probes while it starts
    stop_grace: float = 15.0  # seconds from SIGTERM to SIGKILL
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no serve log)"

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"`virtfleet serve` exited with status {self.proc.returncode}; its log ends with:\n"
                             f"{self.log_tail()}")

    def start(self, client: Client, timeout: float = 30.0) -> float:
        """Start it and wait until `client` gets an answer from /health; returns the seconds that took."""
        env = os.environ.copy()
        env.pop("VIRTFLEET_DATABASE_URL", None)  # state must live in our throw-away data dir
        env["VIRTFLEET_DATA_DIR"] = str(self.data_dir)
        env["VIRTFLEET_DRIVER"] = self.driver
        argv = [*(["ip", "netns", "exec", self.netns] if self.netns else []), sys.executable, "-m", "virtfleet",
                "serve", "--host", self.host, "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--driver", self.driver, "--log-level", "warning"]
        t0 = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                client.get("/health")
                client.use_token(self.token())
                return time.perf_counter() - t0
            except ApiError:
                time.sleep(self.health_poll)
        raise BenchError(f"`virtfleet serve` did not answer /health within {timeout:g}s; log:\n{self.log_tail()}")

    def token(self) -> str:
        """The local admin token serve wrote into its data directory on first start."""
        return Settings(data_dir=self.data_dir).admin_token_path.read_text().strip()

    def rss_kib(self) -> int:
        value = proc_status_kib(self.pid)
        if value is None:
            self.check_alive()
            raise BenchError(f"cannot read VmRSS of serve pid {self.pid}")
        return value

    def stop(self) -> None:
        """SIGTERM, SIGKILL after `stop_grace` seconds; nothing if it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        reap(self.proc, self.stop_grace)


# --- a benchmark run ----------------------------------------------------------------------------------------------

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_output_options(parser: argparse.ArgumentParser, benchmark: str, kept: str) -> None:
    """--json-out (default bench/results/<benchmark>.json) and --keep; `kept` says what the data directory holds."""
    parser.add_argument("--json-out", type=Path, default=RESULTS_DIR / f"{benchmark}.json")
    parser.add_argument("--keep", action="store_true", help=f"keep the data directory ({kept}) for a look")


def new_results(benchmark: str, config: dict[str, Any]) -> dict[str, Any]:
    """The results record of a run that starts now; the benchmark adds its samples, run_and_record the rest."""
    return {
        "benchmark": benchmark,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": config,
        "errors": [],
    }


@contextlib.contextmanager
def data_dir(prefix: str, keep: bool, console: Console) -> Iterator[Path]:
    """A fresh directory /tmp/<prefix>XXXX (short, so unix sockets under it stay below 108 bytes), removed at the
    end unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        if keep:
            console.print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def progress_printer(console: Console, started: float) -> Callable[[str], None]:
    """A progress line printer: each message behind the seconds since `started` (a time.perf_counter())."""

    def progress(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/dim] {message}")

    return progress


def run_and_record(body: Callable[[], None], cleanup: Callable[[], dict[str, Any]], *, results: dict[str, Any],
                   serve: Serve, client: Client, console: Console, json_out: Path, started: float,
                   catch: tuple[type[Exception], ...] = (ApiError, BenchError)) -> int:
    """Run a benchmark's `body`; an error of a `catch` type (exit status 1) or Ctrl-C (130) ends it and goes into
    results["errors"], with the end of the serve log. Whatever happens, then: results["cleanup"] = cleanup(), the
    client is closed, results["duration_s"] is set (since `started`, a time.perf_counter()) and the results are
    written to `json_out`. Returns the exit status."""
    status = 0
    try:
        body()
    except catch as error:
        status = 1
        detail: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
        if isinstance(error, ApiError):
            detail.update(status=error.status, code=error.code, body=error.body)
        detail["serve_log_tail"] = serve.log_tail()
        results["errors"].append(detail)
        console.print(f"[red]error:[/red] {detail}")
    except KeyboardInterrupt:
        status = 130
        results["errors"].append({"type": "KeyboardInterrupt", "message": "interrupted"})
    finally:
        results["cleanup"] = cleanup()
        client.close()
        results["duration_s"] = time.perf_counter() - started
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return status
