"""Networks real guests use, all inside network namespaces this test makes (nothing leaves the machine).

    root ns --veth--> "host" ns: virtfleet serve, bridges, taps, nftables, dnsmasq, the guests' QEMUs
                      "host" ns --veth (uplink)--> "outside" ns: 10.98.0.2, stands for the world
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, free_port, qemu_pids
from tests.integration.test_qemu_vm_api import console_run

pytestmark = pytest.mark.integration

OUTSIDE = "10.98.0.2"


def sh(*args: str, netns: str | None = None, check: bool = True) -> str:
    command = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=60).stdout


def links(netns: str) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(sh("ip", "-j", "link", netns=netns))
                  if link["ifname"].startswith("vf"))


def tables(netns: str) -> list[str]:
    return sorted(t["table"]["name"] for t in json.loads(sh("nft", "-j", "list", "tables", netns=netns))["nftables"]
                  if "table" in t and t["table"]["name"].startswith("vf"))


@pytest.fixture
def netns_daemon(short_tmp: Path, tiny_image_dir: Path) -> Iterator[Daemon]:
    tag = secrets.token_hex(3)
    host_ns, outside_ns = f"vfh{tag}", f"vfo{tag}"
    octet = int(tag[:2], 16) % 250 + 1
    try:
        for ns in (host_ns, outside_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
        # The API: a veth from here into the host namespace.
        sh("ip", "link", "add", f"vfa{tag}", "type", "veth", "peer", "name", f"vfb{tag}")
        sh("ip", "link", "set", f"vfb{tag}", "netns", host_ns)
        sh("ip", "addr", "add", f"10.250.{octet}.1/30", "dev", f"vfa{tag}")
        sh("ip", "link", "set", f"vfa{tag}", "up")
        sh("ip", "addr", "add", f"10.250.{octet}.2/30", "dev", f"vfb{tag}", netns=host_ns)
        sh("ip", "link", "set", f"vfb{tag}", "up", netns=host_ns)
        # The uplink: host namespace <-> outside namespace.
        sh("ip", "link", "add", "uplink0", "netns", host_ns, "type", "veth", "peer", "name", "wan0",
           "netns", outside_ns)
        sh("ip", "addr", "add", "10.98.0.1/24", "dev", "uplink0", netns=host_ns)
        sh("ip", "link", "set", "uplink0", "up", netns=host_ns)
        sh("ip", "addr", "add", f"{OUTSIDE}/24", "dev", "wan0", netns=outside_ns)
        sh("ip", "link", "set", "wan0", "up", netns=outside_ns)
        # The outside knows the way back to the isolated subnet, so only virtfleet's rules can stop that traffic.
        sh("ip", "route", "add", "10.78.0.0/24", "via", "10.98.0.1", netns=outside_ns)
        (short_tmp / "images").mkdir()
        (short_tmp / "images" / "tiny").symlink_to(tiny_image_dir)
        daemon = Daemon(short_tmp, port=free_port(), host=f"10.250.{octet}.2", netns=host_ns)
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()
            for pid in qemu_pids(short_tmp):
                subprocess.run(["kill", "-9", str(pid)], check=False)
    finally:
        # Deleting a namespace does not stop what runs in it (dnsmasq, QEMU): a failed test must not leak them.
        for ns in (host_ns, outside_ns):
            pids = subprocess.run(["ip", "netns", "pids", ns], check=False, capture_output=True, text=True).stdout
            for pid in pids.split():
                subprocess.run(["kill", "-9", pid], check=False)
        for ns in (host_ns, outside_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", f"vfa{tag}"], check=False, capture_output=True)


def address(daemon: Daemon, vm: str, interface: str = "eth0") -> str:
    text = daemon.wait_log(vm, rf"virtfleet-net: {interface} [\d.]+/\d+", timeout=60)
    found = re.findall(rf"virtfleet-net: {interface} ([\d.]+)/\d+", text)
    return found[-1]


def pings(daemon: Daemon, vm: str, target: str) -> bool:
    # The verdicts are computed by the guest's shell, so the echo of the typed command can never match them.
    seen = console_run(daemon, vm, f"ping -c 1 -W 2 {target} >/dev/null 2>&1 && echo PING-$((40+2)) || "
                                   "echo PING-$((50+5)); echo pinged-$((3*3))", "pinged-9", timeout=30)
    assert ("PING-42" in seen) != ("PING-55" in seen), seen
    return "PING-42" in seen


def test_nat_isolated_and_user_networks_with_real_guests(netns_daemon: Daemon) -> None:
    daemon, ns = netns_daemon, netns_daemon.netns
    assert ns is not None
    before_links, before_tables = links(ns), tables(ns)

    nat = daemon.call("POST", "/networks", json={"name": "lan", "mode": "nat", "subnet": "10.77.0.0/24",
                                                 "uplink": "uplink0"})
    assert nat.status_code == 201, nat.text
    assert daemon.call("POST", "/networks", json={"name": "lab", "mode": "isolated",
                                                  "subnet": "10.78.0.0/24"}).status_code == 201
    assert daemon.call("POST", "/networks", json={"name": "usr", "mode": "user"}).status_code == 201
    overlap = daemon.call("POST", "/networks", json={"name": "x", "mode": "nat", "subnet": "10.77.0.128/25"})
    assert overlap.status_code == 422 and overlap.json()["error"]["field"] == "subnet"

    web_port = free_port()
    vms = {
        "a": {"machine": "microvm", "nics": [{"network": "lan"}]},
        "b": {"machine": "q35", "nics": [{"network": "lan"}]},
        "iso": {"machine": "microvm", "nics": [{"network": "lab"}]},
        "web": {"machine": "microvm", "nics": [{"network": "usr", "forwards": [f"tcp:{web_port}:80"]}]},
    }
    for name, spec in vms.items():
        assert daemon.call("POST", "/vms", json={"name": name, "memory": "192M", **spec}).status_code == 201
        daemon.ok("POST", f"/vms/{name}/start")

    # NAT: both guests get leases the API shows, reach each other, the gateway, and (masqueraded) the outside.
    ip_a, ip_b = address(daemon, "a"), address(daemon, "b")
    assert ip_a.startswith("10.77.0.") and ip_b.startswith("10.77.0.") and ip_a != ip_b
    leases = {lease["ip"] for lease in daemon.call("GET", "/networks/lan/leases").json()}
    assert {ip_a, ip_b} <= leases
    nics = daemon.call("GET", "/vms/a/nics").json()
    assert nics[0]["ip"] == ip_a and nics[0]["mac"].startswith("52:54:00")
    assert pings(daemon, "a", ip_b) and pings(daemon, "a", "10.77.0.1") and pings(daemon, "b", OUTSIDE)

    # A daemon killed with SIGKILL comes back to the same bridges, rules and DHCP servers: no duplicates.
    dnsmasqs = sorted(sh("pgrep", "-f", "dnsmasq.*vf", netns=ns, check=False).split())
    made = (links(ns), tables(ns))
    daemon.kill()
    daemon.start()
    assert sorted(sh("pgrep", "-f", "dnsmasq.*vf", netns=ns, check=False).split()) == dnsmasqs
    assert (links(ns), tables(ns)) == made
    assert pings(daemon, "b", ip_a)
    assert {ip_a, ip_b} <= {lease["ip"] for lease in daemon.call("GET", "/networks/lan/leases").json()}

    # Isolated: DHCP and the gateway work, the way out does not.
    ip_iso = address(daemon, "iso")
    assert ip_iso.startswith("10.78.0.") and pings(daemon, "iso", "10.78.0.1")
    assert not pings(daemon, "iso", OUTSIDE)

    # User mode: the guest serves HTTP through a forward on the host's loopback.
    address(daemon, "web")
    console_run(daemon, "web", "httpd -p 80 -h /www; echo httpd-$((8*8))", "httpd-64")
    page = sh("busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{web_port}/", netns=ns)
    assert "virtfleet-httpd-ok" in page

    # Bridge mode: a guest's tap joins an existing host bridge.
    sh("ip", "link", "add", "br-test", "type", "bridge", netns=ns)
    joined = daemon.call("POST", "/networks", json={"name": "hostbr", "mode": "bridge", "bridge": "br-test"})
    assert joined.status_code == 201, joined.text
    daemon.ok("POST", "/vms/iso/stop")
    daemon.ok("POST", "/vms/iso/nics", json={"network": "hostbr"})
    daemon.ok("POST", "/vms/iso/start")
    masters = {link["ifname"]: link.get("master") for link in json.loads(sh("ip", "-j", "link", netns=ns))}
    assert sum(1 for name, master in masters.items() if name.startswith("vft") and master == "br-test") == 1

    # Hot-plug a NIC into the running q35 guest: a new interface appears and gets an address.
    daemon.ok("POST", "/vms/b/nics", json={"network": "lab"})
    assert address(daemon, "b", "eth1").startswith("10.78.0.")
    mac = daemon.call("GET", "/vms/b/nics").json()[1]["mac"]
    daemon.ok("POST", f"/vms/b/nics/{mac}/link", json={"up": False})
    daemon.ok("DELETE", f"/vms/b/nics/{mac}")

    # Deleting a network in use is refused; deleting the owners removes everything they made on the host.
    in_use = daemon.call("DELETE", "/networks/lan")
    assert in_use.status_code == 409 and "a" in in_use.json()["error"]["message"]
    for name in vms:
        daemon.ok("DELETE", f"/vms/{name}", params={"force": "true"})
    for name in ("lan", "lab", "usr", "hostbr"):
        assert daemon.call("DELETE", f"/networks/{name}").status_code == 204
    assert links(ns) == before_links and tables(ns) == before_tables
    assert "br-test" in json.dumps(json.loads(sh("ip", "-j", "link", netns=ns)))  # not ours: never removed
    assert not list((daemon.data_dir / "networks").glob("*/*.pid"))
