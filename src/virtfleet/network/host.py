"""Host plumbing for virtfleet networks: bridges, taps, nftables NAT/isolation, subnet checks and MAC addresses.

Every ensure_* function is idempotent: after a daemon restart the daemon simply calls them again, which re-adopts
what is already there and repairs what is missing. Everything we create is named with a "vf" prefix (links "vf...",
nft tables "vf_..."), and we refuse to change or delete anything without it, so a shared host is safe.
All commands act on the caller's network namespace (tests run them under `ip netns exec`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtfleet.errors import DriverError, InvalidSpec
from virtfleet.hostcmd import find_tool, first_line, run_tool
from virtfleet.network.dnsmasq import Dnsmasq, our_dnsmasqs, parse_leases

__all__ = [
    "Dnsmasq",
    "Route",
    "bridge_mac",
    "bridge_name",
    "bridge_problem",
    "check_subnet_free",
    "delete_link",
    "delete_table",
    "ensure_bridge",
    "ensure_isolated",
    "ensure_nat",
    "ensure_tap",
    "generate_mac",
    "host_routes",
    "isolated_script",
    "link_exists",
    "nat_script",
    "our_dnsmasqs",
    "our_links",
    "our_tables",
    "parse_leases",
    "parse_routes",
    "table_name",
    "tap_exists",
    "tap_name",
    "vlan_commands",
]

LINK_PREFIX = "vf"
BRIDGE_PREFIX = "vfbr-"
TAP_PREFIX = "vft"
TABLE_PREFIX = "vf_"
APT_HINT = "install it with: apt-get install iproute2 nftables"
COMMAND_TIMEOUT = 30.0  # ip/nft answer in milliseconds; a hang means something is badly wrong on the host
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")  # per network namespace: /proc/sys/net follows the caller's netns
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # also keeps names safe to quote inside an nft script
_TABLE = re.compile(r"^vf_[A-Za-z0-9_]{1,60}$")
# Route types that describe addresses of this host or of a link, not where traffic goes.
_NOT_ROUTES = {"local", "broadcast", "multicast", "anycast", "throw", "nat"}


# --- names ---------------------------------------------------------------------------------------------------------


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bridge_name(network: str) -> str:
    """A stable bridge name for a network, within Linux's 15-character limit whatever the network is called."""
    return BRIDGE_PREFIX + _hex(network)[:9]


def tap_name(vm_id: str, index: int) -> str:
    return TAP_PREFIX + _hex(f"{vm_id}:{index}")[:10]


def table_name(network: str) -> str:
    return TABLE_PREFIX + _hex(network)[:12]


def bridge_mac(name: str) -> str:
    """A fixed, locally administered address for our bridge: without one Linux copies the lowest port's MAC, and the
    gateway's MAC would change under the guests whenever a VM starts or stops."""
    digest = _hex(f"bridge:{name}")
    return "02:" + ":".join(digest[i:i + 2] for i in range(0, 10, 2))


def generate_mac(vm_id: str, index: int, taken: set[str]) -> str:
    """A stable, locally administered unicast MAC (QEMU's 52:54:00 prefix); the next free one if it is taken."""
    used = {mac.lower() for mac in taken}
    base = int(_hex(f"{vm_id}:{index}")[:6], 16)
    for bump in range(1 << 24):
        value = (base + bump) & 0xFFFFFF
        mac = f"52:54:00:{value >> 16:02x}:{(value >> 8) & 0xFF:02x}:{value & 0xFF:02x}"
        if mac not in used:
            return mac
    raise DriverError("no free MAC address is left under 52:54:00", f"{len(used)} addresses taken")


# --- running tools -------------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    return find_tool(name, missing=f"the network tool {name} is not found", hint=APT_HINT)


