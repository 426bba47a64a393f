"""A small typed client for the REST API (httpx). The CLI uses it; so can scripts."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx

from virtfleet.config import ADMIN_TOKEN_FILE, DEFAULT_URL, Settings, is_loopback
from virtfleet.private_files import create_private


def default_token(url: str, data_dir: Path | None = None) -> str | None:
    """The credentials a command on this host uses when none are given: $VIRTFLEET_TOKEN, else, for a server on
    loopback, the admin token `serve` keeps in its data directory (readable only by whoever owns the host)."""
    if token := os.environ.get("VIRTFLEET_TOKEN", "").strip():
        return token
    if not is_loopback(urlsplit(url).hostname or ""):
        return None
    path = (data_dir or Settings.from_env().data_dir) / ADMIN_TOKEN_FILE
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


class Client:
    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 30.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=f"{self.base_url}/api/v1", timeout=timeout)
        self.use_token(token)

    def use_token(self, token: str | None) -> None:
        """Send `Authorization: Bearer <token>` from now on (None: send no credentials)."""
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        else:
            self._http.headers.pop("Authorization", None)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(0, "unreachable", f"cannot reach virtfleet at {self.base_url} ({error}); "
                           "is `virtfleet serve` running?") from None
        if response.is_error:
            self._raise(response)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code == 204:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    @staticmethod
    def _raise(response: httpx.Response) -> NoReturn:
        try:
            body = response.json()
            code, message = body["error"]["code"], body["error"]["message"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(response.status_code, "http_error",
                           f"HTTP {response.status_code}: {response.text[:200]}") from None
        raise ApiError(response.status_code, code, message, body)

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
            with self._http.stream("GET", path, timeout=None) as response:
                if response.is_error:
                    response.read()
                    self._raise(response)
                total = int(response.headers.get("content-length", 0))
                done = 0
                with os.fdopen(create_private(partial), "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            partial.replace(dest)
        except httpx.TransportError as error:
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
            with self._http.stream("GET", "/events", timeout=httpx.Timeout(30.0, read=EVENTS_READ_TIMEOUT)) as response:
                if response.is_error:
                    response.read()
                    self._raise(response)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as error:
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
