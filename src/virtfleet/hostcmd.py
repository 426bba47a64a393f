"""Running host tools (qemu-img, lvm, mount, ip, nft, bridge): one place for lookup, timeouts, locale, resource
limits, how a failure reads, and how a tool is stopped.

Every tool started here dies with the daemon (the kernel's parent-death signal, so even a SIGKILLed daemon leaves no
qemu-img behind), and belongs to the process scope of the work that started it (a job): when that work is abandoned
(its task cancelled, the daemon stopping) the scope kills its tools, because the worker thread that waits for them
cannot itself be cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO, Any, ParamSpec, TypeVar

from virtfleet.errors import DriverError
from virtfleet.private_files import PRIVATE_UMASK

SBIN = ("/usr/sbin", "/sbin")  # ip, nft, lvm and mount helpers live here; a non-login PATH may lack them
STOPPED = "stopped: the work it was started for was abandoned"
# How long an abandoned worker thread may take to clean up (remove its partial files) once its tools are killed.
CLEANUP_GRACE = 30.0

_PR_SET_PDEATHSIG = 1
_CPU_GRACE_SECONDS = 5
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int

P = ParamSpec("P")
T = TypeVar("T")
Stream = int | IO[Any] | None


def find_tool(name: str, *, missing: str, hint: str) -> str:
    """The tool's path; DriverError(missing, hint) when it is not installed."""
    found = shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        raise DriverError(missing, hint)
    return found


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no error output")


# --- limits and the parent-death signal ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Kernel resource limits for a tool that reads untrusted input, so a crafted file cannot eat the host."""

    cpu_seconds: int | None = None
    address_space: int | None = None


def _child_setup(parent: int, limits: Limits | None) -> Callable[[], None]:
    """Runs in the forked child before exec: only async-signal-safe work (a prctl, a getppid, setrlimit)."""

    def setup() -> None:
        # SIGKILL when the thread that started us ends (the daemon dies, or is killed): no orphan tools.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the daemon died before the prctl took effect
            os._exit(127)
        if limits is not None and limits.cpu_seconds is not None:
            # SIGXCPU at the soft limit (reported as such), SIGKILL at the hard one should the tool ignore it.
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + _CPU_GRACE_SECONDS))
        if limits is not None and limits.address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limits.address_space, limits.address_space))

    return setup


# --- process scopes -----------------------------------------------------------------------------------------------


class ProcessScope:
    """The host tools started on behalf of one piece of work, killed together when that work is abandoned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self.killed = False

    def _add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if not self.killed:
                self._running.add(proc)
                return
        proc.kill()  # started while the scope was being killed

    def _discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.discard(proc)

    def kill(self) -> None:
        """Kill every tool still running and refuse to start new ones."""
        with self._lock:
            self.killed = True
            running = list(self._running)
        for proc in running:
            with contextlib.suppress(OSError):
                proc.kill()


_SCOPE: ContextVar[ProcessScope | None] = ContextVar("virtfleet_process_scope", default=None)


@contextlib.contextmanager
def process_scope() -> Iterator[ProcessScope]:
    """A new scope for the tools started in this context (and in threads started from it with asyncio.to_thread,
    which copies the context)."""
    scope = ProcessScope()
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def abandoned() -> bool:
    """Whether the work running here was abandoned (its scope killed): long loops in Python check it, since only
    the tools of a worker thread can be killed, not the thread."""
    scope = _SCOPE.get()
    return scope is not None and scope.killed


async def in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """asyncio.to_thread for blocking host work that must stop when it is abandoned: on cancellation the tools it
    started are killed (later ones refused) and the thread gets CLEANUP_GRACE seconds to clean up before the
    cancellation goes on."""
    scope = _SCOPE.get() or ProcessScope()

    def call() -> T:
        token = _SCOPE.set(scope)
        try:
            return fn(*args, **kwargs)
        finally:
            _SCOPE.reset(token)

    work = asyncio.ensure_future(asyncio.to_thread(call))
    # Abandoned work usually ends in an error of its own (its tool was killed): retrieved here, never logged.
    work.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        scope.kill()
        await asyncio.wait([work], timeout=CLEANUP_GRACE)
        raise


@dataclass
class Running:
    """A started tool: `timed_out` or `stopped` say why it was killed, if it was."""

    proc: subprocess.Popen[bytes]
    what: str
    timeout: float | None
    error: type[DriverError]
    scope: ProcessScope | None
    timed_out: bool = field(default=False)

    @property
    def stopped(self) -> bool:
        return self.scope is not None and self.scope.killed

    def check_killed(self) -> None:
        """Raise if the tool was killed by its deadline or its scope (its own error would only say "killed")."""
        if self.timed_out:
            raise self.error(self.what, f"no answer after {self.timeout:g}s")
        if self.stopped:
            raise self.error(self.what, STOPPED)
        if self.proc.returncode == -signal.SIGXCPU:
            raise self.error(self.what, "it used up its CPU time limit")


@contextlib.contextmanager
def running(argv: Sequence[str], *, what: str, timeout: float | None, error: type[DriverError] = DriverError,
            limits: Limits | None = None, env: Mapping[str, str] | None = None, stdin: Stream = subprocess.DEVNULL,
            stdout: Stream = subprocess.PIPE, stderr: Stream = subprocess.PIPE) -> Iterator[Running]:
    """Start a tool in the C locale (messages we match on stay English), killed after `timeout` seconds, with its
    scope, or when the block raises; the tool has ended when the block is left."""
    scope = _SCOPE.get()
    if scope is not None and scope.killed:
        raise error(what, STOPPED)
    try:
        # S603: an argument list and no shell; callers pass tools they looked up and values they checked. The
        # private umask: what a tool creates (qemu-img's images) is 0600.
        proc = subprocess.Popen(list(argv), stdin=stdin, stdout=stdout, stderr=stderr,  # noqa: S603
                                env={**os.environ, "LC_ALL": "C", **(env or {})}, umask=PRIVATE_UMASK,
                                preexec_fn=_child_setup(os.getpid(), limits))
    except OSError as exc:
        raise error(f"cannot run {argv[0]}", str(exc)) from exc
    run = Running(proc, what, timeout, error, scope)
    if scope is not None:
        scope._add(proc)

    def expire() -> None:
        run.timed_out = True
        with contextlib.suppress(OSError):
            proc.kill()

    timer = threading.Timer(timeout, expire) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield run
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if scope is not None:
            scope._discard(proc)


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float | None,
    error: type[DriverError] = DriverError,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    condense: Callable[[str], str] = first_line,
    check: bool = True,
    limits: Limits | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one command; `error(what, cause)` when it cannot run, times out, is stopped with its scope, or (with
    `check`) exits non-zero, the cause being its stderr condensed to one line."""
    with running(argv, what=what, timeout=timeout, error=error, limits=limits, env=env,
                 stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL) as run:
        out, err = run.proc.communicate(stdin.encode() if stdin is not None else None)
    run.check_killed()
    done = subprocess.CompletedProcess(list(argv), run.proc.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace"))
    if check and done.returncode != 0:
        said = done.stderr or done.stdout
        if done.returncode < 0 and not said.strip():
            raise error(what, f"killed by {signal.Signals(-done.returncode).name}")
        raise error(what, condense(said))
    return done