def _exec(argv: Sequence[str], what: str, stdin: str | None = None, *,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    # The first stderr line is the cause: nft follows its error line with the script line and a caret marker.
    return run_tool([_tool(argv[0]), *argv[1:]], what=what, timeout=COMMAND_TIMEOUT, stdin=stdin, check=check)


def _run(argv: Sequence[str], what: str, stdin: str | None = None) -> str:
    """Run one command; DriverError(what, the tool's first stderr line) when it fails."""
    return _exec(argv, what, stdin).stdout


def _json(argv: Sequence[str], what: str) -> Any:
    out = _run(argv, what)
    try:
        return json.loads(out) if out.strip() else []
    except json.JSONDecodeError as error:
        raise DriverError(what, f"unreadable JSON from {argv[0]}: {error}") from None


def _links() -> dict[str, dict[str, Any]]:
    """Every link in this namespace by name, with details (kind, bridge settings, master)."""
    return {link["ifname"]: link for link in _json(["ip", "-j", "-d", "link", "show"], "cannot list network links")}


def _kind(link: dict[str, Any]) -> str:
    return str(link.get("linkinfo", {}).get("info_kind", "device"))


def _info_data(link: dict[str, Any]) -> dict[str, Any]:
    data = link.get("linkinfo", {}).get("info_data", {})
    return data if isinstance(data, dict) else {}


# --- validation ----------------------------------------------------------------------------------------------------


def _check_ifname(name: str, field: str) -> None:
    if not _IFNAME.match(name):
        raise InvalidSpec(field, f"{name!r} is not an interface name (1-15 letters, digits, '.', '_' or '-')")


def _check_ours(name: str, field: str) -> None:
    _check_ifname(name, field)
    if not name.startswith(LINK_PREFIX):
        raise InvalidSpec(field, f"{name!r} is not a virtfleet link (ours start with {LINK_PREFIX!r}); not touching it")


def _check_table(table: str) -> None:
    if not _TABLE.match(table):
        raise InvalidSpec("table", f"{table!r} is not a virtfleet nft table (vf_ followed by letters/digits)")


def _subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as error:
        raise InvalidSpec("subnet", f"not an IPv4 subnet: {error}") from None


# --- bridges and taps ----------------------------------------------------------------------------------------------


def ensure_bridge(name: str, gateway_cidr: str | None) -> None:
    """Our bridge, up, with the gateway address (e.g. "10.77.0.1/24") when given, and VLAN filtering when the kernel
    has it (kernels built without CONFIG_BRIDGE_VLAN_FILTERING still get a working untagged bridge)."""
    _check_ours(name, "bridge")
    gateway = None
    if gateway_cidr is not None:
        try:
            gateway = ipaddress.IPv4Interface(gateway_cidr)
        except ValueError as error:
            raise InvalidSpec("gateway", f"not an IPv4 address with a prefix: {error}") from None
        if "/" not in gateway_cidr:
            raise InvalidSpec("gateway", f"{gateway_cidr!r} needs a prefix length, e.g. 10.77.0.1/24")
    link = _links().get(name)
    if link is None:
        # forward_delay 0: no STP on our bridges, so a new port (a VM's tap) forwards at once.
        _run(["ip", "link", "add", name, "address", bridge_mac(name), "type", "bridge", "forward_delay", "0"],
             f"cannot create bridge {name}")
        link = _links().get(name, {})
    elif _kind(link) != "bridge":
        raise DriverError(f"{name} exists but is not a bridge", f"it is a {_kind(link)}")
    if _info_data(link).get("vlan_filtering") != 1:
        what = f"cannot enable VLAN filtering on {name}"
        done = _exec(["ip", "link", "set", name, "type", "bridge", "vlan_filtering", "1"], what, check=False)
        if done.returncode != 0 and "not supported" not in done.stderr:
            raise DriverError(what, first_line(done.stderr))
    if "UP" not in link.get("flags", []):
        _run(["ip", "link", "set", name, "up"], f"cannot bring bridge {name} up")
    if gateway is not None:
        have = {(a.get("local"), a.get("prefixlen")) for a in _addresses(name)}
        if (str(gateway.ip), gateway.network.prefixlen) not in have:
            _run(["ip", "addr", "add", str(gateway), "dev", name], f"cannot add {gateway} to {name}")


def _addresses(name: str) -> list[dict[str, Any]]:
    found = _json(["ip", "-j", "-4", "addr", "show", "dev", name], f"cannot read the addresses of {name}")
    return [addr for link in found for addr in link.get("addr_info", [])]


def delete_link(name: str) -> None:
    """Remove one of our links (bridge, tap); nothing to do when it is already gone."""
    _check_ours(name, "name")
    if name in _links():
        _run(["ip", "link", "del", name], f"cannot delete {name}")


def link_exists(name: str) -> bool:
    """Whether a link of that name exists in this namespace (ours or the host's: a bridge or uplink to check)."""
    _check_ifname(name, "name")
    return name in _links()


def bridge_problem(name: str) -> str | None:
    """Why guests cannot join the host bridge `name` (it is missing, or some other kind of link); None if they can."""
    _check_ifname(name, "bridge")
    link = _links().get(name)
    if link is None:
        return f"there is no interface {name} on this host"
    if _kind(link) != "bridge":
        return f"{name} is a {_kind(link)}, not a bridge: guests join a Linux bridge (ip link add NAME type bridge)"
    return None


def tap_exists(name: str) -> bool:
    return link_exists(name)


def vlan_commands(name: str, vlan: int, current: Sequence[int]) -> list[list[str]]:
    """The `bridge vlan` commands that leave port NAME carrying only VLAN `vlan`, untagged towards the guest."""
    commands = [["bridge", "vlan", "add", "dev", name, "vid", str(vlan), "pvid", "untagged"]]
    commands += [["bridge", "vlan", "del", "dev", name, "vid", str(vid)] for vid in sorted(current) if vid != vlan]
    return commands


def _port_vlans(name: str) -> list[int]:
    found = _json(["bridge", "-j", "vlan", "show", "dev", name], f"cannot read the VLANs of {name}")
    return [int(v["vlan"]) for port in found if port.get("ifname") == name for v in port.get("vlans", [])]


def ensure_tap(name: str, bridge: str, *, vlan: int | None = None) -> None:
    """A persistent tap (QEMU opens it by name with script=no), enslaved to `bridge` and up; with `vlan`, the port
    carries only that VLAN, untagged towards the guest. `bridge` may be a host bridge (mode bridge): we only add our
    tap to it."""
    _check_ours(name, "tap")
    _check_ifname(bridge, "bridge")
    if vlan is not None and not 1 <= vlan <= 4094:
        raise InvalidSpec("vlan", f"{vlan} is not a VLAN id (1-4094)")
    links = _links()
    master = links.get(bridge)
    if master is None or _kind(master) != "bridge":
        raise DriverError(f"cannot attach {name}", f"bridge {bridge} does not exist" if master is None
                          else f"{bridge} is a {_kind(master)}, not a bridge")
    if vlan is not None and _info_data(master).get("vlan_filtering") != 1:
        # Checked before creating anything: a tagged NIC on a bridge that ignores tags would silently leak across VLANs.
        raise DriverError(f"VLAN {vlan} needs VLAN filtering on bridge {bridge}",
                          "vlan_filtering is off (or the kernel lacks CONFIG_BRIDGE_VLAN_FILTERING)")
    link = links.get(name)
    if link is None:
        _run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], f"cannot create tap {name}")
    elif _kind(link) != "tun":
        raise DriverError(f"{name} exists but is not a tap", f"it is a {_kind(link)}")
    if link is None or link.get("master") != bridge:
        _run(["ip", "link", "set", "dev", name, "master", bridge], f"cannot add {name} to bridge {bridge}")
    if link is None or "UP" not in link.get("flags", []):
        _run(["ip", "link", "set", "dev", name, "up"], f"cannot bring tap {name} up")
    if vlan is not None:
        for argv in vlan_commands(name, vlan, _port_vlans(name)):
            _run(argv, f"cannot set VLAN {vlan} on {name}")


