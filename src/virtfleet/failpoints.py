"""Failpoints: a test-only way to kill the daemon at a named step of a multi-step operation.

`VIRTFLEET_FAILPOINTS=snapshot.create.after-switch,volume.create.after-file` makes the process SIGKILL itself the
moment it reaches one of those steps, so every recovery path is proven by a test that dies exactly there, not by
timing luck. Unset (always, outside tests) it costs one dictionary lookup per step.

Every name is declared in POINTS with what is true at that moment; `hit` refuses an undeclared name, so the catalog
below is the complete list a test suite can walk.
"""

from __future__ import annotations

import os
import signal

ENV = "VIRTFLEET_FAILPOINTS"

POINTS: dict[str, str] = {
    # volumes (jobs/storage.py)
    "volume.create.after-intent": "the intent is recorded, no file exists yet",
    "volume.create.after-file": "the volume's file exists under its final name, no record yet",
    "volume.clone.after-file": "the clone's file exists under its final name, no record yet",
    "volume.register.after-file": "an upload or import is moved into place under its final name, no record yet",
    "volume.register.after-record": "the uploaded or imported volume is recorded, the intent not yet closed",
}


def declare(name: str, meaning: str) -> None:
    """Add a failpoint to the catalog (modules declare theirs next to the code that hits them)."""
    POINTS[name] = meaning


def armed() -> frozenset[str]:
    return frozenset(filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))))


def hit(name: str) -> None:
    """Die here (SIGKILL: no cleanup, no finally blocks, like a power cut of the daemon) if `name` is armed."""
    if name not in POINTS:
        raise KeyError(f"undeclared failpoint {name!r}")
    if ENV in os.environ and name in armed():
        os.kill(os.getpid(), signal.SIGKILL)
