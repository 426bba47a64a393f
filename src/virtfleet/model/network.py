"""Networks and NICs: what users ask for and what the store keeps."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from virtfleet.model.names import NAME_PATTERN

NetworkMode = Literal["nat", "isolated", "bridge", "user"]
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_FORWARD = re.compile(r"^(tcp|udp):(\d{1,5}):(\d{1,5})$")


class NetworkSpec(BaseModel):
    """nat: a bridge with DHCP/DNS and masquerade out of the host's uplink. isolated: the same without a way out.
    bridge: guests join an existing host bridge (`bridge`), optionally tagged with `vlan`. user: QEMU user-mode
    networking, no privileges needed (port forwards are per NIC)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    mode: NetworkMode = "nat"
    subnet: str | None = Field(default=None, validate_default=True, description="nat/isolated: e.g. 10.77.0.0/24")
    dhcp_range: str | None = Field(default=None, description="FIRST-LAST; default: the upper half of the subnet")
    vlan: int | None = Field(default=None, ge=1, le=4094)
    uplink: str | None = Field(default=None, description="nat: the host interface to masquerade out of")
    bridge: str | None = Field(default=None, validate_default=True, description="bridge: an existing host bridge")

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("mode")
        if mode in ("nat", "isolated"):
            if value is None:
                raise ValueError(f"a {mode} network needs a subnet such as 10.77.0.0/24")
            try:
                network = ipaddress.IPv4Network(value, strict=True)
            except ValueError as error:
                raise ValueError(f"not an IPv4 subnet: {error}") from None
            if not 16 <= network.prefixlen <= 29:
                raise ValueError("the prefix must be between /16 and /29")
            if not network.is_private:
                raise ValueError("use a private range (10/8, 172.16/12, 192.168/16)")
            return str(network)
        if value is not None:
            raise ValueError(f"a {mode} network takes no subnet")
        return value

    @field_validator("vlan")
    @classmethod
    def _vlan(cls, value: int | None, info: ValidationInfo) -> int | None:
        # On our own nat/isolated bridges the gateway and DHCP server are untagged: a tag would cut guests off.
        if value is not None and info.data.get("mode") != "bridge":
            raise ValueError("VLAN tags are for bridge networks (guests on a host bridge)")
        return value

    @field_validator("uplink")
    @classmethod
    def _uplink(cls, value: str | None) -> str | None:
        if value is not None and not _IFNAME.match(value):
            raise ValueError("not an interface name")
        return value

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, value: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("mode")
        if mode == "bridge" and value is None:
            raise ValueError("a bridge network needs the name of an existing host bridge")
        if value is not None and (mode != "bridge" or not _IFNAME.match(value)):
            raise ValueError("only bridge networks name a host bridge, 1-15 characters")
        return value

    def dhcp_bounds(self) -> tuple[str, str]:
        """The DHCP range: given, or the upper half of the subnet (the lower half is for static addresses)."""
        assert self.subnet is not None  # noqa: S101 - only called in nat/isolated mode, which requires it
        network = ipaddress.IPv4Network(self.subnet)
        hosts = list(network.hosts())
        if self.dhcp_range is not None:
            first, _, last = self.dhcp_range.partition("-")
            return first.strip(), last.strip()
        return str(hosts[len(hosts) // 2]), str(hosts[-1])

    def gateway(self) -> str:
        assert self.subnet is not None  # noqa: S101 - only called in nat/isolated mode, which requires it
        return str(next(ipaddress.IPv4Network(self.subnet).hosts()))


class Network(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    spec: NetworkSpec
    bridge: str | None  # the Linux bridge guests are on (ours, or the host's for mode bridge)
    created_at: datetime


class Lease(BaseModel):
    mac: str
    ip: str
    hostname: str | None
    expires: datetime | None


class NicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    network: str = Field(pattern=NAME_PATTERN)
    model: Literal["virtio", "e1000"] = "virtio"
    mac: str | None = Field(default=None, description="default: a stable, locally administered address")
    link_up: bool = True
    forwards: list[str] = Field(default_factory=list, max_length=16,
                                description="user networks: PROTO:HOSTPORT:GUESTPORT, e.g. tcp:8080:80")
    # Filled in by virtfleet at each start from the network (never taken from users): how QEMU connects it.
    tap: str | None = Field(default=None, description="set by virtfleet")
    user_mode: bool = Field(default=False, description="set by virtfleet")

    @property
    def netdev_id(self) -> str:
        """A QEMU id that stays the same while other NICs come and go (hot-plug needs that)."""
        return "n" + hashlib.sha256((self.mac or self.network).encode()).hexdigest()[:10]

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = value.lower()
        if not _MAC.match(value):
            raise ValueError("a MAC address looks like 52:54:00:12:34:56")
        if int(value[:2], 16) & 1:
            raise ValueError("a multicast address cannot be a NIC's address")
        return value

    @field_validator("forwards")
    @classmethod
    def _forwards(cls, value: list[str]) -> list[str]:
        for forward in value:
            match = _FORWARD.match(forward)
            if not match or not all(1 <= int(port) <= 65535 for port in match.groups()[1:]):
                raise ValueError(f"{forward!r}: use PROTO:HOSTPORT:GUESTPORT with tcp or udp and ports 1-65535")
        return value
