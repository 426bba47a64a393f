"""GET /api/v1/vms at fleet scale: every VM's addresses in the one answer, from one read of the leases."""

from __future__ import annotations

import pytest

from tests.functional.conftest import Api
from virtfleet.model.network import NetworkSpec
from virtfleet.network import dnsmasq


def test_the_list_carries_each_vms_addresses_from_one_read_of_the_leases(api: Api,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A nat network recorded as the service records one, without its host plumbing (bridge, dnsmasq), which needs
    # root and is tested in tests/integration; its lease file is written here as dnsmasq writes it.
    networks = api.server.networks
    networks.repo.add(NetworkSpec(name="lan", mode="nat", subnet="10.77.0.0/24"), "vfbr-test")
    api.client.post("/api/v1/networks", json={"name": "usr", "mode": "user"}).raise_for_status()
    web = api.create("web", nics=[{"network": "lan"}, {"network": "lan"}, {"network": "usr"}])
    db = api.create("db", nics=[{"network": "lan"}])
    api.create("plain")
    macs = [nic["mac"] for nic in web["spec"]["nics"]]
    leases = networks.state_dir / "lan" / "lan.dnsmasq.leases"
    leases.parent.mkdir(parents=True, exist_ok=True)
    leases.write_text(f"0 {macs[0].upper()} 10.77.0.130 web *\n"  # dnsmasq may write upper case
                      f"1999999999 {macs[1]} 10.77.0.131 * 01:aa\n"
                      "0 52:54:00:ff:ff:ff 10.77.0.200 gone *\n")  # a VM no longer there

    reads = 0
    read_leases = dnsmasq.Dnsmasq.leases

    def counted(self: dnsmasq.Dnsmasq) -> list[object]:
        nonlocal reads
        reads += 1
        return list(read_leases(self))

    monkeypatch.setattr(dnsmasq.Dnsmasq, "leases", counted)
    listed = api.client.get("/api/v1/vms")
    assert listed.status_code == 200, listed.text
    by_name = {vm["name"]: vm for vm in listed.json()}
    assert by_name["web"]["addresses"] == ["10.77.0.130", "10.77.0.131"]  # in NIC order; user mode has none
    assert by_name["db"]["addresses"] == [] and by_name["plain"]["addresses"] == []
    assert reads == 1  # one read of the one nat network's leases for the whole list, not one per VM
    assert [vm["name"] for vm in listed.json()] == ["db", "plain", "web"]
    assert by_name["web"]["spec"] == web["spec"] and by_name["db"]["id"] == db["id"]

    # The NICs' own route answers as before, with the same addresses.
    nics = api.client.get("/api/v1/vms/web/nics").json()
    assert [nic["ip"] for nic in nics] == ["10.77.0.130", "10.77.0.131", None]
    # The OpenAPI document names the field, so clients know it is there.
    schema = api.client.get("/openapi.json").json()["components"]["schemas"]["VmListed"]
    assert schema["properties"]["addresses"]["type"] == "array"
