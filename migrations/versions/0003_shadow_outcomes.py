"""shadow outcomes: each arm's status (ok | error | skipped), why a shadow job was skipped, its queue wait

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Existing rows are classified as the analytics did before: an error → "error", a latency → "ok".
The two legacy shadow "errors" that never scored anything (a full queue, a shutdown) become skips;
a legacy "shadow_timeout" stays an error (whether it waited or scored cannot be told afterwards).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0007"
branch_labels = None
depends_on = None

LEGACY_SKIPS = (("shadow_dropped%", "queue_full"), ("shadow_cancelled%", "shutdown"))


def upgrade() -> None:
    with op.batch_alter_table("paired_outputs") as batch:
        batch.add_column(sa.Column("champion_status", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("challenger_status", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("skip_reason", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("shadow_wait_ms", sa.Float(), nullable=True))
    for arm in ("champion", "challenger"):
        op.execute(
            f"UPDATE paired_outputs SET {arm}_status = CASE "
            f"WHEN {arm}_error IS NOT NULL THEN 'error' "
            f"WHEN {arm}_latency_ms IS NOT NULL THEN 'ok' END"
        )
        for pattern, reason in LEGACY_SKIPS:
            op.execute(
                f"UPDATE paired_outputs SET {arm}_status = 'skipped', skip_reason = '{reason}', "
                f"{arm}_error = NULL WHERE {arm}_error LIKE '{pattern}'"
            )


def downgrade() -> None:
    with op.batch_alter_table("paired_outputs") as batch:
        batch.drop_column("shadow_wait_ms")
        batch.drop_column("skip_reason")
        batch.drop_column("challenger_status")
        batch.drop_column("champion_status")
