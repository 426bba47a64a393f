"""Pure parts of the host network plumbing: names, lease and route parsing, subnet rules, MACs, nft scripts."""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from virtfleet.errors import InvalidSpec
from virtfleet.network.host import (
    Dnsmasq,
    Route,
    bridge_mac,
    bridge_name,
    check_subnet_free,
    delete_link,
    delete_table,
    ensure_tap,
    generate_mac,
    isolated_script,
    nat_script,
    parse_leases,
    parse_routes,
    table_name,
    tap_name,
    vlan_commands,
)

ROUTES = json.dumps([
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "flags": []},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "prefsrc": "192.0.2.2", "flags": []},
    {"dst": "172.20.0.0/16", "gateway": "192.0.2.254", "dev": "eth0", "flags": []},
    {"dst": "10.50.0.7", "dev": "wg0", "scope": "link", "flags": []},
    {"type": "blackhole", "dst": "10.60.0.0/16", "table": "100", "flags": []},
    {"type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local", "scope": "host", "flags": []},
    {"type": "local", "dst": "10.88.0.1", "dev": "vfbr-x", "table": "local", "scope": "host", "flags": []},
    {"type": "broadcast", "dst": "192.0.2.255", "dev": "eth0", "table": "local", "scope": "link", "flags": []},
    {"type": "multicast", "dst": "224.0.0.0/4", "dev": "eth0", "table": "local", "flags": []},
])


def test_names_are_short_prefixed_and_stable() -> None:
    for name in ("a", "default", "x" * 63, "my.net-1_2"):
        assert re.fullmatch(r"vfbr-[0-9a-f]{9}", bridge_name(name))
        assert re.fullmatch(r"vf_[0-9a-f]{12}", table_name(name))
        assert len(bridge_name(name)) <= 15
    assert bridge_name("default") == bridge_name("default") != bridge_name("other")
    assert re.fullmatch(r"vft[0-9a-f]{10}", tap_name("vm-1", 0)) and len(tap_name("vm-1", 0)) <= 15
    assert tap_name("vm-1", 0) != tap_name("vm-1", 1) != tap_name("vm-2", 1)


def test_bridge_mac_is_locally_administered_unicast() -> None:
    mac = bridge_mac(bridge_name("default"))
    assert re.fullmatch(r"02(:[0-9a-f]{2}){5}", mac)
    assert mac == bridge_mac(bridge_name("default")) != bridge_mac(bridge_name("other"))


def test_generate_mac_is_stable_local_unicast_and_skips_taken() -> None:
    first = generate_mac("vm-1", 0, set())
    assert first == generate_mac("vm-1", 0, set())
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", first)
    octet = int(first[:2], 16)
    assert octet & 0b10 and not octet & 0b01  # locally administered, unicast
    bumped = generate_mac("vm-1", 0, {first.upper()})
    assert bumped != first and bumped.startswith("52:54:00:")
    assert generate_mac("vm-1", 0, {first, bumped}) not in {first, bumped}
    macs = {generate_mac(f"vm-{n}", i, set()) for n in range(200) for i in range(4)}
    assert len(macs) == 800


def test_leases_are_parsed_and_ipv6_lines_skipped() -> None:
    text = (
        "1700003600 52:54:00:AA:BB:01 10.77.0.150 web 01:52:54:00:aa:bb:01\n"
        "0 52:54:00:aa:bb:02 10.77.0.151 * *\n"
        "duid 00:01:00:01:2c:aa:bb:cc:52:54:00:00:00:01\n"
        "1700003600 1234 fd00::10 v6host 00:01:00:01\n"
        "garbage\n"
    )
    leases = parse_leases(text)
    assert [(lease.mac, lease.ip, lease.hostname) for lease in leases] == [
        ("52:54:00:aa:bb:01", "10.77.0.150", "web"), ("52:54:00:aa:bb:02", "10.77.0.151", None)]
    assert leases[0].expires == datetime.fromtimestamp(1700003600, UTC)
    assert leases[1].expires is None  # 0: an infinite lease
    assert parse_leases("") == []


def test_routes_keep_real_routes_and_drop_local_ones() -> None:
    routes = parse_routes(ROUTES)
    assert [str(route.network) for route in routes] == [
        "0.0.0.0/0", "192.0.2.0/24", "172.20.0.0/16", "10.50.0.7/32", "10.60.0.0/16"]
    assert routes[2].describe() == "host route via 192.0.2.254 dev eth0"
    assert routes[4].describe() == "host route without a device in table 100"


def test_subnet_overlap_rules() -> None:
    routes = parse_routes(ROUTES)
    check_subnet_free("10.77.0.0/24", ["10.78.0.0/24"], routes=routes)  # the default route covers all: ignored
    with pytest.raises(InvalidSpec, match=r"overlaps 172.20.0.0/16 \(host route via 192.0.2.254 dev eth0\)") as info:
        check_subnet_free("172.20.5.0/24", [], routes=routes)
    assert info.value.field == "subnet"
    with pytest.raises(InvalidSpec, match=r"overlaps 10\.50\.0\.7/32"):
        check_subnet_free("10.50.0.0/24", [], routes=routes)
    with pytest.raises(InvalidSpec, match=r"overlaps 10\.60\.0\.0/16"):
        check_subnet_free("10.60.200.0/24", [], routes=routes)
    with pytest.raises(InvalidSpec, match=r"overlaps 10.77.0.0/16 \(another virtfleet network\)"):
        check_subnet_free("10.77.3.0/24", ["10.77.0.0/16"], routes=routes)
    with pytest.raises(InvalidSpec, match="not an IPv4 subnet"):
        check_subnet_free("10.77.0.1/24", [], routes=routes)
    assert Route(ipaddress.IPv4Network("10.0.0.0/8"), None, "eth1", "main").describe() == "host route dev eth1"


