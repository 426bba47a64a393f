"""`virtfleet import PATH` and `virtfleet export VM`: VMs from VMware, Hyper-V, Xen, VirtualBox, oVirt and libvirt."""

from __future__ import annotations

from typing import Any

import typer

from virtfleet.cli.output import JsonOption, err, fail, out, print_json, run, run_job, table


def _size(value: int | None) -> str:
    if not value:
        return "-"
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20)):
        if value >= factor:
            return f"{value / factor:.1f}{unit}"
    return f"{value}B"


def parse_network_map(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        source, sep, target = pair.rpartition("=")
        if not sep or not target:
            fail(f"--network-map {pair!r}: use SOURCE=NETWORK (SOURCE '*' for every other network)", as_json=False)
        mapping[source] = target
    return mapping


def show_plan(plan: dict[str, Any]) -> None:
    out.print(f"[bold]{plan['kind']}[/bold] {plan['source']} -> vm [bold]{plan['name']}[/bold]: {plan['cpus']} vCPU "
              f"({plan['sockets']} socket(s) x {plan['cores']} core(s)), {plan['memory_mib']} MiB, "
              f"{plan['firmware']}, machine {plan['machine']}, guest {plan['guest_os'] or 'unknown'} "
              f"({plan['guest_family']})")
    table(["DISK", "SOURCE", "LAYOUT", "SIZE", "CONTROLLER", "BUS", "VOLUME", "CONVERSION"], [
        [d["label"], d["source"], d["layout"], _size(d["size"]), d["controller"], d["bus"],
         f"{d['pool']}/{d['volume']} ({d['format']})" + (" boot" if d["boot"] else ""), d["conversion"]]
        for d in plan["disks"]])
    if plan["nics"]:
        table(["NIC", "MAC", "SOURCE NETWORK", "NETWORK", "MODEL"], [
            [n["label"], n["mac"] or "(new)", n["source_network"] or "-", n["network"] or "[red]unmapped[/red]",
             f"{n['source_model']} -> {n['model']}"] for n in plan["nics"]])
    for warning in plan["warnings"]:
        out.print(f"[yellow]![/yellow] {warning}", soft_wrap=True)
    for problem in plan["problems"]:
        out.print(f"[red]x[/red] {problem}", soft_wrap=True)


def import_vm(
    path: str = typer.Argument(..., help="A .vmx, .ovf, .ova, libvirt .xml, xl/xm .cfg, Hyper-V export directory "
                                         "or .vhdx/.vhd/.vmdk, relative to the server's import directory."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; change nothing."),
    pool: str = typer.Option("default", help="The pool the disks are converted into."),
    format_: str = typer.Option("qcow2", "--format", help="qcow2 or raw volumes."),
    network_map: list[str] = typer.Option([], "--network-map", help="SOURCE=NETWORK (repeat; '*=NET' for the rest)."),
    name: str | None = typer.Option(None, "--name", help="The VM's name (default: the source VM's)."),
    as_json: bool = JsonOption,
) -> None:
    """Import a VM made elsewhere: its CPUs, memory, disks (converted) and NICs (MACs kept), with a report of every
    setting that is not carried over."""
    body = {"path": path, "dry_run": dry_run, "pool": pool, "format": format_,
            "network_map": parse_network_map(network_map), "name": name}
    if dry_run:
        run(as_json, lambda c: c.post("/imports", json=body), show_plan)
        return
    job = run_job(as_json, lambda c: c.post("/imports", json=body), quiet=True)
    report: dict[str, Any] = run(False, lambda c: c.get(f"/imports/{job['id']}"))
    if as_json:
        print_json({"job": job, "report": report})
        return
    out.print(f"imported vm [bold]{report['vm']}[/bold] from {report['source']}")
    table(["DISK", "VOLUME", "FORMAT", "SIZE", "CHECKSUM"], [
        [d["label"], d["volume"], d["format"], _size(d["size"]), d["checksum"] or "-"] for d in report["disks"]])
    for nic in report["nics"]:
        out.print(f"NIC {nic['label']}: {nic['mac'] or '(new MAC)'} on {nic['network']} ({nic['model']})")
    if report["warnings"]:
        err.print(f"[yellow]not carried over or changed ({len(report['warnings'])}):[/yellow]")
        for warning in report["warnings"]:
            err.print(f"  - {warning}", soft_wrap=True)


def export_vm(
    vm: str,
    dest: str = typer.Argument(..., help="A name inside the server's export directory (DEST.ova, or a directory)."),
    format_: str = typer.Option(..., "--format", help="ova, vmx, xl or libvirt."),
    as_json: bool = JsonOption,
) -> None:
    """Export a stopped VM for VMware, VirtualBox, Xen or libvirt: its disks converted and a description."""
    run_job(as_json, lambda c: c.post(f"/vms/{vm}/export", json={"format": format_, "dest": dest}))
