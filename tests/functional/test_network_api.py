"""The network API on the fake hypervisor. Only user-mode networks are made here (they need nothing on the host);
nat/isolated plumbing is tested for real in tests/integration inside network namespaces."""

from __future__ import annotations

from typing import Any

from tests.functional.conftest import Api


def post_network(api: Api, **body: Any) -> Any:
    return api.client.post("/api/v1/networks", json=body)


def test_bad_networks_are_refused_with_the_field_named(api: Api) -> None:
    cases = [
        ({"name": "a", "mode": "nat"}, "subnet"),
        ({"name": "a", "mode": "nat", "subnet": "10.0.0.0/33"}, "subnet"),
        ({"name": "a", "mode": "nat", "subnet": "10.9.0.0/24", "vlan": 5}, "vlan"),
        ({"name": "a", "mode": "bridge", "bridge": "br0", "vlan": 4095}, "vlan"),
        ({"name": "a", "mode": "bridge"}, "bridge"),
        ({"name": "a", "mode": "bridge", "bridge": "vf-no-such-br"}, "bridge"),
        ({"name": "a", "mode": "bridge", "bridge": "lo"}, "bridge"),  # exists on every host, and is no bridge
        ({"name": "a", "mode": "nat", "subnet": "10.9.0.0/24", "uplink": "vf-no-such"}, "uplink"),
        ({"name": "a", "mode": "nat", "subnet": "10.9.0.0/24", "dhcp_range": "10.9.0.1-10.9.0.20"}, "dhcp_range"),
        ({"name": "a/b", "mode": "user"}, "name"),
    ]
    for body, field in cases:
        response = post_network(api, **body)
        assert response.status_code == 422 and response.json()["error"]["field"] == field, (body, response.text)
    assert api.client.get("/api/v1/networks").json() == []


def test_nics_on_a_user_network(api: Api) -> None:
    assert post_network(api, name="usr", mode="user").status_code == 201
    assert post_network(api, name="usr", mode="user").status_code == 409
    vm = api.create("n1", machine="q35", nics=[{"network": "usr", "forwards": ["tcp:8080:80"]}])
    mac = vm["spec"]["nics"][0]["mac"]
    assert mac.startswith("52:54:00:") and vm["spec"]["nics"][0]["tap"] is None

    # Refusals name the field and create nothing.
    for nics, field in (([{"network": "nope"}], "nics[0].network"), ([{"network": "usr", "mac": mac}], "nics[0].mac"),
                        ([{"network": "usr", "forwards": ["tcp:70000:80"]}], "nics[0].forwards")):
        response = api.client.post("/api/v1/vms", json={"name": "n2", "machine": "q35", "nics": nics})
        assert response.status_code == 422 and response.json()["error"]["field"] == field, response.text
    assert [v["name"] for v in api.client.get("/api/v1/vms").json()] == ["n1"]

    api.run("n1", "start")
    domain = api.host.domains[vm["id"]]
    assert domain.spec.nics[0].user_mode  # the driver was told how to connect it
    added = api.wait(api.client.post("/api/v1/vms/n1/nics", json={"network": "usr"}).json())
    assert added["status"] == "succeeded" and "hot-plugged" in added["message"]
    second = api.vm("n1")["spec"]["nics"][1]["mac"]
    assert second != mac
    link = api.wait(api.client.post(f"/api/v1/vms/n1/nics/{second}/link", json={"up": False}).json())
    assert link["status"] == "succeeded" and api.host.domains[vm["id"]].links
    nics = api.client.get("/api/v1/vms/n1/nics").json()
    assert [(n["mac"], n["link_up"], n["ip"]) for n in nics] == [(mac, True, None), (second, False, None)]
    removed = api.wait(api.client.delete(f"/api/v1/vms/n1/nics/{second}").json())
    assert removed["status"] == "succeeded" and len(api.vm("n1")["spec"]["nics"]) == 1

    in_use = api.client.delete("/api/v1/networks/usr")
    assert in_use.status_code == 409 and "n1" in in_use.json()["error"]["message"]
    api.run("n1", "stop")
    assert api.wait(api.client.delete("/api/v1/vms/n1").json())["status"] == "succeeded"
    assert api.client.delete("/api/v1/networks/usr").status_code == 204
