"""REST routes for storage: pools, volumes, templates, clones, uploads, imports and downloads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from virtfleet.api.routes import ServerDep, accepted
from virtfleet.model.job import Job
from virtfleet.model.names import NAME_PATTERN
from virtfleet.model.snapshot import Snapshot, SnapshotSpec
from virtfleet.model.storage import Pool, PoolSpec, SizeBytes, Volume, VolumeSpec

router = APIRouter(tags=["storage"])

Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class VolumeDetailsOut(BaseModel):
    volume: Volume
    actual_size: int
    backing_chain: list[str]


class ResizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: SizeBytes
    shrink: bool = False


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: bool = True


class CloneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    linked: bool = Field(default=True, description="qcow2 overlay on the template (instant) or a full copy")
    pool: Name | None = None


class ImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=4096)
    format: str = "qcow2"
    sha256: str | None = None


# --- snapshots --------------------------------------------------------------------------------------------------
@router.get("/vms/{ref}/snapshots", response_model=list[Snapshot], tags=["snapshots"])
async def list_snapshots(ref: str, server: ServerDep) -> list[Snapshot]:
    """A VM's snapshots, oldest first; `parent` links make the tree, `current` marks where the VM stands."""
    return server.snapshots.for_vm(ref)


@router.post("/vms/{ref}/snapshots", response_model=Job, status_code=202, tags=["snapshots"])
async def create_snapshot(ref: str, spec: SnapshotSpec, server: ServerDep, response: Response) -> Job:
    """Disk-only (external overlays, running or stopped) or with memory (running VMs with qcow2 disks)."""
    return accepted(server.snapshots.create(ref, spec), response)


@router.post("/vms/{ref}/snapshots/{name}/revert", response_model=Job, status_code=202, tags=["snapshots"])
async def revert_snapshot(ref: str, name: str, server: ServerDep, response: Response) -> Job:
    """Disk snapshots: the VM must be stopped. Memory snapshots: the VM resumes where it was."""
    return accepted(server.snapshots.revert(ref, name), response)


@router.delete("/vms/{ref}/snapshots/{name}", response_model=Job, status_code=202, tags=["snapshots"])
async def delete_snapshot(ref: str, name: str, server: ServerDep, response: Response) -> Job:
    """Delete a snapshot, merging its overlay into the frozen image (block-commit while the VM runs)."""
    return accepted(server.snapshots.delete(ref, name), response)


# --- pools ------------------------------------------------------------------------------------------------------
@router.get("/pools", response_model=list[Pool])
async def list_pools(server: ServerDep) -> list[Pool]:
    return await server.storage.list_pools()


@router.post("/pools", response_model=Pool, status_code=201)
async def create_pool(spec: PoolSpec, server: ServerDep) -> Pool:
    return await server.storage.create_pool(spec)


@router.get("/pools/{name}", response_model=Pool)
async def show_pool(name: str, server: ServerDep) -> Pool:
    return await server.storage.pool_with_usage(name)


@router.delete("/pools/{name}", status_code=204)
async def delete_pool(name: str, server: ServerDep) -> Response:
    await server.storage.delete_pool(name)
    return Response(status_code=204)


# --- volumes ----------------------------------------------------------------------------------------------------
@router.get("/volumes", response_model=list[Volume])
async def list_volumes(server: ServerDep, pool: str | None = None) -> list[Volume]:
    return server.storage.list_volumes(pool)


@router.post("/pools/{pool}/volumes", response_model=Job, status_code=202)
async def create_volume(pool: str, spec: VolumeSpec, server: ServerDep, response: Response) -> Job:
    return accepted(server.storage.create_volume(pool, spec), response)


@router.get("/volumes/{pool}/{name}", response_model=VolumeDetailsOut)
async def show_volume(pool: str, name: str, server: ServerDep) -> VolumeDetailsOut:
    details = await server.storage.details(f"{pool}/{name}")
    return VolumeDetailsOut(volume=details.volume, actual_size=details.actual_size, backing_chain=details.chain)


@router.delete("/volumes/{pool}/{name}", response_model=Job, status_code=202)
async def delete_volume(pool: str, name: str, server: ServerDep, response: Response) -> Job:
    return accepted(server.storage.delete_volume(f"{pool}/{name}"), response)


@router.post("/volumes/{pool}/{name}/resize", response_model=Job, status_code=202)
async def resize_volume(pool: str, name: str, body: ResizeIn, server: ServerDep, response: Response) -> Job:
    """Grow a volume; shrinking loses data and needs shrink=true."""
    return accepted(server.storage.resize_volume(f"{pool}/{name}", body.size, shrink=body.shrink), response)


@router.post("/volumes/{pool}/{name}/template", response_model=Volume)
async def mark_template(pool: str, name: str, body: TemplateIn, server: ServerDep) -> Volume:
    return server.storage.set_template(f"{pool}/{name}", body.template)


@router.post("/volumes/{pool}/{name}/clone", response_model=Job, status_code=202)
async def clone_volume(pool: str, name: str, body: CloneIn, server: ServerDep, response: Response) -> Job:
    job = server.storage.clone_volume(f"{pool}/{name}", body.name, linked=body.linked, pool_name=body.pool)
    return accepted(job, response)


@router.post("/pools/{pool}/volumes/{name}/import", response_model=Job, status_code=202)
async def import_volume(pool: str, name: Name, body: ImportIn, server: ServerDep, response: Response) -> Job:
    """Download an image from an http(s) URL into the pool, checked (format, backing files, sha256)."""
    job = server.storage.import_url(pool, name, body.url, body.format, sha256=body.sha256)
    return accepted(job, response)


@router.put("/pools/{pool}/volumes/{name}/data", response_model=Volume, status_code=201)
async def upload_volume(
    pool: str,
    name: Name,
    request: Request,
    server: ServerDep,
    format: Annotated[str, Query(description="qcow2, raw, vmdk, vhdx, vpc or vdi (never guessed)")] = "qcow2",
    sha256: str | None = None,
) -> Volume:
    """Upload an image as the request body; it is checked before it becomes a volume."""
    length = request.headers.get("content-length")
    return await server.storage.upload(pool, name, format, request.stream(), sha256=sha256,
                                       length=int(length) if length and length.isdigit() else None,
                                       client_gone=request.is_disconnected)


@router.get("/volumes/{pool}/{name}/data", response_class=FileResponse)
async def download_volume(pool: str, name: str, server: ServerDep) -> FileResponse:
    volume = server.storage.volume(f"{pool}/{name}")
    return FileResponse(volume.path, media_type="application/octet-stream",
                        filename=f"{volume.name}.{volume.format}" if "." not in volume.name else volume.name)
