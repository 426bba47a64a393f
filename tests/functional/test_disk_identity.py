"""A disk reference is a volume, whatever the spelling of its path: the volume decides the format, the template and
the attached rules. Images that keep their data in another file are refused at upload, attach and start.

The attack these reproduce: a "raw" upload whose bytes are a qcow2 header naming a host file as its external data
file, attached by a second spelling of its pool path with format qcow2, so that QEMU opened the host file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import Api
from tests.functional.storage_helpers import (
    create_volume,
    failed,
    mark_template,
    pool_dir,
    refused,
    run,
    succeeded,
    unchanged,
    upload,
    volume,
)
from virtfleet.model.vm import DiskSpec


def data_file_image(path: Path, target: Path, size: str = "1M") -> Path:
    """A qcow2 whose header says its guest data lives in `target` (raw: guest offset = file offset).

    Made as an attacker would: `qemu-img create -o data_file=` creates (truncates) the data file, so the image is
    made with a scratch one and its header then renamed to `target` (amend does not open the new name).
    """
    with tempfile.TemporaryDirectory() as scratch:
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={scratch}/data,data_file_raw=on", str(path),
            size)
        run("qemu-img", "amend", "-f", "qcow2", "-o", f"data_file={target}", str(path))
    return path


HOST_DATA = b"host data, not a guest's\n" * 100


@pytest.fixture
def host_file(tmp_path: Path) -> Iterator[Path]:
    secret = tmp_path / "host-secret"
    secret.write_bytes(HOST_DATA)
    yield secret
    assert secret.read_bytes() == HOST_DATA


@pytest.fixture
def trap(api: Api, tmp_path: Path, host_file: Path) -> Path:
    """The attacker's raw volume default/x: its bytes are a qcow2 header pointing at `host_file`."""
    bytes_ = data_file_image(tmp_path / "trap.qcow2", host_file).read_bytes()
    response = upload(api, "x", bytes_, format="raw")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "raw"
    return pool_dir(api) / "x"


def _double_slash(pool: Path, name: str) -> str:
    return f"{pool}//{name}"


def _dot(pool: Path, name: str) -> str:
    return f"{pool}/./{name}"


def _dot_dot(pool: Path, name: str) -> str:
    (pool / "sub").mkdir(exist_ok=True)
    return f"{pool}/sub/../{name}"


def _symlink(pool: Path, name: str) -> str:
    (pool / f"alias-{name}").symlink_to(name)
    return str(pool / f"alias-{name}")


def _hard_link(pool: Path, name: str) -> str:
    os.link(pool / name, pool / f"hard-{name}")
    return str(pool / f"hard-{name}")


