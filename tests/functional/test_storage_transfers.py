"""Storage transfers: untrusted uploads, URL imports, downloads, OVA archives, interrupted transfers."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import ipaddress
import os
import re
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.functional.conftest import Api, open_api
from tests.functional.storage_helpers import (
    WRONG_SHA,
    MiB,
    assert_staging_empty,
    create_volume,
    details,
    failed,
    files,
    image_info,
    make_image,
    pool_dir,
    refused,
    run,
    same_content,
    sha256_of,
    succeeded,
    unchanged,
    upload,
)

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
    asked: list[str]  # the paths requested, per server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.asked.append(self.path)
        super().do_GET()


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading (checksum) breaks the pipe: expected here


asked: list[str] = []  # what the web server below was asked for


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The API as everywhere, but the admin allows imports from loopback, where the test's web server listens."""
    yield from open_api(tmp_path / "data", import_allow=(ipaddress.ip_network("127.0.0.0/8"),))


@pytest.fixture
def www(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """(directory, http://127.0.0.1:<port>) served from a thread; never any other address."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    asked.clear()
    handler = type("Handler", (QuietHandler,), {"asked": asked})
    httpd = QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
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


def test_an_import_from_loopback_is_refused_unless_the_admin_allows_it(tmp_path: Path, www: tuple[Path, str]) -> None:
    root, base = www
    make_image(root / "image.qcow2", "qcow2", "8M")
    port = base.rsplit(":", 1)[1]
    for strict in open_api(tmp_path / "strict"):  # no VIRTFLEET_IMPORT_ALLOW
        with unchanged(strict):
            refused(import_url(strict, "local", f"{base}/image.qcow2"), 422, field="url",
                    says="127.0.0.1 is a loopback address; an admin can allow it with VIRTFLEET_IMPORT_ALLOW")
            # A name is resolved in the job, which fails saying why.
            job = failed(strict, import_url(strict, "named", f"http://localhost:{port}/image.qcow2"))
            assert job["error_code"] == "invalid_spec", job
            assert re.match(r"url: localhost resolves to (127\.0\.0\.1|::1), a loopback address", job["error"]), job
        assert files(pool_dir(strict)) == {}
        assert_staging_empty(pool_dir(strict))
    assert asked == []


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
