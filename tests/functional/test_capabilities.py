"""Capabilities are read before a job is submitted: what the driver cannot do is refused up front (501 naming the
capability), with no job and nothing changed.

Each case builds its VMs on a full fake driver, then reopens the same data directory on a fake driver that lacks
one capability (as a host whose driver changed would) and tries every operation that capability gates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import Api, open_api
from virtfleet.drivers.base import Capabilities
from virtfleet.jobs.capability_check import NOT_YET_USED, capability_names, flag_names

opened = contextlib.contextmanager(open_api)


@dataclasses.dataclass(frozen=True)
class Refusal:
    status: int
    capability: str | None  # from the error body; a WebSocket's close reason has only the message, which names it
    message: str


Attempt = Callable[[Api], Refusal]


def http(method: str, path: str, **kwargs: Any) -> Attempt:
    def attempt(api: Api) -> Refusal:
        response = api.client.request(method, f"/api/v1{path}", **kwargs)
        error = response.json().get("error", {}) if response.status_code >= 400 else {}
        return Refusal(response.status_code, error.get("capability"), error.get("message", response.text))

    return attempt


def websocket(path: str) -> Attempt:
    def attempt(api: Api) -> Refusal:
        with api.client.websocket_connect(f"/api/v1{path}") as ws:
            message = ws.receive()
        if message["type"] != "websocket.close":
            return Refusal(101, None, f"attached: {message}")
        reason = str(message.get("reason", ""))
        named = re.search(r"capability '(\w+)'", reason)
        return Refusal(int(message["code"]) - 4000, named.group(1) if named else None, reason)

    return attempt


# --- what each case starts from (made with every capability) ----------------------------------------------------
def volume(api: Api, name: str) -> None:
    response = api.client.post("/api/v1/pools/default/volumes", json={"name": name, "size": "8M"})
    assert api.wait(response.json())["status"] == "succeeded"


def network(api: Api) -> None:
    assert api.client.post("/api/v1/networks", json={"name": "usr", "mode": "user"}).status_code == 201


def running(api: Api, name: str, **fields: Any) -> dict[str, Any]:
    api.create(name, **fields)
    return api.run(name, "start")


def job(api: Api, method: str, path: str, **kwargs: Any) -> None:
    response = api.client.request(method, f"/api/v1{path}", **kwargs)
    assert response.status_code == 202, response.text
    assert api.wait(response.json())["status"] == "succeeded"


def mac(api: Api, vm: str) -> str:
    return str(api.vm(vm)["spec"]["nics"][0]["mac"])


def paused(api: Api) -> None:
    running(api, "r")
    running(api, "p")
    api.run("p", "pause")


def with_vnc(api: Api) -> None:
    running(api, "desk", machine="q35", display="vnc")
    api.create("dark", machine="q35", display="vnc")


def with_disks(api: Api) -> None:
    volume(api, "v1")
    volume(api, "v2")
    running(api, "q", machine="q35", disks=[{"volume": "v1"}])


def with_nics(api: Api) -> None:
    network(api)
    running(api, "q", machine="q35", nics=[{"network": "usr"}])
    api.create("cold", machine="q35", nics=[{"network": "usr"}])
    api.create("unplugged", machine="q35", nics=[{"network": "usr", "link_up": False}])


def with_disk_snapshot(api: Api) -> None:
    volume(api, "v1")
    running(api, "q", disks=[{"volume": "v1"}])
    job(api, "POST", "/vms/q/snapshots", json={"name": "s1"})


def with_memory_snapshot(api: Api) -> None:
    volume(api, "v1")
    running(api, "q", disks=[{"volume": "v1"}])
    job(api, "POST", "/vms/q/snapshots", json={"name": "m1", "memory": True})


def with_image_vms(api: Api) -> None:
    api.create("k")
    with_memory_snapshot(api)
    api.run("q", "stop")  # loading its memory snapshot starts it


def with_microvms(api: Api) -> None:
    api.create("m")
    volume(api, "base")
    api.create("tpl", disks=[{"volume": "base"}])
    assert api.client.post("/api/v1/vms/tpl/template").status_code == 200


@dataclasses.dataclass(frozen=True)
class Gate:
    setup: Callable[[Api], None]
    operations: dict[str, Attempt]  # what the capability gates: each refused
    lacking: object = False  # the capability's value on the reduced driver


USER_NIC = {"network": "usr"}

# Every capability -> the operations that need it. A capability nothing needs yet is in NOT_YET_USED instead.
GATES: dict[str, Gate] = {
    "pause": Gate(paused, {"pause": http("POST", "/vms/r/pause"), "resume": http("POST", "/vms/p/resume")}),
    "reboot": Gate(lambda api: running(api, "r"), {"reboot": http("POST", "/vms/r/reboot")}),
    "acpi_shutdown": Gate(lambda api: running(api, "r"), {"shutdown": http("POST", "/vms/r/shutdown")}),
    "console": Gate(lambda api: running(api, "r"), {
        "console": websocket("/vms/r/console"),
        "console history": http("GET", "/vms/r/logs"),
    }),
    "vnc": Gate(with_vnc, {
        "graphical console": websocket("/vms/desk/vnc"),
        "create with display vnc": http("POST", "/vms", json={"name": "d2", "machine": "q35", "display": "vnc"}),
        "start with display vnc": http("POST", "/vms/dark/start"),
    }),
    "disk_hotplug": Gate(with_disks, {
        "hot-plug a disk": http("POST", "/vms/q/disks", json={"volume": "v2"}),
        "hot-unplug a disk": http("DELETE", "/vms/q/disks/default/v1"),
    }),
    "nic_hotplug": Gate(with_nics, {
        "hot-plug a NIC": http("POST", "/vms/q/nics", json=USER_NIC),
        "hot-unplug a NIC": lambda api: http("DELETE", f"/vms/q/nics/{mac(api, 'q')}")(api),
    }),
    "link_state": Gate(with_nics, {
        "pull a running VM's cable": lambda api: http("POST", f"/vms/q/nics/{mac(api, 'q')}/link",
                                                      json={"up": False})(api),
        "pull a stopped VM's cable": lambda api: http("POST", f"/vms/cold/nics/{mac(api, 'cold')}/link",
                                                      json={"up": False})(api),
        "add a NIC with its link down": http("POST", "/vms/cold/nics", json={**USER_NIC, "link_up": False}),
        "create with a link down": http("POST", "/vms", json={"name": "n2", "machine": "q35",
                                                              "nics": [{**USER_NIC, "link_up": False}]}),
        "start with a link down": http("POST", "/vms/unplugged/start"),
    }),
    "snapshots": Gate(with_disk_snapshot, {
        "live disk snapshot": http("POST", "/vms/q/snapshots", json={"name": "s2"}),
        "live merge": http("DELETE", "/vms/q/snapshots/s1"),
    }),
    "memory_snapshots": Gate(with_memory_snapshot, {
        "memory snapshot": http("POST", "/vms/q/snapshots", json={"name": "m2", "memory": True}),
        "load a memory snapshot": http("POST", "/vms/q/snapshots/m1/revert"),
        "delete a memory snapshot of a running VM": http("DELETE", "/vms/q/snapshots/m1"),
    }),
    "kernel_boot": Gate(with_image_vms, {
        "create booting an image": http("POST", "/vms", json={"name": "k2"}),
        "start booting an image": http("POST", "/vms/k/start"),
        "start from a memory snapshot": http("POST", "/vms/q/snapshots/m1/revert"),
    }),
    "uefi": Gate(lambda api: api.create("efi", machine="q35", firmware="uefi"), {
        "create with UEFI": http("POST", "/vms", json={"name": "e2", "machine": "q35", "firmware": "uefi"}),
        "start with UEFI": http("POST", "/vms/efi/start"),
    }),
    "adopt": Gate(lambda api: None, {
        "list foreign domains": http("GET", "/host/foreign-domains"),
        "adopt a domain": http("POST", "/host/adopt", json={"domains": ["legacy"]}),
    }),
    "cloud_init": Gate(lambda api: api.create("c", cloud_init={"user_data": "#cloud-config\n"}), {
        "create with cloud-init": http("POST", "/vms", json={"name": "c2", "cloud_init": {"ssh_keys": []}}),
        "start with cloud-init": http("POST", "/vms/c/start"),
    }),
    "usage": Gate(lambda api: running(api, "r"), {"usage chart": http("GET", "/vms/r/metrics")}),
    "machines": Gate(with_microvms, {
        "create a microvm": http("POST", "/vms", json={"name": "m2"}),
        "start a microvm": http("POST", "/vms/m/start"),
        "clone a microvm template": http("POST", "/vms/tpl/clone", json={"name": "c1"}),
    }, lacking=["q35"]),
}


def world(api: Api) -> dict[str, Any]:
    """Everything a refused operation must leave as it was: jobs, VM records, volumes, snapshots, the host."""
    get = api.client.get
    vms = get("/api/v1/vms").json()
    return {
        "jobs": get("/api/v1/jobs", params={"limit": 1000}).json(),
        "vms": vms,
        "volumes": get("/api/v1/volumes").json(),
        "snapshots": {vm["name"]: get(f"/api/v1/vms/{vm['name']}/snapshots").json() for vm in vms},
        "host": {vm_id: (d.state, d.spec, sorted(d.memory_snapshots), dict(d.links), list(d.overlays))
                 for vm_id, d in api.host.domains.items()},
    }


@pytest.mark.parametrize("capability", sorted(GATES))
def test_an_operation_the_driver_cannot_do_is_refused_before_any_job(tmp_path: Path, capability: str) -> None:
    gate = GATES[capability]
    data_dir = tmp_path / "data"
    with opened(data_dir) as api:
        gate.setup(api)
    with opened(data_dir, fake_capabilities=json.dumps({capability: gate.lacking})) as api:
        host = api.client.get("/api/v1/host").json()
        assert host["driver"] == "fake" and host["capabilities"][capability] == gate.lacking
        problems = []  # every operation is tried, so a failure lists all the gaps at once
        for label, attempt in gate.operations.items():
            before = world(api)
            refusal = attempt(api)
            if (refusal.status, refusal.capability) != (501, capability):
                problems.append(f"{label}: {refusal.status} {refusal.capability} {refusal.message[:200]}")
            elif world(api) != before:
                problems.append(f"{label}: refused, but something changed")  # no job, nothing else either
        assert not problems


def test_every_capability_is_gated_somewhere() -> None:
    """A new Capabilities field must gate an operation (here and in jobs/capability_check.py), or say why not."""
    assert set(GATES) | set(NOT_YET_USED) == set(capability_names())
    assert not set(GATES) & set(NOT_YET_USED)
    bools = {f.name for f in dataclasses.fields(Capabilities) if isinstance(getattr(Capabilities(), f.name), bool)}
    assert set(flag_names()) == bools


def test_capabilities_not_used_yet_have_no_operation(api: Api) -> None:
    words = {"live_migration": "migrat"}  # how a route for it would be spelled
    assert set(words) == set(NOT_YET_USED)
    paths = list(api.app.openapi()["paths"])
    assert not [path for path in paths if any(word in path for word in words.values())]


def test_hot_plug_limits_of_the_vm_are_refused_before_any_job(api: Api) -> None:
    """With every capability: a microvm has no hot-plug bus, and only virtio-blk disks hot-plug."""
    volume(api, "v1")
    network(api)
    running(api, "micro")
    running(api, "q", machine="q35")
    cases = [
        ("/vms/micro/disks", {"volume": "v1"}, "disk_hotplug", "no hot-plug bus"),
        ("/vms/micro/nics", USER_NIC, "nic_hotplug", "no hot-plug bus"),
        ("/vms/q/disks", {"volume": "v1", "bus": "virtio-scsi"}, "disk_hotplug", "only virtio-blk"),
    ]
    for path, body, capability, why in cases:
        before = world(api)
        refusal = http("POST", path, json=body)(api)
        assert (refusal.status, refusal.capability) == (501, capability) and why in refusal.message, refusal
        assert world(api) == before
    api.run("micro", "stop")  # stopped: recorded for the next start, nothing to hot-plug
    job(api, "POST", "/vms/micro/disks", json={"volume": "v1"})


def test_the_host_shows_its_driver_and_capabilities(tmp_path: Path) -> None:
    with opened(tmp_path / "data", fake_capabilities='{"vnc": false, "machines": ["q35"]}') as api:
        host = api.client.get("/api/v1/host").json()
    assert host["driver"] == "fake"
    assert host["capabilities"] == {**dataclasses.asdict(Capabilities()), "adopt": True, "vnc": False,
                                    "machines": ["q35"]}  # the fake adopts (the default Capabilities do not)


@pytest.mark.parametrize(("text", "problem"), [
    ('{"teleport": false}', "no capability 'teleport'"),
    ('{"pause": "no"}', "pause is true or false"),
    ('{"machines": "q35"}', "machines is a list"),
    ('[]', "a JSON object"),
])
def test_bad_fake_capabilities_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem), opened(tmp_path / "data", fake_capabilities=text):
        pass
