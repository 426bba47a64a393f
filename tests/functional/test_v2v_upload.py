"""Uploading an OVA into the import directory (the web UI's way to import a file from the browser): the name and
size rules, no overwriting, nothing left by a refused or broken upload, and a dry run of what was uploaded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import Api, open_api
from tests.v2v_stage import MiB, make_ova


def uploads(api: Api) -> list[str]:
    root = api.settings.import_dir / "uploads"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_an_uploaded_ova_can_be_planned_and_imported(api: Api, tmp_path: Path) -> None:
    ova = make_ova(tmp_path / "vbox.ova")
    response = api.client.put("/api/v1/imports/uploads/vbox.ova", content=ova.read_bytes())
    assert response.status_code == 201, response.text
    assert response.json() == {"path": "uploads/vbox.ova"}
    assert (api.settings.import_dir / "uploads" / "vbox.ova").read_bytes() == ova.read_bytes()
    assert uploads(api) == ["vbox.ova"]  # no temporary file beside it
    plan = api.client.post("/api/v1/imports", json={"path": "uploads/vbox.ova", "dry_run": True})
    assert plan.status_code == 200, plan.text
    assert plan.json()["kind"] == "ova" and plan.json()["nics"][0]["source_network"] == "NAT"
    assert plan.json()["disks"][0]["size"] == 16 * MiB


def test_an_existing_upload_is_never_replaced(api: Api) -> None:
    assert api.client.put("/api/v1/imports/uploads/a.ova", content=b"first").status_code == 201
    response = api.client.put("/api/v1/imports/uploads/a.ova", content=b"second")
    assert response.status_code == 409, response.text
    assert (api.settings.import_dir / "uploads" / "a.ova").read_bytes() == b"first"
    assert uploads(api) == ["a.ova"]


@pytest.mark.parametrize("name", ["vm.vmx", "vm.ova.part", ".hidden.ova", "a%20b.ova", "a%2Fb.ova", "-x.ova",
                                  "..%2F..%2Fx.ova", "ova"])
def test_names_that_are_not_plain_ova_files_are_refused(api: Api, name: str) -> None:
    response = api.client.put(f"/api/v1/imports/uploads/{name}", content=b"data")
    if "%2F" in name:  # a slash, even encoded, never reaches the route
        assert response.status_code == 404, (name, response.text)
    else:
        assert response.status_code == 422, (name, response.text)
        assert response.json()["error"]["field"] == "name"
    assert uploads(api) == []
    assert not api.settings.import_dir.exists() or not list(api.settings.import_dir.rglob("*"))


def test_an_upload_over_the_size_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    for api in open_api(tmp_path / "data", max_volume_size=MiB):
        declared = api.client.put("/api/v1/imports/uploads/big.ova", content=b"x" * (MiB + 1))
        assert declared.status_code == 422, declared.text
        assert declared.json()["error"]["field"] == "content-length"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts
            for _ in range(3):
                yield b"x" * (MiB // 2)

        counted = api.client.put("/api/v1/imports/uploads/big.ova", content=chunks())
        assert counted.status_code == 422, counted.text
        assert counted.json()["error"]["field"] == "body"
        assert uploads(api) == []
        # Within the limit, and past the 1 MiB cap of JSON bodies: streamed, not refused with 413.
        assert api.client.put("/api/v1/imports/uploads/ok.ova", content=b"x" * MiB).status_code == 201


def test_viewers_cannot_upload(api: Api) -> None:
    response = api.client.put("/api/v1/imports/uploads/a.ova", content=b"x", headers=api.headers_for("viewer"))
    assert response.status_code == 403, response.text
    assert uploads(api) == []


def test_an_upload_the_last_daemon_did_not_finish_is_removed_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    uploads = data / "import" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / ".big.ova.upload-0123456789abcdef").write_bytes(b"half an OVA")
    (uploads / "kept.ova").write_bytes(b"a whole one")
    with contextlib.closing(open_api(data)) as opened:
        next(opened)  # the server has started
        assert sorted(p.name for p in uploads.iterdir()) == ["kept.ova"]


def test_uploads_are_listed_and_removed_by_name(api: Api, tmp_path: Path) -> None:
    assert api.client.get("/api/v1/imports/uploads").json() == []
    ova = make_ova(tmp_path / "vbox.ova")
    assert api.client.put("/api/v1/imports/uploads/vbox.ova", content=ova.read_bytes()).status_code == 201
    assert api.client.put("/api/v1/imports/uploads/b.ova", content=b"second").status_code == 201
    (api.settings.import_dir / "uploads" / ".c.ova.upload-0123456789abcdef").write_bytes(b"being received")
    viewer = api.headers_for("viewer")
    listed = api.client.get("/api/v1/imports/uploads", headers=viewer).json()
    assert [(u["name"], u["path"], u["size"]) for u in listed] == [("b.ova", "uploads/b.ova", 6),
                                                                   ("vbox.ova", "uploads/vbox.ova", ova.stat().st_size)]
    assert api.client.delete("/api/v1/imports/uploads/b.ova", headers=viewer).status_code == 403
    assert api.client.delete("/api/v1/imports/uploads/b.ova").status_code == 204
    assert uploads(api) == [".c.ova.upload-0123456789abcdef", "vbox.ova"]
    missing = api.client.delete("/api/v1/imports/uploads/b.ova")
    assert missing.status_code == 404, missing.text
    bad = api.client.delete("/api/v1/imports/uploads/x.vmx")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "name"


def test_an_upload_cannot_be_removed_while_an_import_reads_it(api: Api, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ova = make_ova(tmp_path / "vbox.ova")
    assert api.client.put("/api/v1/imports/uploads/vbox.ova", content=ova.read_bytes()).status_code == 201
    upload = api.settings.import_dir / "uploads" / "vbox.ova"
    key = f"import-source:{upload.stat().st_dev}:{upload.stat().st_ino}"
    runner = api.server.runner
    taken: list[dict[str, str]] = []
    submit = runner.submit
    monkeypatch.setattr(runner, "submit", lambda *args, **kwargs: (taken.append(dict(kwargs.get("locks") or {})),
                                                                   submit(*args, **kwargs))[1])
    assert api.client.post("/api/v1/networks", json={"name": "lan", "mode": "user"}).status_code == 201
    job = api.client.post("/api/v1/imports", json={"path": "uploads/./vbox.ova", "network_map": {"NAT": "lan"}})
    assert job.status_code == 202, job.text
    assert any(key in locks for locks in taken)  # the import locks the file it reads, however the path is spelled
    assert api.wait(job.json())["status"] == "succeeded"

    with api.holding(key, "import source"):
        busy = api.client.delete("/api/v1/imports/uploads/vbox.ova")
        assert busy.status_code == 409, busy.text
        assert upload.exists()
