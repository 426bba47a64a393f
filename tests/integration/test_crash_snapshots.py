"""Killing the daemon at each step of a snapshot operation while a real guest writes to its disk.

The daemon kills itself (SIGKILL) at a named failpoint; QEMU keeps running and the restarted daemon re-adopts it.
After each restart: the job is settled, the snapshot list and the VM's chain agree with the files in the pool (no
orphan overlay, no record without its files), the marker the guest writes next is found in the chain the store
names (read with qemu-img beside the running QEMU: the store's chain is the one QEMU writes), and the operation
works again. Each test boots one guest for all the failpoints of an operation (the restart that recovers from one
failpoint is armed at the next) and ends with a stop/start in which the guest reads its last marker back.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import READY, Daemon, qemu_pids, serving_tiny
from tests.integration.test_snapshots import read, write
from virtfleet import failpoints
from virtfleet.jobs import snapshots as snapshot_jobs

VM = "crash"


@pytest.fixture
def daemon(request: pytest.FixtureRequest, short_tmp: Path, tiny_image_dir: Path) -> Iterator[Daemon]:
    """A daemon armed from its first start at the failpoint the test names (booting the guest hits none)."""
    with serving_tiny(short_tmp, tiny_image_dir, armed=(request.param,)) as server:
        yield server


def crash(daemon: Daemon, method: str, path: str, *, then: str | None = None, before_restart: Any = None,
          **kwargs: Any) -> dict[str, Any]:
    """Make the request on a daemon armed at a failpoint, let it die there, start it again (armed at `then`);
    the job, settled by the restart."""
    response = daemon.call(method, path, **kwargs)
    assert response.status_code == 202, response.text
    daemon.wait_killed()
    if before_restart is not None:
        before_restart()
    daemon.arm(*([then] if then else []))
    daemon.start()
    job = daemon.call("GET", f"/jobs/{response.json()['id']}").json()
    assert job["status"] in ("succeeded", "failed"), job  # settled at start-up, never left running
    assert "could not be recovered" not in (daemon.data_dir / "serve.log").read_text()
    return dict(job)


def then(points: list[str], index: int, last: str | None = None) -> str | None:
    return points[index + 1] if index + 1 < len(points) else last


def snapshots(daemon: Daemon) -> list[dict[str, Any]]:
    return list(daemon.call("GET", f"/vms/{VM}/snapshots").json())


def disk_top(daemon: Daemon) -> str:
    [disk] = daemon.vm(VM)["spec"]["disks"]
    volume = daemon.call("GET", "/volumes/default/data").json()["volume"]
    assert disk["path"] == volume["path"], (disk, volume)
    return str(disk["path"])


def check_consistent(daemon: Daemon) -> None:
    """The pool holds exactly the VM's chain and the snapshots' frozen images."""
    chain = daemon.call("GET", "/volumes/default/data").json()["backing_chain"]
    assert chain[0] == disk_top(daemon)
    frozen = {layer["frozen"] for snapshot in snapshots(daemon) for layer in snapshot["layers"]}
    pool = daemon.data_dir / "pools" / "default"
    files = {str(p) for p in pool.iterdir() if not p.name.startswith(".")}
    assert files == set(chain) | frozen, (sorted(files), chain, sorted(frozen))


def disk_text(image: str, scratch: Path) -> str:
    """What a reader of the chain under `image` finds where the guest writes its markers (read beside QEMU)."""
    scratch.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", image, str(scratch)], check=True)
    with scratch.open("rb") as f:
        return f.read(16).rstrip(b"\0").decode()


def image_tags(image: str) -> set[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", image], check=True,
                         capture_output=True, text=True).stdout
    return {snapshot["name"] for snapshot in json.loads(out).get("snapshots", [])}


def boot(daemon: Daemon) -> None:
    daemon.ok("POST", "/pools/default/volumes", json={"name": "data", "size": "32M"})
    spec = {"name": VM, "memory": "256M", "kernel_args": "virtfleet.ticks=1", "disks": [{"volume": "data"}]}
    assert daemon.call("POST", "/vms", json=spec).status_code == 201
    daemon.ok("POST", f"/vms/{VM}/start")
    daemon.wait_log(VM, rf"{READY} hostname={VM}")


def start_guest(daemon: Daemon, boots: int) -> None:
    daemon.ok("POST", f"/vms/{VM}/start")
    daemon.wait_log(VM, rf"{READY} hostname={VM}", count=boots)


def write_direct(daemon: Daemon, text: str) -> None:
    """Like write(), typed straight into QEMU's console socket: for when the daemon is down."""
    [run] = (daemon.data_dir / "run").iterdir()
    with socket.socket(socket.AF_UNIX) as console:
        console.settimeout(20)
        console.connect(str(run / "console.sock"))
        console.sendall(f"echo -n {text} | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; "
                        "echo wrote-$((7*6))\n".encode())
        seen = b""
        while b"wrote-42" not in seen:
            chunk = console.recv(4096)
            assert chunk, seen
            seen += chunk


