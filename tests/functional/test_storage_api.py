"""Storage through the REST API on the fake driver: pools, volumes, templates and clones, VM disks (uploads, imports
and downloads: test_storage_transfers.py). qemu-img runs for real (the fake driver only stands in for the hypervisor).

Every refusal is checked twice: the answer names the field or the state, and nothing changed (the pools, the volumes,
the VMs and the files in the pool directories are the same before and after).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tests.functional.conftest import Api
from tests.functional.storage_helpers import (
    MiB,
    clone,
    create_volume,
    delete_volume,
    details,
    image_info,
    mark_template,
    mode_of,
    pool_dir,
    refused,
    run,
    same_content,
    succeeded,
    unchanged,
    volume,
)

# --- pools --------------------------------------------------------------------------------------------------------


def test_the_default_pool_exists_and_reports_its_usage(api: Api) -> None:
    pools = api.client.get("/api/v1/pools").json()
    assert [p["name"] for p in pools] == ["default"]
    default = api.client.get("/api/v1/pools/default").json()
    assert default["spec"]["type"] == "dir" and default["state"] == "active"
    assert Path(default["mount_path"]) == pool_dir(api) and pool_dir(api).is_dir()
    usage = default["usage"]
    assert usage["capacity"] > 0 and usage["available"] > 0 and usage["available"] <= usage["capacity"]
    assert usage["allocation"] == 0
    create_volume(api, "used", "10M", "raw")
    run("qemu-io", "-f", "raw", "-c", "write -P 7 0 4M", str(pool_dir(api) / "used"))
    assert api.client.get("/api/v1/pools/default").json()["usage"]["allocation"] >= 4 * MiB
    assert api.client.get("/api/v1/pools/nope").status_code == 404


def test_create_list_show_and_delete_a_dir_pool(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "fast"
    response = api.client.post("/api/v1/pools", json={"name": "fast", "type": "dir", "path": str(path)})
    assert response.status_code == 201, response.text
    pool = response.json()
    assert pool["name"] == "fast" and pool["spec"]["path"] == str(path) and pool["mount_path"] == str(path)
    assert pool["usage"]["capacity"] > 0 and pool["usage"]["available"] > 0
    assert path.is_dir()
    assert [p["name"] for p in api.client.get("/api/v1/pools").json()] == ["default", "fast"]
    shown = api.client.get("/api/v1/pools/fast").json()
    assert shown["mount_path"] == str(path) and shown["state"] == "active"

    with unchanged(api, path):
        refused(api.client.post("/api/v1/pools", json={"name": "fast", "path": str(tmp_path / "other")}), 409,
                says="fast")
        assert not (tmp_path / "other").exists()
        refused(api.client.post("/api/v1/pools", json={"name": "again", "path": str(path)}), 422, field="path",
                says="fast")
        refused(api.client.post("/api/v1/pools", json={"name": "rel", "path": "relative/dir"}), 422, field="path")
        refused(api.client.post("/api/v1/pools", json={"name": "share", "type": "nfs"}), 422, field="source")
        refused(api.client.post("/api/v1/pools", json={"name": "nopath", "type": "dir"}), 422, field="path")
        refused(api.client.post("/api/v1/pools", json={"name": "bad/name", "path": str(tmp_path / "x")}), 422,
                field="name")
    assert not (tmp_path / "x").exists() and not Path("relative/dir").exists()

    deleted = api.client.delete("/api/v1/pools/fast")
    assert deleted.status_code == 204, deleted.text
    assert [p["name"] for p in api.client.get("/api/v1/pools").json()] == ["default"]
    assert api.client.get("/api/v1/pools/fast").status_code == 404
    assert not path.exists()  # the pool created the directory, so it removed it
    assert api.client.delete("/api/v1/pools/fast").status_code == 404


def test_a_pool_that_holds_volumes_or_the_default_pool_cannot_be_deleted(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "busy"
    assert api.client.post("/api/v1/pools", json={"name": "busy", "path": str(path)}).status_code == 201
    created = create_volume(api, "keepme", pool="busy")
    assert Path(created["volume"]["path"]) == path / "keepme"
    assert [v["name"] for v in api.client.get("/api/v1/volumes", params={"pool": "busy"}).json()] == ["keepme"]
    with unchanged(api, path):
        refused(api.client.delete("/api/v1/pools/busy"), 409, says="keepme")
        refused(api.client.delete("/api/v1/pools/default"), 409, says="default")
    assert (path / "keepme").is_file()
    succeeded(api, delete_volume(api, "busy/keepme"))
    assert api.client.delete("/api/v1/pools/busy").status_code == 204
    assert not path.exists()


# --- volumes ------------------------------------------------------------------------------------------------------


def test_create_show_and_delete_qcow2_and_raw_volumes(api: Api) -> None:
    qcow = create_volume(api, "disk1", "10M", "qcow2")
    path = pool_dir(api) / "disk1"
    assert qcow["volume"]["path"] == str(path) and qcow["volume"]["format"] == "qcow2"
    assert qcow["volume"]["size"] == 10 * MiB and qcow["volume"]["pool"] == "default"
    assert qcow["volume"]["template"] is False and qcow["volume"]["base"] is None
    assert qcow["volume"]["attached_to"] is None
    assert qcow["actual_size"] > 0 and qcow["backing_chain"] == [str(path)]
    assert image_info(path, "qcow2")["virtual-size"] == 10 * MiB

    raw = create_volume(api, "disk2", "10M", "raw")
    raw_path = pool_dir(api) / "disk2"
    assert raw["volume"]["format"] == "raw" and raw["volume"]["size"] == 10 * MiB
    assert raw_path.stat().st_size == 10 * MiB and raw["backing_chain"] == [str(raw_path)]

    listed = api.client.get("/api/v1/volumes").json()
    assert [(v["pool"], v["name"], v["format"]) for v in listed] == [("default", "disk1", "qcow2"),
                                                                    ("default", "disk2", "raw")]
    assert api.client.get("/api/v1/volumes", params={"pool": "nope"}).status_code == 404

    job = succeeded(api, delete_volume(api, "default/disk1"))
    assert job["kind"] == "volume.delete"
    assert not path.exists()
    assert api.client.get("/api/v1/volumes/default/disk1").status_code == 404
    assert [v["name"] for v in api.client.get("/api/v1/volumes").json()] == ["disk2"]
    assert api.client.delete("/api/v1/volumes/default/disk1").status_code == 404


def test_volume_creation_refusals_name_the_field_and_change_nothing(api: Api) -> None:
    create_volume(api, "taken")
    post = functools.partial(api.client.post, "/api/v1/pools/default/volumes")
    with unchanged(api):
        refused(post(json={"name": "taken", "size": "20M"}), 409, says="default/taken")
        refused(post(json={"name": "zero", "size": "0"}), 422, field="size")
        refused(post(json={"name": "unit", "size": "10X"}), 422, field="size")
        refused(post(json={"name": "huge", "size": "65T"}), 422, field="size")
        refused(post(json={"name": "vmdk", "size": "10M", "format": "vmdk"}), 422, field="format")
        refused(post(json={"name": "../escape", "size": "10M"}), 422, field="name")
        refused(post(json={"name": "extra", "size": "10M", "color": "red"}), 422, field="color")
        refused(api.client.post("/api/v1/pools/nope/volumes", json={"name": "x", "size": "10M"}), 404)
    assert image_info(pool_dir(api) / "taken", "qcow2")["virtual-size"] == 10 * MiB


def test_resize_grows_and_shrinks_only_when_asked(api: Api) -> None:
    path = Path(create_volume(api, "grow")["volume"]["path"])
    succeeded(api, api.client.post("/api/v1/volumes/default/grow/resize", json={"size": "20M"}))
    assert volume(api, "default/grow")["size"] == 20 * MiB
    assert image_info(path, "qcow2")["virtual-size"] == 20 * MiB

    with unchanged(api):
        refused(api.client.post("/api/v1/volumes/default/grow/resize", json={"size": "10M"}), 422, field="size",
                says="shrink")
        refused(api.client.post("/api/v1/volumes/default/grow/resize", json={"size": "0"}), 422, field="size")
        refused(api.client.post("/api/v1/volumes/default/nope/resize", json={"size": "30M"}), 404)
    assert image_info(path, "qcow2")["virtual-size"] == 20 * MiB

    succeeded(api, api.client.post("/api/v1/volumes/default/grow/resize", json={"size": "10M", "shrink": True}))
    assert volume(api, "default/grow")["size"] == 10 * MiB
    assert image_info(path, "qcow2")["virtual-size"] == 10 * MiB


# --- templates and clones -----------------------------------------------------------------------------------------


def test_templates_linked_and_full_clones(api: Api) -> None:
    base = Path(create_volume(api, "tmpl", "10M")["volume"]["path"])
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 8M 1M", str(base))
    with unchanged(api):  # a plain volume is no base: refused, and the field says which choice was wrong
        refused(clone(api, "default/tmpl", "early", linked=True), 422, field="linked", says="template")

    marked = mark_template(api, "default/tmpl")
    assert marked["name"] == "tmpl"
    assert mode_of(base) == 0o400  # read-only, and private like every volume

    job = succeeded(api, clone(api, "default/tmpl", "c1", linked=True))
    assert job["kind"] == "volume.clone"
    linked = details(api, "default/c1")
    c1 = pool_dir(api) / "c1"
    assert linked["volume"]["base"] == "default/tmpl" and linked["volume"]["format"] == "qcow2"
    assert linked["volume"]["size"] == 10 * MiB and linked["volume"]["template"] is False
    assert linked["backing_chain"] == [str(c1), str(base)]
    assert image_info(c1, "qcow2")["backing-filename"] == str(base)
    assert same_content(c1, "qcow2", base, "qcow2")
    assert linked["actual_size"] < 1 * MiB  # an overlay, not a copy
    assert mode_of(c1) == 0o600

    with unchanged(api):
        refused(delete_volume(api, "default/tmpl"), 409, says="default/c1")
        error = refused(api.client.post("/api/v1/volumes/default/tmpl/template", json={"template": False}), 409)
        assert "clones" in error["message"]
        refused(clone(api, "default/tmpl", "c1", linked=True), 409, says="c1")
        refused(clone(api, "default/tmpl", "bad name", linked=True), 422, field="name")
    assert mode_of(base) == 0o400 and volume(api, "default/tmpl")["template"] is True

    succeeded(api, clone(api, "default/tmpl", "full", linked=False))
    full = details(api, "default/full")
    full_path = pool_dir(api) / "full"
    assert full["volume"]["base"] is None and full["volume"]["format"] == "qcow2"
    assert full["volume"]["size"] == 10 * MiB
    assert full["backing_chain"] == [str(full_path)]
    assert "backing-filename" not in image_info(full_path, "qcow2")
    assert same_content(full_path, "qcow2", base, "qcow2")
    assert mode_of(full_path) == 0o600
    assert not [p.name for p in pool_dir(api).iterdir() if ".part-" in p.name]

    with unchanged(api):  # the full clone is a plain volume, not a template
        refused(clone(api, "default/full", "c2", linked=True), 422, field="linked", says="default/full")

    # Only once its last linked clone is gone may the template be un-marked and deleted.
    succeeded(api, delete_volume(api, "default/c1"))
    mark_template(api, "default/tmpl", template=False)
    assert mode_of(base) == 0o600
    succeeded(api, delete_volume(api, "default/tmpl"))
    assert not base.exists()
    assert same_content(full_path, "qcow2", full_path, "qcow2")  # still readable without its source
    assert run("qemu-io", "-f", "qcow2", "-c", "read -P 0xa5 8M 1M", str(full_path))


def test_a_template_with_linked_clones_cannot_be_shrunk(api: Api) -> None:
    base = Path(create_volume(api, "tmpl", "10M")["volume"]["path"])
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 9M 1M", str(base))
    mark_template(api, "default/tmpl")
    succeeded(api, clone(api, "default/tmpl", "c1", linked=True))
    c1 = pool_dir(api) / "c1"
    with unchanged(api):
        refused(api.client.post("/api/v1/volumes/default/tmpl/resize", json={"size": "5M", "shrink": True}), 409,
                says="default/c1")
    assert image_info(base, "qcow2")["virtual-size"] == 10 * MiB
    run("qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 9M 1M", str(c1))  # the clone still sees the template's data


def test_a_full_clone_of_a_raw_template_stays_raw(api: Api) -> None:
    create_volume(api, "rawbase", "10M", "raw")
    mark_template(api, "default/rawbase")
    succeeded(api, clone(api, "default/rawbase", "rawcopy", linked=False))
    assert details(api, "default/rawcopy")["volume"]["format"] == "raw"
    succeeded(api, clone(api, "default/rawbase", "overlay", linked=True))
    overlay = details(api, "default/overlay")
    assert overlay["volume"]["format"] == "qcow2"
    assert overlay["backing_chain"] == [str(pool_dir(api) / "overlay"), str(pool_dir(api) / "rawbase")]


# --- VM disks -----------------------------------------------------------------------------------------------------


def test_vm_disks_by_volume(api: Api) -> None:
    c1 = create_volume(api, "c1")["volume"]
    create_volume(api, "tmpl")
    mark_template(api, "default/tmpl")

    vm = api.create("vm1", disks=[{"volume": "default/c1"}])
    disk = vm["spec"]["disks"][0]
    assert disk["path"] == c1["path"] and disk["volume"] == "default/c1" and disk["format"] == "qcow2"
    assert volume(api, "default/c1")["attached_to"] == "vm1"
    assert [v["attached_to"] for v in api.client.get("/api/v1/volumes").json()] == ["vm1", None]

    with unchanged(api):
        refused(delete_volume(api, "default/c1"), 409, says="vm1")
        refused(api.client.post("/api/v1/volumes/default/c1/resize", json={"size": "20M"}), 409, says="vm1")
        refused(api.client.post("/api/v1/volumes/default/c1/template", json={"template": True}), 409, says="vm1")
        refused(api.client.post("/api/v1/vms", json={"name": "vm2", "disks": [{"volume": "default/c1"}]}), 422,
                field="disks[0]", says="vm1")
        refused(api.client.post("/api/v1/vms", json={"name": "vm2", "disks": [{"path": c1["path"]}]}), 422,
                field="disks[0]", says="vm1")
        refused(api.client.post("/api/v1/vms", json={"name": "vm3", "disks": [{"volume": "default/tmpl"}]}), 422,
                field="disks[0].volume", says="template")
        refused(api.client.post("/api/v1/vms", json={"name": "vm4", "disks": [{"volume": "default/none"}]}), 422,
                field="disks[0].volume")
    assert api.client.get("/api/v1/vms/vm2").status_code == 404

    delete = api.client.delete("/api/v1/vms/vm1", params={"delete_volumes": True})
    job = succeeded(api, delete)
    assert "default/c1" in job["message"]
    assert api.client.get("/api/v1/vms/vm1").status_code == 404
    assert api.client.get("/api/v1/volumes/default/c1").status_code == 404
    assert not Path(c1["path"]).exists()
    assert [v["name"] for v in api.client.get("/api/v1/volumes").json()] == ["tmpl"]


def test_deleting_a_vm_keeps_its_volumes_unless_asked(api: Api) -> None:
    path = Path(create_volume(api, "kept")["volume"]["path"])
    api.create("vm1", disks=[{"volume": "kept"}])  # a bare name means the default pool
    assert volume(api, "default/kept")["attached_to"] == "vm1"
    succeeded(api, api.client.delete("/api/v1/vms/vm1"))
    assert path.is_file() and volume(api, "default/kept")["attached_to"] is None
    succeeded(api, delete_volume(api, "default/kept"))  # detached now


@pytest.mark.parametrize("where", ["/", "/etc", "default", "default-parent"])
def test_a_pool_cannot_cover_the_system_or_another_pool(api: Api, where: str) -> None:
    default = pool_dir(api)
    path = {"default": str(default / "sub"), "default-parent": str(default.parent)}.get(where, where)
    with unchanged(api):
        refused(api.client.post("/api/v1/pools", json={"name": "bad", "path": path}), 422, field="path")


def test_import_checks_url_and_checksum_before_any_job(api: Api) -> None:
    for body, field in (({"url": "ftp://127.0.0.1/x.qcow2"}, "url"), ({"url": "not a url"}, "url"),
                        ({"url": "http://127.0.0.1/x.qcow2", "sha256": "xyz"}, "sha256")):
        with unchanged(api):
            refused(api.client.post("/api/v1/pools/default/volumes/imp/import", json=body), 422, field=field)
    assert api.client.get("/api/v1/jobs").json() == []


def test_a_volume_larger_than_the_free_space_is_refused_up_front(api: Api) -> None:
    free = api.client.get("/api/v1/pools/default").json()["usage"]["available"]
    with unchanged(api):
        refused(api.client.post("/api/v1/pools/default/volumes", json={"name": "huge", "size": free + (1 << 30)}),
                422, field="size", says="do not fit")
