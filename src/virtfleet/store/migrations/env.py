"""Alembic environment: run against the connection virtfleet hands over (see store/db.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from virtfleet.store.tables import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when run through the alembic CLI by hand
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
