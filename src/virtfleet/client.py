"""A small typed client for the REST API (httpx). The CLI uses it; so can scripts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from virtfleet.config import DEFAULT_URL


class ApiError(Exception):
    """An error answer from the server, or no answer at all."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {"error": {"code": code, "message": message}}


class Client:
    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=f"{self.base_url}/api/v1", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(0, "unreachable", f"cannot reach virtfleet at {self.base_url} ({error}); "
                           "is `virtfleet serve` running?") from None
        if response.status_code == 204:
            return None
        if response.is_error:
            try:
                body = response.json()
                code, message = body["error"]["code"], body["error"]["message"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(response.status_code, "http_error",
                               f"HTTP {response.status_code}: {response.text[:200]}") from None
            raise ApiError(response.status_code, code, message, body)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None, **params: Any) -> Any:
        return self.request("POST", path, json=json, params={k: v for k, v in params.items() if v is not None})

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params={k: v for k, v in params.items() if v is not None})

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
