"""Repository for networks."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from virtfleet.errors import Conflict, NotFound
from virtfleet.model.network import Network, NetworkSpec
from virtfleet.store.db import Database, as_utc, utcnow
from virtfleet.store.tables import NetworkRow


def _network(row: NetworkRow) -> Network:
    return Network(name=row.name, spec=NetworkSpec.model_validate_json(row.spec_json), bridge=row.bridge,
                   created_at=as_utc(row.created_at))


class NetworkRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, spec: NetworkSpec, bridge: str | None) -> Network:
        try:
            with self.db.session() as session:
                row = NetworkRow(name=spec.name, mode=spec.mode, spec_json=spec.model_dump_json(), bridge=bridge,
                                 created_at=utcnow())
                session.add(row)
                session.flush()
                return _network(row)
        except IntegrityError:
            raise Conflict(f"a network named '{spec.name}' already exists") from None

    def get(self, name: str) -> Network:
        with self.db.session() as session:
            row = session.get(NetworkRow, name)
            if row is None:
                raise NotFound("network", name)
            return _network(row)

    def all(self) -> list[Network]:
        with self.db.session() as session:
            return [_network(row) for row in session.scalars(select(NetworkRow).order_by(NetworkRow.name))]

    def delete(self, name: str) -> None:
        with self.db.session() as session:
            row = session.get(NetworkRow, name)
            if row is not None:
                session.delete(row)