# --- nftables ------------------------------------------------------------------------------------------------------

# Every script starts with "table ...; delete table ...": the first line makes the table exist so the delete cannot
# fail, and nft applies the whole script as one transaction, so re-applying replaces the rules atomically (no window
# without them, no duplicates).


def _replace(table: str) -> list[str]:
    return [f"table inet {table}", f"delete table inet {table}"]


def nat_script(table: str, bridge: str, subnet: str, uplink: str | None) -> str:
    """The nft script for a NAT network: masquerade what leaves the subnet, let the bridge out and replies back in."""
    _check_table(table)
    _check_ifname(bridge, "bridge")
    if uplink is not None:
        _check_ifname(uplink, "uplink")
    net = _subnet(subnet)
    out = f' oifname "{uplink}"' if uplink else ""
    forward = [
        # Bridged traffic between guests can pass this hook too (br_netfilter); it must never be dropped here.
        f'iifname "{bridge}" oifname "{bridge}" accept',
        f'iifname "{bridge}"{out} accept',
        # With an uplink named, guests reach the world only through it, not the host's other networks.
        *([f'iifname "{bridge}" drop'] if uplink else []),
        f'oifname "{bridge}" ct state established,related accept',
        f'oifname "{bridge}" drop',
    ]
    return _script(table, [
        "chain postrouting {",
        "  type nat hook postrouting priority srcnat; policy accept;",
        f"  ip saddr {net} ip daddr != {net}{out} masquerade",
        "}",
        "chain forward {",
        "  type filter hook forward priority filter; policy accept;",
        *(f"  {rule}" for rule in forward),
        "}",
    ])


