"""`host adopt` through the API on the fake driver: foreign domains with real libvirt XML and real image files in a
pool, listed, planned, taken over in place (no copy), and every refusal leaving everything as it was."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import Api
from virtfleet.drivers.base import Capabilities, DriverConfig
from virtfleet.drivers.qemu.driver import QemuDriver
from virtfleet.errors import Unsupported
from virtfleet.model.vm import VmSpec, VmState

MiB = 1 << 20


def qcow2(path: Path, size: int = 16 * MiB, backing: Path | None = None) -> Path:
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*args, str(path), str(size)], check=True)
    return path


def domain_xml(name: str, domain_uuid: str, disks: list[tuple[str, str]], *, network: str = "default",
               mac: str = "52:54:00:aa:bb:01", extra: str = "") -> str:
    """What virt-manager writes: a q35 KVM domain, virtio disks, a NIC on libvirt's default network, a display."""
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{path}'/>"
        f"<target dev='vd{chr(97 + index)}' bus='virtio'/></disk>" for index, (path, fmt) in enumerate(disks))
    return f"""<domain type='kvm'>
  <name>{name}</name><uuid>{domain_uuid}</uuid>
  <memory unit='KiB'>1048576</memory><vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <devices>
    {disk_xml}{extra}
    <interface type='network'><mac address='{mac}'/><source network='{network}'/><model type='virtio'/></interface>
    <graphics type='spice' autoport='yes'/>
  </devices>
</domain>"""


def foreign(api: Api, name: str, disks: list[tuple[str, str]], state: VmState = VmState.STOPPED, **xml: Any
            ) -> str:
    domain_uuid = str(uuid.uuid4())
    api.host.add_foreign(name, domain_uuid, domain_xml(name, domain_uuid, disks, **xml), state)
    return domain_uuid


@pytest.fixture
def pool(api: Api) -> Path:
    """The default dir pool, and the user network virt-manager's "default" network maps to."""
    response = api.client.post("/api/v1/networks", json={"name": "lan", "mode": "user"})
    assert response.status_code == 201, response.text
    return api.settings.default_pool


def listed(api: Api) -> dict[str, dict[str, Any]]:
    response = api.client.get("/api/v1/host/foreign-domains")
    assert response.status_code == 200, response.text
    return {plan["domain"]: plan for plan in response.json()}


def adopt(api: Api, *names: str, **body: Any) -> Any:
    return api.client.post("/api/v1/host/adopt", json={"domains": list(names), **body})


def snapshot(api: Api) -> tuple[list[str], list[str], list[str]]:
    """What an adopt may change: the VMs, the volumes, the foreign domains."""
    vms = sorted(vm["name"] for vm in api.client.get("/api/v1/vms").json())
    volumes = sorted(f"{v['pool']}/{v['name']}" for v in api.client.get("/api/v1/volumes").json())
    return vms, volumes, sorted(api.host.foreign)


