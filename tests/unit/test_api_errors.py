"""Errors map to HTTP statuses in one place."""

from __future__ import annotations

import pytest

from virtfleet import errors
from virtfleet.api.errors import _field_name, status_for


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.NotFound("vm", "a"), 404),
        (errors.InvalidSpec("memory", "too small"), 422),
        (errors.InvalidState("vm 'a'", "start", "running", ["stopped"]), 409),
        (errors.Busy("vm 'a'", "j1", "vm.start"), 409),
        (errors.Conflict("dup"), 409),
        (errors.Unsupported("no snapshots"), 501),
        (errors.DriverError("qemu failed", "boom"), 502),
        (errors.OperationTimeout("slow"), 504),
        (errors.InsufficientStorage("pool full"), 507),
        (errors.ServiceUnavailable("database full"), 503),
        (errors.VirtfleetError("other"), 400),
    ],
)
def test_status_for(error: errors.VirtfleetError, status: int) -> None:
    assert status_for(error) == status


def test_field_names_read_like_the_spec() -> None:
    assert _field_name(("body", "disks", 0, "path")) == "disks[0].path"
    assert _field_name(("query", "timeout")) == "timeout"
    assert _field_name(("body",)) == "body"