def test_nat_script_replaces_the_table_and_masquerades_out_of_the_uplink() -> None:
    script = nat_script("vf_0123", "vfbr-abc", "10.77.0.0/24", "eth0")
    lines = [line.strip() for line in script.splitlines()]
    assert lines[:3] == ["table inet vf_0123", "delete table inet vf_0123", "table inet vf_0123 {"]
    assert "type nat hook postrouting priority srcnat; policy accept;" in lines
    assert 'ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 oifname "eth0" masquerade' in lines
    forward = lines[lines.index("chain forward {") + 2:]
    assert forward[:5] == [
        'iifname "vfbr-abc" oifname "vfbr-abc" accept',
        'iifname "vfbr-abc" oifname "eth0" accept',
        'iifname "vfbr-abc" drop',
        'oifname "vfbr-abc" ct state established,related accept',
        'oifname "vfbr-abc" drop',
    ]
    anywhere = nat_script("vf_0123", "vfbr-abc", "10.77.0.0/24", None)
    assert "ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade" in anywhere
    assert 'iifname "vfbr-abc" accept' in anywhere and 'iifname "vfbr-abc" drop' not in anywhere


def test_isolated_script_drops_routed_traffic_only() -> None:
    lines = [line.strip() for line in isolated_script("vf_0123", "vfbr-abc").splitlines()]
    assert lines[:2] == ["table inet vf_0123", "delete table inet vf_0123"]
    assert "postrouting" not in " ".join(lines)
    assert lines[lines.index("chain forward {") + 2:][:3] == [
        'iifname "vfbr-abc" oifname "vfbr-abc" accept', 'iifname "vfbr-abc" drop', 'oifname "vfbr-abc" drop']


@pytest.mark.parametrize(("args", "field"), [
    (("vf_x", 'br"; flush ruleset', "10.0.0.0/24", None), "bridge"),
    (("vf_x", "vfbr-a", "10.0.0.0/24", "eth0 accept"), "uplink"),
    (("filter", "vfbr-a", "10.0.0.0/24", None), "table"),
    (("vf_x", "vfbr-a", "10.0.0.5/24", None), "subnet"),
])
def test_nft_scripts_refuse_unsafe_input(args: tuple[str, str, str, str | None], field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        nat_script(*args)
    assert info.value.field == field


def test_links_and_tables_without_our_prefix_are_refused() -> None:
    with pytest.raises(InvalidSpec, match="not a virtfleet link"):
        delete_link("eth0")
    with pytest.raises(InvalidSpec, match="not a virtfleet link"):
        ensure_tap("tap0", "vfbr-abc")
    with pytest.raises(InvalidSpec, match="not a virtfleet nft table"):
        delete_table("filter")


def test_vlan_commands_leave_only_the_wanted_vlan() -> None:
    assert vlan_commands("vft1", 10, [1]) == [
        ["bridge", "vlan", "add", "dev", "vft1", "vid", "10", "pvid", "untagged"],
        ["bridge", "vlan", "del", "dev", "vft1", "vid", "1"],
    ]
    assert vlan_commands("vft1", 10, [10]) == [
        ["bridge", "vlan", "add", "dev", "vft1", "vid", "10", "pvid", "untagged"]]


def test_dnsmasq_config(tmp_path: Path) -> None:
    dnsmasq = Dnsmasq("default", tmp_path)
    text = dnsmasq.config("vfbr-abc", "10.77.0.1", "10.77.0.128", "10.77.0.254", 24)
    lines = text.splitlines()
    for expected in ("interface=vfbr-abc", "bind-interfaces", "except-interface=lo", "no-resolv", "no-hosts",
                     "dhcp-authoritative", "dhcp-no-override", "dhcp-range=10.77.0.128,10.77.0.254,255.255.255.0,1h",
                     f"pid-file={tmp_path}/default.dnsmasq.pid", f"dhcp-leasefile={tmp_path}/default.dnsmasq.leases"):
        assert expected in lines
    assert not any(line.startswith("server=") for line in lines)
    with_dns = dnsmasq.config("vfbr-abc", "10.77.0.1", "10.77.0.128", "10.77.0.254", 24, ["192.0.2.53"])
    assert "server=192.0.2.53" in with_dns.splitlines()
    with pytest.raises(InvalidSpec, match="dhcp_range"):
        dnsmasq.config("vfbr-abc", "10.77.0.1", "10.77.1.2", "10.77.1.9", 24)
    with pytest.raises(InvalidSpec, match="dhcp_range"):
        dnsmasq.config("vfbr-abc", "10.77.0.1", "10.77.0.200", "10.77.0.100", 24)
    with pytest.raises(InvalidSpec, match="bridge"):
        dnsmasq.config("vfbr abc", "10.77.0.1", "10.77.0.128", "10.77.0.254", 24)
    with pytest.raises(InvalidSpec, match="network"):
        Dnsmasq("../etc", tmp_path)


def test_dnsmasq_without_a_process_or_leases(tmp_path: Path) -> None:
    dnsmasq = Dnsmasq("default", tmp_path)
    assert dnsmasq.running() is None
    assert dnsmasq.leases() == []
    dnsmasq.stop(purge=True)  # nothing to stop: fine
