"""The VM domain: its spec (what the user asked for), its state machine and its record."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from virtfleet.errors import InvalidState
from virtfleet.model.units import parse_size_mib

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
MAX_CPUS = 256
MIN_MEMORY_MIB = 32
MAX_MEMORY_MIB = 4 * 1024 * 1024  # 4 TiB


def _memory_mib(value: object) -> object:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return parse_size_mib(value)
    return value


MemoryMiB = Annotated[int, BeforeValidator(_memory_mib), Field(ge=MIN_MEMORY_MIB, le=MAX_MEMORY_MIB)]


class DiskSpec(BaseModel):
    """A disk attached to a VM. The path must lie inside a storage pool (checked by the service)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=4096)
    format: Literal["raw", "qcow2"] = "qcow2"
    readonly: bool = False

    @field_validator("path")
    @classmethod
    def _no_control_chars(cls, value: str) -> str:
        if any(ord(ch) < 32 for ch in value):
            raise ValueError("must not contain control characters")
        return value


class VmSpec(BaseModel):
    """What a user asks for. The same fields come from the CLI flags, a spec.yaml and the API body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, '.', '_' or '-'; at most 63")
    cpus: int = Field(default=1, ge=1, le=MAX_CPUS)
    memory: MemoryMiB = Field(default=256, description="MiB, or a size with a unit such as 256M or 2G")
    machine: Literal["microvm", "q35"] = "microvm"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    image: str = Field(default="tiny", pattern=NAME_PATTERN, description="a built guest image")
    kernel_args: str = Field(default="", max_length=1024, description="appended to the kernel command line")
    disks: list[DiskSpec] = Field(default_factory=list, max_length=16)

    @field_validator("kernel_args")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(ch) < 32 for ch in value):
            raise ValueError("must not contain control characters")
        return value


class VmState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    CRASHED = "crashed"


class VmOperation(enum.StrEnum):
    START = "start"
    SHUTDOWN = "shutdown"
    STOP = "stop"
    REBOOT = "reboot"
    PAUSE = "pause"
    RESUME = "resume"
    DELETE = "delete"
    CONSOLE = "console"


_LIVE = frozenset({VmState.RUNNING, VmState.PAUSED, VmState.STARTING, VmState.STOPPING})
_DOWN = frozenset({VmState.STOPPED, VmState.CRASHED})

# The states in which each operation is allowed; anything else is refused with the current state named.
ALLOWED: dict[VmOperation, frozenset[VmState]] = {
    VmOperation.START: _DOWN,
    VmOperation.SHUTDOWN: frozenset({VmState.RUNNING}),
    VmOperation.STOP: _LIVE,
    VmOperation.REBOOT: frozenset({VmState.RUNNING}),
    VmOperation.PAUSE: frozenset({VmState.RUNNING}),
    VmOperation.RESUME: frozenset({VmState.PAUSED}),
    VmOperation.DELETE: _DOWN,
    VmOperation.CONSOLE: frozenset({VmState.RUNNING, VmState.PAUSED}),
}


def require(operation: VmOperation, state: VmState, target: str) -> None:
    """Raise InvalidState unless `operation` is allowed in `state`."""
    allowed = ALLOWED[operation]
    if state not in allowed:
        raise InvalidState(target, operation.value, state.value, (s.value for s in allowed))


def is_live(state: VmState) -> bool:
    """True when a hypervisor process exists for the VM."""
    return state in _LIVE


class Vm(BaseModel):
    """A VM as the store knows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    spec: VmSpec
    state: VmState
    state_reason: str = ""
    host: str
    accel: str = ""
    created_at: datetime
    updated_at: datetime


def valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None
