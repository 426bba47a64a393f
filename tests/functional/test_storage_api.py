"""Storage through the REST API on the fake driver: pools, volumes, templates and clones, VM disks, uploads, imports
and downloads. qemu-img runs for real (the fake driver only stands in for the hypervisor).

Every refusal is checked twice: the answer names the field or the state, and nothing changed (the pools, the volumes,
the VMs and the files in the pool directories are the same before and after).
The HTTP imports talk only to a server the test starts on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.functional.conftest import Api, open_api

MiB = 1024 * 1024
WRONG_SHA = "0" * 64


# --- helpers ------------------------------------------------------------------------------------------------------


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def image_info(path: Path, fmt: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(run("qemu-img", "info", "-U", "-f", fmt, "--output=json", str(path)))
    return info


def make_image(path: Path, fmt: str, size: str, *patterns: tuple[int, int]) -> Path:
    """A new image with `pattern` bytes written at each (offset in MiB, byte) so its content can be compared."""
    run("qemu-img", "create", "-q", "-f", fmt, str(path), size)
    for offset, byte in patterns:
        run("qemu-io", "-f", fmt, "-c", f"write -P {byte} {offset}M 1M", str(path))
    return path


def same_content(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    done = subprocess.run(["qemu-img", "compare", "-U", "-f", a_fmt, "-F", b_fmt, str(a), str(b)],
                          capture_output=True, text=True, check=False)
    assert done.returncode in (0, 1), done.stderr  # 0 identical, 1 different, anything else: an error
    return done.returncode == 0


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def pool_dir(api: Api) -> Path:
    return api.settings.data_dir / "pools" / "default"


def files(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file below `directory` (hidden ones and those in .incoming too): relative path -> (size, mode)."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): (p.stat().st_size, mode_of(p))
            for p in sorted(directory.rglob("*")) if not p.is_dir()}


def assert_staging_empty(directory: Path) -> None:
    staging = directory / ".incoming"
    assert not staging.exists() or list(staging.iterdir()) == [], list(staging.iterdir())


def snapshot(api: Api, *dirs: Path) -> dict[str, Any]:
    pools = api.client.get("/api/v1/pools")
    volumes = api.client.get("/api/v1/volumes")
    vms = api.client.get("/api/v1/vms")
    assert pools.status_code == volumes.status_code == vms.status_code == 200
    return {
        "pools": sorted((p["name"], p["mount_path"]) for p in pools.json()),
        "volumes": [(v["pool"], v["name"], v["format"], v["size"], v["template"], v["base"], v["attached_to"])
                    for v in volumes.json()],
        "vms": sorted((vm["name"], json.dumps(vm["spec"], sort_keys=True)) for vm in vms.json()),
        "files": {str(d): files(d) for d in (pool_dir(api), *dirs)},
    }


@contextlib.contextmanager
def unchanged(api: Api, *dirs: Path) -> Iterator[None]:
    """The block must change nothing: pools, volumes, VMs, and the files in the default pool and `dirs`."""
    before = snapshot(api, *dirs)
    yield
    assert snapshot(api, *dirs) == before


def refused(response: httpx.Response, status: int, *, field: str | None = None, says: str | None = None,
            code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    if field is not None:
        assert error.get("field") == field, error
    if says is not None:
        assert says in error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


def finished(api: Api, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/v1/jobs/{response.json()['id']}"
    return api.wait(response.json())


def succeeded(api: Api, response: httpx.Response) -> dict[str, Any]:
    job = finished(api, response)
    assert job["status"] == "succeeded", job
    return job


def failed(api: Api, response: httpx.Response) -> dict[str, Any]:
    job = finished(api, response)
    assert job["status"] == "failed", job
    return job


def create_volume(api: Api, name: str, size: str = "10M", fmt: str = "qcow2", pool: str = "default") -> dict[str, Any]:
    succeeded(api, api.client.post(f"/api/v1/pools/{pool}/volumes", json={"name": name, "size": size, "format": fmt}))
    return details(api, f"{pool}/{name}")


def details(api: Api, ref: str) -> dict[str, Any]:
    response = api.client.get(f"/api/v1/volumes/{ref}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def volume(api: Api, ref: str) -> dict[str, Any]:
    found: dict[str, Any] = details(api, ref)["volume"]
    return found


def mark_template(api: Api, ref: str, template: bool = True) -> dict[str, Any]:
    response = api.client.post(f"/api/v1/volumes/{ref}/template", json={"template": template})
    assert response.status_code == 200, response.text
    marked: dict[str, Any] = response.json()
    assert marked["template"] is template
    return marked


def clone(api: Api, ref: str, name: str, *, linked: bool) -> httpx.Response:
    response: httpx.Response = api.client.post(f"/api/v1/volumes/{ref}/clone", json={"name": name, "linked": linked})
    return response


def delete_volume(api: Api, ref: str) -> httpx.Response:
    response: httpx.Response = api.client.delete(f"/api/v1/volumes/{ref}")
    return response


def upload(api: Api, name: str, data: bytes, **params: str) -> httpx.Response:
    response: httpx.Response = api.client.put(f"/api/v1/pools/default/volumes/{name}/data", content=data, params=params)
    return response


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
    assert mode_of(base) == 0o444

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
    assert mode_of(c1) == 0o644

    with unchanged(api):
        refused(delete_volume(api, "default/tmpl"), 409, says="default/c1")
        error = refused(api.client.post("/api/v1/volumes/default/tmpl/template", json={"template": False}), 409)
        assert "clones" in error["message"]
        refused(clone(api, "default/tmpl", "c1", linked=True), 409, says="c1")
        refused(clone(api, "default/tmpl", "bad name", linked=True), 422, field="name")
    assert mode_of(base) == 0o444 and volume(api, "default/tmpl")["template"] is True

    succeeded(api, clone(api, "default/tmpl", "full", linked=False))
    full = details(api, "default/full")
    full_path = pool_dir(api) / "full"
    assert full["volume"]["base"] is None and full["volume"]["format"] == "qcow2"
    assert full["volume"]["size"] == 10 * MiB
    assert full["backing_chain"] == [str(full_path)]
    assert "backing-filename" not in image_info(full_path, "qcow2")
    assert same_content(full_path, "qcow2", base, "qcow2")
    assert not [p.name for p in pool_dir(api).iterdir() if ".part-" in p.name]

    with unchanged(api):  # the full clone is a plain volume, not a template
        refused(clone(api, "default/full", "c2", linked=True), 422, field="linked", says="default/full")

    # Only once its last linked clone is gone may the template be un-marked and deleted.
    succeeded(api, delete_volume(api, "default/c1"))
    mark_template(api, "default/tmpl", template=False)
    assert mode_of(base) == 0o644
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


# --- uploads of untrusted images ----------------------------------------------------------------------------------


def test_upload_with_a_backing_file_outside_the_pools_is_refused(api: Api, tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(evil), "1M")
    assert image_info(evil, "qcow2")["backing-filename"] == "/etc/shadow"
    with unchanged(api):
        refused(upload(api, "evil", evil.read_bytes(), format="qcow2"), 422, field="backing_file")
    assert files(pool_dir(api)) == {}
    assert_staging_empty(pool_dir(api))
    assert api.client.get("/api/v1/volumes/default/evil").status_code == 404


def test_upload_of_something_that_is_not_the_declared_format_is_refused(api: Api, tmp_path: Path) -> None:
    vmdk = make_image(tmp_path / "disk.vmdk", "vmdk", "2M", (0, 0x11))
    with unchanged(api):
        refused(upload(api, "text", b"just some text, not an image\n" * 100, format="qcow2"), 422, field="format")
        refused(upload(api, "lying", vmdk.read_bytes(), format="qcow2"), 422, field="format")
        refused(upload(api, "iso", b"x" * 4096, format="iso"), 422, field="format")
        refused(upload(api, "bad name", b"x" * 4096, format="raw"), 422, field="name")
    assert files(pool_dir(api)) == {}
    assert_staging_empty(pool_dir(api))


def test_a_vmdk_upload_becomes_a_qcow2_volume(api: Api, tmp_path: Path) -> None:
    vmdk = make_image(tmp_path / "disk.vmdk", "vmdk", "12M", (0, 0x42), (11, 0x24))
    response = upload(api, "converted", vmdk.read_bytes(), format="vmdk", sha256=sha256_of(vmdk))
    assert response.status_code == 201, response.text
    created = response.json()
    path = pool_dir(api) / "converted"
    assert created["format"] == "qcow2" and created["size"] == 12 * MiB and created["path"] == str(path)
    assert image_info(path, "qcow2")["format"] == "qcow2"
    assert same_content(path, "qcow2", vmdk, "vmdk")
    assert details(api, "default/converted")["backing_chain"] == [str(path)]
    assert sorted(files(pool_dir(api))) == ["converted"]
    assert_staging_empty(pool_dir(api))


def test_qcow2_and_raw_uploads_are_kept_as_they_are(api: Api, tmp_path: Path) -> None:
    qcow = make_image(tmp_path / "up.qcow2", "qcow2", "4M", (1, 0x33))
    response = upload(api, "up", qcow.read_bytes(), format="qcow2", sha256=sha256_of(qcow).upper())
    assert response.status_code == 201, response.text
    assert (pool_dir(api) / "up").read_bytes() == qcow.read_bytes()
    raw = bytes(range(256)) * (2 * MiB // 256)
    response = upload(api, "upraw", raw, format="raw")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "raw" and response.json()["size"] == 2 * MiB
    assert (pool_dir(api) / "upraw").read_bytes() == raw
    assert sorted(files(pool_dir(api))) == ["up", "upraw"]
    with unchanged(api):  # the name is taken: refused before a byte is stored, the volume untouched
        refused(upload(api, "up", raw, format="raw"), 409, says="default/up")
    assert (pool_dir(api) / "up").read_bytes() == qcow.read_bytes()
    assert_staging_empty(pool_dir(api))


def test_an_upload_with_a_wrong_sha256_is_refused_and_leaves_nothing(api: Api, tmp_path: Path) -> None:
    qcow = make_image(tmp_path / "good.qcow2", "qcow2", "4M", (0, 0x11))
    with unchanged(api):
        refused(upload(api, "good", qcow.read_bytes(), format="qcow2", sha256=WRONG_SHA), 422, field="sha256",
                says="does not match")
    assert files(pool_dir(api)) == {}
    assert_staging_empty(pool_dir(api))
    assert api.client.get("/api/v1/volumes/default/good").status_code == 404


# --- imports from a URL -------------------------------------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading (checksum) breaks the pipe: expected here


@pytest.fixture
def www(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """(directory, http://127.0.0.1:<port>) served from a thread; never any other address."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    httpd = QuietServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def import_url(api: Api, name: str, url: str, **fields: Any) -> httpx.Response:
    body = {"url": url, **fields}
    response: httpx.Response = api.client.post(f"/api/v1/pools/default/volumes/{name}/import", json=body)
    return response


def test_import_from_a_url_with_the_right_sha256(api: Api, www: tuple[Path, str]) -> None:
    root, base = www
    image = make_image(root / "image.qcow2", "qcow2", "8M", (2, 0x77))
    job = succeeded(api, import_url(api, "imported", f"{base}/image.qcow2", format="qcow2", sha256=sha256_of(image)))
    assert job["kind"] == "volume.import" and sha256_of(image) in job["message"]
    imported = details(api, "default/imported")
    path = pool_dir(api) / "imported"
    assert imported["volume"]["format"] == "qcow2" and imported["volume"]["size"] == 8 * MiB
    assert imported["backing_chain"] == [str(path)]
    assert path.read_bytes() == image.read_bytes()
    assert sorted(files(pool_dir(api))) == ["imported"]
    assert_staging_empty(pool_dir(api))


def test_failed_imports_leave_nothing(api: Api, www: tuple[Path, str]) -> None:
    root, base = www
    image = make_image(root / "image.qcow2", "qcow2", "8M", (0, 0x01))
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(root / "evil.qcow2"),
        "1M")
    (root / "notes.txt").write_text("not an image\n" * 100)
    with unchanged(api):
        job = failed(api, import_url(api, "wrongsum", f"{base}/image.qcow2", sha256=WRONG_SHA))
        assert job["error_code"] == "transfer_failed" and "checksum" in job["error"], job
        job = failed(api, import_url(api, "missing", f"{base}/missing.qcow2"))
        assert job["error_code"] == "transfer_failed" and "404" in job["error"], job
        job = failed(api, import_url(api, "evil", f"{base}/evil.qcow2"))
        assert job["error_code"] == "invalid_spec" and job["error"].startswith("backing_file:"), job
        job = failed(api, import_url(api, "notes", f"{base}/notes.txt", format="qcow2"))
        assert job["error_code"] == "invalid_spec" and job["error"].startswith("format:"), job
        refused(import_url(api, "fmt", f"{base}/image.qcow2", format="iso"), 422, field="format")
    assert files(pool_dir(api)) == {}
    assert_staging_empty(pool_dir(api))
    assert image.is_file()