def kill_qemu(daemon: Daemon) -> None:
    [pid] = qemu_pids(daemon.data_dir)
    os.kill(pid, signal.SIGKILL)
    while qemu_pids(daemon.data_dir):
        time.sleep(0.05)


def after_write(daemon: Daemon, marker: str, scratch: Path) -> None:
    """The guest writes; the chain the store names has it."""
    write(daemon, VM, marker)
    assert disk_text(disk_top(daemon), scratch) == marker


CREATE = [("snapshot.create.after-intent", False), ("snapshot.create.after-overlays", False),
          ("snapshot.create.after-switch", True), ("snapshot.create.after-db-switch", True),
          ("snapshot.create.after-record", True)]


@pytest.mark.parametrize("daemon", [CREATE[0][0]], indirect=True)
@pytest.mark.integration
def test_killed_live_snapshot_create_converges(daemon: Daemon, tmp_path: Path) -> None:
    boot(daemon)
    scratch = tmp_path / "read.raw"
    points = [point for point, _ in CREATE]
    taken: dict[str, str] = {}  # snapshot -> the marker the guest had written when it was taken
    name = "ca"
    for index, (point, kept) in enumerate(CREATE):
        letter = "abcdefgh"[index]
        marker = f"pre{letter}"
        write(daemon, VM, marker)
        job = crash(daemon, "POST", f"/vms/{VM}/snapshots", json={"name": name},
                    then=then(points, index, "snapshot.create.after-switch"))
        assert (job["status"] == "succeeded") is kept, (point, job)
        assert (name in [s["name"] for s in snapshots(daemon)]) is kept, point
        check_consistent(daemon)
        after_write(daemon, f"post{letter}", scratch)
        if kept:
            taken[name] = marker
            name = f"c{'abcdefgh'[index + 1]}"
        # rolled back: the next request takes the snapshot again under the same name
    for snapshot in snapshots(daemon):  # every snapshot holds what the guest had written when it was taken
        assert disk_text(snapshot["layers"][0]["frozen"], scratch) == taken[snapshot["name"]]

    # QEMU gone too by the restart, after the guest wrote into the new overlay: the stopped VM's overlays are
    # complete, so the snapshot is kept and so is what the guest wrote.
    job = crash(daemon, "POST", f"/vms/{VM}/snapshots", json={"name": "cz"},
                before_restart=lambda: (write_direct(daemon, "lastz"), kill_qemu(daemon)))
    assert job["status"] == "succeeded", job
    assert daemon.wait_state(VM, ("stopped", "crashed"), 10)["state"] in ("stopped", "crashed")
    check_consistent(daemon)
    assert disk_text(disk_top(daemon), scratch) == "lastz"
    start_guest(daemon, boots=2)
    assert read(daemon, VM) == "lastz"
    daemon.ok("POST", f"/vms/{VM}/snapshots", json={"name": "again"})
    check_consistent(daemon)


DELETE = ["snapshot.delete.after-intent", "snapshot.delete.before-pivot", "snapshot.delete.after-merge",
          "snapshot.delete.after-record"]


@pytest.mark.parametrize("daemon", [DELETE[0]], indirect=True)
@pytest.mark.integration
def test_killed_snapshot_delete_converges(daemon: Daemon, tmp_path: Path) -> None:
    boot(daemon)
    scratch = tmp_path / "read.raw"
    daemon.ok("POST", f"/vms/{VM}/snapshots", json={"name": "da"})
    write(daemon, VM, "newa")
    for index, point in enumerate(DELETE):  # live block-commit of the active image
        letter = "abcdefgh"[index]
        job = crash(daemon, "DELETE", f"/vms/{VM}/snapshots/d{letter}",
                    then=then(DELETE, index, "snapshot.delete.after-merge"))
        assert job["status"] == "succeeded", (point, job)
        assert snapshots(daemon) == []
        check_consistent(daemon)  # the merged overlay is gone: the pool holds the volume's own image only
        assert disk_text(disk_top(daemon), scratch) == f"new{letter}", point  # merged, nothing lost
        after_write(daemon, f"post{letter}", scratch)
        following = "abcdefgh"[index + 1]
        daemon.ok("POST", f"/vms/{VM}/snapshots", json={"name": f"d{following}"})  # no leftover job in the way
        write(daemon, VM, f"new{following}")

    # A merge below the active image (block-commit of an intermediate layer; no pivot).
    daemon.ok("POST", f"/vms/{VM}/snapshots", json={"name": "later"})
    after_write(daemon, "newest", scratch)
    job = crash(daemon, "DELETE", f"/vms/{VM}/snapshots/de", then="snapshot.delete.after-merge")
    assert job["status"] == "succeeded", job
    [later] = snapshots(daemon)
    assert disk_text(later["layers"][0]["frozen"], scratch) == "newe"  # "later" kept its state
    check_consistent(daemon)
    assert disk_text(disk_top(daemon), scratch) == "newest"

    # QEMU gone by the restart, after the disk switched to the frozen image and the guest wrote into it: the
    # recorded pivot keeps recovery from merging the older overlay over the newer data.
    job = crash(daemon, "DELETE", f"/vms/{VM}/snapshots/later", then="snapshot.delete.after-merge",
                before_restart=lambda: (write_direct(daemon, "pivoted"), kill_qemu(daemon)))
    assert job["status"] == "succeeded", job
    assert snapshots(daemon) == []
    check_consistent(daemon)
    assert disk_text(disk_top(daemon), scratch) == "pivoted"
    start_guest(daemon, boots=2)
    assert read(daemon, VM) == "pivoted"

    # A stopped VM: qemu-img commit, killed after it; recovery commits again (harmless) and switches.
    daemon.ok("POST", f"/vms/{VM}/snapshots", json={"name": "offline"})
    write(daemon, VM, "offline")
    daemon.ok("POST", f"/vms/{VM}/shutdown", params={"timeout": 60})
    job = crash(daemon, "DELETE", f"/vms/{VM}/snapshots/offline")
    assert job["status"] == "succeeded", job
    assert snapshots(daemon) == []
    check_consistent(daemon)
    assert disk_text(disk_top(daemon), scratch) == "offline"
    daemon.ok("POST", f"/vms/{VM}/snapshots", json={"name": "again"})
    daemon.ok("DELETE", f"/vms/{VM}/snapshots/again")
    check_consistent(daemon)


