"""Wire shapes that are not domain models as they stand."""

from __future__ import annotations

from pydantic import BaseModel, Field

from virtfleet import __version__
from virtfleet.drivers.base import Capabilities


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
    capabilities: Capabilities = Field(description="what the driver can do: an operation it cannot is refused "
                                                   "(501, naming the capability) before a job exists")
    version: str = __version__


class ImageOut(BaseModel):
    name: str
    built: bool
    buildable: bool
    kernel_release: str
    size_bytes: int
    path: str
