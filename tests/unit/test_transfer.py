"""Safe transfers into a pool: nothing half-written under the final name, checksums checked before the rename.

The HTTP tests talk only to a server the test starts on 127.0.0.1 (which the admin must allow: LOOPBACK).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from virtfleet.errors import Conflict, InvalidSpec
from virtfleet.storage.transfer import (
    TransferError,
    atomic_destination,
    copy_file,
    download_url,
    write_stream,
)

MiB = 1 << 20
DATA = bytes(range(256)) * (10 * MiB // 256 + 7)  # a bit over 10 MiB: several chunks, a partial last one
DATA_SHA = hashlib.sha256(DATA).hexdigest()
WRONG_SHA = "0" * 64
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)  # as VIRTFLEET_IMPORT_ALLOW=127.0.0.0/8


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- atomic_destination -------------------------------------------------------------------------------------------


def test_atomic_destination_renames_on_success(tmp_path: Path) -> None:
    final = tmp_path / "disk.raw"
    with atomic_destination(final) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".disk.raw.part-")
        assert not temp.exists() and not final.exists()
        temp.write_bytes(b"data")
    assert final.read_bytes() == b"data"
    assert leftovers(tmp_path) == ["disk.raw"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt(), asyncio.CancelledError()])
def test_atomic_destination_removes_the_part_file_on_any_exception(tmp_path: Path, error: BaseException) -> None:
    final = tmp_path / "disk.raw"
    with pytest.raises(type(error)), atomic_destination(final) as temp:
        temp.write_bytes(b"half")
        raise error
    assert leftovers(tmp_path) == []


def test_atomic_destination_refuses_an_existing_file(tmp_path: Path) -> None:
    final = tmp_path / "disk.raw"
    final.write_bytes(b"precious")
    with pytest.raises(Conflict), atomic_destination(final):
        pass
    assert final.read_bytes() == b"precious"


def test_atomic_destination_never_replaces_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    final = tmp_path / "disk.raw"
    with pytest.raises(Conflict), atomic_destination(final) as temp:
        temp.write_bytes(b"new")
        final.write_bytes(b"someone else's")
    assert final.read_bytes() == b"someone else's"
    assert leftovers(tmp_path) == ["disk.raw"]


def test_atomic_destination_needs_something_written(tmp_path: Path) -> None:
    with pytest.raises(TransferError), atomic_destination(tmp_path / "disk.raw"):
        pass
    assert leftovers(tmp_path) == []


# --- copy_file ----------------------------------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "image.raw"
    src.parent.mkdir()
    src.write_bytes(DATA)
    return src


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool"
    path.mkdir()
    return path


def test_copy_verifies_and_reports_progress(source: Path, pool: Path) -> None:
    seen: list[tuple[int, int]] = []
    digest = copy_file(
        source, pool / "disk.raw", progress=lambda done, total: seen.append((done, total)), expected_sha256=DATA_SHA
    )
    assert digest == DATA_SHA
    assert (pool / "disk.raw").read_bytes() == DATA
    assert leftovers(pool) == ["disk.raw"]
    assert len(seen) == 3  # 4 MiB chunks
    assert seen[-1] == (len(DATA), len(DATA))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


@pytest.mark.usefixtures("usual_umask")
def test_what_lands_in_a_pool_is_private(source: Path, pool: Path) -> None:
    copy_file(source, pool / "copied.raw")
    write_stream([b"x" * 100], pool / "streamed.raw", total=100)
    with atomic_destination(pool / "moved.raw") as temp:
        temp.write_bytes(b"made by someone else, 0644")
    assert {p.name: p.stat().st_mode & 0o777 for p in pool.iterdir()} == {
        "copied.raw": 0o600, "streamed.raw": 0o600, "moved.raw": 0o600}


def test_copy_checksum_mismatch_leaves_nothing(source: Path, pool: Path) -> None:
    with pytest.raises(TransferError) as caught:
        copy_file(source, pool / "disk.raw", expected_sha256=WRONG_SHA)
    assert WRONG_SHA in caught.value.message and DATA_SHA in caught.value.message
    assert leftovers(pool) == []


def test_copy_accepts_an_uppercase_checksum_and_refuses_garbage(source: Path, pool: Path) -> None:
    assert copy_file(source, pool / "a.raw", expected_sha256=DATA_SHA.upper()) == DATA_SHA
    with pytest.raises(InvalidSpec) as caught:
        copy_file(source, pool / "b.raw", expected_sha256="md5:abc")
    assert caught.value.field == "sha256"
    assert leftovers(pool) == ["a.raw"]


def test_copy_stops_cleanly_when_progress_raises(source: Path, pool: Path) -> None:
    def cancel(done: int, total: int) -> None:
        if done > MiB:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_file(source, pool / "disk.raw", progress=cancel, chunk=MiB)
    assert leftovers(pool) == []


def test_copy_refuses_an_existing_destination(source: Path, pool: Path) -> None:
    (pool / "disk.raw").write_bytes(b"precious")
    with pytest.raises(Conflict):
        copy_file(source, pool / "disk.raw")
    assert (pool / "disk.raw").read_bytes() == b"precious"


def test_copy_of_a_missing_source(pool: Path) -> None:
    with pytest.raises(TransferError):
        copy_file(pool / "nothing", pool / "disk.raw")
    assert leftovers(pool) == []


# --- write_stream -------------------------------------------------------------------------------------------------


def chunks_of(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_write_stream(pool: Path) -> None:
    seen: list[tuple[int, int]] = []
    digest = write_stream(
        chunks_of(DATA), pool / "up.raw", total=len(DATA), progress=lambda d, t: seen.append((d, t)),
        expected_sha256=DATA_SHA,
    )  # fmt: skip
    assert digest == DATA_SHA and (pool / "up.raw").read_bytes() == DATA
    assert seen[-1] == (len(DATA), len(DATA))


def test_write_stream_without_a_total_reports_zero(pool: Path) -> None:
    seen: list[int] = []
    write_stream(chunks_of(b"x" * 3 * MiB), pool / "up.raw", total=None, progress=lambda d, t: seen.append(t))
    assert seen == [0, 0, 0]


def test_write_stream_enforces_max_bytes_while_streaming(pool: Path) -> None:
    received: list[int] = []

    def body() -> Iterator[bytes]:
        for chunk in chunks_of(DATA):
            received.append(len(chunk))
            yield chunk

    with pytest.raises(TransferError, match="limit"):
        write_stream(body(), pool / "up.raw", total=None, max_bytes=2 * MiB)
    assert len(received) == 3  # stopped at the chunk that crossed the limit
    assert leftovers(pool) == []


def test_write_stream_refuses_a_declared_total_over_the_limit_up_front(pool: Path) -> None:
    with pytest.raises(TransferError, match="limit"):
        write_stream(iter(()), pool / "up.raw", total=5 * MiB, max_bytes=MiB)
    assert leftovers(pool) == []


def test_write_stream_short_body_is_refused(pool: Path) -> None:
    with pytest.raises(TransferError, match="expected"):
        write_stream(chunks_of(DATA[:MiB]), pool / "up.raw", total=len(DATA))
    assert leftovers(pool) == []


# --- download_url -------------------------------------------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/image.raw")
            self.end_headers()
            return
        super().do_GET()


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading (limit, checksum) breaks the pipe: expected here


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """http://127.0.0.1:<port> serving tmp_path/www; never any other address."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    (www / "image.raw").write_bytes(DATA)
    httpd = QuietServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_download_with_progress_and_checksum(server: str, pool: Path) -> None:
    seen: list[tuple[int, int]] = []
    digest = download_url(
        f"{server}/image.raw", pool / "disk.raw", progress=lambda d, t: seen.append((d, t)), expected_sha256=DATA_SHA,
        allow=LOOPBACK,
    )
    assert digest == DATA_SHA
    assert (pool / "disk.raw").read_bytes() == DATA
    assert seen[-1] == (len(DATA), len(DATA))
    assert leftovers(pool) == ["disk.raw"]


