"""`mlcanary db`: upgrade and check the database schema."""

from __future__ import annotations

import click

from controller.cli.common import say_database, settings_of


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
    say_database(ctx, always=True)
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url)
    before, after = db_schema.upgrade(database)
    click.echo(f"{database.display_url}: schema {before or 'empty'} -> {after}")


@db.command("check")
@click.pass_context
def db_check(ctx: click.Context) -> None:
    """Exit non-zero unless the schema is at head."""
    from controller.app import NoDatabase, create_command
    from storage import Database
    from storage import schema as db_schema

    settings = settings_of(ctx)
    say_database(ctx)
    path = settings.sqlite_path
    if path is not None and not path.is_file():  # never create an empty file just to look at it
        raise NoDatabase(f"no database at {path}; run: {create_command(settings)}")
    database = Database(settings.resolved_database_url)
    db_schema.check(database)
    click.echo(f"{database.display_url}: schema at head {db_schema.head_revision(database)}")
