"""`mlcanary tokens`: admin API bearer tokens (with --api: through /api/v1/tokens, as an operator)."""

from __future__ import annotations

import click

from controller.cli.common import api_of, store_of
from controller.cli.remote import ApiClient


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
    given = api_of(ctx)
    if given is not None:
        click.echo(ApiClient(*given).call("POST", "/tokens", {"name": name, "role": role})["token"])
        return
    from storage.entities import NewEvent

    event = NewEvent(actor="cli", action="token.create", reason="created", message=f"token {name} ({role})")
    token, _ = store_of(ctx).tokens.create(name, role, event=event)
    click.echo(token)


@tokens.command("revoke")
@click.argument("name")
@click.pass_context
def tokens_revoke(ctx: click.Context, name: str) -> None:
    """Revoke a token by name."""
    given = api_of(ctx)
    if given is not None:
        ApiClient(*given).call("DELETE", f"/tokens/{name}")
        click.echo(f"revoked {name} through {given[0]}")
        return
    from storage.entities import NewEvent

    event = NewEvent(actor="cli", action="token.revoke", reason="revoked", message=f"token {name}")
    store_of(ctx).tokens.revoke(name, event=event)
    click.echo(f"revoked {name}")


@tokens.command("list")
@click.pass_context
def tokens_list(ctx: click.Context) -> None:
    """List tokens (never their secrets)."""
    given = api_of(ctx)
    if given is not None:
        for t in ApiClient(*given).call("GET", "/tokens")["tokens"]:
            click.echo(
                f"{t['name']:20} {t['role']:9} {'revoked ' + t['revoked_at'] if t['revoked_at'] else 'active'}"
            )
        return
    for token in store_of(ctx).tokens.list():
        revoked = token.revoked_at
        click.echo(
            f"{token.name:20} {token.role:9} {'revoked ' + revoked.isoformat() if revoked else 'active'}"
        )