SPELLINGS: dict[str, Callable[[Path, str], str]] = {
    "double slash": _double_slash, "dot": _dot, "dot-dot": _dot_dot, "symlink": _symlink, "hard link": _hard_link,
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_raw_volume_is_opened_raw_by_any_spelling_of_its_path(api: Api, trap: Path, spelling: str) -> None:
    path = SPELLINGS[spelling](pool_dir(api), "x")
    vm = api.create("evil", machine="q35", disks=[{"path": path, "format": "qcow2"}])
    [disk] = vm["spec"]["disks"]
    assert (disk["volume"], disk["path"], disk["format"]) == ("default/x", str(trap), "raw")
    assert volume(api, "default/x")["attached_to"] == "evil"
    api.run("evil", "start")
    [opened] = api.host.domains[vm["id"]].spec.disks
    assert (opened.path, opened.format) == (str(trap), "raw")


def test_hot_plug_by_another_spelling_opens_the_volume_raw(api: Api, trap: Path) -> None:
    api.create("q", machine="q35")
    api.run("q", "start")
    job = succeeded(api, api.client.post("/api/v1/vms/q/disks",
                                         json={"path": _symlink(pool_dir(api), "x"), "format": "qcow2"}))
    assert "hot-plugged" in job["message"]
    [opened] = api.host.domains[api.vm("q")["id"]].spec.disks
    assert (opened.volume, opened.format) == ("default/x", "raw")


def test_a_pool_file_that_is_no_volume_is_refused_whatever_the_request_says(api: Api, tmp_path: Path,
                                                                           host_file: Path) -> None:
    staged = pool_dir(api) / ".incoming" / "x.download"  # what an import in progress leaves: not checked yet
    staged.parent.mkdir(exist_ok=True)
    data_file_image(staged, host_file)
    with unchanged(api):
        for path in (staged, f"{pool_dir(api)}/.incoming//x.download"):
            refused(api.client.post("/api/v1/vms", json={"name": "a", "disks": [{"path": str(path)}]}), 422,
                    field="disks[0].path", says="not the file of any volume")


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_template_is_never_attached_writable_by_another_spelling(api: Api, spelling: str) -> None:
    create_volume(api, "tmpl")
    mark_template(api, "default/tmpl")
    path = SPELLINGS[spelling](pool_dir(api), "tmpl")
    with unchanged(api):
        refused(api.client.post("/api/v1/vms", json={"name": "w", "disks": [{"path": path}]}), 422,
                field="disks[0].volume", says="template")
    vm = api.create("r", disks=[{"path": path, "readonly": True}])
    assert vm["spec"]["disks"][0]["volume"] == "default/tmpl"


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_one_volume_is_never_attached_twice_by_two_spellings(api: Api, spelling: str) -> None:
    create_volume(api, "d")
    api.create("a", disks=[{"volume": "default/d"}])
    api.create("q", machine="q35")
    path = SPELLINGS[spelling](pool_dir(api), "d")
    with unchanged(api):
        refused(api.client.post("/api/v1/vms", json={"name": "b", "disks": [{"path": path}]}), 422,
                field="disks[0]", says="vm 'a'")
        refused(api.client.post("/api/v1/vms/q/disks", json={"path": path}), 422, field="disks[0]", says="vm 'a'")
        refused(api.client.post("/api/v1/vms/a/disks", json={"path": path}), 422, field="disks[1]",
                says="attached to vm 'a' already")
        refused(api.client.post("/api/v1/vms", json={"name": "c", "disks": [{"volume": "d"}, {"path": path}]}),
                422, field="disks[0]", says="vm 'a'")
    succeeded(api, api.client.delete("/api/v1/vms/a"))
    refused(api.client.post("/api/v1/vms", json={"name": "c", "disks": [{"volume": "d"}, {"path": path}]}),
            422, field="disks[1]", says="attached twice")


def test_a_volume_and_a_path_that_disagree_are_refused(api: Api) -> None:
    create_volume(api, "d1")
    create_volume(api, "d2")
    with unchanged(api):
        refused(api.client.post("/api/v1/vms", json={"name": "a", "disks": [
            {"volume": "default/d1", "path": str(pool_dir(api) / "d2")}]}), 422, field="disks[0].path")


def test_detach_by_another_spelling_of_the_path(api: Api) -> None:
    create_volume(api, "d")
    api.create("q", machine="q35", disks=[{"volume": "d"}])
    alias = _symlink(pool_dir(api), "d")
    job = succeeded(api, api.client.delete(f"/api/v1/vms/q/disks{alias}"))
    assert job["message"] == "detached default/d"
    assert api.vm("q")["spec"]["disks"] == []


def test_a_spec_stored_with_another_spelling_follows_the_volume(api: Api, trap: Path) -> None:
    # A VM record written before disks were resolved by identity: a second spelling and the request's format.
    create_volume(api, "d")
    vm = api.create("old", machine="q35", disks=[{"volume": "default/d"}])
    stored = [DiskSpec(path=f"{pool_dir(api)}//x", format="qcow2")]
    server = api.app.state.server
    server.db.update_vm_spec(vm["id"], server.db.get_vm("old").spec.model_copy(update={"disks": stored}))
    assert volume(api, "default/x")["attached_to"] == "old"
    with unchanged(api):
        refused(api.client.delete("/api/v1/volumes/default/x"), 409, says="vm 'old'")
        refused(api.client.post("/api/v1/vms", json={"name": "b", "disks": [{"volume": "x"}]}), 422,
                field="disks[0]", says="vm 'old'")
    api.run("old", "start")
    [opened] = api.host.domains[vm["id"]].spec.disks
    assert opened.format == "raw"  # the volume's format, not the stored one


def test_an_image_with_an_external_data_file_is_refused_at_upload(api: Api, tmp_path: Path, host_file: Path) -> None:
    image = data_file_image(tmp_path / "split.qcow2", host_file)
    with unchanged(api):
        refused(upload(api, "split", image.read_bytes(), format="qcow2"), 422, field="data_file")


def _swap_in_data_file_image(path: Path, host_file: Path) -> None:
    """The volume's file now has a header naming a data file (changed behind virtfleet's back, e.g. restored)."""
    mode = path.stat().st_mode
    path.unlink()
    data_file_image(path, host_file, "10M")
    path.chmod(mode)


def test_a_data_file_is_refused_at_attach_and_at_every_start(api: Api, host_file: Path) -> None:
    path = Path(create_volume(api, "split")["volume"]["path"])
    _swap_in_data_file_image(path, host_file)
    api.create("q", machine="q35")
    job = failed(api, api.client.post("/api/v1/vms/q/disks", json={"volume": "split"}))
    assert "keeps its data in another file" in job["error"] and str(host_file) in job["error"]
    assert api.vm("q")["spec"]["disks"] == []

    api.create("s", disks=[{"volume": "split"}])  # the header is read when the disk is opened
    job = failed(api, api.client.post("/api/v1/vms/s/start"))
    assert "keeps its data in another file" in job["error"]
    assert api.vm("s")["state"] == "stopped" and api.host.domains[api.vm("s")["id"]].state.value == "stopped"


def test_a_data_file_below_a_linked_clone_is_refused_at_start(api: Api, host_file: Path) -> None:
    base = Path(create_volume(api, "base")["volume"]["path"])
    mark_template(api, "default/base")
    succeeded(api, api.client.post("/api/v1/volumes/default/base/clone", json={"name": "c", "linked": True}))
    api.create("s", disks=[{"volume": "c"}])
    api.run("s", "start")
    api.run("s", "stop")
    _swap_in_data_file_image(base, host_file)
    job = failed(api, api.client.post("/api/v1/vms/s/start"))
    assert "keeps its data in another file" in job["error"] and str(base) in job["error"]


def test_the_volume_format_wins_over_the_request(api: Api) -> None:
    create_volume(api, "r", fmt="raw")
    vm = api.create("a", disks=[{"volume": "default/r", "format": "qcow2"}])
    assert vm["spec"]["disks"][0]["format"] == "raw"
