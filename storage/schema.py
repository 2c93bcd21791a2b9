"""Migrations run from code, and the check that a database's schema is the one this code expects."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from storage.database import Database, translate_errors
from storage.errors import SchemaOutOfDate

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(db: Database) -> Config:
    """Build an Alembic configuration for this database without an alembic.ini on disk."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    config.attributes["engine"] = db.engine
    return config


def head_revision(db: Database) -> str:
    """Return the revision id of the migrations' head."""
    heads = ScriptDirectory.from_config(alembic_config(db)).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return heads[0]


def current_revision(db: Database) -> str | None:
    """Return the database's current revision id (None for an empty database)."""
    with translate_errors(), db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str]:
    """Apply migrations up to revision; return (revision before, revision after)."""
    before = current_revision(db)
    with translate_errors():
        command.upgrade(alembic_config(db), revision)
    return before, current_revision(db) or ""


def check(db: Database) -> None:
    """Raise SchemaOutOfDate, naming the command to run, unless the database is at head."""
    head = head_revision(db)
    current = current_revision(db)
    if current != head:
        raise SchemaOutOfDate(current, head, db.display_url)


def ensure_fresh_sqlite(db: Database) -> bool:
    """Create the schema in a brand-new SQLite database (the embedded default); True if it did."""
    if db.dialect != "sqlite" or current_revision(db) is not None:
        return False
    from sqlalchemy import inspect

    with db.engine.connect() as conn:
        if inspect(conn).get_table_names():
            return False  # an existing database without our version table: leave it to `db upgrade`
    upgrade(db)
    return True
