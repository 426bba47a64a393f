"""REST routes: host, images, VMs and jobs. State changes answer 202 with the job to wait on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from virtfleet.api.schemas import Health, HostOut, ImageOut
from virtfleet.errors import InvalidSpec
from virtfleet.images.bootdisk import build_boot_disk
from virtfleet.images.tiny import default_cmdline
from virtfleet.jobs.runner import JobContext
from virtfleet.model.job import Event, Job
from virtfleet.model.names import NAME_PATTERN
from virtfleet.model.storage import SizeBytes, parse_volume_ref
from virtfleet.model.vm import VOLUME_REF_PATTERN, DiskSpec, MemoryMiB, Vm, VmCreate
from virtfleet.server import Server

router = APIRouter()


def get_server(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


ServerDep = Annotated[Server, Depends(get_server)]


def accepted(job: Job, response: Response) -> Job:
    response.status_code = status.HTTP_202_ACCEPTED
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return job


@router.get("/health", response_model=Health, tags=["host"])
async def health() -> Health:
    return Health()


@router.get("/host", response_model=HostOut, tags=["host"])
async def host(server: ServerDep) -> HostOut:
    info = await server.driver.host_info()
    return HostOut(**info.__dict__, capabilities=server.driver.capabilities())


# --- images ----------------------------------------------------------------------------------------------------
@router.get("/images", response_model=list[ImageOut], tags=["images"])
async def list_images(server: ServerDep) -> list[ImageOut]:
    return [ImageOut(**info.__dict__) for info in server.images.list()]


@router.get("/images/{name}", response_model=ImageOut, tags=["images"])
async def show_image(name: str, server: ServerDep) -> ImageOut:
    return ImageOut(**server.images.info(name).__dict__)


@router.post("/images/{name}/build", response_model=Job, status_code=202, tags=["images"])
async def build_image(name: str, server: ServerDep, response: Response) -> Job:
    server.images.require_buildable(name)
    loop = asyncio.get_running_loop()

    async def work(context: JobContext) -> str:
        def progress(message: str) -> None:  # called from the builder's thread
            loop.call_soon_threadsafe(context.progress, min(95, context.job.progress + 10), message)

        built = await asyncio.to_thread(server.images.build, name, progress)
        return f"built image '{built.name}' (kernel {built.kernel_release})"

    return accepted(server.runner.submit("image.build", f"image:{name}", f"image '{name}'", work), response)


class BootDiskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volume: str = Field(pattern=VOLUME_REF_PATTERN, description="POOL/NAME of the new volume")
    size: SizeBytes = 128 * 1024 * 1024


@router.post("/images/{name}/boot-disk", response_model=Job, status_code=202, tags=["images"])
async def build_boot_disk_volume(name: str, body: BootDiskIn, server: ServerDep, response: Response) -> Job:
    """Make a bootable qcow2 volume (syslinux + the image's kernel and initramfs) for VMs that boot from a disk."""
    image = server.images.built(name)
    kernel = Path("/boot") / f"vmlinuz-{image.kernel_release}"
    if not kernel.is_file():
        raise InvalidSpec("name", f"{kernel} (the bzImage of image '{name}') is not on this host")
    pool, volume = parse_volume_ref(body.volume)

    def build(dest: Path, say: Callable[[str], None]) -> object:
        return build_boot_disk(dest, kernel_bzimage=kernel, initrd=image.initrd, cmdline=default_cmdline("q35", None),
                               size_mib=body.size >> 20, progress=say)

    job = server.storage.build_volume(pool, volume, "qcow2", build, f"boot disk of image '{name}'", size=body.size)
    return accepted(job, response)


@router.delete("/images/{name}", status_code=204, tags=["images"])
async def delete_image(name: str, server: ServerDep) -> Response:
    server.runner.check_free(f"image:{name}", f"image '{name}'")
    server.images.delete(name)
    return Response(status_code=204)


# --- VMs -------------------------------------------------------------------------------------------------------
class VmListed(Vm):
    """A VM in the list, with what a list shows beside it."""

    addresses: list[str] = Field(default=[], description="its NICs' IPv4 addresses from the networks' DHCP leases")


_LISTED = TypeAdapter(list[VmListed])


def _listed(server: Server) -> bytes:
    addresses = server.networks.all_addresses()  # the leases read once, not once per VM
    # model_construct: every field comes from a Vm the store has checked already; checking 10,000 again costs seconds.
    listed = [VmListed.model_construct(**vm.__dict__, addresses=[addresses[nic.mac.lower()] for nic in vm.spec.nics
                                                                 if nic.mac and nic.mac.lower() in addresses])
              for vm in server.vms.list_all()]
    return _LISTED.dump_json(listed)


@router.get("/vms", response_model=list[VmListed], tags=["vms"])
async def list_vms(server: ServerDep) -> Response:
    """Every VM with its addresses, in one answer. Built in a thread: at fleet scale (10,000 VMs) reading, checking
    and encoding the list takes long enough to stall every other request on the event loop."""
    return Response(await asyncio.to_thread(_listed, server), media_type="application/json")


@router.post("/vms", status_code=201, response_model=None, tags=["vms"], responses={
    201: {"model": Vm, "description": "Created: every disk existed, the VM is recorded."},
    202: {"model": Job, "description": "Accepted: disks with `new` are made by this job, which then records the "
                                       "VM; if anything fails, nothing is left (the volumes made for it go too)."},
})
async def create_vm(request: VmCreate, server: ServerDep) -> JSONResponse:
    """Create a VM. Everything is checked first (a 422 names the field, and nothing is made). A VM whose disks all
    exist answers 201 with the VM; one with disks to make (`new`) answers 202 with the job that makes them."""
    result = server.vm_creator.create(request)
    if isinstance(result, Job):
        return JSONResponse(result.model_dump(mode="json"), status.HTTP_202_ACCEPTED,
                            headers={"Location": f"/api/v1/jobs/{result.id}"})
    return JSONResponse(result.model_dump(mode="json"), status.HTTP_201_CREATED)


@router.get("/vms/{ref}", response_model=Vm, tags=["vms"])
async def show_vm(ref: str, server: ServerDep) -> Vm:
    return server.vms.get(ref)


@router.delete("/vms/{ref}", response_model=Job, status_code=202, tags=["vms"])
async def delete_vm(
    ref: str, server: ServerDep, response: Response, force: bool = False, delete_volumes: bool = False
) -> Job:
    """Delete a VM (running: only with force=true). Its volumes are kept unless delete_volumes=true."""
    return accepted(server.vm_deleter.delete(ref, force=force, delete_volumes=delete_volumes), response)


class CloneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    linked: bool = Field(default=True, description="linked clones of the template's disks (instant), or copies")
    cpus: int | None = Field(default=None, ge=1, le=256)
    memory: MemoryMiB | None = None


@router.post("/vms/{ref}/template", response_model=Vm, tags=["vms"])
async def make_template(ref: str, server: ServerDep) -> Vm:
    """Freeze a stopped VM as a template: its volumes become read-only bases and it never runs again."""
    return server.templates.make_template(ref)


@router.post("/vms/{ref}/clone", response_model=Job, status_code=202, tags=["vms"])
async def clone_vm(ref: str, body: CloneIn, server: ServerDep, response: Response) -> Job:
    """Create a VM from a template VM: its settings, new MACs, and clones of its disks."""
    job = server.templates.clone(ref, body.name, linked=body.linked, cpus=body.cpus, memory=body.memory)
    return accepted(job, response)


@router.post("/vms/{ref}/disks", response_model=Job, status_code=202, tags=["vms"])
async def attach_disk(ref: str, disk: DiskSpec, server: ServerDep, response: Response) -> Job:
    """Attach a volume: hot-plugged into a running q35 VM (virtio-blk), or recorded for the next start."""
    return accepted(server.vms.attach_disk(ref, disk), response)


@router.delete("/vms/{ref}/disks/{disk:path}", response_model=Job, status_code=202, tags=["vms"])
async def detach_disk(
    ref: str, disk: str, server: ServerDep, response: Response,
    timeout: Annotated[float, Query(gt=0, le=600)] = 30.0,
) -> Job:
    """Detach a disk (its volume POOL/NAME or path); a running guest must release it within `timeout` seconds."""
    return accepted(server.vms.detach_disk(ref, disk, timeout), response)


SimpleAction = Literal["start", "stop", "reboot", "pause", "resume"]


@router.post("/vms/{ref}/shutdown", response_model=Job, status_code=202, tags=["vms"])
async def shutdown_vm(
    ref: str,
    server: ServerDep,
    response: Response,
    timeout: Annotated[float, Query(gt=0, le=3600)] = 60.0,
    force: bool = True,
) -> Job:
    """ACPI power button; after `timeout` seconds the VM is forced off unless force=false."""
    return accepted(server.vms.shutdown(ref, timeout=timeout, force=force), response)


@router.post("/vms/{ref}/{action}", response_model=Job, status_code=202, tags=["vms"])
async def vm_action(ref: str, action: SimpleAction, server: ServerDep, response: Response) -> Job:
    vms = server.vms
    handlers = {
        "start": vms.start, "stop": vms.stop, "reboot": vms.reboot, "pause": vms.pause, "resume": vms.resume,
    }
    return accepted(handlers[action](ref), response)


@router.get("/vms/{ref}/events", response_model=list[Event], tags=["vms"])
async def vm_events(ref: str, server: ServerDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Event]:
    return server.vms.events(ref, limit)


@router.get("/vms/{ref}/logs", response_class=PlainTextResponse, tags=["vms"])
async def vm_logs(
    ref: str, server: ServerDep, max_bytes: Annotated[int, Query(ge=1, le=4 * 1024 * 1024)] = 65536
) -> PlainTextResponse:
    """The tail of the serial console history."""
    data = await server.vms.logs(ref, max_bytes)
    return PlainTextResponse(data.decode("utf-8", errors="replace"))


# --- jobs ------------------------------------------------------------------------------------------------------
@router.get("/jobs", response_model=list[Job], tags=["jobs"])
async def list_jobs(
    server: ServerDep, target: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[Job]:
    if target is not None:
        target = server.vms.get(target).id if not target.startswith("image:") else target
    return server.db.list_jobs(target=target, limit=limit)


@router.get("/jobs/{job_id}", response_model=Job, tags=["jobs"])
async def show_job(
    job_id: str, server: ServerDep, wait: Annotated[float, Query(ge=0, le=300)] = 0
) -> Job:
    """With `wait`, answers as soon as the job finishes or after `wait` seconds, whichever comes first."""
    server.db.get_job(job_id)  # 404 for an unknown id even when waiting
    return await server.runner.wait(job_id, wait) if wait else server.db.get_job(job_id)
