"""Typed domain objects (pydantic v2); no I/O here."""

from virtfleet.model.job import Event, Job, JobStatus
from virtfleet.model.vm import DiskSpec, Vm, VmOperation, VmSpec, VmState

__all__ = ["DiskSpec", "Event", "Job", "JobStatus", "Vm", "VmOperation", "VmSpec", "VmState"]
