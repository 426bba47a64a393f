"""VM snapshots.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("parent_id", sa.String(36), nullable=True),
        sa.Column("current", sa.Boolean, nullable=False),
        sa.Column("vm_state", sa.String(16), nullable=False),
        sa.Column("layers_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("vm_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
