"""The node registry: enrolled nodes, their state history, and the node a result belongs to.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tsmr.service.db import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("identity", sa.JSON(), nullable=False),
        sa.Column("policy", sa.String(128), nullable=True),
        sa.Column("refvals", sa.String(128), nullable=True),
        sa.Column("interval_s", sa.Integer(), nullable=False, server_default="60"),
        sa.Column("state", sa.String(24), nullable=False, server_default="unknown"),
        sa.Column("state_since", UTCDateTime(), nullable=False),
        sa.Column("last_result_id", sa.String(36), nullable=True),
        sa.Column("last_attested_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "node_states",
        sa.Column("node_id", sa.String(128), sa.ForeignKey("nodes.id"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("result_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    # A nullable column without a default: an ALTER TABLE ADD COLUMN on both, no copy of the table.
    op.add_column("results", sa.Column("node_id", sa.String(128), nullable=True))
    op.create_index("ix_results_node_id", "results", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_results_node_id", table_name="results")
    with op.batch_alter_table("results") as batch:
        batch.drop_column("node_id")
    op.drop_table("node_states")
    op.drop_table("nodes")