def test_an_import_url_that_is_not_http_is_refused_naming_the_url(api: Api) -> None:
    with unchanged(api):
        for url in ("ftp://127.0.0.1/image.qcow2", "file:///etc/shadow", "not a url"):
            response = import_url(api, "ftp", url)
            if response.status_code == 422:  # refused up front
                refused(response, 422, field="url")
            else:  # or the job fails at once, saying the URL is the problem
                job = failed(api, response)
                assert job["error_code"] == "invalid_spec" and job["error"].startswith("url:"), job
    assert files(pool_dir(api)) == {}


def test_an_import_into_a_taken_name_is_refused_up_front(api: Api, www: tuple[Path, str]) -> None:
    root, base = www
    make_image(root / "image.qcow2", "qcow2", "8M")
    create_volume(api, "taken")
    with unchanged(api):
        refused(import_url(api, "taken", f"{base}/image.qcow2"), 409, says="default/taken")
        refused(import_url(api, "x", f"{base}/image.qcow2", extra=1), 422, field="extra")
        refused(api.client.post("/api/v1/pools/nope/volumes/x/import", json={"url": f"{base}/image.qcow2"}), 404)


# --- downloads ----------------------------------------------------------------------------------------------------


def test_download_returns_the_volume_file(api: Api) -> None:
    path = Path(create_volume(api, "dl", "4M")["volume"]["path"])
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 1M 1M", str(path))
    response = api.client.get("/api/v1/volumes/default/dl/data")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert "dl.qcow2" in response.headers["content-disposition"]
    assert response.content == path.read_bytes() and len(response.content) > MiB
    assert api.client.get("/api/v1/volumes/default/nope/data").status_code == 404


