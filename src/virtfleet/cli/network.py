"""`virtfleet network ...`"""

from __future__ import annotations

from typing import Any

import typer

from virtfleet.cli.output import JsonOption, out, run, table

app = typer.Typer(help="Networks: nat, isolated, bridge (a host bridge) or user (QEMU user mode).",
                  no_args_is_help=True)


def _rows(items: list[dict[str, Any]]) -> None:
    table(["NAME", "MODE", "SUBNET", "BRIDGE", "VLAN", "UPLINK"], [
        [n["name"], n["spec"]["mode"], n["spec"]["subnet"] or "-", n["bridge"] or "-",
         str(n["spec"]["vlan"] or "-"), n["spec"]["uplink"] or "-"] for n in items
    ])


@app.command("create")
def create(
    name: str,
    mode: str = typer.Option("nat", help="nat, isolated, bridge or user."),
    subnet: str | None = typer.Option(None, help="nat/isolated: an IPv4 subnet, e.g. 10.77.0.0/24."),
    dhcp_range: str | None = typer.Option(None, "--dhcp-range", help="FIRST-LAST (default: upper half)."),
    vlan: int | None = typer.Option(None, help="Tag the VMs' taps with this VLAN id (1-4094)."),
    uplink: str | None = typer.Option(None, help="nat: the host interface traffic leaves by."),
    bridge: str | None = typer.Option(None, help="bridge: the existing host bridge to join."),
    as_json: bool = JsonOption,
) -> None:
    """Create a network."""
    body = {"name": name, "mode": mode, "subnet": subnet, "dhcp_range": dhcp_range, "vlan": vlan,
            "uplink": uplink, "bridge": bridge}
    run(as_json, lambda c: c.post("/networks", json={k: v for k, v in body.items() if v is not None}),
        lambda n: _rows([n]))


@app.command("list")
def list_(as_json: bool = JsonOption) -> None:
    """List networks."""
    run(as_json, lambda c: c.get("/networks"), _rows)


@app.command("show")
def show(name: str, as_json: bool = JsonOption) -> None:
    """Show one network."""
    run(as_json, lambda c: c.get(f"/networks/{name}"), lambda n: _rows([n]))


@app.command("delete")
def delete(name: str, as_json: bool = JsonOption) -> None:
    """Delete a network (refused while NICs use it)."""
    run(as_json, lambda c: c.delete(f"/networks/{name}") or {"deleted": name},
        lambda _r: out.print(f"deleted network {name}"))


@app.command("leases")
def leases(name: str, as_json: bool = JsonOption) -> None:
    """DHCP leases handed out on a nat or isolated network."""
    run(as_json, lambda c: c.get(f"/networks/{name}/leases"), lambda items: table(
        ["MAC", "IP", "HOSTNAME", "EXPIRES"],
        [[lease["mac"], lease["ip"], lease["hostname"] or "-", lease["expires"] or "-"] for lease in items]))
