"""`mlcanary db`: upgrade and check the database schema."""

from __future__ import annotations

import click

from controller.cli.common import settings_of


@click.group()
def db() -> None:
    """Database schema: upgrade and check."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the migrations up to head (SQLite or PostgreSQL)."""
    from storage import Database
    from storage import schema as db_schema

    settings = settings_of(ctx)
    database = Database(settings.resolved_database_url)
    before, after = db_schema.upgrade(database)
    click.echo(f"{database.display_url}: schema {before or 'empty'} -> {after}")


@db.command("check")
@click.pass_context
def db_check(ctx: click.Context) -> None:
    """Exit non-zero unless the schema is at head."""
    from storage import Database
    from storage import schema as db_schema

    database = Database(settings_of(ctx).resolved_database_url)
    db_schema.check(database)
    click.echo(f"{database.display_url}: schema at head {db_schema.head_revision(database)}")
