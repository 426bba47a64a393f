"""Storage limits through the REST API: how large a volume may be, where a pool may live and what deleting it
removes, and what a full disk answers (507 for a full pool, 503 when the database cannot be written; reads go on)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import qemu_img_pids, wait_until
from tests.functional.conftest import Api, LiveServer, open_api
from tests.functional.storage_helpers import (
    MiB,
    assert_staging_empty,
    clone,
    create_volume,
    files,
    mark_template,
    pool_dir,
    refused,
    run,
    unchanged,
    upload,
)
from tests.tmpfs import fill, tiny_tmpfs
from virtfleet import config


def zeros(mib: int) -> Iterator[bytes]:
    """An upload body without a Content-Length (chunked), as a client streaming from a pipe sends it."""
    for _ in range(mib):
        yield b"\x42" * MiB


# --- sizes --------------------------------------------------------------------------------------------------------


def test_volumes_larger_than_the_limit_are_refused_however_they_come(tmp_path: Path) -> None:
    with contextlib.closing(open_api(tmp_path / "data", max_volume_size=8 * MiB)) as opened:
        api = next(opened)
        with unchanged(api):
            refused(api.client.post("/api/v1/pools/default/volumes", json={"name": "big", "size": "9M"}), 422,
                    field="size", says="more than the largest volume this server accepts (8 MiB)")
        create_volume(api, "small", "8M")
        with unchanged(api):
            refused(api.client.post("/api/v1/volumes/default/small/resize", json={"size": "9M"}), 422, field="size",
                    says="9 MiB")
            refused(upload(api, "up", b"\0" * (9 * MiB), format="raw"), 422, field="content-length", says="8 MiB")
            refused(api.client.put("/api/v1/pools/default/volumes/up/data", content=zeros(9),
                                   params={"format": "raw"}), 422, field="body", says="8 MiB")
        assert_staging_empty(pool_dir(api))


def test_a_volume_made_under_a_higher_limit_is_neither_cloned_nor_grown(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with contextlib.closing(open_api(data)) as first:
        api = next(first)
        create_volume(api, "big", "16M")
        mark_template(api, "default/big")
    with contextlib.closing(open_api(data, max_volume_size=8 * MiB)) as second:
        api = next(second)
        with unchanged(api):
            refused(clone(api, "default/big", "linked", linked=True), 422, field="size", says="16 MiB")
            refused(clone(api, "default/big", "full", linked=False), 422, field="size", says="16 MiB")


def test_an_image_claiming_a_huge_virtual_size_is_refused_before_any_conversion(api: Api, tmp_path: Path) -> None:
    # A qcow2 of 16 MiB claiming 1 PiB, a vhdx of 15 MiB claiming 60 TiB (converting it takes qemu-img 40 minutes).
    huge_qcow2 = tmp_path / "huge.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(huge_qcow2), "1P")
    huge_vhdx = tmp_path / "huge.vhdx"
    run("qemu-img", "create", "-q", "-f", "vhdx", str(huge_vhdx), "60T")
    started = time.monotonic()
    with unchanged(api):
        error = refused(upload(api, "huge", huge_qcow2.read_bytes(), format="qcow2"), 422, field="virtual_size",
                        says="claims a virtual size of 1 PiB (1125899906842624 bytes)")
        assert "the largest volume this server accepts (4 TiB)" in error["message"]
        refused(upload(api, "huge", huge_vhdx.read_bytes(), format="vhdx"), 422, field="virtual_size",
                says="claims a virtual size of 60 TiB")
    assert time.monotonic() - started < 60
    assert qemu_img_pids("huge") == []
    assert_staging_empty(pool_dir(api))


def test_an_upload_whose_client_hangs_up_stops_its_conversion(live_server: LiveServer, tmp_path: Path) -> None:
    slow = tmp_path / "slow.vhdx"  # 8 MiB claiming 1 TiB: within the limit, and 40 s of qemu-img to convert
    run("qemu-img", "create", "-q", "-f", "vhdx", str(slow), "1T")
    data = slow.read_bytes()
    port = int(live_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(f"PUT /api/v1/pools/default/volumes/slow/data?format=vhdx HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Authorization: Bearer {live_server.token}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                       + data)
        assert wait_until(lambda: qemu_img_pids("slow.upload-", b"convert")), "no conversion started"
    # The client hung up while its upload was being converted: nobody waits for the result any more.
    assert wait_until(lambda: not qemu_img_pids("slow.upload-"), 10), "the conversion went on"
    response = httpx.get(f"{live_server.url}/api/v1/volumes", headers=live_server.auth)
    assert response.status_code == 200 and response.json() == []
    pool = live_server.settings.default_pool
    assert wait_until(lambda: not [p for p in pool.rglob("*") if p.is_file()], 5), list(pool.rglob("*"))


# --- where pools live ---------------------------------------------------------------------------------------------


def post_pool(api: Api, name: str, path: Path | str) -> dict[str, object]:
    response = api.client.post("/api/v1/pools", json={"name": name, "path": str(path)})
    assert response.status_code == 201, response.text
    pool: dict[str, object] = response.json()
    return pool


def test_pools_only_where_pools_belong(api: Api, tmp_path: Path) -> None:
    data = api.settings.data_dir
    crontabs = Path("/var/spool/cron/crontabs")
    crontabs_existed = crontabs.exists()
    with unchanged(api, data / "run"):
        for path, says in ((data / "run" / "pool", "is in virtfleet's data directory"),
                           (data / "images" / "pool", "is in virtfleet's data directory"),
                           (data, "holds virtfleet's own data directory"),
                           (f"{tmp_path}/new\nline", "control characters"),
                           (f"{tmp_path}/a/../b", "absolute path without"),
                           ("/var/lib", "system directory"),
                           (crontabs, "system directory")):
            refused(api.client.post("/api/v1/pools", json={"name": "p", "path": str(path)}), 422, field="path",
                    says=says)
    assert crontabs.exists() == crontabs_existed
    assert not (data / "run" / "pool").exists() and not (tmp_path / "new\nline").exists()


def test_by_default_pools_go_below_the_admin_roots_or_the_data_directory_pools(tmp_path: Path) -> None:
    with contextlib.closing(open_api(tmp_path / "data", pool_roots=config.DEFAULT_POOL_ROOTS)) as opened:
        api = next(opened)
        with unchanged(api):
            refused(api.client.post("/api/v1/pools", json={"name": "tmp", "path": str(tmp_path / "pool")}), 422,
                    field="path", says="not below a pool root (")
        second = api.settings.data_dir / "pools" / "second"
        assert post_pool(api, "second", second)["owns_path"] is True
        assert api.client.delete("/api/v1/pools/second").status_code == 204
        assert not second.exists()


def test_deleting_a_pool_removes_only_a_directory_it_made(api: Api, tmp_path: Path) -> None:
    lent = tmp_path / "lent"
    lent.mkdir()
    assert post_pool(api, "lent", lent)["owns_path"] is False
    response = api.client.put("/api/v1/pools/lent/volumes/v/data", content=b"\0" * MiB, params={"format": "raw"})
    assert response.status_code == 201, response.text
    assert api.wait(api.client.delete("/api/v1/volumes/lent/v").json())["status"] == "succeeded"
    assert api.client.delete("/api/v1/pools/lent").status_code == 204
    assert lent.is_dir() and list(lent.iterdir()) == []  # still there (our empty staging directory went)

    made = tmp_path / "made"
    assert post_pool(api, "made", made)["owns_path"] is True
    (made / ".incoming").mkdir()
    (made / ".incoming" / "v.upload-0123456789abcdef").write_bytes(b"an upload the daemon did not finish")
    assert api.client.delete("/api/v1/pools/made").status_code == 204
    assert not made.exists()  # ours, and nothing but our own leftovers in it

    shared = tmp_path / "shared"
    assert post_pool(api, "shared", shared)["owns_path"] is True
    (shared / "notes.txt").write_text("someone else's file")
    assert api.client.delete("/api/v1/pools/shared").status_code == 204
    assert (shared / "notes.txt").read_text() == "someone else's file"  # never deleted with the pool


# --- full disks ---------------------------------------------------------------------------------------------------


def test_a_chunked_upload_larger_than_its_pool_is_507_and_leaves_nothing(api: Api, tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "small", "4m") as small:
        post_pool(api, "small", small / "pool")
        with unchanged(api, small):
            response = api.client.put("/api/v1/pools/small/volumes/big/data", content=zeros(8),
                                      params={"format": "raw"})
            refused(response, 507, code="insufficient_storage", says="No space left on device")
        assert files(small / "pool") == {}
        assert api.client.get("/api/v1/pools/small").status_code == 200
        response = api.client.put("/api/v1/pools/small/volumes/fits/data", content=zeros(1), params={"format": "raw"})
        assert response.status_code == 201, response.text  # the space the failed upload took is free again


def test_a_full_data_directory_answers_503_and_keeps_serving_reads(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "data", "16m") as data, contextlib.closing(open_api(data)) as opened:
        api = next(opened)
        create_volume(api, "before", "4M")
        filler = fill(data)
        reads = ("/api/v1/volumes", "/api/v1/pools", "/api/v1/vms", "/api/v1/volumes/default/before", "/api/v1/jobs")

        def all_reads_work() -> None:
            for url in reads:
                assert api.client.get(url).status_code == 200, url

        all_reads_work()
        # Into the default pool, on the same full file system: 507, and the partial file is gone.
        refused(api.client.put("/api/v1/pools/default/volumes/up/data", content=zeros(2), params={"format": "raw"}),
                507, code="insufficient_storage")
        assert_staging_empty(pool_dir(api))
        # Changes go to the database: some may still fit in its journal, then 503 with the reason (never 500).
        for attempt in range(500):
            response = api.client.post("/api/v1/networks", json={"name": f"n{attempt}", "mode": "user"})
            if response.status_code != 201:
                break
        refused(response, 503, code="unavailable", says="file system is full")
        all_reads_work()
        filler.unlink()
        assert api.client.post("/api/v1/networks", json={"name": "after", "mode": "user"}).status_code == 201
