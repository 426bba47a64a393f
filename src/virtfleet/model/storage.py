"""Storage: pools (where volumes live) and volumes (disk images), as users ask for them and as the store keeps them."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from virtfleet.model.names import NAME_PATTERN
from virtfleet.model.units import parse_size_bytes

PoolType = Literal["dir", "lvm", "nfs"]
VolumeFormat = Literal["qcow2", "raw"]
MIN_VOLUME_BYTES = 1024 * 1024
MAX_VOLUME_BYTES = 64 * 1024**4  # 64 TiB
_NFS_SOURCE = re.compile(r"^[A-Za-z0-9.:\[\]-]+:/[^\0\n]*$")
_LVM_SOURCE = re.compile(r"^[A-Za-z0-9+_.-]+/[A-Za-z0-9+_.-]+$")


def _size_bytes(value: object) -> object:
    # A bare number is bytes here (as for qemu-img); "10G" and friends carry their unit.
    if isinstance(value, str | int) and not isinstance(value, bool):
        return parse_size_bytes(value, default_unit="b")
    return value


SizeBytes = Annotated[int, BeforeValidator(_size_bytes), Field(ge=MIN_VOLUME_BYTES, le=MAX_VOLUME_BYTES)]


class PoolSpec(BaseModel):
    """A storage pool. dir: `path` is a directory. lvm: `source` is VG/THINPOOL. nfs: `source` is HOST:/EXPORT,
    mounted at `path` (default: under the data directory)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    type: PoolType = "dir"
    # validate_default: the checks below depend on `type`, so they must run even when a field is left out.
    path: str | None = Field(default=None, max_length=1024, validate_default=True)
    source: str | None = Field(default=None, max_length=1024, validate_default=True)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (not value.startswith("/") or "\0" in value):
            raise ValueError("must be an absolute path")
        if value is None and info.data.get("type") == "dir":
            raise ValueError("a dir pool needs a path")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if kind == "dir" and value is not None:
            raise ValueError("a dir pool takes no source")
        if kind == "nfs" and (value is None or not _NFS_SOURCE.match(value)):
            raise ValueError("an nfs pool needs a source HOST:/EXPORT")
        if kind == "lvm" and (value is None or not _LVM_SOURCE.match(value)):
            raise ValueError("an lvm pool needs a source VOLUME_GROUP/THIN_POOL")
        return value


class PoolUsage(BaseModel):
    capacity: int
    allocation: int
    available: int
    thin: bool  # volumes only take space as they are written, so creation is not limited by `available`


class Pool(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    spec: PoolSpec
    mount_path: str  # where the pool's volumes are reachable on this host
    owns_path: bool = Field(default=False, description="virtfleet made the directory, so deleting the pool removes "
                                                       "it (when nothing but virtfleet's own files is left in it)")
    state: Literal["active", "inactive"] = "active"
    state_reason: str = ""
    usage: PoolUsage | None = None
    created_at: datetime


class VolumeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    format: VolumeFormat = "qcow2"
    size: SizeBytes = Field(description="bytes, or a size with a unit such as 10G")


class Volume(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    pool: str
    name: str
    format: VolumeFormat
    size: int  # virtual size in bytes
    path: str
    template: bool = False
    base: str | None = None  # "pool/name" of the template a linked clone is backed by
    attached_to: str | None = None  # the VM using it
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.pool}/{self.name}"


def parse_volume_ref(ref: str, default_pool: str = "default") -> tuple[str, str]:
    """"pool/name" or "name" (in the default pool) -> (pool, name)."""
    pool, _, name = ref.rpartition("/")
    return (pool or default_pool), name
