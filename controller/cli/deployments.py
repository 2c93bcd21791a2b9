"""`mlcanary deployments`: create, list and show deployments."""

from __future__ import annotations

import click

from controller.cli.common import api_of, say_database, settings_of, store_of
from controller.cli.remote import ApiClient


@click.group()
def deployments() -> None:
    """Create, list and show deployments."""


@deployments.command("create")
@click.argument("name")
@click.option("--champion", required=True, help="The first champion, NAME:VERSION.")
@click.option("--no-raw-inputs", is_flag=True, help="Never store raw inputs of this deployment (privacy).")
@click.pass_context
def deployments_create(ctx: click.Context, name: str, champion: str, no_raw_inputs: bool) -> None:
    """Create deployment NAME served by a champion version."""
    given = api_of(ctx)
    if given is not None:
        body = {"name": name, "champion": champion, "store_raw_inputs": not no_raw_inputs}
        created = ApiClient(*given).call("POST", "/deployments", body)
        click.echo(
            f"created deployment {created['name']} with champion {created['champion']} through {given[0]}"
        )
        return
    from controller import registry
    from storage.entities import NewEvent

    store = store_of(ctx)
    version = store.pipelines.get_by_ref(champion)
    registry.check_loadable(version, trust_pickle=settings_of(ctx).trust_pickle)
    event = NewEvent(
        actor="cli", action="deployment.create", reason="created", message=f"champion {version.ref}"
    )
    deployment = store.deployments.create(name, version.id, store_raw_inputs=not no_raw_inputs, event=event)
    click.echo(f"created deployment {deployment.name} with champion {version.ref}")
    say_database(ctx, always=True)  # a write: always say where it went


@deployments.command("list")
@click.pass_context
def deployments_list(ctx: click.Context) -> None:
    """List deployments with their champion and active rollout."""
    given = api_of(ctx)
    if given is not None:
        listed = ApiClient(*given).call("GET", "/deployments")["deployments"]
        if not listed:
            click.echo("no deployments")
        for d in listed:
            challenger = (
                f" challenger {d['challenger']} ({d['mode']}, {d['weights']['challenger']:g}%)"
                if d["challenger"]
                else ""
            )
            click.echo(f"{d['name']}: champion {d['champion']}{challenger}")
        return
    store = store_of(ctx)
    table = store.routing.load_table()
    if not table:
        click.echo("no deployments")
        return
    for name, entry in table.items():
        challenger = (
            f" challenger {entry.challenger.ref} ({entry.mode}, {entry.canary_weight:g}%)"
            if entry.challenger
            else ""
        )
        click.echo(f"{name}: champion {entry.champion.ref}{challenger}")


@deployments.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The same document as GET /api/v1/deployments/NAME.")
@click.pass_context
def deployments_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one deployment: champion, challenger, phase, weights, live figures, last verdicts."""
    from controller.cli.rollout import status

    ctx.invoke(status, deployment=name, as_json=as_json)
