"""VM lifecycle, state rules and job locking through the REST API on the fake driver."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import pytest

from tests.functional.conftest import Api, open_api


def test_create_start_shutdown_delete(api: Api) -> None:
    vm = api.create("web", cpus=2, memory="512M")
    assert vm["state"] == "stopped"
    assert vm["spec"]["memory"] == 512 and vm["spec"]["cpus"] == 2
    assert api.vm(vm["id"])["name"] == "web"  # by id as well as by name

    job = api.run("web", "start")
    assert job["kind"] == "vm.start" and job["progress"] == 100
    running = api.vm("web")
    assert running["state"] == "running" and running["accel"] == "tcg"
    assert "VIRTFLEET-READY hostname=web" in api.client.get("/api/v1/vms/web/logs").text

    api.run("web", "shutdown", timeout=5)
    assert api.vm("web")["state"] == "stopped"
    kinds = [e["kind"] for e in api.events("web")]
    assert kinds[:3] == ["created", "started", "stopped"]

    delete = api.client.delete("/api/v1/vms/web")
    assert delete.status_code == 202
    assert api.wait(delete.json())["status"] == "succeeded"
    assert api.client.get("/api/v1/vms/web").status_code == 404
    assert api.host.domains == {}


def test_pause_resume_reboot_stop(api: Api) -> None:
    api.create("a")
    api.run("a", "start")
    api.run("a", "pause")
    assert api.vm("a")["state"] == "paused"
    refused = api.client.post("/api/v1/vms/a/reboot")
    assert refused.status_code == 409
    assert refused.json()["error"]["current"] == "paused"
    api.run("a", "resume")
    api.run("a", "reboot")
    assert api.vm("a")["state"] == "running"
    api.run("a", "stop")
    assert api.vm("a")["state"] == "stopped"


def test_wrong_state_is_refused_with_current_state_named(api: Api) -> None:
    api.create("a")
    for verb in ("shutdown", "pause", "resume", "reboot", "stop"):
        response = api.client.post(f"/api/v1/vms/a/{verb}")
        assert response.status_code == 409, verb
        error = response.json()["error"]
        assert error["code"] == "invalid_state" and error["current"] == "stopped"
        assert "it is stopped" in error["message"]
    api.run("a", "start")
    again = api.client.post("/api/v1/vms/a/start")
    assert again.status_code == 409
    assert again.json()["error"]["current"] == "running"
    refused = api.client.delete("/api/v1/vms/a")
    assert refused.status_code == 409 and refused.json()["error"]["current"] == "running"
    forced = api.client.delete("/api/v1/vms/a", params={"force": True})
    assert api.wait(forced.json())["status"] == "succeeded"
    assert api.client.get("/api/v1/vms").json() == []


def test_shutdown_forces_off_a_guest_that_ignores_acpi(api: Api) -> None:
    vm = api.create("stubborn")
    api.run("stubborn", "start")
    api.host.domains[vm["id"]].ignore_acpi = True
    job = api.run("stubborn", "shutdown", timeout=0.2)
    assert "forced off" in job["message"]
    assert api.vm("stubborn")["state"] == "stopped"
    assert "shutdown-timeout" in [e["kind"] for e in api.events("stubborn")]


def test_shutdown_without_force_fails_and_keeps_the_vm_running(api: Api) -> None:
    vm = api.create("stubborn")
    api.run("stubborn", "start")
    api.host.domains[vm["id"]].ignore_acpi = True
    job = api.wait(api.action("stubborn", "shutdown", timeout=0.2, force=False))
    assert job["status"] == "failed" and job["error_code"] == "timeout"
    assert api.vm("stubborn")["state"] == "running"  # re-read from the host, not left "stopping"


def test_two_operations_on_one_vm_never_run_at_once(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    vm = api.create("busy")
    api.run("busy", "start")
    api.host.domains[vm["id"]].ignore_acpi = True
    slow = api.action("busy", "shutdown", timeout=1.0)
    second = api.client.post("/api/v1/vms/busy/pause")
    assert second.status_code == 409
    error = second.json()["error"]
    assert error["code"] == "busy" and error["job_id"] == slow["id"]
    time.sleep(0.3)  # several reconcile passes (every 0.1 s) while the job holds the VM
    # A busy VM is skipped by the reconcile loop, not mistaken for an unknown domain to adopt.
    assert [v["name"] for v in api.client.get("/api/v1/vms").json()] == ["busy"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "reconcile" in r.getMessage()]
    assert api.wait(slow)["status"] == "succeeded"
    api.run("busy", "start")  # the lock is released once the job ends


def test_concurrent_requests_get_one_job(api: Api) -> None:
    api.create("race")
    codes: list[int] = []

    def start() -> None:
        codes.append(api.client.post("/api/v1/vms/race/start").status_code)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(202) == 1 and set(codes) <= {202, 409}
    assert api.wait_state("race", "running")["state"] == "running"


def test_failed_start_is_recorded_and_leaves_the_vm_stopped(api: Api) -> None:
    api.create("flaky")
    api.host.fail_next["start"] = "could not open /dev/kvm"
    job = api.wait(api.action("flaky", "start"))
    assert job["status"] == "failed" and "could not open /dev/kvm" in job["error"]
    assert api.vm("flaky")["state"] == "stopped"
    assert "start-failed" in [e["kind"] for e in api.events("flaky")]


def test_a_dead_hypervisor_process_is_noticed_within_two_seconds(api: Api) -> None:
    vm = api.create("victim")
    api.run("victim", "start")
    killed_at = time.monotonic()
    api.host.crash(vm["id"], "QEMU (pid 4242) exited without shutting down (killed or crashed)")
    seen = api.wait_state("victim", "crashed", timeout=2.0)
    assert seen["state"] == "crashed", seen
    assert time.monotonic() - killed_at < 2.0
    crash = [e for e in api.events("victim") if e["kind"] == "crashed"]
    assert crash and "killed or crashed" in crash[0]["message"]
    api.run("victim", "start")  # a crashed VM can be started again


def test_restart_readopts_running_vms_without_duplicates(tmp_path: Path) -> None:
    with contextlib.closing(open_api(tmp_path)) as first_run:
        first = next(first_run)
        first.create("keep")
        first.run("keep", "start")
        vm = first.vm("keep")
        pid = first.host.domains[vm["id"]].pid
    # The daemon went away; the "hypervisor" kept running.
    with contextlib.closing(open_api(tmp_path)) as second_run:
        second = next(second_run)
        assert [v["name"] for v in second.client.get("/api/v1/vms").json()] == ["keep"]
        assert second.vm("keep")["state"] == "running"
        assert second.host.domains[vm["id"]].pid == pid
        assert len(second.host.domains) == 1
        assert "adopted" in [e["kind"] for e in second.events("keep")]
        second.run("keep", "stop")  # and it is controllable


def test_vm_that_died_while_the_daemon_was_down_is_reported(tmp_path: Path) -> None:
    with contextlib.closing(open_api(tmp_path)) as first_run:
        first = next(first_run)
        vm = first.create("gone")
        first.run("gone", "start")
    first.host.crash(vm["id"], "QEMU exited while no daemon watched")
    with contextlib.closing(open_api(tmp_path)) as second_run:
        second = next(second_run)
        assert second.vm("gone")["state"] == "crashed"
        assert any("no daemon watched" in e["message"] for e in second.events("gone"))


def test_a_running_domain_unknown_to_the_store_is_adopted(api: Api) -> None:
    from virtfleet.drivers.fake import FakeDomain
    from virtfleet.model.vm import VmSpec, VmState

    api.host.domains["6f1c1a38-0000-4000-8000-000000000001"] = FakeDomain(
        VmSpec(name="stray"), state=VmState.RUNNING, pid=777
    )
    deadline = time.monotonic() + 2
    while api.client.get("/api/v1/vms/stray").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.vm("stray")["state"] == "running"
    assert "adopted" in [e["kind"] for e in api.events("stray")]
