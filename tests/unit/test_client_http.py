"""The API client on http.client: what goes on the wire, kept-alive connections the server closed, and errors."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from virtfleet.client import ApiError, Client, _query


class OneShotServer:
    """A loopback HTTP server that answers each connection's first request (keep-alive promised) and then closes it,
    as uvicorn does with a connection idle past its keep-alive timeout."""

    def __init__(self, status: int = 200, body: bytes = b'{"ok": true}', content_type: str = "application/json",
                 tls: ssl.SSLContext | None = None):
        self.status, self.body, self.content_type, self.tls = status, body, content_type, tls
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http{'s' if tls else ''}://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    connection = self.tls.wrap_socket(connection, server_side=True)
                except (OSError, ssl.SSLError):
                    continue  # the client refused our certificate
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                connection.sendall(b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                                   b"connection: keep-alive\r\n\r\n%s"
                                   % (self.status, self.content_type.encode(), len(self.body), self.body))

    def close(self) -> None:
        self.listener.close()


@contextmanager
def one_shot(**answer: object) -> Iterator[OneShotServer]:
    server = OneShotServer(**answer)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()


def test_query_strings_are_written_as_httpx_wrote_them() -> None:
    assert _query({"force": True, "delete_volumes": False, "limit": 5, "empty": None}) == \
        "?force=true&delete_volumes=false&limit=5&empty="
    assert _query({"name": ["a b", "c&d"]}) == "?name=a+b&name=c%26d"
    assert _query({}) == ""


def test_a_connection_the_server_closed_is_replaced_not_reused() -> None:
    with one_shot() as server, Client(server.url, token="vf_secret") as client:
        assert client.get("/vms", force=True) == {"ok": True}
        # The server has closed the first connection (after promising keep-alive): the next request must not be lost.
        for _ in range(3):
            assert client.post("/vms/a b/start", json={"x": 1}) == {"ok": True}
    first, second = server.requests[0], server.requests[1]
    assert first.startswith(b"GET /api/v1/vms?force=true HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer vf_secret\r\n" in first
    assert second.startswith(b"POST /api/v1/vms/a%20b/start HTTP/1.1\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in second


def test_error_answers_become_api_errors() -> None:
    body = json.dumps({"error": {"code": "conflict", "message": "it is running", "current": "running"}}).encode()
    with one_shot(status=409, body=body) as server, Client(server.url) as client:
        with pytest.raises(ApiError) as raised:
            client.post("/vms/x/start")
        assert (raised.value.status, raised.value.code, raised.value.message) == (409, "conflict", "it is running")
        assert raised.value.body["error"]["current"] == "running"
    with one_shot(status=502, body=b"<html>bad gateway</html>", content_type="text/html") as server, \
            Client(server.url) as client:
        with pytest.raises(ApiError) as raised:
            client.get("/vms")
        assert (raised.value.status, raised.value.code) == (502, "http_error")
        assert raised.value.message == "HTTP 502: <html>bad gateway</html>"


def test_text_answers_are_text() -> None:
    with one_shot(body=b"console\nlines\n", content_type="text/plain; charset=utf-8") as server, \
            Client(server.url) as client:
        assert client.get("/vms/x/logs") == "console\nlines\n"


def test_no_server_and_a_malformed_url_are_one_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}") as client, pytest.raises(ApiError) as raised:
        client.get("/vms")
    assert raised.value.code == "unreachable" and "is `virtfleet serve` running?" in raised.value.message
    with Client("127.0.0.1:8470") as client, pytest.raises(ApiError) as raised:
        client.get("/vms")
    assert raised.value.code == "unreachable" and "http://HOST[:PORT]" in raised.value.message


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_checks_the_certificate_against_ssl_cert_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=virtfleet-test",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with one_shot(tls=tls) as server:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # certifi's bundle: a self-signed certificate is refused
        with Client(server.url) as client, pytest.raises(ApiError) as raised:
            client.get("/vms")
        assert raised.value.code == "unreachable" and "CERTIFICATE_VERIFY_FAILED" in raised.value.message
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # as with httpx: the admin trusts the server's certificate
        with Client(server.url) as client:
            assert client.get("/vms") == {"ok": True}
