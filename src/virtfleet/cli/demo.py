"""`virtfleet demo`: the zero-setup main job. Start a server if none runs, build the tiny image if missing, boot a
VM and show its serial console until the guest is up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import typer

from virtfleet.cli.output import err, fail, out, state
from virtfleet.client import ApiError, Client
from virtfleet.config import Settings
from virtfleet.drivers.base import BOOT_SEPARATOR
from virtfleet.private_files import PRIVATE_FILE, make_private_dir

READY_MARKER = "VIRTFLEET-READY"


def _ensure_server(client: Client, *, as_json: bool) -> None:
    try:
        client.get("/health")
        return
    except ApiError as error:
        if error.status != 0:
            fail(error.message, as_json=as_json)
    settings = Settings.from_env()
    make_private_dir(settings.data_dir)
    log_path = settings.data_dir / "serve.log"
    port = state.url.rsplit(":", 1)[-1].split("/")[0]
    err.print(f"starting `virtfleet serve` in the background (log: {log_path})")
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE), "ab") as log:
        # S603: this Python running `virtfleet serve`, an argument list and no shell.
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "virtfleet", "serve", "--port", port],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=os.environ.copy(),
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.get("/health")
            return
        except ApiError:
            time.sleep(0.2)
    fail(f"the server did not come up within 30 s; see {log_path}", as_json=as_json)


def _wait_job(client: Client, job: dict[str, Any], what: str, *, as_json: bool) -> None:
    with err.status(what) as status:
        job = client.wait_job(job, lambda j: status.update(f"{what}: {j['message']} ({j['progress']}%)"))
    if job["status"] != "succeeded":
        fail(f"{what} failed: {job['error']}", as_json=as_json)


def demo(
    name: str = typer.Option("demo", help="Name of the demo VM."),
    machine: str = typer.Option("microvm", help="microvm (fastest) or q35."),
    timeout: float = typer.Option(180.0, help="Seconds to wait for the guest's readiness line."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the console."),
) -> None:
    """Boot a demo VM from the built-in tiny image and show its console until the guest is up."""
    client = Client(state.url, timeout=60)
    try:
        _ensure_server(client, as_json=as_json)
        client.use_token(state.credentials())  # the server writes the local admin token when it first starts
        host = client.get("/host")
        if not host["kvm_usable"]:
            err.print(f"[yellow]warning:[/yellow] KVM is not usable here ({host['kvm_reason']}); "
                      "VMs run under TCG software emulation, which is much slower")
        if not client.get("/images/tiny")["built"]:
            _wait_job(client, client.post("/images/tiny/build"), "building image tiny", as_json=as_json)
        try:
            vm = client.get(f"/vms/{name}")
        except ApiError as error:
            if error.status != 404:
                raise
            vm = client.create_vm({"name": name, "machine": machine, "memory": "256M", "cpus": 1})
        if vm["state"] in ("stopped", "crashed"):
            _wait_job(client, client.post(f"/vms/{name}/start"), f"starting {name}", as_json=as_json)
        shown = _follow_console(client, name, timeout, echo=not as_json)
        vm = client.get(f"/vms/{name}")
    except ApiError as error:
        fail(error.message, as_json=as_json, body=error.body)
    finally:
        client.close()
    ready = next((line for line in shown.splitlines() if READY_MARKER in line), None)
    if ready is None:
        fail(f"the guest printed no readiness line within {timeout:g}s; see `virtfleet vm logs {name}`",
             as_json=as_json)
    if as_json:
        print(json.dumps({"vm": vm, "ready_line": ready}, indent=2))
        return
    out.print(f"\n[green]{name} is up[/green] ({vm['state']}, accel {vm['accel']}). Next:")
    out.print(f"  virtfleet vm console {name}     # attach (Ctrl-] detaches)")
    out.print(f"  virtfleet vm shutdown {name}    # ACPI power off")
    out.print("  virtfleet vm list")
    out.print(f"  web UI: {state.url.rstrip('/')}/ (first: virtfleet user passwd admin)")


def _follow_console(client: Client, name: str, timeout: float, *, echo: bool) -> str:
    """Print this boot's console output as it grows until the readiness line shows; return what was seen."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history: str = client.get(f"/vms/{name}/logs", max_bytes=1 << 20)
        text = history[history.rfind(BOOT_SEPARATOR):] if BOOT_SEPARATOR in history else history
        if echo and len(text) > len(seen):
            sys.stdout.write(text[len(seen):] if text.startswith(seen) else text)
            sys.stdout.flush()
        seen = text
        if READY_MARKER in text:
            break
        time.sleep(0.2)
    return seen
