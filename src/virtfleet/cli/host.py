"""`virtfleet host`: this host, and `host adopt`: taking over the VMs other tools made on it."""

from __future__ import annotations

from typing import Any

import typer

from virtfleet.cli.output import JsonOption, out, run, run_job, table
from virtfleet.cli.v2v import parse_network_map

app = typer.Typer(help="This host: show it, adopt the VMs other tools made on it.", invoke_without_command=True)


@app.callback()
def host_info(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """Show this host: CPUs, memory, hypervisor, whether KVM is usable, and what its driver can do."""
    if ctx.invoked_subcommand is not None:
        return

    def render(info: dict[str, Any]) -> None:
        for key in ("hostname", "cpus", "memory_mib", "driver", "hypervisor", "kvm_usable", "kvm_reason"):
            out.print(f"[bold]{key + ':':<14}[/bold]{info[key]}")
        capabilities: dict[str, Any] = info["capabilities"]
        flags = {name: value for name, value in capabilities.items() if isinstance(value, bool)}
        rows = {"capabilities:": [name for name, able in flags.items() if able],
                "lacks:": [name for name, able in flags.items() if not able],
                "machines:": capabilities["machines"]}
        for label, names in rows.items():
            out.print(f"[bold]{label:<14}[/bold]{', '.join(names) or '-'}", highlight=False)

    run(as_json, lambda c: c.get("/host"), render)


def _layers(disk: dict[str, Any]) -> str:
    return " <- ".join(f"{layer['volume']}{'' if layer['new'] else ' (a volume already)'}"
                       for layer in disk["layers"])


def show_plans(plans: list[dict[str, Any]]) -> None:
    if not plans:
        out.print("no foreign domains: every domain on this host is virtfleet's")
        return
    table(["DOMAIN", "STATE", "VM", "DISKS (registered in place)", "ADOPTABLE"], [
        [p["domain"], p["state"], p["vm"], "; ".join(f"{d['label']}: {_layers(d)}" for d in p["disks"]) or "-",
         "yes" if p["adoptable"] else "[red]no[/red]"] for p in plans])
    for plan in plans:
        for warning in plan["warnings"]:
            out.print(f"[yellow]![/yellow] {plan['domain']}: {warning}", soft_wrap=True)
        for problem in plan["problems"]:
            out.print(f"[red]x[/red] {plan['domain']}: {problem}", soft_wrap=True)


@app.command("adopt")
def adopt(
    names: list[str] = typer.Argument(None, help="Foreign domains to take over; none: list the adoptable ones."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plans; change nothing."),
    network_map: list[str] = typer.Option([], "--network-map", help="SOURCE=NETWORK (repeat; '*=NET' for the rest)."),
    as_json: bool = JsonOption,
) -> None:
    """Take over libvirt domains virtfleet does not manage yet (made by virt-manager, oVirt's VDSM, virsh): their
    disk files become volumes of the pools they lie in (no copy), running ones keep running."""
    mapping = parse_network_map(network_map)
    if not names:
        if not mapping:
            run(as_json, lambda c: c.get("/host/foreign-domains"), show_plans)
            return
        listed: list[dict[str, Any]] = run(False, lambda c: c.get("/host/foreign-domains"))
        names, dry_run = [plan["domain"] for plan in listed], True  # the listing, planned under this mapping
        if not names:
            run(as_json, lambda c: [], show_plans)
            return
    body = {"domains": names, "network_map": mapping, "dry_run": dry_run}
    if dry_run:
        run(as_json, lambda c: c.post("/host/adopt", json=body), show_plans)
        return
    run_job(as_json, lambda c: c.post("/host/adopt", json=body))
