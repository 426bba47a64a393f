"""Usage samples of running VMs (the last hour).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vm_samples",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("vm_id", sa.String(36), sa.ForeignKey("vms.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("cpu_seconds", sa.Float, nullable=False),
        sa.Column("memory_bytes", sa.BigInteger, nullable=False),
        sa.Column("disk_read_bytes", sa.BigInteger, nullable=False),
        sa.Column("disk_write_bytes", sa.BigInteger, nullable=False),
        sa.Column("net_rx_bytes", sa.BigInteger, nullable=False),
        sa.Column("net_tx_bytes", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("vm_samples")
