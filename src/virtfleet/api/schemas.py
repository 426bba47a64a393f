"""Wire shapes that are not domain models as they stand."""

from __future__ import annotations

from pydantic import BaseModel

from virtfleet import __version__


class Health(BaseModel):
    status: str = "ok"
    version: str = __version__


class HostOut(BaseModel):
    hostname: str
    cpus: int
    memory_mib: int
    driver: str
    hypervisor: str
    kvm_usable: bool
    kvm_reason: str
    version: str = __version__


class ImageOut(BaseModel):
    name: str
    built: bool
    buildable: bool
    kernel_release: str
    size_bytes: int
    path: str
