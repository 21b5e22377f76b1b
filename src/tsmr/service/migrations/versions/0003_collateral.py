"""The shared collateral cache: verified documents and the fetch leases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tsmr.service.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "collateral",
        sa.Column("key_id", sa.String(512), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=False),
        sa.Column("refresh_after", UTCDateTime(), nullable=False),
        sa.Column("fetched_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_collateral_refresh_after", "collateral", ["refresh_after"])
    op.create_table(
        "collateral_leases",
        sa.Column("key_id", sa.String(512), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("collateral_leases")
    op.drop_index("ix_collateral_refresh_after", table_name="collateral")
    op.drop_table("collateral")
