"""Request bodies are capped before anything reads them, authentication included; volume uploads stream past it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from tests.functional.conftest import Api, LiveServer
from virtfleet.api.limits import MAX_BODY_BYTES

MiB = 1 << 20
HUGE = 24 * MiB


def test_a_huge_declared_body_is_refused_before_it_is_read(api: Api) -> None:
    with api.anonymous() as client:
        response = client.post("/api/v1/auth/login", content=b"{" + b" " * HUGE + b"}",
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "too_large" and str(MAX_BODY_BYTES) in error["message"]
        # Before authentication: an anonymous change to a protected route gets the same answer, not a 401.
        assert client.post("/api/v1/vms", content=b"x" * (MAX_BODY_BYTES + 1)).status_code == 413
    # A body within the cap goes through as before.
    assert api.client.post("/api/v1/vms", json={"name": "ok"}).status_code == 201


def test_a_chunked_body_is_cut_off_at_the_cap(api: Api) -> None:
    """No Content-Length to judge by: the server stops reading once the body passes the cap."""
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"username": "admin", "password": "'
        for _ in range(HUGE // MiB):
            sent.append(MiB)
            yield b"x" * MiB

    async def post() -> httpx.Response:
        # In the app's own event loop, through ASGI: the body reaches the app chunk by chunk, as from a socket.
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post("/api/v1/auth/login", content=chunks(),
                                     headers={"Content-Type": "application/json"})

    assert api.client.portal is not None
    response = api.client.portal.call(post)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    assert sum(sent) <= MAX_BODY_BYTES + MiB  # what was pulled before the cut, not 24 MiB


def test_volume_uploads_stream_past_the_cap(api: Api) -> None:
    data = bytes(range(256)) * (3 * MiB // 256)
    response = api.client.put("/api/v1/pools/default/volumes/big/data", content=data, params={"format": "raw"})
    assert response.status_code == 201, response.text
    assert response.json()["size"] == len(data)


def test_a_live_server_answers_a_huge_login_at_once(live_server: LiveServer) -> None:
    """Over a real socket: 413 as soon as the headers are in, the connection closed, the body never wanted."""
    with httpx.Client(base_url=live_server.url, timeout=10) as client:
        response = client.post("/api/v1/auth/login", content=b"{" + b" " * HUGE + b"}",
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.headers.get("connection") == "close"
    assert response.json()["error"]["code"] == "too_large"
