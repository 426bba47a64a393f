"""Real QEMU: state changes reach the store through QMP (events, the monitor hanging up), not through polling.

The daemon's full reconcile pass runs once a minute here, so nothing below is noticed by it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, serving_tiny
from tests.integration.test_qemu_vm_api import console_run

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(short_tmp: Path, tiny_image_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    monkeypatch.setenv("VIRTFLEET_RECONCILE_INTERVAL", "60")  # `serve` inherits it
    with serving_tiny(short_tmp, tiny_image_dir) as server:
        yield server


def test_a_guest_poweroff_and_a_killed_qemu_are_noticed_from_qmp_at_once(daemon: Daemon) -> None:
    for name in ("off", "killed"):
        assert daemon.call("POST", "/vms", json={"name": name, "memory": "192M"}).status_code == 201
        daemon.ok("POST", f"/vms/{name}/start")
    for name in ("off", "killed"):
        daemon.wait_ready(name)

    # Behind virtfleet's back: the monitor hangs up, and the process is gone.
    vm = daemon.vm("killed")
    runtime = json.loads((daemon.data_dir / "run" / vm["id"] / "runtime.json").read_text())
    os.kill(runtime["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    vm = daemon.wait_state("killed", ("crashed",), timeout=5)
    noticed = time.monotonic() - killed_at
    assert vm["state"] == "crashed" and noticed < 1.0, (vm, noticed)
    assert "died" in vm["state_reason"], vm

    # The guest powers itself off: QEMU's SHUTDOWN event says why, its exit says when.
    console_run(daemon, "off", "poweroff -f", "poweroff -f")
    asked_at = time.monotonic()
    vm = daemon.wait_state("off", ("stopped",), timeout=10)
    stopped_after = time.monotonic() - asked_at  # mostly the guest's own way down, under TCG
    assert vm["state"] == "stopped" and stopped_after < 5.0, (vm, stopped_after)
    assert "guest powered off" in vm["state_reason"], vm
    print(f"kill -9 -> crashed in {noticed:.3f} s; guest poweroff -> stopped in {stopped_after:.3f} s")
