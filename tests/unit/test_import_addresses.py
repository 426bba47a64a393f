"""Imports from a URL fetch only from public addresses unless the admin allows a range; redirects and DNS included.

Every request goes to servers the test starts on 127.0.0.1 and 127.0.0.2; other names resolve only in a fake DNS.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from virtfleet.config import Settings
from virtfleet.errors import InvalidSpec
from virtfleet.storage.addresses import parse_networks, refusal
from virtfleet.storage.transfer import MAX_REDIRECTS, TransferError, check_url, download_url

BODY = b"disk image bytes\n" * 1000
ONLY_127_0_0_1 = (ipaddress.ip_network("127.0.0.1/32"),)


class Recorder(BaseHTTPRequestHandler):
    """Serves BODY at /image.raw, redirects /to?<url> there, and /loop to itself; remembers (path, Host) asked."""

    seen: list[tuple[str, str]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host", "")))
        if self.path.startswith("/to?"):
            self._redirect(self.path.removeprefix("/to?"))
        elif self.path.startswith("/loop"):
            self._redirect(f"/loop{len(self.seen)}")
        elif self.path == "/image.raw":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        else:
            self.send_error(404)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Web:
    def __init__(self, address: str, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[tuple[str, str]] = []
        handler = type("Handler", (Recorder,), {"seen": self.seen})
        self.httpd = ThreadingHTTPServer((address, 0), handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.url = f"{'https' if tls else 'http'}://{address}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def web() -> Iterator[Web]:
    server = Web("127.0.0.1")
    yield server
    server.close()


@pytest.fixture
def other_web() -> Iterator[Web]:
    server = Web("127.0.0.2")  # loopback too, but outside ONLY_127_0_0_1
    yield server
    server.close()


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """name -> the answers it gives, one per lookup (the last one repeats); other names resolve as usual."""
    answers: dict[str, list[str]] = {}
    real: Callable[..., Any] = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        queue = answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "a loopback address"),
    ("::1", "a loopback address"),
    ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped IPv6
    ("169.254.169.254", "a link-local address"),  # cloud metadata
    ("fe80::1", "a link-local address"),
    ("10.1.2.3", "a private address"),
    ("172.16.0.1", "a private address"),
    ("192.168.1.1", "a private address"),
    ("fd00::1", "a private address"),
    ("::ffff:10.0.0.1", "a private address"),
    ("64:ff9b::a00:1", "a private address"),  # NAT64 to 10.0.0.1
    ("2002:c0a8:101::1", "a private address"),  # 6to4 of 192.168.1.1
    ("0.0.0.0", "an unspecified address"),  # noqa: S104 - an address to refuse, not one to bind
    ("::", "an unspecified address"),
    ("224.0.0.1", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("240.0.0.1", "a private address"),  # reserved (Python counts it private too)
    ("100.64.0.1", "not a public address"),  # carrier-grade NAT
])
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111", "::ffff:93.184.216.34"])
def test_public_addresses_are_fine(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_an_allowed_network_covers_its_ipv4_mapped_form_too() -> None:
    allow = parse_networks("127.0.0.0/8, fd00::/8")
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.5"), allow) is None
    assert refusal(ipaddress.ip_address("fd12::1"), allow) is None
    assert refusal(ipaddress.ip_address("10.0.0.1"), allow) == "a private address"


def test_the_allow_list_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIRTFLEET_IMPORT_ALLOW", "127.0.0.0/8, 10.0.0.1 fd00::/8")
    allow = Settings.from_env(data_dir=tmp_path).import_allow
    assert [str(n) for n in allow] == ["127.0.0.0/8", "10.0.0.1/32", "fd00::/8"]
    monkeypatch.setenv("VIRTFLEET_IMPORT_ALLOW", "10.0.0.0/8,intranet")
    with pytest.raises(ValueError, match="VIRTFLEET_IMPORT_ALLOW: 'intranet' is not an address"):
        Settings.from_env(data_dir=tmp_path)
    monkeypatch.delenv("VIRTFLEET_IMPORT_ALLOW")
    assert Settings.from_env(data_dir=tmp_path).import_allow == ()


def test_a_loopback_url_is_refused_without_connecting(web: Web, tmp_path: Path) -> None:
    for url in (f"{web.url}/image.raw", f"http://[::ffff:127.0.0.1]:{web.port}/image.raw"):
        with pytest.raises(InvalidSpec) as caught:
            check_url(url)
        assert caught.value.field == "url"
        with pytest.raises(InvalidSpec) as caught:
            download_url(url, tmp_path / "disk.raw")
        assert caught.value.field == "url" and "a loopback address" in caught.value.problem
        assert "VIRTFLEET_IMPORT_ALLOW" in caught.value.problem
    assert web.seen == []
    assert list(tmp_path.iterdir()) == []


def test_a_name_is_checked_by_the_address_it_resolves_to(web: Web, tmp_path: Path) -> None:
    check_url(f"http://localhost:{web.port}/image.raw")  # names are resolved only when downloading
    with pytest.raises(InvalidSpec, match=r"url: localhost resolves to (127\.0\.0\.1|::1), a loopback address; "
                                          r"an admin can allow it with VIRTFLEET_IMPORT_ALLOW"):
        download_url(f"http://localhost:{web.port}/image.raw", tmp_path / "disk.raw")
    assert web.seen == []


def test_an_allowed_range_is_fetched_from(web: Web, tmp_path: Path) -> None:
    download_url(f"{web.url}/image.raw", tmp_path / "disk.raw", allow=ONLY_127_0_0_1)
    assert (tmp_path / "disk.raw").read_bytes() == BODY


def test_every_redirect_is_checked_before_it_is_followed(web: Web, other_web: Web, tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as caught:
        download_url(f"{web.url}/to?{other_web.url}/image.raw", tmp_path / "disk.raw", allow=ONLY_127_0_0_1)
    assert caught.value.field == "url"
    assert f"redirects to {other_web.url}/image.raw: 127.0.0.2 is a loopback address" in caught.value.problem
    assert other_web.seen == []
    assert list(tmp_path.iterdir()) == []
    # A redirect within what is allowed is followed (relative too).
    download_url(f"{web.url}/to?/image.raw", tmp_path / "disk.raw", allow=ONLY_127_0_0_1)
    assert [path for path, _host in web.seen][-2:] == ["/to?/image.raw", "/image.raw"]


def test_a_redirect_to_another_scheme_is_refused(web: Web, tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="redirects to file:///etc/shadow"):
        download_url(f"{web.url}/to?file:///etc/shadow", tmp_path / "disk.raw", allow=ONLY_127_0_0_1)


def test_redirects_are_followed_a_few_times_only(web: Web, tmp_path: Path) -> None:
    with pytest.raises(TransferError, match=f"more than {MAX_REDIRECTS} redirects"):
        download_url(f"{web.url}/loop", tmp_path / "disk.raw", allow=ONLY_127_0_0_1)
    assert len(web.seen) == MAX_REDIRECTS + 1
    assert list(tmp_path.iterdir()) == []


def test_the_connection_goes_to_the_address_that_was_checked(web: Web, other_web: Web, tmp_path: Path,
                                                             fake_dns: dict[str, list[str]]) -> None:
    """DNS rebinding: the name answers an allowed address once, then another; the download uses the first."""
    fake_dns["files.example"] = ["127.0.0.1", "127.0.0.2"]
    url = f"http://files.example:{web.port}/image.raw"
    download_url(url, tmp_path / "disk.raw", allow=ONLY_127_0_0_1)
    assert (tmp_path / "disk.raw").read_bytes() == BODY
    assert web.seen == [("/image.raw", f"files.example:{web.port}")]  # the name still goes in Host
    assert other_web.seen == []
    fake_dns["files.example"] = ["127.0.0.2"]
    with pytest.raises(InvalidSpec, match=r"files\.example resolves to 127\.0\.0\.2, a loopback address"):
        download_url(url, tmp_path / "again.raw", allow=ONLY_127_0_0_1)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_is_pinned_too_and_the_certificate_is_checked_against_the_name(
        tmp_path: Path, fake_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "1",
                    "-subj", "/CN=files.example", "-addext", "subjectAltName=DNS:files.example"],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))  # trust the test's certificate only
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    web = Web("127.0.0.1", tls)
    try:
        fake_dns["files.example"] = ["127.0.0.1"]
        fake_dns["other.example"] = ["127.0.0.1"]
        download_url(f"https://files.example:{web.port}/image.raw", tmp_path / "disk.raw", allow=ONLY_127_0_0_1)
        assert (tmp_path / "disk.raw").read_bytes() == BODY
        with pytest.raises(TransferError, match="certificate"):  # same address, but not the certificate's name
            download_url(f"https://other.example:{web.port}/image.raw", tmp_path / "x.raw", allow=ONLY_127_0_0_1)
    finally:
        web.close()
