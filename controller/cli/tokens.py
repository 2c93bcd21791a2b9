"""`mlcanary tokens`: admin API bearer tokens."""

from __future__ import annotations

import click

from controller.cli.common import store_of


@click.group()
def tokens() -> None:
    """Admin API bearer tokens (stored hashed; shown once)."""


@tokens.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator", "labeller"]),
    default="viewer",
    show_default=True,
    help="viewer: admin API reads; operator: everything; labeller: POST feedback labels only.",
)
@click.pass_context
def tokens_create(ctx: click.Context, name: str, role: str) -> None:
    """Create a token and print it once."""
    from storage.entities import NewEvent

    event = NewEvent(actor="cli", action="token.create", reason="created", message=f"token {name} ({role})")
    token, _ = store_of(ctx).tokens.create(name, role, event=event)
    click.echo(token)


@tokens.command("revoke")
@click.argument("name")
@click.pass_context
def tokens_revoke(ctx: click.Context, name: str) -> None:
    """Revoke a token by name."""
    from storage.entities import NewEvent

    event = NewEvent(actor="cli", action="token.revoke", reason="revoked", message=f"token {name}")
    store_of(ctx).tokens.revoke(name, event=event)
    click.echo(f"revoked {name}")


@tokens.command("list")
@click.pass_context
def tokens_list(ctx: click.Context) -> None:
    """List tokens (never their secrets)."""
    for t in store_of(ctx).tokens.list():
        click.echo(
            f"{t.name:20} {t.role:9} {'revoked ' + t.revoked_at.isoformat() if t.revoked_at else 'active'}"
        )
