"""Interleavings that used to corrupt state, forced (never timed) on the fake driver.

A held driver call (FakeHost.hold) parks until the test releases it, so "the reconcile pass read the host, then a
job finished, then the pass applied its read" happens in exactly that order, every run.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.functional.conftest import Api
from virtfleet.drivers.fake import Hold

WAIT = 5.0


@contextlib.contextmanager
def stale_reconcile_pass(api: Api) -> Iterator[Callable[[], None]]:
    """Inside: a reconcile pass has read the host and waits. Calling what it yields lets it apply that read and
    returns once it has (the next pass has then read the host and waits in turn, until the block is left)."""
    first = api.host.hold("list_domains")
    assert first.reached.wait(WAIT), "no reconcile pass read the host"
    second: Hold | None = None

    def apply() -> None:
        nonlocal second
        second = api.host.hold("list_domains")
        first.released.set()
        assert second.reached.wait(WAIT), "the held reconcile pass did not finish"

    try:
        yield apply
    finally:
        first.released.set()
        if second is not None:
            second.released.set()


def test_a_stop_that_ends_during_a_reconcile_read_is_not_undone(api: Api) -> None:
    api.create("s")
    api.run("s", "start")
    with stale_reconcile_pass(api) as apply:  # it saw the domain running
        api.run("s", "stop")
        apply()
        assert api.vm("s")["state"] == "stopped"
        assert "state-changed" not in [e["kind"] for e in api.events("s")]
        assert api.client.delete("/api/v1/vms/s").status_code == 202  # not "cannot delete: it is running"


def test_a_start_that_ends_during_a_reconcile_read_is_not_marked_crashed(api: Api) -> None:
    vm = api.create("c")
    api.run("c", "start")
    api.host.crash(vm["id"])
    assert api.wait_state("c", "crashed")["state"] == "crashed"
    with stale_reconcile_pass(api) as apply:  # it saw the domain crashed
        api.run("c", "start")
        apply()
        assert api.vm("c")["state"] == "running"
        assert [e["kind"] for e in api.events("c")][-1] == "started"  # no crash recorded after it


def test_a_vm_force_deleted_during_a_reconcile_read_is_not_adopted(api: Api) -> None:
    api.create("d")
    api.run("d", "start")
    with stale_reconcile_pass(api) as apply:  # it saw the domain running
        job = api.wait(api.client.delete("/api/v1/vms/d", params={"force": "true"}).json())
        assert job["status"] == "succeeded", job
        apply()
        assert api.client.get("/api/v1/vms/d").status_code == 404
        assert api.client.get("/api/v1/vms").json() == []
    assert api.host.domains == {}


def test_a_pass_a_job_ran_through_still_adopts_a_domain_unknown_to_the_store(api: Api) -> None:
    from virtfleet.drivers.fake import FakeDomain
    from virtfleet.model.vm import VmSpec, VmState

    api.create("other")
    before = api.host.hold("list_domains")
    assert before.reached.wait(WAIT)  # this pass read the host before the stray domain appeared
    api.host.domains["6f1c1a38-0000-4000-8000-000000000002"] = FakeDomain(
        VmSpec(name="stray"), state=VmState.RUNNING, pid=778
    )
    reading = api.host.hold("list_domains")
    before.released.set()
    assert reading.reached.wait(WAIT)  # this one read it; then a job on another VM runs
    api.run("other", "start")
    after = api.host.hold("list_domains")
    reading.released.set()
    assert after.reached.wait(WAIT)
    try:
        assert api.vm("stray")["state"] == "running"  # adopted by that pass all the same
    finally:
        after.released.set()


# --- volumes: what a job touches is locked, and checked again inside the job -----------------------------------
def make_volume(api: Api, name: str) -> None:
    response = api.client.post("/api/v1/pools/default/volumes", json={"name": name, "size": "8M"})
    assert response.status_code == 202, response.text
    assert api.wait(response.json())["status"] == "succeeded"


def settle(api: Api, *responses: httpx.Response) -> None:
    """Let every job these requests started finish (a refused request started none)."""
    for response in responses:
        if response.status_code == 202:
            api.wait(response.json())


def check_volume_users(api: Api) -> dict[str, list[str]]:
    """volume -> the VMs whose spec has it; fails if one is in two VMs or a VM names a volume that is gone."""
    users: dict[str, list[str]] = {}
    for vm in api.client.get("/api/v1/vms").json():
        for disk in vm["spec"]["disks"]:
            if disk["volume"] is not None:
                users.setdefault(disk["volume"], []).append(vm["name"])
    for volume, vms in users.items():
        assert len(vms) == 1, f"{volume} is in {vms}"
        assert api.client.get(f"/api/v1/volumes/{volume}").status_code == 200, f"{vms} use deleted {volume}"
    return users


def test_a_volume_attached_to_two_vms_at_once_ends_in_one(api: Api) -> None:
    make_volume(api, "v")
    api.create("a", machine="q35")
    api.run("a", "start")
    api.create("b")
    held = api.host.hold("attach_disk")
    first = api.client.post("/api/v1/vms/a/disks", json={"volume": "v"})
    assert first.status_code == 202, first.text
    assert held.reached.wait(WAIT)  # a's job is hot-plugging v; a's spec does not name it yet
    try:
        second = api.client.post("/api/v1/vms/b/disks", json={"volume": "v"})
        created = api.client.post("/api/v1/vms", json={"name": "c", "disks": [{"volume": "v"}]})
    finally:
        held.released.set()
    settle(api, first, second, created)
    assert check_volume_users(api) == {"default/v": ["a"]}
    assert second.status_code == created.status_code == 409
    assert second.json()["error"]["code"] == "busy" and "volume 'default/v'" in second.json()["error"]["message"]


def test_a_volume_deleted_while_it_is_being_attached_stays(api: Api) -> None:
    make_volume(api, "v")
    api.create("a", machine="q35")
    api.run("a", "start")
    held = api.host.hold("attach_disk")
    attach = api.client.post("/api/v1/vms/a/disks", json={"volume": "v"})
    assert held.reached.wait(WAIT)
    try:
        deleting = api.client.delete("/api/v1/volumes/default/v")
    finally:
        held.released.set()
    settle(api, attach, deleting)
    assert check_volume_users(api) == {"default/v": ["a"]}
    assert deleting.status_code == 409


def test_a_volume_being_deleted_cannot_be_attached(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    make_volume(api, "v")
    api.create("b")
    storage = api.app.state.server.storage
    backend = storage.backend(storage.repo.get_pool("default"))
    reached, released = threading.Event(), threading.Event()
    delete_file = backend.delete_volume

    def parked_delete(name: str) -> None:
        reached.set()
        released.wait(WAIT)
        delete_file(name)

    monkeypatch.setattr(backend, "delete_volume", parked_delete)
    deleting = api.client.delete("/api/v1/volumes/default/v")
    assert deleting.status_code == 202, deleting.text
    assert reached.wait(WAIT)  # the delete job checked v was free and is removing its file
    try:
        attach = api.client.post("/api/v1/vms/b/disks", json={"volume": "v"})
        created = api.client.post("/api/v1/vms", json={"name": "c", "disks": [{"volume": "v"}]})
    finally:
        released.set()
    settle(api, deleting, attach, created)
    assert check_volume_users(api) == {}
    assert attach.status_code == created.status_code == 409
    assert api.client.get("/api/v1/volumes/default/v").status_code == 404


def test_a_template_being_cloned_stays_a_template(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    make_volume(api, "t")
    assert api.client.post("/api/v1/volumes/default/t/template", json={}).status_code == 200
    storage = api.app.state.server.storage
    backend = storage.backend(storage.repo.get_pool("default"))
    reached, released = threading.Event(), threading.Event()
    create_file = backend.create_volume

    def parked_create(*args: object, **kwargs: object) -> object:
        reached.set()
        released.wait(WAIT)
        return create_file(*args, **kwargs)

    monkeypatch.setattr(backend, "create_volume", parked_create)
    cloning = api.client.post("/api/v1/volumes/default/t/clone", json={"name": "c1"})
    assert cloning.status_code == 202, cloning.text
    assert reached.wait(WAIT)  # the linked clone is being made on t
    try:
        untemplate = api.client.post("/api/v1/volumes/default/t/template", json={"template": False})
    finally:
        released.set()
    settle(api, cloning)
    assert untemplate.status_code == 409 and untemplate.json()["error"]["code"] == "busy"
    clone = api.client.get("/api/v1/volumes/default/c1").json()["volume"]
    assert clone["base"] == "default/t" and api.client.get("/api/v1/volumes/default/t").json()["volume"]["template"]
