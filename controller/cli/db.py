"""`mlcanary db`: upgrade and check the database schema."""

from __future__ import annotations

import click

from controller.cli.common import close_at_exit, refuse_api, say_database, settings_of

# why the schema commands have no admin API route (docs/cli.md says the same)
NO_API = "it migrates or checks the database itself, which the server must not do while it serves"


@click.group()
def db() -> None:
    """Database schema: upgrade and check."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the migrations up to head (SQLite or PostgreSQL)."""
    refuse_api(ctx, NO_API)
    from controller.app import database_for
    from storage import schema as db_schema

    settings = settings_of(ctx)
    say_database(ctx, always=True)
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    database = close_at_exit(database_for(settings))
    before, after = db_schema.upgrade(database)
    click.echo(f"{database.display_url}: schema {before or 'empty'} -> {after}")


@db.command("check")
@click.pass_context
def db_check(ctx: click.Context) -> None:
    """Exit non-zero unless the schema is at head."""
    refuse_api(ctx, NO_API)
    from controller.app import NoDatabase, create_command, database_for
    from storage import schema as db_schema

    settings = settings_of(ctx)
    say_database(ctx)
    path = settings.sqlite_path
    if path is not None and not path.is_file():  # never create an empty file just to look at it
        raise NoDatabase(f"no database at {path}; run: {create_command(settings)}")
    database = close_at_exit(database_for(settings))
    db_schema.check(database)
    click.echo(f"{database.display_url}: schema at head {db_schema.head_revision(database)}")
