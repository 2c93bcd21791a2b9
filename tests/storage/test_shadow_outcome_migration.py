"""Migration 0003 classifies stored rows: legacy "errors" that never scored become skips, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import text

from storage import Database, Store
from storage import schema as db_schema
from storage.entities import Column, NewPipelineVersion

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
LEGACY = {  # challenger error (or None), challenger latency -> expected (status, skip reason, error kept)
    "ok": (None, 4.0, ("ok", None, False)),
    "failed": ("RuntimeError: boom", 4.0, ("error", None, True)),
    "dropped": ("shadow_dropped: the shadow queue was full", None, ("skipped", "queue_full", False)),
    "cancelled": (
        "shadow_cancelled: the router shut down before scoring",
        None,
        ("skipped", "shutdown", False),
    ),
    "timeout": ("shadow_timeout: no result within the shadow timeout", 2000.0, ("error", None, True)),
    "not_asked": (None, None, (None, None, False)),
}


def test_upgrading_to_0003_turns_legacy_drops_and_cancellations_into_skips(db: Database) -> None:
    store = Store(db)
    version = store.pipelines.add(
        NewPipelineVersion(name="m", version="1", kind="artifact", task="classification",
                           input_schema=(Column("x", "float"),))
    )  # fmt: skip
    deployment = store.deployments.create("m", version.id)
    command.downgrade(db_schema.alembic_config(db), "0002")
    try:
        with db.engine.begin() as conn:
            for name, (error, latency, _) in LEGACY.items():
                conn.execute(
                    text(
                        "INSERT INTO paired_outputs (request_id, row_index, deployment_id, received_at, "
                        "routing_key_hash, served_arm, champion_latency_ms, challenger_latency_ms, "
                        "challenger_error) VALUES (:r, 0, :d, :t, 1, 'champion', 1.0, :l, :e)"
                    ),
                    {"r": name, "d": deployment.id, "t": T0.replace(tzinfo=None), "l": latency, "e": error},
                )
    finally:
        db_schema.upgrade(db)
    stored = {p.request_id: p for p in store.pairs.list()}
    for name, (error, _, (status, reason, kept)) in LEGACY.items():
        p = stored[name]
        assert (p.challenger_status, p.skip_reason) == (status, reason), name
        assert p.challenger_error == (error if kept else None), name
        assert p.champion_status == "ok"
