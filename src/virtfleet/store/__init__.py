"""Persistent state: SQLAlchemy 2 on SQLite (one host) or PostgreSQL (a cluster), migrated by Alembic."""