def isolated_script(table: str, bridge: str) -> str:
    """The nft script for an isolated network: nothing is routed into or out of the bridge. Guests still reach each
    other (bridged, not routed) and the host itself (input, not forward: DHCP and DNS on the gateway)."""
    _check_table(table)
    _check_ifname(bridge, "bridge")
    return _script(table, [
        "chain forward {",
        "  type filter hook forward priority filter; policy accept;",
        f'  iifname "{bridge}" oifname "{bridge}" accept',
        f'  iifname "{bridge}" drop',
        f'  oifname "{bridge}" drop',
        "}",
    ])


def _script(table: str, body: list[str]) -> str:
    return "\n".join([*_replace(table), f"table inet {table} {{", *(f"  {line}" for line in body), "}", ""])


def ensure_nat(table: str, bridge: str, subnet: str, uplink: str | None) -> None:
    """Masquerade the subnet out of the host (out of `uplink` only, when given) and turn on IPv4 forwarding."""
    _run(["nft", "-f", "-"], f"cannot apply the NAT rules of {table}", stdin=nat_script(table, bridge, subnet, uplink))
    # Rules first, then forwarding, so nothing is routed before the rules say how. ip_forward is per netns.
    try:
        if IP_FORWARD.read_text().strip() != "1":
            IP_FORWARD.write_text("1\n")
    except OSError as error:
        raise DriverError("cannot enable IPv4 forwarding", f"{IP_FORWARD}: {error.strerror}") from None


def ensure_isolated(table: str, bridge: str) -> None:
    _run(["nft", "-f", "-"], f"cannot apply the isolation rules of {table}", stdin=isolated_script(table, bridge))


def delete_table(table: str) -> None:
    """Remove one of our nft tables; nothing to do when it is already gone."""
    _check_table(table)
    _run(["nft", "-f", "-"], f"cannot delete nft table {table}", stdin="\n".join([*_replace(table), ""]))


# --- routes and subnets --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    network: ipaddress.IPv4Network
    gateway: str | None
    dev: str | None
    table: str

    def describe(self) -> str:
        where = " ".join(part for part in (f"via {self.gateway}" if self.gateway else "",
                                           f"dev {self.dev}" if self.dev else "") if part)
        return f"host route {where or 'without a device'}" + (f" in table {self.table}" if self.table != "main" else "")


def parse_routes(text: str) -> list[Route]:
    """Routes from `ip -j -4 route show table all`, without the local/broadcast entries the kernel adds for each
    address (those say "this host", not "this way"). The default route stays in: callers decide about it."""
    routes = []
    for entry in json.loads(text or "[]"):
        if entry.get("type", "unicast") in _NOT_ROUTES:
            continue
        dst = entry.get("dst", "")
        try:
            network = ipaddress.IPv4Network("0.0.0.0/0" if dst == "default" else dst, strict=False)
        except ValueError:
            continue  # not IPv4 (the command asks for -4, but a sample or an odd entry may differ)
        routes.append(Route(network, entry.get("gateway"), entry.get("dev"), str(entry.get("table", "main"))))
    return routes


def _host_routes() -> list[Route]:
    return parse_routes(_run(["ip", "-j", "-4", "route", "show", "table", "all"], "cannot list the host's routes"))


def host_routes() -> list[ipaddress.IPv4Network]:
    return [route.network for route in _host_routes()]


def check_subnet_free(subnet: str, existing: list[str], *, routes: list[Route] | None = None) -> None:
    """InvalidSpec("subnet", ...) when `subnet` overlaps another virtfleet network's subnet or a host route (the
    default route aside: it covers everything). `routes` defaults to the host's current routes."""
    net = _subnet(subnet)
    for other in existing:
        other_net = ipaddress.IPv4Network(other, strict=False)
        if net.overlaps(other_net):
            raise InvalidSpec("subnet", f"{net} overlaps {other_net} (another virtfleet network)")
    for route in _host_routes() if routes is None else routes:
        if route.network.prefixlen > 0 and net.overlaps(route.network):
            raise InvalidSpec("subnet", f"{net} overlaps {route.network} ({route.describe()})")


# --- what we left behind (tests and cleanup) -----------------------------------------------------------------------


def our_links() -> list[str]:
    return sorted(name for name in _links() if name.startswith(LINK_PREFIX))


def our_tables() -> list[str]:
    found = _json(["nft", "-j", "list", "tables"], "cannot list nft tables")
    items = found.get("nftables", []) if isinstance(found, dict) else []
    return sorted(item["table"]["name"] for item in items
                  if "table" in item and str(item["table"].get("name", "")).startswith(TABLE_PREFIX))
