"""REST routes for networks, their DHCP leases, and the NICs of VMs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict

from virtfleet.api.routes import ServerDep, accepted
from virtfleet.model.job import Job
from virtfleet.model.network import Lease, Network, NetworkSpec, NicSpec

router = APIRouter(tags=["networks"])


class NicOut(BaseModel):
    network: str
    model: str
    mac: str | None
    link_up: bool
    forwards: list[str]
    ip: str | None  # from the network's DHCP leases, when it has them


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    up: bool


@router.get("/networks", response_model=list[Network])
async def list_networks(server: ServerDep) -> list[Network]:
    return server.networks.all()


@router.post("/networks", response_model=Network, status_code=201)
async def create_network(spec: NetworkSpec, server: ServerDep) -> Network:
    """nat and isolated networks get a bridge, DHCP/DNS (dnsmasq) and nftables rules on this host."""
    return await server.networks.create(spec)


@router.get("/networks/{name}", response_model=Network)
async def show_network(name: str, server: ServerDep) -> Network:
    return server.networks.get(name)


@router.delete("/networks/{name}", status_code=204)
async def delete_network(name: str, server: ServerDep) -> Response:
    """Refused while NICs use it; removes its bridge, rules and DHCP server."""
    await server.networks.delete(name)
    return Response(status_code=204)


@router.get("/networks/{name}/leases", response_model=list[Lease])
async def network_leases(name: str, server: ServerDep) -> list[Lease]:
    return await server.networks.leases(name)


@router.get("/vms/{ref}/nics", response_model=list[NicOut])
async def vm_nics(ref: str, server: ServerDep) -> list[NicOut]:
    vm = server.vms.get(ref)
    addresses = server.networks.addresses(vm)
    return [NicOut(network=n.network, model=n.model, mac=n.mac, link_up=n.link_up, forwards=n.forwards,
                   ip=addresses.get(n.mac or "")) for n in vm.spec.nics]


@router.post("/vms/{ref}/nics", response_model=Job, status_code=202)
async def attach_nic(ref: str, nic: NicSpec, server: ServerDep, response: Response) -> Job:
    """Add a NIC: hot-plugged into a running q35 VM, or for the next start."""
    return accepted(server.vms.attach_nic(ref, nic), response)


@router.delete("/vms/{ref}/nics/{mac}", response_model=Job, status_code=202)
async def detach_nic(ref: str, mac: str, server: ServerDep, response: Response,
                     timeout: Annotated[float, Query(gt=0, le=600)] = 30.0) -> Job:
    return accepted(server.vms.detach_nic(ref, mac, timeout), response)


@router.post("/vms/{ref}/nics/{mac}/link", response_model=Job, status_code=202)
async def set_link(ref: str, mac: str, body: LinkIn, server: ServerDep, response: Response) -> Job:
    """Plug (up) or pull (down) a NIC's virtual cable."""
    return accepted(server.vms.set_link(ref, mac, body.up), response)