def test_download_then_upload_round_trips(api: Api) -> None:
    path = Path(create_volume(api, "orig", "4M")["volume"]["path"])
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", str(path))
    data = api.client.get("/api/v1/volumes/default/orig/data").content
    response = upload(api, "copy", data, format="qcow2", sha256=hashlib.sha256(data).hexdigest())
    assert response.status_code == 201, response.text
    assert same_content(pool_dir(api) / "copy", "qcow2", path, "qcow2")
    assert os.path.samefile(response.json()["path"], pool_dir(api) / "copy")


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


def test_a_restart_removes_what_interrupted_transfers_left(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with contextlib.closing(open_api(data)) as first:
        pool = Path(next(first).settings.default_pool)
    (pool / ".vol.part-0123456789abcdef").write_bytes(b"half a copy")
    (pool / ".incoming").mkdir(exist_ok=True)
    (pool / ".incoming" / "up.upload-1").write_bytes(b"half an upload")
    (pool / "kept").write_bytes(b"not ours to judge")  # only our temporary names are touched
    with contextlib.closing(open_api(data)) as second:
        next(second)  # the daemon starts: pools are activated and cleaned
    assert sorted(p.name for p in pool.iterdir()) == [".incoming", "kept"]
    assert list((pool / ".incoming").iterdir()) == []


def make_ova(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_an_ova_upload_becomes_a_volume_and_a_hostile_one_leaves_nothing(api: Api, tmp_path: Path) -> None:
    vmdk = make_image(tmp_path / "disk.vmdk", "vmdk", "4M", (0, 0x33))
    ovf = b"<?xml version='1.0'?><Envelope/>"
    good = make_ova(tmp_path / "good.ova", {"vm.ovf": ovf, "disk1.vmdk": vmdk.read_bytes()})
    volume = upload(api, "appliance", good.read_bytes(), format="ova").json()
    assert (volume["name"], volume["format"], volume["size"]) == ("appliance", "qcow2", 4 << 20)
    assert_staging_empty(pool_dir(api))

    evil = make_ova(tmp_path / "evil.ova", {"vm.ovf": ovf, "../evil.vmdk": vmdk.read_bytes()})
    with unchanged(api):
        refused(upload(api, "evil", evil.read_bytes(), format="ova"), 422, field="archive", says="..")
    assert not (pool_dir(api).parent / "evil.vmdk").exists()
    assert_staging_empty(pool_dir(api))