def test_download_follows_redirects(server: str, pool: Path) -> None:
    assert download_url(f"{server}/moved", pool / "disk.raw", allow=LOOPBACK) == DATA_SHA


def test_download_checksum_mismatch_leaves_nothing(server: str, pool: Path) -> None:
    with pytest.raises(TransferError, match="checksum"):
        download_url(f"{server}/image.raw", pool / "disk.raw", expected_sha256=WRONG_SHA, allow=LOOPBACK)
    assert leftovers(pool) == []


def test_download_404(server: str, pool: Path) -> None:
    with pytest.raises(TransferError) as caught:
        download_url(f"{server}/missing.raw", pool / "disk.raw", allow=LOOPBACK)
    assert caught.value.status == 404 and "404" in caught.value.message
    assert caught.value.details() == {"status": 404}
    assert leftovers(pool) == []


def test_download_max_bytes(server: str, pool: Path) -> None:
    with pytest.raises(TransferError, match="limit"):
        download_url(f"{server}/image.raw", pool / "disk.raw", max_bytes=MiB, allow=LOOPBACK)
    assert leftovers(pool) == []


def test_download_connection_refused(pool: Path) -> None:
    with pytest.raises(TransferError):
        download_url("http://127.0.0.1:9/image.raw", pool / "disk.raw", timeout=5, allow=LOOPBACK)
    assert leftovers(pool) == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/image.raw", "file:///etc/passwd", "127.0.0.1/image.raw", "http://"])
def test_download_only_http(url: str, pool: Path) -> None:
    with pytest.raises(InvalidSpec) as caught:
        download_url(url, pool / "disk.raw")
    assert caught.value.field == "url"
