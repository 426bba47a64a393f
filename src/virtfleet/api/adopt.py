"""REST routes of `host adopt`: the host's foreign domains (made by virt-manager, VDSM, virsh) and taking them over."""

from __future__ import annotations

from fastapi import APIRouter, Response

from virtfleet.api.routes import ServerDep, accepted
from virtfleet.jobs.adopt import AdoptPlan, AdoptRequest
from virtfleet.model.job import Job

router = APIRouter(tags=["host"])


@router.get("/host/foreign-domains", response_model=list[AdoptPlan])
async def foreign_domains(server: ServerDep) -> list[AdoptPlan]:
    """Every domain on the host virtfleet does not manage, with its plan: the VM it would become, the volumes its
    disks would be registered as (in place), what is not carried over, and what stops it (problems)."""
    return await server.adopt.plans()


@router.post("/host/adopt", response_model=list[AdoptPlan] | Job, status_code=202,
             responses={200: {"model": list[AdoptPlan], "description": "dry_run: the plans; nothing changed"}})
async def adopt(body: AdoptRequest, server: ServerDep, response: Response) -> list[AdoptPlan] | Job:
    """Take over the named foreign domains: their disk files become volumes of the pools they lie in (no copy),
    each becomes a VM in its current state (nothing is restarted). Refused, with nothing changed, when any of them
    has a problem; dry_run answers the plans (200)."""
    if body.dry_run:
        response.status_code = 200
        return await server.adopt.plans(body.domains, body.network_map)
    return accepted(await server.adopt.submit(body), response)
