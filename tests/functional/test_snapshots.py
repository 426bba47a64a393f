"""Snapshots through the API on the fake hypervisor (real qemu-img images): the tree, failures in the middle of an
operation, and the recovery at start-up of operations a dead daemon left half done (the plans in the intent log)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.functional.conftest import Api, open_api
from virtfleet.jobs.snapshot_recovery import CreatePlan, MemoryPlan, NewOverlay, RevertPlan
from virtfleet.model.snapshot import SnapshotLayer
from virtfleet.server import Server
from virtfleet.storage import qemu_img

opened = contextlib.contextmanager(open_api)


def make_vm(api: Api, *volumes: str) -> None:
    for volume in volumes:
        response = api.client.post("/api/v1/pools/default/volumes", json={"name": volume, "size": "8M"})
        assert api.wait(response.json())["status"] == "succeeded"
    api.create("s", disks=[{"volume": volume} for volume in volumes])


def job(api: Api, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = api.client.request(method, f"/api/v1/vms/s/{path}", **kwargs)
    assert response.status_code == 202, response.text
    return api.wait(response.json())


def snapshots(api: Api) -> list[dict[str, Any]]:
    return list(api.client.get("/api/v1/vms/s/snapshots").json())


def tops(api: Api) -> list[str]:
    return [disk["path"] for disk in api.vm("s")["spec"]["disks"]]


def pool_files(api: Api) -> set[str]:
    pool = api.settings.default_pool
    return {str(p) for p in pool.iterdir() if not p.name.startswith(".")}


def host_tops(api: Api) -> list[str]:
    """The images the (fake) hypervisor writes."""
    return [chain[0] for chain in api.host.domains[api.vm("s")["id"]].chains]


def server(api: Api) -> Server:
    found: Server = api.app.state.server
    return found


def test_the_tree_on_a_running_and_a_stopped_vm(api: Api) -> None:
    make_vm(api, "a", "b")
    api.run("s", "start")
    assert job(api, "POST", "snapshots", json={"name": "s1"})["status"] == "succeeded"
    assert tops(api) == host_tops(api) and all("@" in top for top in tops(api))  # the store names what QEMU writes
    assert job(api, "POST", "snapshots", json={"name": "m1", "memory": True})["status"] == "succeeded"
    assert job(api, "DELETE", "snapshots/m1")["status"] == "succeeded"
    assert job(api, "DELETE", "snapshots/s1")["status"] == "succeeded"  # live merge back into the volumes
    assert tops(api) == host_tops(api) == [str(api.settings.default_pool / name) for name in ("a", "b")]
    api.run("s", "stop")
    assert job(api, "POST", "snapshots", json={"name": "s2"})["status"] == "succeeded"
    assert job(api, "POST", "snapshots/s2/revert")["status"] == "succeeded"
    assert job(api, "DELETE", "snapshots/s2")["status"] == "succeeded"
    assert snapshots(api) == []
    assert pool_files(api) == set(tops(api))
    assert server(api).snapshots.intents.pending() == []


def test_a_failed_live_switch_leaves_nothing_and_a_failed_merge_is_finished(api: Api) -> None:
    make_vm(api, "a")
    api.run("s", "start")
    before = tops(api)
    api.host.fail_next["snapshot"] = "QMP transaction refused"
    failed = job(api, "POST", "snapshots", json={"name": "s1"})
    assert failed["status"] == "failed" and "refused" in failed["error"]
    assert snapshots(api) == [] and tops(api) == before and pool_files(api) == set(before)

    assert job(api, "POST", "snapshots", json={"name": "s1"})["status"] == "succeeded"
    api.host.fail_next["commit"] = "the monitor went away"
    # Once a merge may have written into the frozen image there is no way back: the delete is finished.
    done = job(api, "DELETE", "snapshots/s1")
    assert done["status"] == "succeeded" and "finished after" in done["message"], done
    assert snapshots(api) == [] and tops(api) == host_tops(api) == before and pool_files(api) == set(before)

    api.host.fail_next["memory-save"] = "no space left"
    assert job(api, "POST", "snapshots", json={"name": "m1", "memory": True})["status"] == "failed"
    assert snapshots(api) == []  # never a record of a save that did not happen
    assert server(api).snapshots.intents.pending() == []


def begin(api: Api, kind: str, plan: CreatePlan | MemoryPlan | RevertPlan) -> None:
    server(api).snapshots.intents.begin(kind, "test", plan.model_dump(mode="json"))


def overlay_on(top: str, suffix: str) -> NewOverlay:
    return NewOverlay(disk=f"default/{Path(top).name}", frozen=top, format="qcow2", overlay=f"{top}@{suffix}",
                      old_top=top)


def make(new: NewOverlay) -> None:
    qemu_img.create(Path(new.overlay), "qcow2", 8 << 20, backing=Path(new.frozen), backing_fmt="qcow2")


@contextlib.contextmanager
def restarted(api: Api) -> Iterator[Api]:
    """A new daemon on the same data directory and (fake) host: recovery runs at its start."""
    with opened(api.settings.data_dir) as again:
        yield again


def test_recovery_of_a_create_on_a_stopped_vm_keeps_only_complete_overlays(tmp_path: Path) -> None:
    with opened(tmp_path / "data") as api:
        make_vm(api, "a", "b")
        vm_id, (a, b) = api.vm("s")["id"], tops(api)
        complete = [overlay_on(a, "1"), overlay_on(b, "1")]
        for new in complete:
            make(new)
        begin(api, "snapshot.create", CreatePlan(vm=vm_id, snapshot="id-1", name="whole", description="",
                                                 live=False, disks=complete))
        half = [overlay_on(a, "2"), overlay_on(b, "2")]
        make(half[0])  # the daemon died before the second overlay was made
        begin(api, "snapshot.create", CreatePlan(vm=vm_id, snapshot="id-2", name="half", description="",
                                                 live=False, disks=half))
    with restarted(api) as after:
        assert [s["name"] for s in snapshots(after)] == ["whole"]
        assert tops(after) == [a + "@1", b + "@1"]
        assert pool_files(after) == {a, b, a + "@1", b + "@1"}  # the half-made overlay is gone
        assert server(after).snapshots.intents.pending() == []


def test_recovery_removes_a_partial_memory_save_and_an_unswitched_revert(tmp_path: Path) -> None:
    with opened(tmp_path / "data") as api:
        make_vm(api, "a", "b")
        vm_id, (a, b) = api.vm("s")["id"], tops(api)
        qemu_img.snapshot_create(Path(a), "qcow2", "tag-1")  # saved into one image of two, then the daemon died
        layers = [SnapshotLayer(disk=f"default/{Path(x).name}", frozen=x, format="qcow2") for x in (a, b)]
        begin(api, "snapshot.memory-save", MemoryPlan(vm=vm_id, snapshot="tag-1", name="m", description="",
                                                      layers=layers))
        reverted = [overlay_on(a, "r"), overlay_on(b, "r")]
        for new in reverted:
            make(new)
        begin(api, "snapshot.revert", RevertPlan(vm=vm_id, snapshot="none", name="r", disks=reverted))
    with restarted(api) as after:
        assert snapshots(after) == []
        assert [s.name for s in qemu_img.snapshot_list(Path(a), "qcow2")] == []
        assert tops(after) == [a, b] and pool_files(after) == {a, b}
        assert server(after).snapshots.intents.pending() == []


def test_an_operation_left_open_is_settled_before_the_next_one(api: Api) -> None:
    make_vm(api, "a")
    vm_id, (a,) = api.vm("s")["id"], tops(api)
    stale = overlay_on(a, "x")
    make(stale)
    begin(api, "snapshot.revert", RevertPlan(vm=vm_id, snapshot="none", name="r", disks=[stale]))
    assert job(api, "POST", "snapshots", json={"name": "s1"})["status"] == "succeeded"
    assert not Path(stale.overlay).exists()
    assert [s["name"] for s in snapshots(api)] == ["s1"]
    assert server(api).snapshots.intents.pending() == []


def qemu_io(image: str, command: str) -> str:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, image], check=True, capture_output=True,
                          text=True).stdout


def test_merging_a_layer_below_the_top_of_a_stopped_vm(api: Api) -> None:
    make_vm(api, "a")
    assert job(api, "POST", "snapshots", json={"name": "s1"})["status"] == "succeeded"
    [middle] = tops(api)
    qemu_io(middle, "write -P 0x61 0 512")  # written after s1: the layer s1's delete merges
    assert job(api, "POST", "snapshots", json={"name": "s2"})["status"] == "succeeded"
    [top] = tops(api)
    frozen = snapshots(api)[0]["layers"][0]["frozen"]
    assert job(api, "DELETE", "snapshots/s1")["status"] == "succeeded"
    assert tops(api) == [top]
    [s2] = snapshots(api)
    assert s2["layers"][0]["frozen"] == frozen  # s2's state now lives in the image the layer was merged into
    assert qemu_img.info(Path(top), "qcow2").backing_file == frozen
    assert "read 512/512" in qemu_io(top, "read -P 0x61 0 512")  # the merged data reads through the chain
    assert pool_files(api) == {top, frozen}
