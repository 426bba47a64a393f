"""Host network plumbing for real, entirely inside network namespaces this test creates.

Namespace "h" plays the host: our bridge, dnsmasq and nft table, plus a veth "uplink" to namespace "o" (the outside
world, 10.98.0.0/24, the host's default route). Taps carry no traffic without a QEMU, so the "guests" are namespaces
g1/g2 joined to the bridge by veth pairs, getting addresses with busybox udhcpc. Nothing is sent outside these
namespaces, and nothing outside them is changed. Root only; needs iproute2, nftables, dnsmasq-base, busybox.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtfleet.network.host import Dnsmasq, bridge_name, our_dnsmasqs, table_name, tap_name

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not all(shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
                               for tool in ("ip", "nft", "dnsmasq", "busybox")),
                       reason="needs iproute2, nftables, dnsmasq-base and busybox"),
]

NETWORK = "testnet"
BRIDGE = bridge_name(NETWORK)
TABLE = table_name(NETWORK)
SUBNET = "10.99.0.0/24"
GATEWAY = "10.99.0.1"
OUTSIDE = "10.98.0.2"
UPLINK_ADDRESS = "10.98.0.1"
# udhcpc hands the lease to a script in its environment; this one only sets the address and the default route.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "$router" dev "$interface"
    ;;
esac
exit 0
"""
# Counts what reaches the outside namespace, by source: the host's uplink address (masqueraded) or a guest's own.
OBSERVER = f"""table inet obs {{
  chain input {{
    type filter hook input priority filter; policy accept;
    ip saddr {UPLINK_ADDRESS} icmp type echo-request counter
    ip saddr {SUBNET} counter
  }}
}}
"""


