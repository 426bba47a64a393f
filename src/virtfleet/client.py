"""A small typed client for the REST API. The CLI uses it; so can scripts.

It speaks HTTP/1.1 through the standard library's http.client, not httpx: importing httpx (which loads its own
command line, with click, rich and pygments) costs the CLI more than a whole `virtfleet vm list` does."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

from virtfleet import __version__
from virtfleet.config import ADMIN_TOKEN_FILE, DEFAULT_URL, data_dir_from_env, is_loopback
from virtfleet.private_files import create_private

if TYPE_CHECKING:
    import ssl


def default_token(url: str, data_dir: Path | None = None) -> str | None:
    """The credentials a command on this host uses when none are given: $VIRTFLEET_TOKEN, else, for a server on
    loopback, the admin token `serve` keeps in its data directory (readable only by whoever owns the host)."""
    if token := os.environ.get("VIRTFLEET_TOKEN", "").strip():
        return token
    if not is_loopback(urlsplit(url).hostname or ""):
        return None
    path = (data_dir or data_dir_from_env()) / ADMIN_TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


# The server sends a keepalive every 15 s: four missed means the connection is dead.
EVENTS_READ_TIMEOUT = 60.0


def parse_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Server-sent events as {"id": int | None, "event": str, "data": parsed JSON}; comments (keepalives) skipped."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                event_id = fields.get("id")
                yield {"id": int(event_id) if event_id else None, "event": fields.get("event", "message"),
                       "data": json.loads("\n".join(data))}
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


class ApiError(Exception):
    """An error answer from the server, or no answer at all."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {"error": {"code": code, "message": message}}


class _ClientTimeout:
    """The default of `timeout=`: the client's own (None means no timeout at all)."""


