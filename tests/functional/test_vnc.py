"""The graphical console: a VNC (RFB) stream over a WebSocket, for VMs created with display 'vnc'."""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect

from tests.functional.conftest import Api
from tests.rfb import handshake
from virtfleet.drivers.fake import FAKE_SCREEN


def test_vnc_websocket_carries_the_rfb_stream_to_several_clients(api: Api) -> None:
    created = api.create("desk", machine="q35", display="vnc")
    assert created["spec"]["display"] == "vnc"
    api.run("desk", "start")
    with api.client.websocket_connect("/api/v1/vms/desk/vnc") as ws:
        with api.client.websocket_connect("/api/v1/vms/desk/vnc", subprotocols=["binary"]) as second:
            assert second.accepted_subprotocol == "binary"  # what older noVNC releases insist on
            init = handshake(second.receive_bytes, second.send_bytes)
            assert (init.width, init.height, init.name) == (*FAKE_SCREEN, "desk")
        assert ws.accepted_subprotocol is None
        # No text frame before the banner (unlike /console): noVNC reads the stream from its first byte.
        init = handshake(ws.receive_bytes, ws.send_bytes)
        assert init.version == "RFB 003.008" and init.bits_per_pixel == 32


def refusal(api: Api, ref: str) -> WebSocketDisconnect:
    with api.client.websocket_connect(f"/api/v1/vms/{ref}/vnc") as ws, pytest.raises(WebSocketDisconnect) as refused:
        ws.receive_bytes()
    return refused.value


def test_vnc_refused_when_stopped_without_display_or_unknown(api: Api) -> None:
    api.create("off", machine="q35", display="vnc")
    stopped = refusal(api, "off")
    assert stopped.code == 4409 and "it is stopped" in stopped.reason

    assert api.create("plain", machine="q35")["spec"]["display"] == "none"
    api.run("plain", "start")
    plain = refusal(api, "plain")
    assert plain.code == 4409 and "no graphical console" in plain.reason and "display 'none'" in plain.reason

    assert refusal(api, "ghost").code == 4404


def test_vnc_needs_an_operator(api: Api) -> None:
    api.create("desk", machine="q35", display="vnc")
    api.run("desk", "start")
    viewer = api.headers_for("viewer")
    with api.client.websocket_connect("/api/v1/vms/desk/vnc", headers=viewer) as ws, \
            pytest.raises(WebSocketDisconnect) as refused:
        ws.receive_bytes()
    assert refused.value.code == 4403
    operator = api.headers_for("operator")
    with api.client.websocket_connect("/api/v1/vms/desk/vnc", headers=operator) as ws:
        assert handshake(ws.receive_bytes, ws.send_bytes).name == "desk"
