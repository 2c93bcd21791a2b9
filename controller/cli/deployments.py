"""`mlcanary deployments`: create, list, show, archive, restore and delete deployments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from controller.cli.common import api_of, archive_or_restore, say_database, settings_of, store_of
from controller.cli.remote import ApiClient


@click.group()
def deployments() -> None:
    """Create, list, show, archive, restore and delete deployments."""


def _batching_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the adaptive batching options (docs/operations.md, "Adaptive batching")."""
    command = click.option(
        "--max-batch-rows",
        type=click.IntRange(1, 100_000),
        default=None,
        help="Most rows scored in one call (default 256).",
    )(command)
    command = click.option(
        "--max-batch-delay-ms",
        type=click.FloatRange(0, 1000),
        default=None,
        help="Longest a request waits for company, only while others are in flight (default 2 ms).",
    )(command)
    return click.option(
        "--batching/--no-batching",
        default=None,
        help="Score concurrent requests for one version in one call (default: on).",
    )(command)


@deployments.command("create")
@click.argument("name")
@click.option("--champion", required=True, help="The first champion, NAME:VERSION.")
@click.option("--no-raw-inputs", is_flag=True, help="Never store raw inputs of this deployment (privacy).")
@_batching_options
@click.pass_context
def deployments_create(
    ctx: click.Context,
    name: str,
    champion: str,
    no_raw_inputs: bool,
    batching: bool | None,
    max_batch_delay_ms: float | None,
    max_batch_rows: int | None,
) -> None:
    """Create deployment NAME served by a champion version."""
    given = api_of(ctx)
    if given is not None:
        body: dict[str, Any] = {"name": name, "champion": champion, "store_raw_inputs": not no_raw_inputs}
        if changes := _given_batching(batching, max_batch_delay_ms, max_batch_rows):
            body["batching"] = changes
        created = ApiClient(*given).call("POST", "/deployments", body)
        click.echo(
            f"created deployment {created['name']} with champion {created['champion']} through {given[0]}"
        )
        return
    from controller import registry
    from storage.entities import BatchingConfig, NewEvent

    config = BatchingConfig().replace(
        enabled=batching, max_batch_delay_ms=max_batch_delay_ms, max_batch_rows=max_batch_rows
    )
    store = store_of(ctx)
    version = store.pipelines.get_by_ref(champion)
    registry.check_loadable(version, trust_pickle=settings_of(ctx).trust_pickle)
    event = NewEvent(
        actor="cli", action="deployment.create", reason="created", message=f"champion {version.ref}"
    )
    deployment = store.deployments.create(
        name, version.id, store_raw_inputs=not no_raw_inputs, batching=config, event=event
    )
    click.echo(f"created deployment {deployment.name} with champion {version.ref}")
    say_database(ctx, always=True)  # a write: always say where it went


@deployments.command("configure")
@click.argument("name")
@_batching_options
@click.pass_context
def deployments_configure(
    ctx: click.Context,
    name: str,
    batching: bool | None,
    max_batch_delay_ms: float | None,
    max_batch_rows: int | None,
) -> None:
    """Change deployment NAME's adaptive batching; routers apply it within a refresh interval."""
    if batching is None and max_batch_delay_ms is None and max_batch_rows is None:
        raise click.UsageError(
            "nothing to change: give --batching/--no-batching, --max-batch-delay-ms or --max-batch-rows"
        )
    changes = _given_batching(batching, max_batch_delay_ms, max_batch_rows)
    given = api_of(ctx)
    if given is not None:
        shown = ApiClient(*given).call("PATCH", f"/deployments/{name}", {"batching": changes})["batching"]
        click.echo(f"deployment {name}: batching {_batching_text(shown)} through {given[0]}")
        return
    from controller import lifecycle
    from controller.cli.common import actor

    deployment = lifecycle.configure_deployment(store_of(ctx), name, actor=actor(), **changes)
    click.echo(f"deployment {deployment.name}: batching {_batching_text(deployment.batching.to_json())}")
    say_database(ctx, always=True)


def _given_batching(
    enabled: bool | None, max_batch_delay_ms: float | None, max_batch_rows: int | None
) -> dict[str, Any]:
    """The batching settings given on the command line (those left out are not changed)."""
    given = {"enabled": enabled, "max_batch_delay_ms": max_batch_delay_ms, "max_batch_rows": max_batch_rows}
    return {key: value for key, value in given.items() if value is not None}


