"""Console over WebSocket, console history, images built as jobs."""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect

from tests.functional.conftest import Api


def test_console_round_trip_and_single_client(api: Api) -> None:
    api.create("c")
    api.run("c", "start")
    with api.client.websocket_connect("/api/v1/vms/c/console") as ws:
        assert ws.receive_json() == {"type": "attached", "vm": "c"}
        ws.send_bytes(b"hello console\n")
        assert ws.receive_bytes() == b"hello console\n"
        with api.client.websocket_connect("/api/v1/vms/c/console") as second:
            with pytest.raises(WebSocketDisconnect) as refused:
                second.receive_json()
            assert refused.value.code == 4409
    assert "hello console" in api.client.get("/api/v1/vms/c/logs").text


def test_console_refused_on_a_stopped_vm(api: Api) -> None:
    api.create("off")
    with api.client.websocket_connect("/api/v1/vms/off/console") as ws, pytest.raises(WebSocketDisconnect) as refused:
        ws.receive_json()
    assert refused.value.code == 4409 and "it is stopped" in refused.value.reason


def test_image_build_runs_as_a_job(api: Api) -> None:
    images = api.client.get("/api/v1/images").json()
    assert [i["name"] for i in images] == ["tiny"]
    response = api.client.post("/api/v1/images/tiny/build")
    assert response.status_code == 202
    job = api.wait(response.json())
    assert job["status"] == "succeeded" and "0.0.0-fake" in job["message"]
    assert api.client.get("/api/v1/images/tiny").json()["built"] is True
    assert api.client.post("/api/v1/images/windows/build").status_code == 404
