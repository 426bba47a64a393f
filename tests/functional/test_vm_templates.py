"""Template VMs: frozen settings and disks; new VMs get linked clones (fake hypervisor, real qemu-img)."""

from __future__ import annotations

from tests.functional.conftest import Api


def test_template_vm_to_linked_clones(api: Api) -> None:
    made = api.client.post("/api/v1/pools/default/volumes", json={"name": "golden", "size": "8M"})
    assert api.wait(made.json())["status"] == "succeeded"
    assert api.client.post("/api/v1/networks", json={"name": "usr", "mode": "user"}).status_code == 201
    api.create("gold", cpus=2, memory="192M", disks=[{"volume": "golden", "cache": "none"}],
               nics=[{"network": "usr"}], cloud_init={"hostname": "gold"})
    api.run("gold", "start")
    running = api.client.post("/api/v1/vms/gold/template")
    assert running.status_code == 409 and "running" in running.json()["error"]["message"]
    api.run("gold", "stop")

    frozen = api.client.post("/api/v1/vms/gold/template")
    assert frozen.status_code == 200 and frozen.json()["template"] is True
    assert api.client.get("/api/v1/volumes/default/golden").json()["volume"]["template"] is True
    refused = api.client.post("/api/v1/vms/gold/start")
    assert refused.status_code == 409 and "template" in refused.json()["error"]["message"]

    job = api.wait(api.client.post("/api/v1/vms/gold/clone", json={"name": "web1", "memory": "256M"}).json())
    assert job["status"] == "succeeded", job
    web = api.vm("web1")
    assert (web["spec"]["cpus"], web["spec"]["memory"], web["template"]) == (2, 256, False)
    disk = web["spec"]["disks"][0]
    assert disk["volume"] == "default/web1-disk0" and disk["cache"] == "none"
    volume = api.client.get("/api/v1/volumes/default/web1-disk0").json()
    assert volume["volume"]["base"] == "default/golden" and len(volume["backing_chain"]) == 2
    assert web["spec"]["nics"][0]["mac"] != api.vm("gold")["spec"]["nics"][0]["mac"]
    assert web["spec"]["cloud_init"]["hostname"] is None  # the clone answers to its own name
    api.run("web1", "start")

    assert api.client.post("/api/v1/vms/gold/clone", json={"name": "web1"}).status_code == 409
    assert api.client.post("/api/v1/vms/web1/clone", json={"name": "x"}).status_code == 409  # not a template
    base_in_use = api.client.delete("/api/v1/volumes/default/golden")
    assert base_in_use.status_code == 409 and "web1-disk0" in base_in_use.json()["error"]["message"]
