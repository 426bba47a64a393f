"""`virtfleet vm ...`"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from virtfleet.cli.output import JsonOption, fail, out, run, run_job, table
from virtfleet.client import Client

app = typer.Typer(help="Create and run virtual machines.", no_args_is_help=True)

NoWaitOption = typer.Option(False, "--no-wait", help="Return the job at once instead of waiting for it.")


def _spec_from(name: str | None, file: Path | None, flags: dict[str, Any], as_json: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as error:
            fail(f"{file}: {error}", as_json=as_json)
        if not isinstance(loaded, dict):
            fail(f"{file}: expected a mapping of VM fields", as_json=as_json)
        spec.update(loaded)
    spec.update({k: v for k, v in flags.items() if v is not None})
    if name is not None:
        spec["name"] = name
    if "name" not in spec:
        fail("name: give a VM name (argument or 'name:' in the spec file)", as_json=as_json)
    return spec


@app.command()
def create(
    name: str | None = typer.Argument(None, help="VM name (or 'name:' in --file)"),
    file: Path | None = typer.Option(None, "--file", "-f", help="A YAML spec with the same fields."),
    image: str | None = typer.Option(None, help="Guest image (default: tiny)."),
    cpus: int | None = typer.Option(None, help="Virtual CPUs."),
    memory: str | None = typer.Option(None, help="Memory, e.g. 256M or 2G."),
    machine: str | None = typer.Option(None, help="microvm or q35."),
    accel: str | None = typer.Option(None, help="auto, kvm or tcg."),
    kernel_args: str | None = typer.Option(None, "--kernel-args", help="Extra kernel command line."),
    disk: list[str] | None = typer.Option(None, "--disk", help="A disk image inside a storage pool (repeat)."),
    start: bool = typer.Option(False, "--start", help="Start the VM once created."),
    as_json: bool = JsonOption,
) -> None:
    """Define a VM (it stays stopped unless --start)."""
    flags: dict[str, Any] = {"image": image, "cpus": cpus, "memory": memory, "machine": machine,
                             "accel": accel, "kernel_args": kernel_args}
    if disk:
        flags["disks"] = [{"path": p, "format": "raw" if p.endswith((".raw", ".img")) else "qcow2"} for p in disk]
    spec = _spec_from(name, file, flags, as_json)
    # With --json --start, stdout carries one document: the start job (which names the VM).
    vm = run(as_json and not start, lambda c: c.post("/vms", json=spec),
             None if as_json else lambda v: out.print(f"created vm '{v['name']}' ({v['id']})"))
    if start:
        run_job(as_json, lambda c: c.post(f"/vms/{vm['name']}/start"))


def _vm_rows(vms: list[dict[str, Any]]) -> None:
    table(["NAME", "STATE", "CPUS", "MEMORY", "MACHINE", "ACCEL", "IMAGE", "HOST"], [
        [v["name"], v["state"], str(v["spec"]["cpus"]), f"{v['spec']['memory']}M", v["spec"]["machine"],
         v["accel"] or "-", v["spec"]["image"], v["host"]] for v in vms
    ])


@app.command("list")
def list_(as_json: bool = JsonOption) -> None:
    """List VMs."""
    run(as_json, lambda c: c.get("/vms"), _vm_rows)


@app.command()
def show(name: str, events: int = typer.Option(10, help="How many recent events to show."),
         as_json: bool = JsonOption) -> None:
    """Show one VM with its recent events."""

    def fetch(client: Client) -> dict[str, Any]:
        vm: dict[str, Any] = client.get(f"/vms/{name}")
        vm["events"] = client.get(f"/vms/{name}/events", limit=events)
        return vm

    def render(vm: dict[str, Any]) -> None:
        spec = vm["spec"]
        for key, value in [("name", vm["name"]), ("id", vm["id"]), ("state", vm["state"]),
                           ("reason", vm["state_reason"]), ("host", vm["host"]), ("accel", vm["accel"] or "-"),
                           ("cpus", spec["cpus"]), ("memory", f"{spec['memory']}M"), ("machine", spec["machine"]),
                           ("image", spec["image"]), ("kernel args", spec["kernel_args"] or "-"),
                           ("disks", ", ".join(d["path"] for d in spec["disks"]) or "-")]:
            out.print(f"[bold]{key + ':':<13}[/bold]{value}")
        out.print("[bold]events:[/bold]")
        for event in vm["events"]:
            out.print(f"  {event['time'][:19]}  {event['kind']:<16} {event['message']}")

    run(as_json, fetch, render)


def _action(verb: str, help_text: str) -> None:
    def command(name: str, no_wait: bool = NoWaitOption, as_json: bool = JsonOption) -> None:
        run_job(as_json, lambda c: c.post(f"/vms/{name}/{verb}"), wait=not no_wait)

    command.__doc__ = help_text
    app.command(verb)(command)


_action("start", "Start (boot) a stopped VM.")
_action("reboot", "Reset a running VM (hard reboot).")
_action("pause", "Pause a running VM: its vCPUs and clock stop.")
_action("resume", "Resume a paused VM.")


@app.command()
def shutdown(
    name: str,
    timeout: float = typer.Option(60.0, help="Seconds to wait for the guest before forcing it off."),
    no_force: bool = typer.Option(False, "--no-force", help="Fail instead of forcing off after the timeout."),
    no_wait: bool = NoWaitOption,
    as_json: bool = JsonOption,
) -> None:
    """Press the ACPI power button; force the VM off if it is still up after --timeout."""
    run_job(as_json, lambda c: c.post(f"/vms/{name}/shutdown", timeout=timeout, force=not no_force),
            wait=not no_wait)


@app.command()
def stop(
    name: str,
    force: bool = typer.Option(False, "--force", help="Required: power off at once, like pulling the plug."),
    no_wait: bool = NoWaitOption,
    as_json: bool = JsonOption,
) -> None:
    """Power a VM off at once (the guest gets no chance to shut down): needs --force."""
    if not force:
        fail("stop pulls the plug and may lose guest data: add --force, or use `vm shutdown`", as_json=as_json,
             code=2)
    run_job(as_json, lambda c: c.post(f"/vms/{name}/stop"), wait=not no_wait)


@app.command()
def delete(
    name: str,
    force: bool = typer.Option(False, "--force", help="Power the VM off first if it is running."),
    no_wait: bool = NoWaitOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete a VM (refused while it runs, unless --force)."""
    run_job(as_json, lambda c: c.delete(f"/vms/{name}", force=force or None), wait=not no_wait)


@app.command()
def logs(
    name: str,
    max_bytes: int = typer.Option(65536, "--bytes", help="How much of the end of the history to print."),
    as_json: bool = JsonOption,
) -> None:
    """Print the serial console history (kept even while nobody is attached)."""

    def fetch(client: Client) -> Any:
        return client.get(f"/vms/{name}/logs", max_bytes=max_bytes)

    if as_json:
        run(True, lambda c: {"name": name, "log": fetch(c)})
    else:
        run(False, fetch, lambda text: print(text, end=""))


@app.command()
def events(name: str, limit: int = typer.Option(50), as_json: bool = JsonOption) -> None:
    """Print a VM's event log."""
    run(as_json, lambda c: c.get(f"/vms/{name}/events", limit=limit),
        lambda rows: table(["TIME", "EVENT", "MESSAGE"],
                           [[e["time"][:19], e["kind"], e["message"]] for e in rows]))


@app.command()
def console(name: str) -> None:
    """Attach to the serial console (detach with Ctrl-])."""
    from virtfleet.cli.console import attach

    raise typer.Exit(attach(name))
