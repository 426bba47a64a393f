"""Repository for VM snapshots."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from virtfleet.errors import Conflict, NotFound
from virtfleet.model.snapshot import Snapshot, SnapshotKind, SnapshotLayer
from virtfleet.store.db import Database, as_utc, utcnow
from virtfleet.store.tables import SnapshotRow


class SnapshotRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _all_rows(self, vm_id: str) -> list[SnapshotRow]:
        with self.db.session() as session:
            return list(session.scalars(select(SnapshotRow).where(SnapshotRow.vm_id == vm_id)
                                        .order_by(SnapshotRow.created_at)))

    def for_vm(self, vm_id: str) -> list[Snapshot]:
        rows = self._all_rows(vm_id)
        names = {row.id: row.name for row in rows}
        return [
            Snapshot(id=r.id, vm_id=r.vm_id, name=r.name, kind=r.kind,
                     description=r.description, parent=names.get(r.parent_id) if r.parent_id else None,
                     current=r.current, vm_state=r.vm_state,
                     layers=[SnapshotLayer.model_validate(x) for x in json.loads(r.layers_json)],
                     created_at=as_utc(r.created_at))
            for r in rows
        ]

    def get(self, vm_id: str, name: str) -> Snapshot:
        for snapshot in self.for_vm(vm_id):
            if snapshot.name == name:
                return snapshot
        raise NotFound("snapshot", name)

    def current(self, vm_id: str) -> Snapshot | None:
        return next((s for s in self.for_vm(vm_id) if s.current), None)

    def add(self, vm_id: str, name: str, kind: SnapshotKind, description: str, vm_state: str,
            layers: list[SnapshotLayer], *, snapshot_id: str | None = None) -> Snapshot:
        """Record a snapshot as the VM's current one; `snapshot_id` when it was chosen before the files were made."""
        parent = self.current(vm_id)
        try:
            with self.db.session() as session:
                session.execute(update(SnapshotRow).where(SnapshotRow.vm_id == vm_id).values(current=False))
                session.add(SnapshotRow(
                    id=snapshot_id or str(uuid.uuid4()), vm_id=vm_id, name=name, kind=kind, description=description,
                    parent_id=parent.id if parent else None, current=True, vm_state=vm_state,
                    layers_json=json.dumps([layer.model_dump() for layer in layers]), created_at=utcnow(),
                ))
        except IntegrityError:
            raise Conflict(f"a snapshot named '{name}' already exists") from None
        return self.get(vm_id, name)

    def set_current(self, vm_id: str, snapshot_id: str | None) -> None:
        with self.db.session() as session:
            session.execute(update(SnapshotRow).where(SnapshotRow.vm_id == vm_id)
                            .values(current=SnapshotRow.id == snapshot_id))

    def set_layers(self, snapshot_id: str, layers: list[SnapshotLayer]) -> None:
        with self.db.session() as session:
            session.execute(update(SnapshotRow).where(SnapshotRow.id == snapshot_id)
                            .values(layers_json=json.dumps([layer.model_dump() for layer in layers])))

    def delete(self, snapshot: Snapshot) -> None:
        """Remove a snapshot; its children hang from its parent, and if it was current its parent becomes so."""
        with self.db.session() as session:
            row = session.get(SnapshotRow, snapshot.id)
            if row is None:
                return
            session.execute(update(SnapshotRow).where(SnapshotRow.parent_id == row.id)
                            .values(parent_id=row.parent_id))
            if row.current and row.parent_id:
                session.execute(update(SnapshotRow).where(SnapshotRow.id == row.parent_id).values(current=True))
            session.delete(row)
