"""The first schema: challenges, results, versioned policies and reference values.

Revision ID: 0001
Revises:
Create Date: 2025-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tsmr.service.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "challenges",
        sa.Column("nonce", sa.String(128), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_challenges_expires_at", "challenges", ["expires_at"])
    op.create_table(
        "results",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=True),
        sa.Column("policy_id", sa.String(300), nullable=True),
        sa.Column("refvals_id", sa.String(300), nullable=True),
        sa.Column("ear", sa.Text(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
    )
    op.create_index("ix_results_created_at", "results", ["created_at"])
    op.create_index("ix_results_nonce", "results", ["nonce"])
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rego", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("name", "version", name="uq_policies_name_version"),
    )
    op.create_index("ix_policies_name", "policies", ["name"])
    op.create_table(
        "reference_values",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("name", "version", name="uq_reference_values_name_version"),
    )
    op.create_index("ix_reference_values_name", "reference_values", ["name"])


def downgrade() -> None:
    for index, table in (("ix_reference_values_name", "reference_values"), ("ix_policies_name", "policies"),
                         ("ix_results_nonce", "results"), ("ix_results_created_at", "results"),
                         ("ix_challenges_expires_at", "challenges")):
        op.drop_index(index, table_name=table)
    for table in ("reference_values", "policies", "results", "challenges"):
        op.drop_table(table)
