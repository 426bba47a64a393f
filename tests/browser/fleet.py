"""A fleet of VMs made fast for scale tests: rows written straight into the store before the server starts (10,000
POSTs would take minutes, and what is tested is the list, not creation)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from virtfleet.jobs.vms import host_name
from virtfleet.model.network import NetworkSpec, NicSpec
from virtfleet.model.vm import VmSpec, VmState
from virtfleet.store.db import Database
from virtfleet.store.network_repo import NetworkRepo
from virtfleet.store.tables import SPEC_SCHEMA_VERSION, EventRow, VmRow


def fleet_name(index: int) -> str:
    return f"vm-{index}"


def seed_vms(db: Database, count: int) -> None:
    """`count` stopped VMs vm-0 ... vm-<count-1> on this host, each with its "created" event and a NIC on the user
    network "lan", in one transaction. Stopped, because the fake driver of the server to come knows none of them: the
    reconciler would call a running one crashed."""
    NetworkRepo(db).add(NetworkSpec(name="lan", mode="user"), None)
    now = datetime.now(UTC)
    host = host_name()
    rows, events = [], []
    for index in range(count):
        mac = "52:54:00:" + ":".join(f"{byte:02x}" for byte in index.to_bytes(3, "big"))
        spec = VmSpec(name=fleet_name(index), cpus=1 + index % 4, memory=256 * (1 + index % 8),
                      nics=[NicSpec(network="lan", mac=mac)])
        vm_id = str(uuid.uuid4())
        rows.append({"id": vm_id, "name": spec.name, "spec_json": spec.model_dump_json(),
                     "spec_version": SPEC_SCHEMA_VERSION, "state": VmState.STOPPED.value, "state_reason": "created",
                     "host": host, "accel": "", "template": False, "created_at": now, "updated_at": now})
        events.append({"vm_id": vm_id, "time": now, "kind": "created", "message": f"created on {host}"})
    with db.session() as session:
        session.execute(VmRow.__table__.insert(), rows)
        session.execute(EventRow.__table__.insert(), events)