def run(*argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


class Namespaces:
    """Network namespaces named vftest-<random>-<role>, removed (with our dnsmasqs) at the end."""

    def __init__(self, state: Path) -> None:
        self.token = secrets.token_hex(3)
        self.state = state
        self.names: list[str] = []

    def add(self, role: str) -> str:
        name = f"vftest-{self.token}-{role}"
        run("ip", "netns", "add", name)
        self.names.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def remove(self) -> None:
        for pid in our_dnsmasqs(self.state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for name in self.names:
            run("ip", "netns", "del", name, check=False)  # takes its links (and the veth peers) with it


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Namespaces]:
    spaces = Namespaces(tmp_path / "state")
    try:
        yield spaces
    finally:
        spaces.remove()


def in_ns(ns: str, code: str) -> Any:
    """Run Python in namespace `ns` (host.py acts on the caller's namespace) and return its `result`, as JSON."""
    program = "\n".join([
        "import json",
        "from pathlib import Path",
        "from virtfleet.errors import VirtfleetError",
        "from virtfleet.network.host import *",
        "result = None",
        code,
        "print(json.dumps(result))",
    ])
    done = run("ip", "netns", "exec", ns, sys.executable, "-c", program)
    return json.loads(done.stdout.strip().splitlines()[-1])


def ping(ns: str, address: str) -> bool:
    return run("ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


def connect_guest(host: str, guest: str, port: str) -> None:
    """A "guest": a veth pair with one end (eth0) in its namespace and the other on the host's bridge."""
    run("ip", "-n", host, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", guest)
    run("ip", "-n", host, "link", "set", port, "master", BRIDGE, "up")
    run("ip", "-n", guest, "link", "set", "eth0", "up")


def dhcp(guests: dict[str, str], script: Path, log: Path) -> None:
    """udhcpc in every guest at once (dnsmasq pings a new address for a few seconds before offering it)."""
    procs = {name: subprocess.Popen(
        ["ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "6", "-T", "3",
         "-s", str(script), "-x", f"hostname:{name}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, ns in guests.items()}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, f"{name} got no lease:\n{out}\ndnsmasq's log:\n{log.read_text()[-3000:]}"


def address(ns: str) -> str:
    found = json.loads(run("ip", "-n", ns, "-j", "-4", "addr", "show", "dev", "eth0").stdout)
    return str(found[0]["addr_info"][0]["local"])


def counters(ns: str) -> list[int]:
    listing = json.loads(run("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "obs").stdout)
    return [expr["counter"]["packets"] for item in listing["nftables"] if "rule" in item
            for expr in item["rule"]["expr"] if "counter" in expr]


def rules(ns: str) -> str:
    return run("ip", "netns", "exec", ns, "nft", "list", "table", "inet", TABLE).stdout


def test_bridge_dhcp_nat_isolation_readoption_and_cleanup(netns: Namespaces, tmp_path: Path) -> None:
    host, g1, g2, outside = (netns.add(role) for role in ("h", "g1", "g2", "o"))
    state = netns.state
    dnsmasq_log = state / f"{NETWORK}.dnsmasq.log"
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)

    # The host side, twice: the second round must change nothing (that is how a restarted daemon re-adopts).
    start = (f"ensure_bridge({BRIDGE!r}, '{GATEWAY}/24')\n"
             f"result = Dnsmasq({NETWORK!r}, Path({str(state)!r})).ensure_running("
             f"{BRIDGE!r}, {GATEWAY!r}, '10.99.0.100', '10.99.0.199', 24)")
    pid = in_ns(host, start)
    assert in_ns(host, start) == pid
    addrs = json.loads(run("ip", "-n", host, "-j", "-4", "addr", "show", "dev", BRIDGE).stdout)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [(GATEWAY, 24)]
    assert in_ns(host, "result = our_links()") == [BRIDGE]

    # Two guests get leases, see each other and the gateway.
    connect_guest(host, g1, "vethg1")
    connect_guest(host, g2, "vethg2")
    dhcp({"guest1": g1, "guest2": g2}, script, dnsmasq_log)
    ip1, ip2 = address(g1), address(g2)
    leases = {lease.hostname: lease for lease in Dnsmasq(NETWORK, state).leases()}
    assert set(leases) == {"guest1", "guest2"}
    assert (leases["guest1"].ip, leases["guest2"].ip) == (ip1, ip2)
    assert leases["guest1"].expires is not None
    assert ping(g1, ip2) and ping(g2, ip1) and ping(g1, GATEWAY)

    # The outside world: a veth uplink from the host to namespace o, which has no route back to the guests' subnet.
    run("ip", "-n", host, "link", "add", "upl0", "type", "veth", "peer", "name", "eth0", "netns", outside)
    run("ip", "-n", host, "addr", "add", f"{UPLINK_ADDRESS}/24", "dev", "upl0")
    run("ip", "-n", host, "link", "set", "upl0", "up")
    run("ip", "-n", host, "route", "add", "default", "via", OUTSIDE)
    run("ip", "-n", outside, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
    run("ip", "-n", outside, "link", "set", "eth0", "up")
    run("ip", "netns", "exec", outside, "nft", "-f", "-", stdin=OBSERVER)
    assert not ping(g1, OUTSIDE)  # no forwarding yet (a new namespace starts with ip_forward=0)

    nat = f"ensure_nat({TABLE!r}, {BRIDGE!r}, {SUBNET!r}, 'upl0')"
    in_ns(host, nat)
    assert run("ip", "netns", "exec", host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert ping(g1, OUTSIDE) and ping(g2, OUTSIDE)
    masqueraded, unmasqueraded = counters(outside)
    assert masqueraded >= 2 and unmasqueraded == 0, "the outside must only ever see the host's uplink address"
    listing = rules(host)
    in_ns(host, nat)
    assert rules(host) == listing and listing.count("masquerade") == 1
    assert ping(g1, OUTSIDE)

    # Isolated: nothing routed out, but the guests still reach each other, the gateway and dnsmasq.
    in_ns(host, f"ensure_isolated({TABLE!r}, {BRIDGE!r})")
    assert "masquerade" not in rules(host)
    assert not ping(g1, OUTSIDE)
    assert ping(g1, ip2) and ping(g2, GATEWAY)
    dhcp({"guest2": g2}, script, dnsmasq_log)  # renewing a known lease: answered at once
    assert address(g2) == ip2
    in_ns(host, f"ensure_isolated({TABLE!r}, {BRIDGE!r})")
    assert not ping(g1, OUTSIDE) and ping(g1, ip2)
    assert in_ns(host, "result = our_tables()") == [TABLE]
    in_ns(host, nat)  # and back, atomically
    assert ping(g1, OUTSIDE)

    # Re-adoption: a new object (a restarted daemon) finds the running dnsmasq, even without its pidfile.
    assert Dnsmasq(NETWORK, state).running() == pid
    assert our_dnsmasqs(state) == [pid]
    (state / f"{NETWORK}.dnsmasq.pid").unlink()
    assert Dnsmasq(NETWORK, state).running() == pid
    assert in_ns(host, start) == pid
    # A changed configuration restarts it: one dnsmasq, a new pid.
    changed = start.replace("'10.99.0.199'", "'10.99.0.150'")
    new_pid = in_ns(host, changed)
    assert new_pid != pid and our_dnsmasqs(state) == [new_pid]

    # Deleting leaves nothing of ours in the host namespace.
    left = in_ns(host, "\n".join([
        f"Dnsmasq({NETWORK!r}, Path({str(state)!r})).stop(purge=True)",
        f"delete_table({TABLE!r})",
        f"delete_link({BRIDGE!r})",
        f"delete_table({TABLE!r}); delete_link({BRIDGE!r})",  # again: already gone is fine
        "result = [our_links(), our_tables()]",
    ]))
    assert left == [[], []]
    assert our_dnsmasqs(state) == []
    assert sorted(path.name for path in state.iterdir()) == []
    assert not ping(g1, ip2)  # the bridge is gone


def test_taps_on_a_bridge(netns: Namespaces) -> None:
    host = netns.add("h")
    tap, tagged = tap_name("vm-1", 0), tap_name("vm-1", 1)
    in_ns(host, f"ensure_bridge({BRIDGE!r}, None)\nensure_tap({tap!r}, {BRIDGE!r})\nensure_tap({tap!r}, {BRIDGE!r})")
    link = json.loads(run("ip", "-n", host, "-j", "-d", "link", "show", "dev", tap).stdout)[0]
    assert link["linkinfo"]["info_kind"] == "tun" and link["master"] == BRIDGE and "UP" in link["flags"]
    assert link["linkinfo"]["info_data"]["type"] == "tap" and link["linkinfo"]["info_data"]["pi"] is False
    assert in_ns(host, f"result = [tap_exists({tap!r}), tap_exists({tagged!r}), link_exists('lo')]") == [
        True, False, True]

    # A tagged NIC needs VLAN filtering; kernels without CONFIG_BRIDGE_VLAN_FILTERING refuse before creating anything.
    filtering = json.loads(run("ip", "-n", host, "-j", "-d", "link", "show", "dev", BRIDGE).stdout)[0][
        "linkinfo"]["info_data"]["vlan_filtering"]
    outcome = in_ns(host, "\n".join([
        "try:",
        f"    ensure_tap({tagged!r}, {BRIDGE!r}, vlan=10)",
        f"    ensure_tap({tagged!r}, {BRIDGE!r}, vlan=10)",
        "    result = 'ok'",
        "except VirtfleetError as error:",
        "    result = error.message",
    ]))
    if filtering:
        assert outcome == "ok"
        vlans = json.loads(run("ip", "netns", "exec", host, "bridge", "-j", "vlan", "show", "dev", tagged).stdout)
        assert [(v["vlan"], sorted(v.get("flags", []))) for v in vlans[0]["vlans"]] == [
            (10, ["Egress Untagged", "PVID"])]
    else:
        assert "needs VLAN filtering" in outcome
        assert in_ns(host, f"result = tap_exists({tagged!r})") is False

    errors = in_ns(host, "\n".join([
        "result = []",
        f"for call in (lambda: ensure_tap('vftnobridge', 'vfbr-missing'), lambda: ensure_bridge({tap!r}, None)):",
        "    try:",
        "        call()",
        "    except VirtfleetError as error:",
        "        result.append(error.message)",
    ]))
    assert errors == ["cannot attach vftnobridge: bridge vfbr-missing does not exist",
                      f"{tap} exists but is not a bridge: it is a tun"]

    left = in_ns(host, f"delete_link({tap!r})\ndelete_link({tagged!r})\ndelete_link({BRIDGE!r})\nresult = our_links()")
    assert left == []
