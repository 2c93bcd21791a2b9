"""`mlcanary prune`: delete old paired outputs and labels in batches."""

from __future__ import annotations

import click

from controller.cli.common import api_of, clock_of, parse_age, store_of
from controller.cli.remote import ApiClient


@click.command()
@click.option("--older-than", "older_than", required=True, help="Age to keep, e.g. 30d, 12h.")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.pass_context
def prune(ctx: click.Context, older_than: str, batch_size: int) -> None:
    """Delete paired outputs and labels older than an age, in small batches that never block writers."""
    given = api_of(ctx)
    if given is not None:
        parse_age(older_than)  # a malformed age is refused here, before any request
        done = ApiClient(*given).call("POST", "/prune", {"older_than": older_than, "batch_size": batch_size})
        click.echo(
            f"pruned {done['pairs']} paired outputs and {done['labels']} labels received before "
            f"{done['before']} through {given[0]}"
        )
        return
    cutoff = clock_of(ctx)() - parse_age(older_than)
    store = store_of(ctx)
    pairs = store.pairs.prune(before=cutoff, batch_size=batch_size)
    labels = store.labels.prune(before=cutoff, batch_size=batch_size)
    click.echo(f"pruned {pairs} paired outputs and {labels} labels received before {cutoff.isoformat()}")
