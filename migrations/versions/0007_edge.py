"""edge: trusted types per pipeline version, request ids unique per deployment, pending labels

- pipeline_versions.trusted_types: exact names an operator trusted in the version's skops file;
- paired_outputs: unique (deployment_id, request_id, row_index) instead of (request_id, row_index),
  so a client id reused on another deployment no longer drops a pair;
- labels: primary key (request_id, row_index, deployment_id) to match, and `pending` (no pair of the
  row yet) with an index, so labels of unknown requests are kept only within a bounded window.

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import warnings

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("pipeline_versions") as batch:
        batch.add_column(sa.Column("trusted_types", JSONType, nullable=True))
    with op.batch_alter_table("paired_outputs") as batch:
        batch.drop_constraint("uq_paired_outputs_request", type_="unique")
        batch.create_unique_constraint(
            "uq_paired_outputs_request", ["deployment_id", "request_id", "row_index"]
        )
    postgres = op.get_bind().dialect.name == "postgresql"
    with warnings.catch_warnings():  # SQLite's copy warns that its primary key changes: it is meant to
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        with op.batch_alter_table("labels", recreate="always") as batch:
            if postgres:
                batch.drop_constraint("labels_pkey", type_="primary")
            batch.create_primary_key("labels_pkey", ["request_id", "row_index", "deployment_id"])
            batch.add_column(sa.Column("pending", sa.Boolean(), server_default=sa.false(), nullable=False))
            batch.create_index("ix_labels_pending", ["deployment_id", "pending", "received_at"])


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        with op.batch_alter_table("labels", recreate="always") as batch:
            batch.drop_index("ix_labels_pending")
            batch.drop_column("pending")
            if postgres:
                batch.drop_constraint("labels_pkey", type_="primary")
            batch.create_primary_key("labels_pkey", ["request_id", "row_index"])
    with op.batch_alter_table("paired_outputs") as batch:
        batch.drop_constraint("uq_paired_outputs_request", type_="unique")
        batch.create_unique_constraint("uq_paired_outputs_request", ["request_id", "row_index"])
    with op.batch_alter_table("pipeline_versions") as batch:
        batch.drop_column("trusted_types")