def file_state(path: Path) -> tuple[int, int, int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def test_list_and_dry_run_plan_in_place_and_change_nothing(api: Api, pool: Path) -> None:
    base = qcow2(pool / "web-base.qcow2")
    top = qcow2(pool / "web.qcow2", backing=base)
    foreign(api, "web", [(str(top), "qcow2")], VmState.RUNNING)
    before = snapshot(api)

    plan = listed(api)["web"]
    assert plan["state"] == "running" and plan["vm"] == "web"
    assert not plan["adoptable"]  # libvirt's "default" network is not virtfleet's until mapped
    assert any("interface0" in p and "--network-map" in p for p in plan["problems"])
    assert any("graphical console" in w for w in plan["warnings"])  # the v2v report of what is left behind
    assert any("keeps running as it is" in w for w in plan["warnings"])

    response = adopt(api, "web", dry_run=True, network_map={"default": "lan"})
    assert response.status_code == 200, response.text
    [plan] = response.json()
    assert plan["adoptable"] and plan["problems"] == []
    [disk] = plan["disks"]
    assert [(layer["volume"], layer["new"], layer["template"]) for layer in disk["layers"]] == [
        ("default/web.qcow2", True, False), ("default/web-base.qcow2", True, True)]
    assert disk["layers"][0]["size"] == 16 * MiB
    assert snapshot(api) == before


def test_adopt_a_running_and_a_stopped_domain_registers_their_files_in_place(api: Api, pool: Path) -> None:
    base = qcow2(pool / "web-base.qcow2")
    top = qcow2(pool / "web.qcow2", backing=base)
    data = qcow2(pool / "db.qcow2")
    raw = pool / "db-data.img"
    raw.write_bytes(b"\0" * (4 * MiB))
    files = {path: file_state(path) for path in (base, top, data, raw)}
    web_id = foreign(api, "web", [(str(top), "qcow2")], VmState.RUNNING)
    db_id = foreign(api, "db", [(str(data), "qcow2"), (str(raw), "raw")], mac="52:54:00:aa:bb:02")

    response = adopt(api, "web", "db", network_map={"default": "lan"})
    assert response.status_code == 202, response.text
    job = api.wait(response.json())
    assert job["status"] == "succeeded", job
    assert "adopted running domain web as vm 'web'" in job["message"]

    web, db = api.vm("web"), api.vm("db")
    assert (web["id"], web["state"]) == (web_id, "running")  # still running: nothing was restarted
    assert (db["id"], db["state"]) == (db_id, "stopped")
    assert [d["volume"] for d in db["spec"]["disks"]] == ["default/db.qcow2", "default/db-data.img"]
    assert [n["mac"] for n in web["spec"]["nics"]] == ["52:54:00:aa:bb:01"]
    assert web["spec"]["nics"][0]["network"] == "lan"
    volumes = {f"{v['pool']}/{v['name']}": v for v in api.client.get("/api/v1/volumes").json()}
    assert volumes["default/web.qcow2"]["base"] == "default/web-base.qcow2"
    assert volumes["default/web-base.qcow2"]["template"] is True
    assert volumes["default/db-data.img"]["format"] == "raw"
    assert volumes["default/web.qcow2"]["attached_to"] == "web"
    assert {path: file_state(path) for path in files} == files  # no copy, no move, not even a write
    assert sorted(api.host.foreign) == []
    assert api.host.domains[web_id].state is VmState.RUNNING
    assert api.wait_state("web", "crashed", timeout=0.5)["state"] == "running"  # reconcile agrees: it is ours
    assert any(e["kind"] == "adopted" for e in api.events("web"))
    api.run("web", "stop")  # and it is managed like any other VM
    assert api.vm("web")["state"] == "stopped"


@pytest.mark.parametrize("case", ["outside", "block", "unmapped", "name-clash", "subdirectory", "transient", "missing",
                                  "not-an-image", "unknown-network", "mac-taken",
                                  "network-disk"])
def test_refusals_name_what_is_wrong_and_change_nothing(api: Api, pool: Path, tmp_path: Path, case: str) -> None:
    disk = qcow2(pool / "app.qcow2")
    network_map = {"default": "lan"}
    if case == "outside":
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        disk = qcow2(outside / "app.qcow2")
    if case == "subdirectory":
        (pool / "vms").mkdir()
        disk = qcow2(pool / "vms" / "app.qcow2")
    if case == "missing":
        disk.unlink()
    if case == "not-an-image":
        disk.write_bytes(b"not a qcow2 image" * 100)
    extra = {"block": "<disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdz'/></disk>",
             "network-disk": "<disk type='network' device='disk'><source protocol='rbd' name='rbd/app'/>"
                             "<target dev='vdy'/></disk>"}.get(case, "")
    if case == "unmapped":
        network_map = {}
    if case == "unknown-network":
        network_map = {"default": "nosuch"}
    if case == "mac-taken":
        api.create("other", nics=[{"network": "lan", "mac": "52:54:00:aa:bb:01"}])
    if case == "name-clash":
        api.create("app")
    api.host.add_foreign("app", str(uuid.uuid4()), domain_xml("app", str(uuid.uuid4()), [(str(disk), "qcow2")],
                                                               extra=extra),
                         persistent=case != "transient")
    before = snapshot(api)
    response = adopt(api, "app", network_map=network_map)
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    expected = {
        "outside": f"vda: {disk} is outside every storage pool; create a dir pool over {disk.parent} first",
        "block": "vdz: /dev/sdz is a host block device",
        "unmapped": "interface0: source network 'default' is not mapped",
        "name-clash": "a VM named 'app' exists already",
        "subdirectory": "lies in a subdirectory of pool 'default'",
        "transient": "app is transient",
        "missing": f"vda: {disk} does not exist",
        "not-an-image": f"vda: {disk}: ",
        "unknown-network": "interface0: mapped to 'nosuch', which is no virtfleet network",
        "network-disk": "vdy.type: a network disk (rbd) is not a file in a pool",
        "mac-taken": "interface0: the MAC 52:54:00:aa:bb:01 is used by vm 'other' already",
    }[case]
    assert expected in message
    if case != "unknown-network":  # the listing (no mapping given) shows the same problem
        assert expected in " ".join(listed(api)["app"]["problems"])
    assert snapshot(api) == before


def test_unknown_names_and_a_failed_take_over_leave_nothing(api: Api, pool: Path) -> None:
    disk = qcow2(pool / "app.qcow2")
    app_id = foreign(api, "app", [(str(disk), "qcow2")], VmState.RUNNING)
    before = snapshot(api)
    response = adopt(api, "nosuch", network_map={"default": "lan"})
    assert response.status_code == 404 and "nosuch" in response.json()["error"]["message"]
    assert adopt(api, "app", "app").status_code == 422

    api.host.fail_next["take_over"] = "libvirt said no"
    job = api.wait(adopt(api, "app", network_map={"default": "lan"}).json())
    assert job["status"] == "failed" and "app: not adopted, nothing of it kept" in job["error"]
    assert snapshot(api) == before  # the VM and volume records made before the failure are gone
    assert disk.is_file()  # and the file it never owned is still there
    assert app_id not in api.host.domains
    assert adopt(api, "app", dry_run=True, network_map={"default": "lan"}).json()[0]["adoptable"]


def test_an_operator_lists_and_only_an_admin_adopts(api: Api, pool: Path) -> None:
    foreign(api, "app", [(str(qcow2(pool / "app.qcow2")), "qcow2")])
    viewer, operator = api.headers_for("viewer"), api.headers_for("operator")
    assert api.client.get("/api/v1/host/foreign-domains", headers=viewer).status_code == 403
    assert api.client.get("/api/v1/host/foreign-domains", headers=operator).status_code == 200
    response = api.client.post("/api/v1/host/adopt", headers=operator,
                               json={"domains": ["app"], "network_map": {"default": "lan"}})
    assert response.status_code == 403
    assert "app" in api.host.foreign


@pytest.mark.parametrize("taken_over", [False, True])
def test_recovery_of_an_adoption_a_crash_interrupted(api: Api, pool: Path, taken_over: bool) -> None:
    """The state a daemon killed at failpoint host.adopt.after-vm leaves (volumes and VM recorded, the intent open),
    without or with the take-over done: the next start removes the records, or keeps them."""
    disk = qcow2(pool / "app.qcow2")
    app_id = foreign(api, "app", [(str(disk), "qcow2")], VmState.RUNNING)
    before = snapshot(api)
    service = api.server.adopt
    portal = api.client.portal
    assert portal is not None

    async def interrupted() -> None:
        [plan] = await service.plans(["app"], {"default": "lan"})
        intent = service.intents.begin("host.adopt", "domain:app", {"domain": "app", "vm_id": plan.uuid,
                                                                    "vm": plan.vm, "volumes": []})
        spec = service._record(plan, intent)
        if taken_over:
            await service.driver.take_over("app", plan.uuid, spec)

    portal.call(interrupted)
    assert api.vm("app")["id"] == app_id
    assert portal.call(api.server.recovery.run) == []
    assert service.intents.pending() == []
    if taken_over:
        assert api.vm("app")["state"] == "running" and "default/app.qcow2" in snapshot(api)[1]
    else:
        assert snapshot(api) == before and disk.is_file()


def test_a_driver_without_the_adopt_capability_is_refused_naming_it(api: Api, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    monkeypatch.setattr(api.server.driver, "capabilities", lambda: Capabilities(adopt=False))
    for response in (api.client.get("/api/v1/host/foreign-domains"), adopt(api, "app")):
        assert response.status_code == 501 and "capability 'adopt'" in response.json()["error"]["message"]


async def test_the_qemu_driver_has_no_foreign_domains_and_takes_none_over(tmp_path: Path) -> None:
    driver = QemuDriver(DriverConfig(tmp_path))
    assert driver.capabilities().adopt is False
    assert await driver.foreign_domains() == []
    with pytest.raises(Unsupported, match="capability 'adopt'"):
        await driver.take_over("web", "vm-id", VmSpec(name="web"))


def test_a_disk_spelled_through_a_link_is_the_pool_file_it_leads_to(api: Api, pool: Path, tmp_path: Path) -> None:
    disk = qcow2(pool / "app.qcow2")
    link = tmp_path / "libvirt-images"
    link.symlink_to(pool)
    foreign(api, "app", [(f"{link}//./app.qcow2", "qcow2")])
    job = api.wait(adopt(api, "app", network_map={"default": "lan"}).json())
    assert job["status"] == "succeeded", job
    volume = api.client.get("/api/v1/volumes/default/app.qcow2").json()["volume"]
    assert volume["path"] == str(disk) and volume["attached_to"] == "app"


def test_domains_sharing_a_backing_file_share_its_volume(api: Api, pool: Path) -> None:
    base = qcow2(pool / "golden.qcow2")
    for index, name in enumerate(("one", "two", "three")):
        overlay = qcow2(pool / f"{name}.qcow2", backing=base)
        foreign(api, name, [(str(overlay), "qcow2")], mac=f"52:54:00:aa:bb:1{index}")
    job = api.wait(adopt(api, "one", "two", network_map={"default": "lan"}).json())  # in one job: made once
    assert job["status"] == "succeeded", job
    [plan] = adopt(api, "three", dry_run=True, network_map={"default": "lan"}).json()
    assert [(layer["volume"], layer["new"]) for layer in plan["disks"][0]["layers"]] == [
        ("default/three.qcow2", True), ("default/golden.qcow2", False)]
    assert api.wait(adopt(api, "three", network_map={"default": "lan"}).json())["status"] == "succeeded"
    volumes = {f"{v['pool']}/{v['name']}": v for v in api.client.get("/api/v1/volumes").json()}
    assert sorted(volumes) == ["default/golden.qcow2", "default/one.qcow2", "default/three.qcow2", "default/two.qcow2"]
    assert {volumes[f"default/{name}.qcow2"]["base"] for name in ("one", "two", "three")} == {"default/golden.qcow2"}
