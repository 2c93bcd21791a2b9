"""The `mlcanary` command line. Operator mistakes give one clear line and a non-zero exit.

Imports inside the command functions are deliberate: a command imports Flask, SQLAlchemy, scikit-learn
or the router only when it runs, which keeps `mlcanary --help` and shell completion fast (the one
measured start-up reason for an import below a module's top; product modules import at the top).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from controller.cli import db, deployments, pipelines, processes, retention, rollout, tokens
from controller.cli.common import Cli, one_line
from controller.cli.replay import replay_command
from controller.cli.report import report
from controller.config import ConfigError, Settings


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url", envvar="MLCANARY_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in --data-dir)."
)
@click.option(
    "--data-dir", envvar="MLCANARY_DATA_DIR", type=click.Path(path_type=Path), help="Folder for local state."
)
@click.version_option(package_name="mlcanary")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, data_dir: Path | None) -> None:
    """mlcanary: shadow and canary rollouts of ML pipelines, decided by always-valid statistics."""
    try:
        ctx.obj = Settings.from_env(database_url=database_url, data_dir=data_dir)
    except ConfigError as error:
        raise click.ClickException(one_line(error)) from error


for _command in (
    db.db, pipelines.pipelines, deployments.deployments, tokens.tokens, retention.prune,
    processes.controller, processes.router, processes.serve, report, processes.demo, replay_command,
    rollout.rollout, rollout.labels,
):  # fmt: skip
    cli.add_command(_command)


def main() -> NoReturn:
    """Run the command line and exit with its status."""
    sys.exit(cli.main(prog_name="mlcanary"))
