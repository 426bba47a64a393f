"""Networks and the NICs on them.

Everything made on the host (bridge, taps, nftables table, dnsmasq) is named from the network or VM with a `vf`
prefix and made idempotently, so a restarted daemon re-adopts it by making it again; deleting the owner removes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from pathlib import Path

from virtfleet.errors import Conflict, InvalidSpec, NotFound
from virtfleet.model.network import Lease, Network, NetworkSpec, NicSpec
from virtfleet.model.vm import Vm, VmSpec
from virtfleet.network import host
from virtfleet.store.db import Database
from virtfleet.store.network_repo import NetworkRepo

log = logging.getLogger(__name__)


def tap_for(vm_id: str, nic: NicSpec) -> str:
    """A tap per (VM, NIC), named from its MAC so it stays the same while other NICs come and go."""
    return "vft" + hashlib.sha256(f"{vm_id}/{nic.mac}".encode()).hexdigest()[:10]


class NetworkService:
    def __init__(self, db: Database, state_dir: Path) -> None:
        self.db = db
        self.repo = NetworkRepo(db)
        self.state_dir = state_dir

    def _dnsmasq(self, name: str) -> host.Dnsmasq:
        return host.Dnsmasq(name, self.state_dir / name)

    # --- networks ------------------------------------------------------------------------------------------
    def all(self) -> list[Network]:
        return self.repo.all()

    def get(self, name: str) -> Network:
        return self.repo.get(name)

    async def create(self, spec: NetworkSpec) -> Network:
        try:
            self.repo.get(spec.name)
        except NotFound:
            pass
        else:
            raise Conflict(f"a network named '{spec.name}' already exists")
        if spec.subnet is not None:
            existing = [n.spec.subnet for n in self.repo.all() if n.spec.subnet is not None]
            await asyncio.to_thread(host.check_subnet_free, spec.subnet, existing)
            self._check_dhcp_range(spec)
        if spec.uplink is not None and not await asyncio.to_thread(host.link_exists, spec.uplink):
            raise InvalidSpec("uplink", f"there is no interface {spec.uplink} on this host")
        bridge = self._bridge_for(spec)
        try:
            await asyncio.to_thread(self._set_up, spec)
        except BaseException:
            await asyncio.to_thread(self._tear_down, spec)  # nothing half-made stays on the host
            raise
        return self.repo.add(spec, bridge)

    @staticmethod
    def _check_dhcp_range(spec: NetworkSpec) -> None:
        assert spec.subnet is not None  # noqa: S101 - NetworkSpec requires it in nat/isolated mode
        subnet = ipaddress.IPv4Network(spec.subnet)
        try:
            first, last = (ipaddress.IPv4Address(a) for a in spec.dhcp_bounds())
        except ValueError as error:
            raise InvalidSpec("dhcp_range", f"use FIRST-LAST addresses: {error}") from None
        gateway = ipaddress.IPv4Address(spec.gateway())
        if not (first in subnet and last in subnet and first <= last) or first <= gateway <= last:
            raise InvalidSpec("dhcp_range", f"must lie inside {subnet}, in order, without the gateway {gateway}")

    @staticmethod
    def _bridge_for(spec: NetworkSpec) -> str | None:
        if spec.mode == "user":
            return None
        if spec.mode == "bridge":
            return spec.bridge
        return host.bridge_name(spec.name)

    def _set_up(self, spec: NetworkSpec) -> None:
        """Make (or re-make, after a restart) what the network needs on the host; idempotent."""
        if spec.mode == "bridge":
            # Nothing to make, but the host's bridge must be one (a NIC enslaved to anything else goes nowhere),
            # when the network is made and each time it is activated again (links come and go with the host).
            assert spec.bridge is not None  # noqa: S101 - NetworkSpec requires it in bridge mode
            problem = host.bridge_problem(spec.bridge)
            if problem is not None:
                raise InvalidSpec("bridge", problem)
        if spec.mode not in ("nat", "isolated"):
            return
        assert spec.subnet is not None  # noqa: S101 - NetworkSpec requires it in nat/isolated mode
        bridge = host.bridge_name(spec.name)
        prefix = ipaddress.IPv4Network(spec.subnet).prefixlen
        host.ensure_bridge(bridge, f"{spec.gateway()}/{prefix}")
        first, last = spec.dhcp_bounds()
        self._dnsmasq(spec.name).ensure_running(bridge, spec.gateway(), first, last, prefix)
        table = host.table_name(spec.name)
        if spec.mode == "nat":
            host.ensure_nat(table, bridge, spec.subnet, spec.uplink)
        else:
            host.ensure_isolated(table, bridge)

    def _tear_down(self, spec: NetworkSpec) -> None:
        if spec.mode not in ("nat", "isolated"):
            return
        self._dnsmasq(spec.name).stop()
        host.delete_table(host.table_name(spec.name))
        host.delete_link(host.bridge_name(spec.name))

    async def activate_all(self) -> list[str]:
        """At start-up: re-adopt every network (existing pieces are kept, missing ones made); returns problems."""
        problems = []
        for network in self.repo.all():
            try:
                await asyncio.to_thread(self._set_up, network.spec)
            except Exception as error:  # one broken network must not stop the daemon
                problems.append(f"network {network.name}: {error}")
        return problems

    async def delete(self, name: str) -> None:
        network = self.repo.get(name)
        users = sorted({vm.name for vm in self.db.list_vms() for nic in vm.spec.nics if nic.network == name})
        if users:
            raise Conflict(f"network '{name}' is used by NICs of: {', '.join(users)}")
        await asyncio.to_thread(self._tear_down, network.spec)
        self.repo.delete(name)

    async def leases(self, name: str) -> list[Lease]:
        network = self.repo.get(name)
        if network.spec.mode not in ("nat", "isolated"):
            return []  # user mode has QEMU's own DHCP, a host bridge has whatever DHCP its LAN has
        return await asyncio.to_thread(self._dnsmasq(name).leases)

    # --- NICs ----------------------------------------------------------------------------------------------
    def resolve(self, spec: VmSpec, *, vm_name: str | None = None) -> VmSpec:
        """Check every NIC's network and give each a stable MAC unique on this host; changes nothing."""
        taken = {nic.mac for vm in self.db.list_vms() if vm.name != vm_name for nic in vm.spec.nics if nic.mac}
        nics = []
        for index, nic in enumerate(spec.nics):
            field = f"nics[{index}]"
            try:
                network = self.repo.get(nic.network)
            except NotFound:
                raise InvalidSpec(f"{field}.network", f"no network named {nic.network}") from None
            if nic.forwards and network.spec.mode != "user":
                raise InvalidSpec(f"{field}.forwards", "port forwards are for user-mode networks")
            mac = nic.mac or host.generate_mac(f"{spec.name}/{nic.network}", index, taken)
            if mac in taken:
                raise InvalidSpec(f"{field}.mac", f"{mac} is already used by another NIC on this host")
            taken.add(mac)
            nics.append(nic.model_copy(update={"mac": mac, "tap": None, "user_mode": False}))
        return spec.model_copy(update={"nics": nics})

    def plug(self, vm_id: str, nic: NicSpec) -> NicSpec:
        """How QEMU connects this NIC now: a tap on the network's bridge (made if missing), or user mode."""
        network = self.repo.get(nic.network)
        if network.spec.mode == "user":
            return nic.model_copy(update={"user_mode": True, "tap": None})
        assert network.bridge is not None  # noqa: S101 - every network but user mode has a bridge
        tap = tap_for(vm_id, nic)
        host.ensure_tap(tap, network.bridge, vlan=network.spec.vlan)
        return nic.model_copy(update={"tap": tap, "user_mode": False})

    def boot_nics(self, vm: Vm) -> list[NicSpec]:
        return [self.plug(vm.id, nic) for nic in vm.spec.nics]

    def unplug(self, vm_id: str, nic: NicSpec) -> None:
        host.delete_link(tap_for(vm_id, nic))

    def forget_vm(self, vm: Vm) -> None:
        """The VM is gone: its taps go too."""
        for nic in vm.spec.nics:
            host.delete_link(tap_for(vm.id, nic))

    def addresses(self, vm: Vm) -> dict[str, str]:
        """MAC -> IPv4 address from the networks' DHCP leases."""
        found: dict[str, str] = {}
        for name in {nic.network for nic in vm.spec.nics}:
            try:
                network = self.repo.get(name)
            except NotFound:
                continue
            if network.spec.mode in ("nat", "isolated"):
                for lease in self._dnsmasq(name).leases():
                    found[lease.mac.lower()] = lease.ip
        return found

    def all_addresses(self) -> dict[str, str]:
        """MAC -> IPv4 address over every network: one read of each lease file however many VMs there are."""
        found: dict[str, str] = {}
        for network in self.repo.all():
            if network.spec.mode in ("nat", "isolated"):
                for lease in self._dnsmasq(network.name).leases():
                    found[lease.mac.lower()] = lease.ip
        return found
