"""`mlcanary report`: write a rollout's comparison report as HTML, JSON or Markdown."""

from __future__ import annotations

from pathlib import Path

import click


class _Format(click.Choice):
    """The one documented name is ``markdown``; ``md``, the old spelling, is still accepted."""

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        return super().convert("markdown" if value == "md" else value, param, ctx)


@click.command("report")
@click.argument("deployment")
@click.option("--rollout", "rollout_id", type=int, help="Rollout id (default: the deployment's latest).")
@click.option(
    "--segment", "segments", multiple=True, help="Raw-input column to break results down by (repeatable)."
)
@click.option(
    "--format",
    "fmt",
    type=_Format(["html", "json", "markdown"]),
    default="html",
    show_default=True,
    help="html, json or markdown (as the admin API's ?format=).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write ('-' for standard output).",
)
@click.pass_context
def report(
    ctx: click.Context,
    deployment: str,
    rollout_id: int | None,
    segments: tuple[str, ...],
    fmt: str,
    output: Path,
) -> None:
    """Write the comparison report of DEPLOYMENT's latest (or --rollout) rollout."""
    from controller.cli.common import api_of, store_of

    given = api_of(ctx)
    if given is not None:
        from controller.cli.remote import ApiClient

        if segments:
            raise click.UsageError("--segment works on the database, not through --api")
        answer = ApiClient(*given).request(
            "GET", f"/deployments/{deployment}/report", params={"format": fmt, "rollout": rollout_id}
        )
        _write(output, answer.text, f"{fmt}, through {given[0]}")
        return
    from controller.encoding import dumps
    from controller.reports import build as reports

    store = store_of(ctx)
    store.deployments.get(deployment)  # an unknown name fails here, in one line, before any progress output
    click.echo(f"building the report of {deployment} (aggregating paired outputs)...", err=True)
    data = reports.build_report(store, deployment, rollout_id, segments=segments)
    if fmt == "json":
        text = dumps(data, indent=2)
    elif fmt == "markdown":
        text = reports.render_markdown(data)
    else:
        text = reports.render_html(data)
    _write(output, text, f"{fmt}, rollout {data['rollout']['id']}, {data['traffic']['rows']:,} requests")


def _write(output: Path, text: str, what: str) -> None:
    if str(output) == "-":
        click.echo(text)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output} ({what})", err=True)
