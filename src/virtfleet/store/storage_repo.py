"""Repository for pools and volumes, on the same Database (engine and sessions) as everything else."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from virtfleet.errors import Conflict, NotFound
from virtfleet.model.storage import Pool, PoolSpec, Volume, VolumeFormat
from virtfleet.store.db import Database, as_utc, utcnow
from virtfleet.store.tables import PoolRow, VolumeRow

# Kept beside the spec in spec_json (no column needed): whether virtfleet made the pool's directory. Rows written
# before it existed lack it and read as False, so their directories are never removed.
_OWNS_PATH = "virtfleet_owns_path"


def _pool(row: PoolRow) -> Pool:
    data = json.loads(row.spec_json)
    owns_path = data.pop(_OWNS_PATH, False) is True
    return Pool(name=row.name, spec=PoolSpec.model_validate(data), mount_path=row.mount_path, owns_path=owns_path,
                created_at=as_utc(row.created_at))


class StorageRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- pools ---------------------------------------------------------------------------------------------
    def add_pool(self, spec: PoolSpec, mount_path: str, *, owns_path: bool = False) -> Pool:
        spec_json = json.dumps({**spec.model_dump(mode="json"), _OWNS_PATH: owns_path})
        try:
            with self.db.session() as session:
                row = PoolRow(name=spec.name, type=spec.type, spec_json=spec_json, mount_path=mount_path,
                              created_at=utcnow())
                session.add(row)
                session.flush()
                return _pool(row)
        except IntegrityError:
            raise Conflict(f"a pool named '{spec.name}' already exists") from None

    def get_pool(self, name: str) -> Pool:
        with self.db.session() as session:
            row = session.get(PoolRow, name)
            if row is None:
                raise NotFound("pool", name)
            return _pool(row)

    def list_pools(self) -> list[Pool]:
        with self.db.session() as session:
            return [_pool(row) for row in session.scalars(select(PoolRow).order_by(PoolRow.name))]

    def delete_pool(self, name: str) -> None:
        with self.db.session() as session:
            row = session.get(PoolRow, name)
            if row is not None:
                session.delete(row)

    # --- volumes -------------------------------------------------------------------------------------------
    def _volume(self, row: VolumeRow, bases: dict[str, str]) -> Volume:
        return Volume(
            id=row.id, pool=row.pool, name=row.name, format=row.format,
            size=row.size, path=row.path, template=row.template,
            base=bases.get(row.base_id) if row.base_id else None, created_at=as_utc(row.created_at),
        )

    def _with_bases(self, rows: list[VolumeRow]) -> list[Volume]:
        base_ids = {r.base_id for r in rows if r.base_id}
        bases: dict[str, str] = {}
        if base_ids:
            with self.db.session() as session:
                for base in session.scalars(select(VolumeRow).where(VolumeRow.id.in_(base_ids))):
                    bases[base.id] = f"{base.pool}/{base.name}"
        return [self._volume(r, bases) for r in rows]

    def add_volume(self, pool: str, name: str, fmt: VolumeFormat, size: int, path: str, *,
                   template: bool = False, base_id: str | None = None) -> Volume:
        try:
            with self.db.session() as session:
                row = VolumeRow(id=str(uuid.uuid4()), pool=pool, name=name, format=fmt, size=size, path=path,
                                template=template, base_id=base_id, created_at=utcnow())
                session.add(row)
                session.flush()
        except IntegrityError:
            raise Conflict(f"a volume named '{pool}/{name}' already exists") from None
        return self._with_bases([row])[0]

    def get_volume(self, pool: str, name: str) -> Volume:
        with self.db.session() as session:
            row = session.scalar(select(VolumeRow).where(VolumeRow.pool == pool, VolumeRow.name == name))
            if row is None:
                raise NotFound("volume", f"{pool}/{name}")
        return self._with_bases([row])[0]

    def get_volume_by_id(self, volume_id: str) -> Volume:
        with self.db.session() as session:
            row = session.get(VolumeRow, volume_id)
            if row is None:
                raise NotFound("volume", volume_id)
        return self._with_bases([row])[0]

    def list_volumes(self, pool: str | None = None) -> list[Volume]:
        query = select(VolumeRow).order_by(VolumeRow.pool, VolumeRow.name)
        if pool is not None:
            query = query.where(VolumeRow.pool == pool)
        with self.db.session() as session:
            rows = list(session.scalars(query))
        return self._with_bases(rows)

    def dependents(self, volume_id: str) -> list[Volume]:
        """Linked clones backed by this volume."""
        with self.db.session() as session:
            rows = list(session.scalars(select(VolumeRow).where(VolumeRow.base_id == volume_id)))
        return self._with_bases(rows)

    def update_volume(self, volume_id: str, *, size: int | None = None, template: bool | None = None,
                      path: str | None = None, format: VolumeFormat | None = None) -> Volume:
        with self.db.session() as session:
            row = session.get(VolumeRow, volume_id)
            if row is None:
                raise NotFound("volume", volume_id)
            if size is not None:
                row.size = size
            if template is not None:
                row.template = template
            if path is not None:
                row.path = path
            if format is not None:
                row.format = format
        return self._with_bases([row])[0]

    def delete_volume(self, volume_id: str) -> None:
        with self.db.session() as session:
            row = session.get(VolumeRow, volume_id)
            if row is not None:
                session.delete(row)
