"""Deleting a VM: every step under one intent (rolled forward after a crash: tests/integration/test_crash_vms.py),
the volumes it deletes locked with it, and a failure that leaves a VM a retry can finish (fake hypervisor)."""

from __future__ import annotations

from pathlib import Path

from tests.functional.conftest import Api


def make_volume(api: Api, name: str) -> Path:
    job = api.client.post("/api/v1/pools/default/volumes", json={"name": name, "size": "8M"}).json()
    assert api.wait(job)["status"] == "succeeded"
    return Path(api.client.get(f"/api/v1/volumes/default/{name}").json()["volume"]["path"])


def delete(api: Api, name: str, **params: bool) -> dict[str, object]:
    response = api.client.delete(f"/api/v1/vms/{name}", params=params)
    assert response.status_code == 202, response.text
    return api.wait(response.json())


def test_force_delete_stops_undefines_forgets_and_removes_the_volumes(api: Api) -> None:
    disk = make_volume(api, "data")
    vm = api.create("web", disks=[{"volume": "data"}], cloud_init={"hostname": "web"})
    api.run("web", "start")
    seed = api.settings.data_dir / "seeds" / f"{vm['id']}.iso"
    assert seed.is_file() and vm["id"] in api.host.domains

    refused = api.client.delete("/api/v1/vms/web")
    assert refused.status_code == 409 and refused.json()["error"]["current"] == "running"
    job = delete(api, "web", force=True, delete_volumes=True)
    assert job["status"] == "succeeded" and job["message"] == "deleted vm 'web' and its volumes default/data", job
    assert api.client.get("/api/v1/vms/web").status_code == 404
    assert vm["id"] not in api.host.domains and not seed.exists() and not disk.exists()
    assert api.client.get("/api/v1/volumes").json() == []
    assert api.server.recovery.intents.pending() == []


def test_a_failed_delete_keeps_the_vm_as_the_host_runs_it_and_a_retry_finishes(api: Api) -> None:
    make_volume(api, "data")
    api.create("web", disks=[{"volume": "data"}])
    api.run("web", "start")
    api.host.fail_next["stop"] = "the hypervisor hangs"
    job = delete(api, "web", force=True, delete_volumes=True)
    assert job["status"] == "failed" and "hangs" in job["error"], job
    assert api.vm("web")["state"] == "running"  # nothing was undone that had not happened
    assert api.server.recovery.intents.pending() == []  # a failure in process is reported, not left to a restart
    assert delete(api, "web", force=True, delete_volumes=True)["status"] == "succeeded"
    assert api.client.get("/api/v1/volumes").json() == []


def test_delete_keeps_a_volume_that_others_are_based_on(api: Api) -> None:
    make_volume(api, "golden")
    api.create("gold", disks=[{"volume": "golden"}])
    assert api.client.post("/api/v1/vms/gold/template").status_code == 200
    assert api.wait(api.client.post("/api/v1/vms/gold/clone", json={"name": "web"}).json())["status"] == "succeeded"
    job = delete(api, "gold", delete_volumes=True)
    assert job["status"] == "succeeded", job
    assert "kept default/golden" in str(job["message"]) and "linked clones" in str(job["message"])
    assert sorted(v["name"] for v in api.client.get("/api/v1/volumes").json()) == ["golden", "web-disk0"]
    job = delete(api, "web", delete_volumes=True)  # the clone goes; its base is no longer needed by anyone
    assert job["message"] == "deleted vm 'web' and its volumes default/web-disk0", job


def test_the_volumes_to_delete_are_locked_with_the_vm(api: Api) -> None:
    make_volume(api, "data")
    api.create("web", disks=[{"volume": "data"}])
    with api.holding_volume("default/data") as holder:
        busy = api.client.delete("/api/v1/vms/web", params={"delete_volumes": True})
        assert busy.status_code == 409 and busy.json()["error"]["job_id"] == holder.id, busy.text
        assert api.vm("web")["name"] == "web"
    assert delete(api, "web", delete_volumes=True)["status"] == "succeeded"
