"""The libvirt side of bench/boot.py: what a user of virsh does with the domain XML virtfleet defined.

Every domain the benchmark makes (through virtfleet or virsh) is named with one prefix unique to the run
(`vfbench-<hex>-`), so `remove_domains` can find and remove them all without touching anybody else's.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from console_stream import ATTACH_TIMEOUT, ConsoleFollower, attach_unix, follow_unix, read_text, ready_line

from common import BenchError, find_pids, is_qemu_system, proc_cpu_s, proc_memory, reap
from virtfleet.images.tiny import READY_MARKER

URI = "qemu:///system"
DRIVER = f"libvirt:{URI}"


def virsh(*args: str, timeout: float = 60.0) -> str:
    """Run `virsh -c URI ARGS...` (untimed plumbing); its stdout, or BenchError with its stderr."""
    done = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise BenchError(f"virsh {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def create_argv(xml_path: Path) -> list[str]:
    """The command a virsh user starts a transient domain with (the timed raw side)."""
    return ["virsh", "-c", URI, "create", str(xml_path)]


class ExitClock:
    """When a child process exited, seen by a thread blocked in wait() (nothing polls)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.exited: float | None = None
        self._thread = threading.Thread(target=self._wait, args=(proc,), daemon=True)
        self._thread.start()

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self.exited = time.perf_counter()

    def seconds_after(self, t0: float) -> float | None:
        """Seconds from `t0` (a time.perf_counter()) to the exit; None if it has not exited within 10 s."""
        self._thread.join(10)
        return None if self.exited is None else self.exited - t0


def domain_type(name: str) -> str:
    """The <domain type=...> of a defined domain: "qemu" is TCG, "kvm" KVM."""
    return ET.fromstring(virsh("dumpxml", "--inactive", name)).get("type", "")  # noqa: S314 - libvirt output


def raw_domain_xml(template: str, name: str, new_uuid: str, template_root: str, root: Path) -> str:
    """The domain XML virtfleet defined (`virsh dumpxml --inactive`), for a transient domain of its own: a fresh
    name and uuid, virtfleet's <metadata> removed and its run directory `template_root` (console socket, console
    log) replaced by `root`. Everything else, devices and the seclabel included, is kept as libvirt stored it."""
    domain = ET.fromstring(template)  # noqa: S314 - libvirt output
    for tag, value in (("name", name), ("uuid", new_uuid)):
        element = domain.find(tag)
        if element is None:
            raise BenchError(f"the template domain XML has no <{tag}>")
        element.text = value
    metadata = domain.find("metadata")
    if metadata is not None:
        domain.remove(metadata)
    kept = 0
    for element in domain.iter():
        for key, value in element.attrib.items():
            if template_root in value:
                element.set(key, value.replace(template_root, str(root)))
                kept += 1
        if element.text and template_root in element.text:
            element.text = element.text.replace(template_root, str(root))
            kept += 1
    if not kept:
        raise BenchError(f"the template domain XML names no path under {template_root}: no console to follow")
    return ET.tostring(domain, encoding="unicode") + "\n"


def qemu_pid(domain_uuid: str) -> int | None:
    """The pid of the QEMU running a domain (libvirt passes it -uuid UUID); None when there is none."""
    pids = find_pids(is_qemu_system, domain_uuid)
    return pids[0] if len(pids) == 1 else None


def virsh_boot(xml: str, root: Path, name: str, new_id: str, procs: list[subprocess.Popen[bytes]],
               timeout: float) -> dict[str, Any]:
    """One timed boot of a transient domain: spawn `virsh create` of `xml` (written into `root`, its run
    directory) -> the readiness line on its console socket, followed as bench/boot.py follows the raw QEMU's.
    `procs` holds the virsh process while it may run (the caller's cleanup kills what is left); the domain is
    destroyed at the end (a failure leaves it for the caller's cleanup, which removes it by name)."""
    xml_path = root / "domain.xml"
    xml_path.write_text(xml)
    log_path = root / "console.log"
    stderr_path = root / "virsh.out"
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    with stderr_path.open("wb") as out:
        proc = subprocess.Popen(create_argv(xml_path), stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    procs.append(proc)
    returned = ExitClock(proc)
    try:
        sock = attach_unix(root / "console.sock", proc, time.monotonic() + ATTACH_TIMEOUT,
                           what="virsh create", exit_ok=True)
    except BenchError as exc:
        raise BenchError(f"{exc}: {stderr_path.read_text()[-500:]}") from exc
    try:
        t_attached = time.perf_counter() - t0
        follower = ConsoleFollower(read_text(log_path))
        try:
            follow_unix(sock, follower, deadline, what="virsh's domain")
        except (TimeoutError, OSError, BenchError) as exc:
            raise BenchError(f"virsh's domain {name}: no {READY_MARKER} on the console within {timeout:g}s "
                             f"({exc!r}; virsh: {stderr_path.read_text()[-300:]!r}); "
                             f"it ends with {follower.text[-300:]!r}") from exc
        t_ready = time.perf_counter() - t0
    finally:
        sock.close()
    reap(proc, 10)  # virsh create returned long ago, once the domain ran
    procs.remove(proc)
    virsh_returned = returned.seconds_after(t0)
    if proc.returncode:
        raise BenchError(f"virsh create exited {proc.returncode}: {stderr_path.read_text()[-500:]}")
    pid = qemu_pid(new_id)
    sample: dict[str, Any] = {
        "name": name,
        "ready_s": t_ready,
        "attached_s": t_attached,  # connected to console.sock
        "virsh_returned_s": virsh_returned,  # the domain runs: what the start job is on virtfleet's side
        "marker_in_history": READY_MARKER in follower.history,
        "qemu_pid": pid,
        "qemu_cpu_s_at_ready": proc_cpu_s(pid) if pid else None,
        "qemu_memory_kib_at_ready": proc_memory(pid) if pid else {},
        "ready_line": ready_line(follower.text),
    }
    t1 = time.perf_counter()
    virsh("destroy", name)  # a transient domain: gone with it
    sample["down_s"] = time.perf_counter() - t1
    return sample


def remove_domains(prefix: str) -> tuple[list[str], list[str]]:
    """Destroy and undefine every domain whose name starts with `prefix`; returns (removed, errors)."""
    removed: list[str] = []
    errors: list[str] = []
    try:
        names = [line.strip() for line in virsh("list", "--all", "--name").splitlines()]
    except (BenchError, OSError, subprocess.TimeoutExpired) as error:
        return removed, [f"listing libvirt domains: {error}"]
    for name in names:
        if not name.startswith(prefix):
            continue
        try:
            with contextlib.suppress(BenchError):  # not running, or transient and already gone
                virsh("destroy", name)
            if name in virsh("list", "--all", "--name").split():
                virsh("undefine", "--nvram", name)
            removed.append(name)
        except (BenchError, OSError, subprocess.TimeoutExpired) as error:
            errors.append(f"{name}: {error}")
    return removed, errors
