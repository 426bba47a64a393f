"""Creating a VM with its new disks: one request, checked whole before anything is made, then one job that makes
the volumes and records the VM, or leaves nothing (fake hypervisor, real qemu-img)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import Api
from virtfleet.jobs.storage import StorageService, VolumePlan

MiB = 1 << 20


def volumes(api: Api) -> list[str]:
    return sorted(f"{v['pool']}/{v['name']}" for v in api.client.get("/api/v1/volumes").json())


def pool_files(api: Api) -> list[str]:
    return sorted(p.name for p in api.settings.default_pool.iterdir() if not p.name.startswith("."))


def make_volume(api: Api, name: str, size: int = 8 * MiB) -> None:
    job = api.client.post("/api/v1/pools/default/volumes", json={"name": name, "size": size}).json()
    assert api.wait(job)["status"] == "succeeded"


def create_job(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post("/api/v1/vms", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/api/v1/jobs/{response.json()['id']}"
    return api.wait(response.json())


def test_new_disks_are_made_and_attached_by_one_job(api: Api) -> None:
    make_volume(api, "data")
    job = create_job(api, {"name": "web", "disks": [
        {"new": {"size": "16M"}, "cache": "none"},
        {"volume": "data"},
        {"new": {"size": 8 * MiB, "format": "raw", "name": "scratch"}, "bus": "virtio-scsi"},
    ]})
    assert job["status"] == "succeeded", job
    assert job["kind"] == "vm.create" and "default/web-disk0" in job["message"]
    disks = api.vm("web")["spec"]["disks"]
    assert [(d["volume"], d["format"]) for d in disks] == [
        ("default/web-disk0", "qcow2"), ("default/data", "qcow2"), ("default/scratch", "raw")]
    assert (disks[0]["cache"], disks[2]["bus"]) == ("none", "virtio-scsi")  # the disk's options are kept
    assert all("new" not in disk for disk in disks)  # the record names the volumes, not how they were made
    made = {v["name"]: v for v in api.client.get("/api/v1/volumes").json()}
    assert (made["web-disk0"]["size"], made["web-disk0"]["attached_to"]) == (16 * MiB, "web")
    assert api.server.recovery.intents.pending() == []
    api.run("web", "start")  # the made volumes really are the VM's disks


def test_a_create_without_new_disks_is_recorded_at_once(api: Api) -> None:
    response = api.client.post("/api/v1/vms", json={"name": "plain"})
    assert response.status_code == 201 and response.json()["name"] == "plain"


def test_a_linked_clone_of_a_template_volume_as_the_boot_disk(api: Api) -> None:
    make_volume(api, "golden")
    assert api.client.post("/api/v1/volumes/default/golden/template", json={"template": True}).status_code == 200
    job = create_job(api, {"name": "q", "machine": "q35", "image": None,
                           "disks": [{"new": {"clone_of": "golden"}, "boot_index": 0}]})
    assert job["status"] == "succeeded", job
    clone = api.client.get("/api/v1/volumes/default/q-disk0").json()
    assert clone["volume"]["base"] == "default/golden" and len(clone["backing_chain"]) == 2


@pytest.mark.parametrize(("disks", "extra", "field", "words"), [
    ([{"new": {"size": "3T"}}], {}, "disks[0].new.size", "do not fit"),  # under the 4 TiB cap, over the disk
    ([{"new": {"size": "8M", "pool": "nowhere"}}], {}, "disks[0].new.pool", "no pool named nowhere"),
    ([{"new": {"clone_of": "default/nothing"}}], {}, "disks[0].new.clone_of", "no volume named default/nothing"),
    ([{"new": {"clone_of": "taken"}}], {}, "disks[0].new.linked", "not a template"),
    ([{"new": {"size": "8M", "name": "taken"}}], {}, "disks[0].new.name", "already exists"),
    ([{"new": {"size": "8M"}}, {"new": {"size": "8M", "name": "web-disk0"}}], {}, "disks[1].new.name",
     "another new disk"),
    ([{"new": {"size": "8M"}, "format": "raw"}], {}, "disks[0]", "goes inside new"),
    ([{"new": {"size": "8M", "clone_of": "taken"}}], {}, "disks[0].new", "not both"),
    ([{"new": {"size": "8M"}}, {"volume": "nothing"}], {}, "disks[1].volume", "no volume named nothing"),
    ([{"new": {"size": "8M"}}], {"image": "debian"}, "image", "no built image"),
    ([{"new": {"size": "8M"}}], {"nics": [{"network": "nowhere"}]}, "nics[0].network", "no network"),
    ([{"new": {"size": "8M"}}], {"cloud_init": {"ssh_keys": ["not-a-key"]}}, "cloud_init.ssh_key", "OpenSSH"),
])
def test_bad_input_names_the_field_and_makes_nothing(api: Api, disks: list[dict[str, Any]], extra: dict[str, Any],
                                                      field: str, words: str) -> None:
    make_volume(api, "taken")
    before = (volumes(api), pool_files(api))
    response = api.client.post("/api/v1/vms", json={"name": "web", "disks": disks, **extra})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_spec", field), error
    assert words in error["message"], error
    assert (volumes(api), pool_files(api)) == before
    assert api.client.get("/api/v1/vms").json() == []
    assert api.client.get("/api/v1/jobs").json()[0]["kind"] == "volume.create"  # no create job was started


def test_new_volumes_must_fit_together(api: Api) -> None:
    free = next(p for p in api.client.get("/api/v1/pools").json() if p["name"] == "default")["usage"]["available"]
    each = free * 2 // 3  # each fits alone, both do not
    response = api.client.post("/api/v1/vms", json={"name": "big", "disks": [{"new": {"size": each}},
                                                                                {"new": {"size": each}}]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "disks[1].new.size"
    assert "together" in response.json()["error"]["message"]
    assert volumes(api) == []


def test_a_refused_create_leaves_no_volume_and_the_retry_succeeds(api: Api) -> None:
    """The web UI's old failure: its volume was made first, the VM refused, and the retry then found the name
    taken. Now the refusal comes before anything is made, so the same request, fixed, goes through."""
    assert api.client.post("/api/v1/networks", json={"name": "lab", "mode": "user"}).status_code == 201
    body: dict[str, Any] = {"name": "web", "disks": [{"new": {"size": "16M"}}], "nics": [{"network": "lba"}]}
    refused = api.client.post("/api/v1/vms", json=body)
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "nics[0].network"
    assert volumes(api) == [] and pool_files(api) == []
    body["nics"] = [{"network": "lab"}]
    assert create_job(api, body)["status"] == "succeeded"
    assert volumes(api) == ["default/web-disk0"]
    assert api.vm("web")["spec"]["disks"][0]["volume"] == "default/web-disk0"


def test_a_failure_in_the_job_rolls_back_every_volume_made(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = api.server.storage
    real_make = StorageService.make_file
    made: list[str] = []

    def make_then_fail(plan: VolumePlan, progress: Any = None) -> Path:
        if made:  # the first volume is made and recorded; the second fails half-way (its file exists)
            real_make(storage, plan)
            raise OSError("disk full")
        made.append(plan.ref)
        return real_make(storage, plan, progress)

    monkeypatch.setattr(storage, "make_file", make_then_fail)
    job = create_job(api, {"name": "web", "disks": [{"new": {"size": "8M"}}, {"new": {"size": "8M"}}]})
    assert job["status"] == "failed" and "disk full" in job["error"], job
    assert made == ["default/web-disk0"]
    assert volumes(api) == [] and pool_files(api) == []
    assert api.client.get("/api/v1/vms/web").status_code == 404
    assert api.server.recovery.intents.pending() == []
    monkeypatch.undo()
    assert create_job(api, {"name": "web", "disks": [{"new": {"size": "8M"}}, {"new": {"size": "8M"}}]})[
        "status"] == "succeeded"


def test_the_name_and_the_new_volumes_are_locked_while_the_job_runs(api: Api,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    storage = api.server.storage
    real_make = StorageService.make_file
    release, made = threading.Event(), []

    def slow_make(plan: VolumePlan, progress: Any = None) -> Path:
        if made:  # the first volume exists: the job waits before the second
            release.wait(10)
        made.append(plan.ref)
        return real_make(storage, plan, progress)

    monkeypatch.setattr(storage, "make_file", slow_make)
    body = {"name": "web", "disks": [{"new": {"size": "8M"}}, {"new": {"size": "8M"}}]}
    response = api.client.post("/api/v1/vms", json=body)
    assert response.status_code == 202
    try:
        deadline = time.monotonic() + 10
        while api.client.get("/api/v1/volumes/default/web-disk0").status_code != 200:
            assert time.monotonic() < deadline, "the first volume was never made"
            time.sleep(0.02)
        for twin in ({"name": "web"}, body):  # busy, not "web-disk0 exists": the same create is under way
            refused = api.client.post("/api/v1/vms", json=twin)
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "busy", refused.text
        volume = api.client.post("/api/v1/pools/default/volumes", json={"name": "web-disk1", "size": "8M"})
        assert volume.status_code == 409 and volume.json()["error"]["code"] == "busy", volume.text
    finally:
        release.set()
    assert api.wait(response.json())["status"] == "succeeded"


def test_a_volume_another_job_holds_is_not_attached_meanwhile(api: Api) -> None:
    make_volume(api, "data")
    with api.holding_volume("default/data") as holder:
        for body in ({"name": "a", "disks": [{"volume": "data"}]},  # a bare name is the same volume
                     {"name": "b", "disks": [{"volume": "default/data"}, {"new": {"size": "8M"}}]}):
            busy = api.client.post("/api/v1/vms", json=body)
            assert busy.status_code == 409 and busy.json()["error"]["job_id"] == holder.id, busy.text
    assert volumes(api) == ["default/data"] and api.client.get("/api/v1/vms").json() == []
