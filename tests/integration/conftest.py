"""Real QEMU under TCG behind a real `virtfleet serve` process (so it can be SIGKILLed and restarted)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from virtfleet.drivers.base import BOOT_SEPARATOR

READY = "VIRTFLEET-READY"


def qemu_pids(data_dir: Path) -> list[int]:
    """QEMU processes whose command line points into this data directory."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"qemu-system-x86_64") and any(str(data_dir).encode() in a for a in args):
            pids.append(int(proc.name))
    return pids


def wait_console(log: Path, marker: str, qemu: subprocess.Popen[bytes], timeout: float = 90) -> str:
    """For tests that run QEMU by hand: wait until `marker` shows in its serial log (fail if QEMU exits)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if marker in text:
            return text
        assert qemu.poll() is None, f"QEMU exited with {qemu.returncode}:\n{text[-2000:]}"
        assert time.monotonic() < deadline, f"no {marker!r} on the console:\n{text[-2000:]}"
        time.sleep(0.05)


@dataclass
class Daemon:
    """One `virtfleet serve` process on a data directory, restartable like a real host daemon."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    netns: str | None = None  # run inside this network namespace (listening on `host`, reachable from here)
    token: str = ""  # the local admin token `serve` wrote into the data directory
    env: dict[str, str] = field(default_factory=dict)  # extra environment, e.g. VIRTFLEET_FAILPOINTS
    args: list[str] = field(default_factory=list)  # extra `serve` options, e.g. --driver

    def arm(self, *failpoints: str) -> None:
        """The next start dies (SIGKILL) at the first of these failpoints it reaches; none: it runs normally."""
        self.env["VIRTFLEET_FAILPOINTS"] = ",".join(failpoints)

    def wait_killed(self, timeout: float = 60) -> None:
        """Wait for the daemon to have killed itself at an armed failpoint."""
        assert self.process is not None
        code = self.process.wait(timeout)
        assert code == -signal.SIGKILL, f"serve exited with {code}, not at a failpoint"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/api/v1"

    def start(self, timeout: float = 30) -> None:
        log = (self.data_dir / "serve.log").open("ab")
        command = [sys.executable, "-m", "virtfleet", "serve", "--host", self.host, "--port", str(self.port),
                   "--data-dir", str(self.data_dir), *self.args]
        if self.netns is not None:
            command = ["ip", "netns", "exec", self.netns, *command]
        env = {**os.environ, "VIRTFLEET_METRICS_INTERVAL": "0.5", **self.env}  # charts fill up within a test
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.token = (self.data_dir / "admin.token").read_text().strip()
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()  # no caller stops a daemon whose start raised: it would outlive the test
        raise RuntimeError(f"virtfleet serve did not come up: {(self.data_dir / 'serve.log').read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    # --- API helpers ---------------------------------------------------------------------------------------
    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", timeout=60, headers=headers, **kwargs)

    def job(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Submit a job and wait for it; return the finished job."""
        response = self.call(method, path, **kwargs)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        done = self.call("GET", f"/jobs/{job_id}", params={"wait": 60}).json()
        assert done["status"] in ("succeeded", "failed"), done
        return dict(done)

    def ok(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        done = self.job(method, path, **kwargs)
        assert done["status"] == "succeeded", done
        return done

    def vm(self, name: str) -> dict[str, Any]:
        response = self.call("GET", f"/vms/{name}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def logs(self, name: str) -> str:
        return self.call("GET", f"/vms/{name}/logs").text

    def wait_log(self, name: str, pattern: str, count: int = 1, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.logs(name)
            if len(re.findall(pattern, text)) >= count:
                return text
            assert time.monotonic() < deadline, f"no {pattern!r} x{count} in the console of {name}:\n{text[-2000:]}"
            time.sleep(0.1)

    def wait_ready(self, name: str, timeout: float = 60) -> str:
        """Wait for the readiness line of the VM's current boot (after the last boot separator)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.logs(name)
            this_boot = text[text.rfind(BOOT_SEPARATOR):]
            if f"{READY} hostname=" in this_boot:
                return this_boot
            assert time.monotonic() < deadline, f"{name} did not come up:\n{text[-2000:]}"
            time.sleep(0.1)

    def wait_state(self, name: str, states: tuple[str, ...], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        vm = self.vm(name)
        while vm["state"] not in states and time.monotonic() < deadline:
            time.sleep(0.05)
            vm = self.vm(name)
        return vm


@contextlib.contextmanager
def serving_tiny(data_dir: Path, tiny_image_dir: Path, *, armed: tuple[str, ...] = ()) -> Iterator[Daemon]:
    """A `virtfleet serve` on `data_dir` with the built tiny image (armed at those failpoints from its first start);
    stopped, with every guest it ran, at the end."""
    (data_dir / "images").mkdir()
    (data_dir / "images" / "tiny").symlink_to(tiny_image_dir)
    server = Daemon(data_dir)
    if armed:
        server.arm(*armed)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for pid in qemu_pids(data_dir):  # never leave a guest behind, whatever the test did
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon(short_tmp: Path, tiny_image_dir: Path) -> Iterator[Daemon]:
    with serving_tiny(short_tmp, tiny_image_dir) as server:
        yield server
