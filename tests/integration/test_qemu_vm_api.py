"""The whole product on real QEMU under TCG: the REST API of a `virtfleet serve` process driving guests.

Few boots on purpose (each is ~2 s under TCG): every test checks several things on the VMs it starts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.integration.conftest import READY, Daemon, qemu_pids

pytestmark = pytest.mark.integration


def last_tick(text: str) -> int:
    ticks = re.findall(r"virtfleet-tick (\d+)", text)
    return int(ticks[-1]) if ticks else 0


def console_run(daemon: Daemon, name: str, command: str, expect: str, timeout: float = 20) -> str:
    """Type a command on the serial console over the WebSocket and read until `expect` shows."""
    url = f"ws://{daemon.host}:{daemon.port}/api/v1/vms/{name}/console"
    with connect(url, open_timeout=10, additional_headers=daemon.auth) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello == {"type": "attached", "vm": name}
        ws.send(f"{command}\n".encode())
        seen = b""
        deadline = time.monotonic() + timeout
        while expect.encode() not in seen:
            assert time.monotonic() < deadline, f"no {expect!r} on the console of {name}: {seen[-500:]!r}"
            frame = ws.recv(timeout=timeout)
            seen += frame if isinstance(frame, bytes) else frame.encode()
        return seen.decode(errors="replace")


def test_lifecycle_of_a_real_guest(daemon: Daemon) -> None:
    daemon.ok("POST", "/pools/default/volumes", json={"name": "data", "size": "64M"})
    disk = daemon.data_dir / "pools" / "default" / "data"  # a volume, named here by its file's path
    spec = {"name": "life", "cpus": 1, "memory": "256M", "kernel_args": "virtfleet.ticks=1",
            "disks": [{"path": str(disk)}]}
    assert daemon.call("POST", "/vms", json=spec).status_code == 201

    started = daemon.ok("POST", "/vms/life/start")
    vm = daemon.vm("life")
    assert vm["state"] == "running" and vm["accel"] == "tcg"
    # KVM is not usable on these machines: the fallback is said out loud, not silent.
    assert "KVM is not usable" in started["message"]
    daemon.wait_log("life", rf"{READY} hostname=life kernel=\S+")

    # The qcow2 disk from the pool is attached through virtio-mmio and visible in the guest.
    console_run(daemon, "life", "ls /sys/block; echo disks-$((6*7))", "disks-42")
    assert "vda" in daemon.logs("life")

    # The agent samples real usage: QEMU's CPU time and memory, and the guest's disk writes (QMP blockstats).
    console_run(daemon, "life", "dd if=/dev/zero of=/dev/vda bs=64k count=32 conv=fsync 2>/dev/null; "
                                "echo written-$((2*21))", "written-42")
    time.sleep(1.5)
    points = daemon.call("GET", "/vms/life/metrics", params={"minutes": 5}).json()
    assert points and max(p["cpu_percent"] for p in points) > 0
    assert min(p["memory_bytes"] for p in points) > 100 << 20 and max(p["disk_write_bps"] for p in points) > 0
    assert 'virtfleet_vm_disk_write_bytes_total{vm="life"}' in daemon.call("GET", "/metrics").text

    # Refusals name the current state and change nothing.
    again = daemon.call("POST", "/vms/life/start")
    assert again.status_code == 409 and "running" in again.json()["error"]["message"]
    refused = daemon.call("DELETE", "/vms/life")
    assert refused.status_code == 409 and "running" in refused.json()["error"]["message"]

    # Paused means the guest's clock loop stops printing ticks; resumed, it goes on.
    daemon.wait_log("life", r"virtfleet-tick 2\b")
    daemon.ok("POST", "/vms/life/pause")
    assert daemon.vm("life")["state"] == "paused"
    frozen = last_tick(daemon.logs("life"))
    time.sleep(2.5)
    assert last_tick(daemon.logs("life")) <= frozen + 1  # at most one tick already in flight
    daemon.ok("POST", "/vms/life/resume")
    daemon.wait_log("life", rf"virtfleet-tick {frozen + 2}\b", timeout=20)

    # ACPI shutdown: the guest's acpid powers it off long before the timeout.
    done = daemon.ok("POST", "/vms/life/shutdown", params={"timeout": 60})
    assert "guest powered off" in done["message"]
    assert daemon.vm("life")["state"] == "stopped"
    assert "power button pressed" in daemon.logs("life")  # history outlives the guest
    assert qemu_pids(daemon.data_dir) == []

    daemon.ok("DELETE", "/vms/life")
    assert daemon.call("GET", "/vms/life").status_code == 404
    assert not any((daemon.data_dir / "run").iterdir())


def test_daemon_sigkill_readopts_guests_and_a_killed_qemu_is_noticed(daemon: Daemon) -> None:
    for name, machine in (("a1", "microvm"), ("b2", "q35")):
        assert daemon.call("POST", "/vms", json={"name": name, "memory": "192M", "machine": machine}).status_code == 201
        daemon.ok("POST", f"/vms/{name}/start")
    for name in ("a1", "b2"):
        daemon.wait_log(name, rf"{READY} hostname={name}")
    pids = {name: daemon.vm(name) for name in ("a1", "b2")}
    before = sorted(qemu_pids(daemon.data_dir))
    assert len(before) == 2

    daemon.kill()  # SIGKILL: no clean-up of any kind
    assert sorted(qemu_pids(daemon.data_dir)) == before  # the guests do not die with the daemon
    daemon.start()

    vms = daemon.call("GET", "/vms").json()
    assert sorted(v["name"] for v in vms) == ["a1", "b2"]  # no duplicates, nothing lost
    assert all(v["state"] == "running" for v in vms), vms
    assert sorted(qemu_pids(daemon.data_dir)) == before  # no second QEMU started, none orphaned
    events = [e["kind"] for e in daemon.call("GET", "/vms/a1/events").json()]
    assert "adopted" in events
    # Console and QMP work through the new daemon.
    console_run(daemon, "b2", "echo back-$((6*7))", "back-42")
    daemon.ok("POST", "/vms/a1/pause")
    daemon.ok("POST", "/vms/a1/resume")

    # A QEMU killed behind our back shows up as crashed within 2 seconds, with the reason recorded.
    runtime = json.loads((daemon.data_dir / "run" / pids["a1"]["id"] / "runtime.json").read_text())
    os.kill(runtime["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    vm = daemon.wait_state("a1", ("crashed", "stopped"), timeout=5)
    noticed = time.monotonic() - killed_at
    assert vm["state"] in ("crashed", "stopped") and noticed < 2.0, (vm, noticed)
    messages = " ".join(e["message"] for e in daemon.call("GET", "/vms/a1/events").json())
    assert "died" in messages

    # A crashed VM can be started again, and force-delete removes a running one.
    daemon.ok("POST", "/vms/a1/start")
    daemon.wait_log("a1", rf"{READY} hostname=a1", count=2)
    assert daemon.call("POST", "/vms/b2/stop").status_code == 202
    daemon.wait_state("b2", ("stopped",), timeout=10)
    daemon.ok("DELETE", "/vms/a1", params={"force": "true"})
    daemon.ok("DELETE", "/vms/b2")
    assert daemon.call("GET", "/vms").json() == []
    assert qemu_pids(daemon.data_dir) == []


def test_the_cli_drives_a_real_guest(daemon: Daemon, tmp_path: Path) -> None:
    """The README's commands, through the real CLI binary: --json output, one-line errors, exit codes."""
    # As on a real host: the CLI finds the local admin token in the server's data directory.
    env = {**os.environ, "VIRTFLEET_URL": f"http://127.0.0.1:{daemon.port}",
           "VIRTFLEET_DATA_DIR": str(daemon.data_dir)}
    env.pop("VIRTFLEET_TOKEN", None)

    binary = Path(sys.executable).with_name("virtfleet")  # the console script installed beside this Python

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, check=False)

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: cli1\ncpus: 1\nmemory: 192M\nmachine: microvm\nimage: tiny\n")
    created = cli("vm", "create", "-f", str(spec), "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == "cli1"
    started = cli("vm", "start", "cli1", "--json")
    assert started.returncode == 0 and json.loads(started.stdout)["status"] == "succeeded"
    daemon.wait_log("cli1", rf"{READY} hostname=cli1")
    listed = json.loads(cli("vm", "list", "--json").stdout)
    assert [(v["name"], v["state"]) for v in listed] == [("cli1", "running")]
    refused = cli("vm", "delete", "cli1")
    assert refused.returncode != 0 and "running" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    logs = cli("vm", "logs", "cli1")
    assert f"{READY} hostname=cli1" in logs.stdout
    stopped = cli("vm", "shutdown", "cli1", "--timeout", "60")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(cli("vm", "show", "cli1", "--json").stdout)["state"] == "stopped"
    assert cli("vm", "delete", "cli1").returncode == 0



def qmp_command(socket_path: Path, command: str) -> None:
    """One QMP command, sent as an outside client would (no daemon is there to ask)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path))
        stream = sock.makefile("rw")
        stream.readline()  # the greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}) + "\n")
            stream.flush()
            while "return" not in json.loads(stream.readline()):
                pass  # events that came first


def test_qemu_gone_while_the_daemon_was_down_is_crashed_if_killed_and_stopped_if_powered_off(
        daemon: Daemon) -> None:
    for name in ("killed", "off"):
        assert daemon.call("POST", "/vms", json={"name": name, "memory": "192M"}).status_code == 201
        daemon.ok("POST", f"/vms/{name}/start")
    for name in ("killed", "off"):
        daemon.wait_ready(name)
    run = {name: daemon.data_dir / "run" / daemon.vm(name)["id"] for name in ("killed", "off")}
    pids = {name: json.loads((run[name] / "runtime.json").read_text())["pid"] for name in run}

    daemon.kill()
    os.kill(pids["killed"], signal.SIGKILL)
    qmp_command(run["off"] / "qmp.sock", "system_powerdown")  # the guest's acpid powers it off
    deadline = time.monotonic() + 30
    while qemu_pids(daemon.data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemu_pids(daemon.data_dir) == []
    daemon.start()

    killed, off = daemon.vm("killed"), daemon.vm("off")
    assert killed["state"] == "crashed", killed
    assert f"QEMU process {pids['killed']} died while the daemon was down" in killed["state_reason"]
    assert off["state"] == "stopped", off
    assert "exited normally while the daemon was down" in off["state_reason"]
    daemon.ok("POST", "/vms/killed/start")  # and both start again
    daemon.ok("POST", "/vms/off/start")
    for name in ("killed", "off"):
        daemon.ok("POST", f"/vms/{name}/stop")


def test_a_full_disk_pauses_the_guest_until_space_is_freed_and_it_is_resumed(daemon: Daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    small = daemon.data_dir / "pools" / "small"  # pools in the data directory live under its pools/
    small.mkdir()
    # Room for the 64 MiB volume when it is made (a dir pool checks that), then only 8 MiB under it.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(small)], check=True)
    try:
        pool = daemon.call("POST", "/pools", json={"name": "small", "type": "dir", "path": str(small)})
        assert pool.status_code == 201, pool.text
        daemon.ok("POST", "/pools/small/volumes", json={"name": "data", "size": 64 << 20, "format": "qcow2"})
        subprocess.run(["mount", "-o", "remount,size=8m", str(small)], check=True)
        disk = "small/data"
        spec = {"name": "full", "memory": "192M", "disks": [{"volume": disk}]}
        assert daemon.call("POST", "/vms", json=spec).status_code == 201
        daemon.ok("POST", "/vms/full/start")
        daemon.wait_ready("full")
        runtime = json.loads((daemon.data_dir / "run" / daemon.vm("full")["id"] / "runtime.json").read_text())

        # 32 MiB into an 8 MiB file system: QEMU stops the guest (werror=enospc) and keeps the write to retry.
        console_run(daemon, "full", "dd if=/dev/zero of=/dev/vda bs=1M count=32; echo filled-$((6*7))", "dd if=")
        vm = daemon.wait_state("full", ("paused",), timeout=60)
        assert vm["state"] == "paused", vm
        assert vm["state_reason"] == f"disk full (ENOSPC) on {disk}: free space, then resume"
        for _ in range(3):  # reading the state (and the reconcile passes meanwhile) changes nothing
            time.sleep(0.7)
            assert daemon.vm("full")["state"] == "paused"
        assert qemu_pids(daemon.data_dir) == [runtime["pid"]]
        assert "filled-42" not in daemon.logs("full")

        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)  # space freed
        daemon.ok("POST", "/vms/full/resume")
        daemon.wait_log("full", r"filled-42")  # the write that hit the full disk went through
        assert daemon.vm("full")["state"] == "running"
        assert qemu_pids(daemon.data_dir) == [runtime["pid"]]
        assert "crashed" not in [e["kind"] for e in daemon.call("GET", "/vms/full/events").json()]
        daemon.ok("POST", "/vms/full/stop")
    finally:
        for pid in qemu_pids(daemon.data_dir):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(small)], check=False)