def _batching_text(batching: dict[str, Any]) -> str:
    if not batching["enabled"]:
        return "off"
    return f"on, at most {batching['max_batch_rows']} rows and {batching['max_batch_delay_ms']:g} ms"


@deployments.command("list")
@click.option("--all", "archived", is_flag=True, help="Archived deployments too.")
@click.pass_context
def deployments_list(ctx: click.Context, archived: bool) -> None:
    """List deployments with their champion and active rollout (not the archived ones, unless --all)."""
    given = api_of(ctx)
    if given is not None:
        params = {"archived": "true"} if archived else {}
        listed = ApiClient(*given).call("GET", "/deployments", **params)["deployments"]
        if not listed:
            click.echo("no deployments")
        for d in listed:
            challenger = (
                f" challenger {d['challenger']} ({d['mode']}, {d['weights']['challenger']:g}%)"
                if d["challenger"]
                else ""
            )
            click.echo(f"{d['name']}: champion {d['champion']}{challenger}{_archived(d.get('archived_at'))}")
        return
    store = store_of(ctx)
    table = store.routing.load_table()
    if not table and not archived:
        click.echo("no deployments")
        return
    for name, entry in table.items():
        challenger = (
            f" challenger {entry.challenger.ref} ({entry.mode}, {entry.canary_weight:g}%)"
            if entry.challenger
            else ""
        )
        click.echo(f"{name}: champion {entry.champion.ref}{challenger}")
    if archived:
        for d in store.deployments.list(archived=True):
            if d.archived_at is not None:
                champion = store.pipelines.get(d.champion_id).ref
                click.echo(f"{d.name}: champion {champion}{_archived(d.archived_at)}")


def _archived(when: object) -> str:
    return f" (archived {str(when)[:19]})" if when else ""


@deployments.command("archive")
@click.argument("name")
@click.option("--reason", default="", help="Why (written in the event).")
@click.pass_context
def deployments_archive(ctx: click.Context, name: str, reason: str) -> None:
    """Archive deployment NAME: no longer routed (404 deployment_not_found), history kept.

    Refused while it has an active rollout.
    """
    from controller import lifecycle

    def local(store: Any, actor: str) -> str:
        lifecycle.archive_deployment(store, name, actor=actor, reason=reason)
        return f"archived deployment {name}: routers stop serving it within about a second"

    archive_or_restore(ctx, f"/deployments/{name}", "archive", f"deployment {name}", reason, local)


@deployments.command("restore")
@click.argument("name")
@click.option("--reason", default="", help="Why (written in the event).")
@click.pass_context
def deployments_restore(ctx: click.Context, name: str, reason: str) -> None:
    """Restore an archived deployment: routed again."""
    from controller import lifecycle

    def local(store: Any, actor: str) -> str:
        lifecycle.restore_deployment(store, name, actor=actor, reason=reason)
        return f"restored deployment {name}"

    archive_or_restore(ctx, f"/deployments/{name}", "restore", f"deployment {name}", reason, local)


@deployments.command("delete")
@click.argument("name")
@click.option("--reason", default="", help="Why (written in the event).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def deployments_delete(ctx: click.Context, name: str, reason: str, yes: bool) -> None:
    """Delete deployment NAME with its rollouts, pairs and labels; its events stay in the log.

    Refused while it has an active rollout. To keep the data, archive it instead.
    """
    if not yes:
        click.confirm(f"delete deployment {name} with its rollouts, paired outputs and labels?", abort=True)
    given = api_of(ctx)
    if given is not None:
        answer = ApiClient(*given).call(
            "DELETE", f"/deployments/{name}", {"reason": reason} if reason else {}
        )
        where = f" through {given[0]}"
    else:
        from controller import lifecycle
        from controller.cli.common import actor

        answer = lifecycle.delete_deployment(store_of(ctx), name, actor=actor(), reason=reason)
        where = ""
    counts = ", ".join(f"{n:,} {what.replace('_', ' ')}" for what, n in answer["deleted"].items())
    click.echo(f"deleted deployment {name} ({counts}){where}; its events stay in the log")
    if given is None:
        say_database(ctx, always=True)


@deployments.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The same document as GET /api/v1/deployments/NAME.")
@click.pass_context
def deployments_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one deployment: champion, challenger, phase, weights, live figures, last verdicts."""
    from controller.cli.rollout import status

    ctx.invoke(status, deployment=name, as_json=as_json)
