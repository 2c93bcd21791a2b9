"""Migrations run from code, and the check that a database's schema is the one this code expects.

Alembic is imported by the functions that migrate, not at the top: ``check`` runs at the start of every
command, and reads the migrations' head and the database's revision without it (importing Alembic,
Mako and Pygments would cost the CLI a third of a second; bench/cli_speed.py). A test checks that this
head is Alembic's.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text

from storage.database import Database, translate_errors
from storage.errors import SchemaOutOfDate

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps


def alembic_config(db: Database) -> Config:
    """Build an Alembic configuration for this database without an alembic.ini on disk."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    config.attributes["engine"] = db.engine
    return config


def head_revision(db: Database | None = None) -> str:
    """Return the revision id of the migrations' head, read from the versions' files without Alembic.

    Every file in migrations/versions declares ``revision`` and ``down_revision`` (a string, None or a
    tuple of strings for a merge) at module level; the head is the one revision no other revises.
    """
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        declared = _module_constants(path)
        if "revision" not in declared:
            continue
        revisions.add(str(declared["revision"]))
        down = declared.get("down_revision")
        revised.update((down,) if isinstance(down, str) else (str(r) for r in down or ()))  # type: ignore[attr-defined]
    heads = sorted(revisions - revised)
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return heads[0]


def _module_constants(path: Path) -> dict[str, object]:
    """Return a file's module-level ``name = <literal>`` assignments."""
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        if isinstance(target, ast.Name) and isinstance(node, ast.Assign | ast.AnnAssign):
            try:
                found[target.id] = ast.literal_eval(node.value)  # type: ignore[arg-type]
            except ValueError:
                continue
    return found


def current_revision(db: Database) -> str | None:
    """Return the database's current revision id (None for an empty database)."""
    with translate_errors(), db.engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise SchemaOutOfDate(", ".join(sorted(rows)), head_revision(), db.display_url)
    return rows[0] if rows else None


def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str]:
    """Apply migrations up to revision; return (revision before, revision after)."""
    from alembic import command

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
    with db.engine.connect() as conn:
        if inspect(conn).get_table_names():
            return False  # an existing database without our version table: leave it to `db upgrade`
    upgrade(db)
    return True
