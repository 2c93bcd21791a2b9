"""Database helpers shared by tests."""

from __future__ import annotations

from storage import Database

TABLES = (
    "analyses",
    "events",
    "labels",
    "paired_outputs",
    "rollouts",
    "deployments",
    "pipeline_versions",
    "api_tokens",
)


def truncate_postgres(url: str) -> None:
    db = Database(url)
    with db.engine.begin() as conn:
        extra = [
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'"
            )
        ]
        conn.exec_driver_sql(
            f"TRUNCATE {', '.join(sorted(set(TABLES) | set(extra)))} RESTART IDENTITY CASCADE"
        )
    db.dispose()
