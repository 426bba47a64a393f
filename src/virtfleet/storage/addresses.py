"""Which network addresses the server may fetch from on a user's behalf (imports from a URL).

The server usually sits next to things a user of the API must not reach through it: its own API and metrics on
loopback, cloud metadata on link-local, the admin network on private ranges. Such addresses are refused unless the
admin allows a range (VIRTFLEET_IMPORT_ALLOW). The check is on the resolved address, and the caller connects to
that very address (a second DNS answer could differ).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_VARIABLE = "VIRTFLEET_IMPORT_ALLOW"
# IPv6 forms that carry an IPv4 address a host may route to (NAT64's well-known prefix, RFC 6052).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Networks from text such as "127.0.0.0/8, 10.1.2.3 fd00::/8"; ValueError names the item that is not one."""
    networks: list[IPNetwork] = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{ALLOW_VARIABLE}: {item!r} is not an address or a network such as 10.0.0.0/8") from None
    return tuple(networks)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why `address` is off limits ("a loopback address"), or None if it is public or in an allowed network."""
    embedded = _embedded_ipv4(address)
    if any(address in network or (embedded is not None and embedded in network) for network in allow):
        return None
    if embedded is not None:
        return refusal(embedded)
    for off_limits, what in ((address.is_unspecified, "an unspecified address"),
                             (address.is_loopback, "a loopback address"),
                             (address.is_link_local, "a link-local address"),
                             (address.is_multicast, "a multicast address"),
                             (address.is_private, "a private address"),
                             (address.is_reserved, "a reserved address"),
                             (not address.is_global, "not a public address")):
        if off_limits:
            return what
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` has (an address literal stands for itself), in the order to try them; OSError if none."""
    given = literal(host)
    if given is not None:
        return [given]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if address not in found:
            found.append(address)
    if not found:
        raise OSError(f"{host} has no address")
    return found


def literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
