"""REST routes for v2v: import a VM from the server's import directory (plan or job), export one for elsewhere."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from virtfleet.api.routes import ServerDep, accepted
from virtfleet.jobs.exports import ExportFormat
from virtfleet.model.job import Job
from virtfleet.v2v.model import ImportPlan, ImportReport, ImportRequest, Upload

router = APIRouter(tags=["v2v"])


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: ExportFormat
    dest: str = Field(max_length=128, description="a plain name inside the server's export directory")


@router.post("/imports", response_model=ImportPlan | Job, status_code=202,
             responses={200: {"model": ImportPlan, "description": "dry_run: the plan; nothing changed"}})
async def import_vm(body: ImportRequest, server: ServerDep, response: Response) -> ImportPlan | Job:
    """Import a VMware, VirtualBox, Hyper-V, Xen, oVirt or libvirt VM found at `path` in the import directory.

    With dry_run the plan comes back (200): what maps to what, sizes, conversions, and every setting that will not
    be carried over; otherwise a job (202) converts the disks into the pool and records the VM."""
    if body.dry_run:
        response.status_code = 200
        return await server.imports.plan(body)
    return accepted(await server.imports.submit(body), response)


class UploadOut(BaseModel):
    path: str = Field(description="the upload's path in the import directory: what to import")


@router.put("/imports/uploads/{name}", response_model=UploadOut, status_code=201)
async def upload_import(name: str, request: Request, server: ServerDep) -> UploadOut:
    """Upload an OVA as the request body into the import directory (uploads/NAME), for importing it afterwards.

    The name is a plain file name ending in .ova; an existing file is never replaced; bounded like volume uploads."""
    length = request.headers.get("content-length")
    path = await server.imports.upload(name, request.stream(),
                                       length=int(length) if length and length.isdigit() else None)
    return UploadOut(path=path)


@router.get("/imports/uploads", response_model=list[Upload])
async def list_uploads(server: ServerDep) -> list[Upload]:
    """The OVAs uploaded into the import directory and not removed yet."""
    return await server.imports.list_uploads()


@router.delete("/imports/uploads/{name}", status_code=204)
async def delete_upload(name: str, server: ServerDep) -> Response:
    """Remove an uploaded OVA (refused while an import reads it)."""
    await server.imports.delete_upload(name)
    return Response(status_code=204)


@router.get("/imports/{job_id}", response_model=ImportReport)
async def import_report(job_id: str, server: ServerDep) -> ImportReport:
    """The report of a finished import: the volumes made and every setting not carried over."""
    return server.imports.report(job_id)


@router.post("/vms/{ref}/export", response_model=Job, status_code=202, tags=["vms"])
async def export_vm(ref: str, body: ExportIn, server: ServerDep, response: Response) -> Job:
    """Write a stopped VM as an OVA, a .vmx, an xl.cfg or a libvirt domain (with its disks) into the export
    directory, under `dest`."""
    return accepted(server.exports.submit(ref, body.format, body.dest), response)