MEMORY = [("snapshot.memory.after-intent", False), ("snapshot.memory.after-save", True),
          ("snapshot.memory.after-record", True)]
REVERT = ["snapshot.memory-delete.after-tags", "snapshot.revert.after-load", "snapshot.revert.after-overlays",
          "snapshot.revert.after-switch"]


@pytest.mark.parametrize("daemon", [MEMORY[0][0]], indirect=True)
@pytest.mark.integration
def test_killed_memory_snapshot_and_revert_converge(daemon: Daemon, tmp_path: Path) -> None:
    boot(daemon)
    scratch = tmp_path / "read.raw"
    points = [point for point, _ in MEMORY] + REVERT
    saved: dict[str, str] = {}
    for index, (point, kept) in enumerate(MEMORY):
        marker = f"mem{'abcdefgh'[index]}"
        write(daemon, VM, marker)
        name = f"m{index}"
        job = crash(daemon, "POST", f"/vms/{VM}/snapshots", json={"name": name, "memory": True},
                    then=points[index + 1])
        assert (job["status"] == "succeeded") is kept, (point, job)
        recorded = {s["id"]: s["name"] for s in snapshots(daemon)}
        assert (name in recorded.values()) is kept, point
        assert image_tags(disk_top(daemon)) == set(recorded), point  # a tag for each record, no partial save
        after_write(daemon, f"after{'abcdefgh'[index]}", scratch)
        if kept:
            saved[name] = marker

    job = crash(daemon, "DELETE", f"/vms/{VM}/snapshots/m1", then=REVERT[1])  # memory-delete.after-tags
    assert job["status"] == "succeeded", job
    assert [s["name"] for s in snapshots(daemon)] == ["m2"]
    assert image_tags(disk_top(daemon)) == {s["id"] for s in snapshots(daemon)}

    job = crash(daemon, "POST", f"/vms/{VM}/snapshots/m2/revert", then=REVERT[2])  # revert.after-load
    assert job["status"] == "succeeded", job
    assert [s["name"] for s in snapshots(daemon) if s["current"]] == ["m2"]
    assert daemon.vm(VM)["state"] == "running"
    assert read(daemon, VM) == saved["m2"]  # the guest runs on, from where it was saved
    daemon.ok("DELETE", f"/vms/{VM}/snapshots/m2")

    # Disk revert of a stopped VM: rolled back before the store switched, finished after.
    daemon.ok("POST", f"/vms/{VM}/snapshots", json={"name": "keep"})
    write(daemon, VM, "lost")
    daemon.ok("POST", f"/vms/{VM}/shutdown", params={"timeout": 60})
    before = disk_top(daemon)
    job = crash(daemon, "POST", f"/vms/{VM}/snapshots/keep/revert", then=REVERT[3])
    assert job["status"] == "failed" and "rolled back" in job["error"], job
    assert disk_top(daemon) == before
    check_consistent(daemon)
    assert disk_text(before, scratch) == "lost"
    job = crash(daemon, "POST", f"/vms/{VM}/snapshots/keep/revert")
    assert job["status"] == "succeeded", job
    check_consistent(daemon)  # the abandoned top is gone
    assert disk_text(disk_top(daemon), scratch) == saved["m2"]
    start_guest(daemon, boots=2)
    assert read(daemon, VM) == saved["m2"]


def test_every_snapshot_failpoint_is_tested() -> None:  # not marked integration: it runs in every suite
    tested = {point for point, _ in CREATE} | set(DELETE) | {point for point, _ in MEMORY} | set(REVERT)
    assert snapshot_jobs.__name__  # imported: it declares its failpoints
    declared = {name for name in failpoints.POINTS if name.startswith("snapshot.")}
    assert declared == tested
