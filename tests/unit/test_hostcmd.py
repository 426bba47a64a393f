"""Host tools end when they should: at their deadline, with the work they were started for (a cancelled job), with
the daemon (even a SIGKILLed one), and within their resource limits."""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from virtfleet.errors import DriverError
from virtfleet.hostcmd import STOPPED, Limits, in_thread, process_scope, run_tool


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that a container's init may never be does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_pid(path: Path) -> int:
    assert wait_until(lambda: path.is_file() and path.read_text().strip()), f"{path} never written"
    return int(path.read_text())


def sleeper(pid_file: Path, seconds: int = 60) -> list[str]:
    """A tool that says who it is, then waits: exec keeps the pid, so it is the process run_tool started."""
    return ["sh", "-c", f"echo $$ > {pid_file}; exec sleep {seconds}"]


def test_a_tool_past_its_deadline_is_killed_and_the_error_says_so(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"waiting: no answer after 0.3s"):
        run_tool(sleeper(tmp_path / "pid"), what="waiting", timeout=0.3)
    assert time.monotonic() - started < 5
    assert not alive(read_pid(tmp_path / "pid"))


def test_killing_a_scope_stops_the_tools_started_in_it(tmp_path: Path) -> None:
    failures: list[DriverError] = []

    def work() -> None:
        try:
            run_tool(sleeper(tmp_path / "pid"), what="waiting", timeout=None)
        except DriverError as error:
            failures.append(error)

    with process_scope() as scope:
        context = contextvars.copy_context()  # what asyncio.to_thread hands its thread
    worker = threading.Thread(target=context.run, args=(work,))
    worker.start()
    pid = read_pid(tmp_path / "pid")
    scope.kill()
    worker.join(10)
    assert not worker.is_alive() and not alive(pid)
    assert [error.message for error in failures] == [f"waiting: {STOPPED}"]


def test_cancelling_the_awaiting_task_kills_the_tool_and_waits_for_the_cleanup(tmp_path: Path) -> None:
    cleaned: list[str] = []

    def work() -> None:
        try:
            run_tool(sleeper(tmp_path / "pid"), what="waiting", timeout=None)
        finally:
            cleaned.append("partial files removed")

    async def scenario() -> float:
        task = asyncio.ensure_future(in_thread(work))
        await asyncio.to_thread(read_pid, tmp_path / "pid")
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5
    assert cleaned == ["partial files removed"]  # done before the cancellation went on
    assert not alive(read_pid(tmp_path / "pid"))


def test_a_killed_scope_refuses_to_start_more_tools(tmp_path: Path) -> None:
    with process_scope() as scope:
        scope.kill()
        with pytest.raises(DriverError, match=STOPPED):
            run_tool(["touch", str(tmp_path / "never")], what="touching", timeout=5)
    assert not (tmp_path / "never").exists()


def test_tools_die_with_the_daemon_even_when_it_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    daemon = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from virtfleet.hostcmd import run_tool
        run_tool({sleeper(pid_file)!r}, what="waiting", timeout=None)
    """)], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})
    try:
        tool = read_pid(pid_file)
        assert alive(tool)
        daemon.kill()
        daemon.wait()
        assert wait_until(lambda: not alive(tool), 5), "the tool outlived the daemon"
    finally:
        daemon.kill()
        daemon.wait()


def test_resource_limits_bind_the_tool(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DriverError, match="CPU time limit"):
        run_tool(["sh", "-c", "while :; do :; done"], what="spinning", timeout=30, limits=Limits(cpu_seconds=1))
    assert time.monotonic() - started < 10
    hungry = [sys.executable, "-c", "b = bytearray(512 << 20)"]
    with pytest.raises(DriverError, match="MemoryError"):
        run_tool(hungry, what="allocating", timeout=30, limits=Limits(address_space=256 << 20),
                 condense=lambda text: text.strip().splitlines()[-1])
    run_tool(hungry, what="allocating", timeout=30)  # the same without the limit
