"""Attaching and detaching disks through the API (fake hypervisor, real qemu-img volumes)."""

from __future__ import annotations

from tests.functional.conftest import Api


def make_volume(api: Api, name: str) -> None:
    response = api.client.post("/api/v1/pools/default/volumes", json={"name": name, "size": "8M"})
    assert response.status_code == 202, response.text
    assert api.wait(response.json())["status"] == "succeeded"


def test_attach_detach_on_stopped_and_running_vms(api: Api) -> None:
    make_volume(api, "d1")
    make_volume(api, "d2")
    api.create("q", machine="q35")
    attach = api.client.post("/api/v1/vms/q/disks", json={"volume": "d1"})
    assert api.wait(attach.json())["message"] == "default/d1 attached for the next start"
    api.run("q", "start")
    hot = api.wait(api.client.post("/api/v1/vms/q/disks", json={"volume": "default/d2", "cache": "none"}).json())
    assert hot["status"] == "succeeded" and "hot-plugged" in hot["message"]
    disks = api.vm("q")["spec"]["disks"]
    assert [d["volume"] for d in disks] == ["default/d1", "default/d2"] and disks[1]["cache"] == "none"
    domain = api.host.domains[api.vm("q")["id"]]
    assert [d.volume for d in domain.spec.disks] == ["default/d1", "default/d2"]  # the host's record follows

    # The same volume twice, an unknown volume, a template, or an unknown disk to detach: refused, nothing changes.
    for body, field in (({"volume": "d1"}, "disks[2]"), ({"volume": "nope"}, "disks[2].volume")):
        refused = api.client.post("/api/v1/vms/q/disks", json=body)
        assert refused.status_code == 422 and refused.json()["error"]["field"] == field, refused.text
    assert api.client.delete("/api/v1/vms/q/disks/default/zzz").status_code == 404
    assert len(api.vm("q")["spec"]["disks"]) == 2

    detach = api.wait(api.client.delete("/api/v1/vms/q/disks/default/d2").json())
    assert detach["status"] == "succeeded"
    assert [d["volume"] for d in api.vm("q")["spec"]["disks"]] == ["default/d1"]
    events = [e["kind"] for e in api.events("q")]
    assert events.count("disk-attached") == 2 and "disk-detached" in events


def test_hotplug_on_microvm_is_refused_and_paused_vms_refuse_disk_changes(api: Api) -> None:
    make_volume(api, "m1")
    api.create("m")
    api.run("m", "start")
    jobs = api.client.get("/api/v1/jobs").json()
    refused = api.client.post("/api/v1/vms/m/disks", json={"volume": "m1"})  # before any job: 501
    assert refused.status_code == 501 and refused.json()["error"]["capability"] == "disk_hotplug"
    assert "hot-plug bus" in refused.json()["error"]["message"]
    assert api.vm("m")["spec"]["disks"] == [] and api.client.get("/api/v1/jobs").json() == jobs
    api.run("m", "pause")
    paused = api.client.post("/api/v1/vms/m/disks", json={"volume": "m1"})
    assert paused.status_code == 409 and "paused" in paused.json()["error"]["message"]