CLIENT_TIMEOUT = _ClientTimeout()
# Characters a request path keeps as they are (RFC 3986 pchar and "/"; "%" keeps escapes a caller made).
PATH_SAFE = "/%:@!$&'()*+,;=~"
# What a connection or transport failure raises: refused, reset, timed out, TLS refused, a garbled answer.
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class Response:
    """A complete answer: status, headers and body."""

    def __init__(self, status_code: int, headers: Message, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    @property
    def text(self) -> str:
        return self.content.decode(self.headers.get_content_charset() or "utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _lines(response: http.client.HTTPResponse) -> Iterator[str]:
    """The lines of a streamed answer, without their line ends."""
    while line := response.readline():
        yield line.decode(errors="replace").rstrip("\r\n")


def _query(params: Mapping[str, Any] | None) -> str:
    """A query string as httpx wrote it: booleans as true/false, None as an empty value, lists repeated."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return "" if value is None else str(value)

    pairs = [(key, text(item)) for key, value in (params or {}).items()
             for item in (value if isinstance(value, list | tuple) else [value])]
    return f"?{urlencode(pairs)}" if pairs else ""


def _tls_context() -> ssl.SSLContext:
    """Certificates checked as httpx checked them: $SSL_CERT_FILE, else $SSL_CERT_DIR, else certifi's bundle."""
    import ssl

    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class Client:
    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 30.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self._valid_url = parts.scheme in ("http", "https") and bool(parts.hostname)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = f"{parts.path}/api/v1"
        self.timeout = timeout
        self._headers = {"User-Agent": f"virtfleet-client/{__version__}", "Accept": "*/*"}
        self._connection: http.client.HTTPConnection | None = None  # kept alive between requests
        self.use_token(token)

    def use_token(self, token: str | None) -> None:
        """Send `Authorization: Bearer <token>` from now on (None: send no credentials)."""
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        else:
            self._headers.pop("Authorization", None)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if not self._valid_url:  # refused when used, as a request to a server that cannot be reached
            raise ApiError(0, "unreachable", f"cannot reach virtfleet at {self.base_url}: the URL must be "
                           "http://HOST[:PORT] or https://HOST[:PORT]")
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=_tls_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _kept_connection(self, timeout: float | None) -> http.client.HTTPConnection:
        """The kept-alive connection, or a new one if there is none or the server has closed it since (its socket
        reads as ready: end of file) - a request sent there would be lost."""
        connection = self._connection
        if connection is not None and connection.sock is not None:
            readable, _, _ = select.select([connection.sock], [], [], 0)
            if readable:
                self.close()
                connection = None
        if connection is None:
            connection = self._connection = self._connect(timeout)
        elif connection.sock is not None:
            connection.sock.settimeout(timeout)
        connection.timeout = timeout
        return connection

    def _start(self, connection: http.client.HTTPConnection, method: str, path: str,
               params: Mapping[str, Any] | None, json: Any, content: bytes | Iterable[bytes] | None,
               headers: Mapping[str, str] | None) -> http.client.HTTPResponse:
        sent = dict(self._headers)
        body = content
        if json is not None:
            body = _json_bytes(json)
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        target = quote(f"{self._prefix}/{path.lstrip('/')}", safe=PATH_SAFE) + _query(params)
        connection.request(method, target, body=body, headers=sent)
        return connection.getresponse()

    def _unreachable(self, error: BaseException) -> ApiError:
        return ApiError(0, "unreachable", f"cannot reach virtfleet at {self.base_url} ({error}); "
                        "is `virtfleet serve` running?")

    def _send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
              content: bytes | Iterable[bytes] | None = None, headers: Mapping[str, str] | None = None,
              timeout: float | _ClientTimeout | None = CLIENT_TIMEOUT) -> Response:
        seconds = self.timeout if isinstance(timeout, _ClientTimeout) else timeout
        reused = self._connection is not None
        connection = self._kept_connection(seconds)
        try:
            try:
                answer = self._start(connection, method, path, params, json, content, headers)
            except _STALE_CONNECTION:
                # A kept-alive connection the server closed after the readiness check above and before reading
                # the request: nothing of it was answered, so it goes again once, on a new connection (a body
                # that is a stream cannot be sent twice).
                if not reused or not (content is None or isinstance(content, bytes)):
                    raise
                self.close()
                connection = self._kept_connection(seconds)
                answer = self._start(connection, method, path, params, json, content, headers)
            response = Response(answer.status, answer.headers, answer.read())
        except TRANSPORT_ERRORS as error:
            self.close()
            raise self._unreachable(error) from None
        if answer.will_close:
            self.close()
        if response.is_error:
            self._raise(response)
        return response

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
                content: bytes | Iterable[bytes] | None = None, headers: Mapping[str, str] | None = None,
                timeout: float | _ClientTimeout | None = CLIENT_TIMEOUT) -> Any:
        """Send a request under /api/v1; the answer's JSON, its text, or None (204). `timeout`: seconds per connect
        or read (None: wait for ever; left out: the client's)."""
        response = self._send(method, path, params=params, json=json, content=content, headers=headers,
                              timeout=timeout)
        if response.status_code == 204:
            return None
        if (response.headers.get("content-type") or "").startswith("application/json"):
            return response.json()
        return response.text

    @staticmethod
    def _raise(response: Response) -> NoReturn:
        try:
            body = response.json()
            code, message = body["error"]["code"], body["error"]["message"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(response.status_code, "http_error",
                           f"HTTP {response.status_code}: {response.text[:200]}") from None
        raise ApiError(response.status_code, code, message, body)

    def _open_stream(self, path: str, timeout: float | None, read_timeout: float | None
                     ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """GET on a connection of its own, for an answer read a piece at a time; an error answer raises."""
        connection = self._connect(timeout)
        try:
            answer = self._start(connection, "GET", path, None, None, None, None)
            if answer.status >= 400:
                self._raise(Response(answer.status, answer.headers, answer.read()))
            if connection.sock is not None:
                connection.sock.settimeout(read_timeout)
        except BaseException:
            connection.close()
            raise
        return connection, answer

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None, **params: Any) -> Any:
        return self.request("POST", path, json=json, params={k: v for k, v in params.items() if v is not None})

    def upload(self, path: str, file: Path, progress: Callable[[int, int], None] | None = None,
               **params: Any) -> Any:
        """PUT a file as the request body, streamed in chunks (no size limit, nothing held in memory)."""
        total = file.stat().st_size

        def chunks() -> Iterator[bytes]:
            done = 0
            with file.open("rb") as source:
                while chunk := source.read(1 << 20):
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                    yield chunk

        return self.request("PUT", path, content=chunks(), headers={"content-length": str(total)},
                            params={k: v for k, v in params.items() if v is not None}, timeout=None)

    def download(self, path: str, dest: Path, progress: Callable[[int, int], None] | None = None) -> int:
        """GET a file into `dest` (written beside it under a temporary name, renamed when complete). A disk image
        holds whatever its guest wrote: the file is private (0600)."""
        partial = dest.with_name(f".{dest.name}.part")
        partial.unlink(missing_ok=True)  # left by an interrupted download (or a link someone put there: not followed)
        try:
            connection, response = self._open_stream(path, timeout=None, read_timeout=None)
            with contextlib.closing(connection):
                total = int(response.headers.get("content-length") or 0)
                done = 0
                with os.fdopen(create_private(partial), "wb") as out:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            partial.replace(dest)
        except TRANSPORT_ERRORS as error:
            raise ApiError(0, "unreachable", f"cannot reach virtfleet at {self.base_url} ({error})") from None
        finally:
            partial.unlink(missing_ok=True)
        return done

    def patch(self, path: str, json: Any = None) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params={k: v for k, v in params.items() if v is not None})

    def events(self) -> Generator[dict[str, Any], None, None]:
        """Follow GET /events: each message as parse_sse gives it, until the server ends the stream."""
        try:
            connection, response = self._open_stream("/events", timeout=30.0, read_timeout=EVENTS_READ_TIMEOUT)
            with contextlib.closing(connection):
                yield from parse_sse(_lines(response))
        except TRANSPORT_ERRORS as error:
            raise ApiError(0, "unreachable", f"no event stream from {self.base_url} ({error}); "
                           "is `virtfleet serve` running?") from None

    def create_vm(self, spec: dict[str, Any], on_update: Callable[[dict[str, Any]], None] | None = None
                  ) -> dict[str, Any]:
        """POST /vms and return the VM. Disks with `new` are made by a job (202), followed here to its end (`on_update`
        sees its progress); a job that failed raises ApiError, and left nothing behind. Without new disks the server
        records the VM at once (201)."""
        response = self._send("POST", "/vms", json=spec)
        if response.status_code != 202:
            created: dict[str, Any] = response.json()
            return created
        job = self.wait_job(response.json(), on_update)
        if job["status"] != "succeeded":
            code, message = job.get("error_code") or "failed", job.get("error") or "the create job failed"
            # Accepted, then refused by its job: the same code a synchronous refusal would carry, 409 for HTTP.
            raise ApiError(409, code, message, {"error": {"code": code, "message": message, "job_id": job["id"]}})
        vm: dict[str, Any] = self.get(f"/vms/{spec['name']}")
        return vm

    def wait_job(
        self, job: dict[str, Any], on_update: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Long-poll a job until it finishes; `on_update` sees each intermediate state (for progress)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while job["status"] not in ("succeeded", "failed"):
            if deadline is not None and time.monotonic() > deadline:
                break
            job = self.get(f"/jobs/{job['id']}", wait=2)
            if on_update is not None:
                on_update(job)
        return job
