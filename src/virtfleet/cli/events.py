"""`virtfleet events`: follow the server's event stream."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any

import typer

from virtfleet.cli.output import fail, state
from virtfleet.client import ApiError


def _line(message: dict[str, Any], names: dict[str, str]) -> str:
    """One readable line; VMs by name (learned from GET /vms and from the stream), else a short id."""
    kind, data = message["event"], message["data"]

    def vm(vm_id: str) -> str:
        return names.get(vm_id, vm_id[:8])

    if kind == "vm":
        names[data["id"]] = data["name"]
        text = f"{data['name']} {data['state']} ({data['reason']})"
    elif kind == "vm-deleted":
        text = data["name"]
    elif kind == "vm-event":
        text = f"{vm(data['vm_id'])} {data['kind']}: {data['message']}"
    elif kind == "job":
        target = data["target"] if ":" in data["target"] else vm(data["target"])
        text = f"{data['kind']} {target} {data['status']} {data['progress']}% {data['message']}"
        if data["error"]:
            text += f": {data['error']}"
    else:
        text = json.dumps(data)
    return f"{datetime.now():%H:%M:%S} {kind:<10} {text}"


def events(
    count: int | None = typer.Option(None, "--count", min=1, help="Exit after this many messages."),
    as_json: bool = typer.Option(False, "--json", help='Print each message as one JSON line {"id","event","data"}.'),
) -> None:
    """Follow VM state changes, VM event-log lines and jobs as they happen (Ctrl-C to stop)."""
    client = state.client()
    seen = 0
    try:
        names = {} if as_json else {vm["id"]: vm["name"] for vm in client.get("/vms")}
        with contextlib.closing(client.events()) as stream:
            for message in stream:
                print(json.dumps(message) if as_json else _line(message, names), flush=True)
                seen += 1
                if count is not None and seen >= count:
                    return
    except ApiError as error:
        fail(error.message, as_json=as_json, body=error.body)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        client.close()
    fail("the server ended the event stream", as_json=as_json)
