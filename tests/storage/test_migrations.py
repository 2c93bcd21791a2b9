"""Migrations: one head, they build exactly the models' schema, and an old schema is refused with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from storage import Database, SchemaOutOfDate
from storage import schema as db_schema
from storage.models import Base


def test_migrations_have_exactly_one_head(sqlite_url: str) -> None:
    heads = ScriptDirectory.from_config(db_schema.alembic_config(Database(sqlite_url))).get_heads()
    assert len(heads) == 1
    # the schema check reads the head from the files without Alembic: it must be Alembic's
    assert db_schema.head_revision() == heads[0]


def test_the_current_revision_is_the_one_alembic_reads(db: Database, tmp_path: Path) -> None:
    with db.engine.connect() as conn:
        assert db_schema.current_revision(db) == MigrationContext.configure(conn).get_current_revision()
    assert db_schema.current_revision(db) == db_schema.head_revision()
    assert db_schema.current_revision(Database(f"sqlite:///{tmp_path / 'empty.db'}")) is None


def test_models_and_migrations_agree(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_an_empty_database_is_refused_with_the_command_that_fixes_it(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaOutOfDate, match="mlcanary db upgrade --database-url"):
        db_schema.check(db)
    db_schema.upgrade(db)
    db_schema.check(db)


def test_the_embedded_default_creates_a_fresh_sqlite_file_itself(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "var" / "new.db"))
    assert db_schema.ensure_fresh_sqlite(db) is True
    db_schema.check(db)
    assert db_schema.ensure_fresh_sqlite(db) is False
