"""VM snapshots: disk-only (external qcow2 overlays) or with memory (QEMU internal snapshots), kept as a tree."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from virtfleet.model.names import NAME_PATTERN

SnapshotKind = Literal["disk", "memory"]


class SnapshotSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    memory: bool = Field(default=False, description="also save RAM and device state (running VMs, qcow2 disks)")
    description: str = Field(default="", max_length=1024)


class SnapshotLayer(BaseModel):
    """One disk at snapshot time: `frozen` is the image holding its state (an external snapshot's read-only
    base, or the image holding a memory snapshot's internal snapshot)."""

    model_config = ConfigDict(frozen=True)

    disk: str  # the disk's volume ref or path, as in the VM spec
    frozen: str
    format: Literal["raw", "qcow2"]


class Snapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    vm_id: str
    name: str
    kind: SnapshotKind
    description: str = ""
    parent: str | None = None  # name of the parent snapshot
    current: bool = False  # the VM's state descends from this snapshot
    vm_state: Literal["running", "stopped"]
    layers: list[SnapshotLayer]
    created_at: datetime
