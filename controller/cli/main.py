"""The `mlcanary` command line. Operator mistakes give one clear line and a non-zero exit.

Commands load lazily: the root group knows each command's module and short help (``COMMANDS``) and
imports a module only when its command runs, so ``mlcanary --help`` and ``--version`` import no pandas,
SQLAlchemy or scikit-learn (bench/cli_speed.py measures it; a test checks the imports and the help).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from controller.cli.common import (
    API,
    VERBOSE,
    Cli,
    end_process,
    one_line,
    short_lived,
    single_threaded_libraries,
)
from controller.config import ConfigError, Settings

# name -> (module:attribute, the short help `mlcanary --help` shows without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "controller": ("controller.cli.processes:controller",
                   "Run the control loop: judge every active rollout each interval and apply the decisions."),
    "db": ("controller.cli.db:db", "Database schema: upgrade and check."),
    "demo": ("controller.cli.processes:demo",
             "Show the whole job on real pipelines: shadow, canary, parity gate, rollback, promotion."),
    "deployments": ("controller.cli.deployments:deployments", "Create, list, show, archive, restore and delete deployments."),
    "labels": ("controller.cli.rollout:labels", "Upload ground-truth labels."),
    "pipelines": ("controller.cli.pipelines:pipelines", "Register, list, show, archive, restore and delete pipeline versions."),
    "prune": ("controller.cli.retention:prune",
              "Delete paired outputs and labels older than an age, in small batches that never block writers."),
    "replay": ("controller.cli.replay:replay_command",
               "Score stored raw inputs or a file through a registered version offline and compare with another."),
    "report": ("controller.cli.report:report", "Write the comparison report of DEPLOYMENT's latest (or --rollout) rollout."),
    "rollout": ("controller.cli.rollout:rollout",
                "Start, promote, roll back, pause, resume or abort rollouts; show status and events."),
    "router": ("controller.cli.processes:router", "Run the data plane only (scale-out replicas behind a load balancer)."),
    "serve": ("controller.cli.processes:serve", "Run everything on one machine: data plane, admin API and dashboard."),
    "tokens": ("controller.cli.tokens:tokens", "Admin API bearer tokens (stored hashed; shown once)."),
}  # fmt: skip


@click.group(cls=Cli, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url", envvar="MLCANARY_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in --data-dir)."
)
@click.option(
    "--data-dir",
    envvar="MLCANARY_DATA_DIR",
    type=click.Path(path_type=Path),
    help="Folder for local state (default: data_dir of the nearest mlcanary.toml, else ./var).",
)
@click.option("--api", "api_url", envvar="MLCANARY_API_URL", help="Work through this admin API URL.")
@click.option("--token", envvar="MLCANARY_TOKEN", help="Admin API token (with --api).")
@click.option("-v", "--verbose", is_flag=True, help="Print the database (or API) each command uses.")
@click.version_option(package_name="mlcanary")
@click.pass_context
def cli(
    ctx: click.Context,
    database_url: str | None,
    data_dir: Path | None,
    api_url: str | None,
    token: str | None,
    verbose: bool,
) -> None:
    """mlcanary: shadow and canary rollouts of ML pipelines, decided by always-valid statistics.

    The database: --database-url or --data-dir, else MLCANARY_DATABASE_URL / MLCANARY_DATA_DIR, else
    the nearest mlcanary.toml (this folder or a parent), else ./var. Only serve, controller and
    db upgrade create a database; every other command refuses a missing one.
    """
    # Options given on the command line override; the same values from MLCANARY_* are read by
    # Settings.from_env itself, which then names the variable as the database's source.
    given: dict[str, Any] = {
        name: value
        for name, value in (("database_url", database_url), ("data_dir", data_dir))
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    }
    try:
        ctx.obj = Settings.from_env(**given)
    except ConfigError as error:
        raise click.ClickException(one_line(error)) from error
    ctx.meta[VERBOSE] = verbose
    ctx.meta[API] = (api_url, token)
    if verbose and api_url:
        click.echo(f"mlcanary: admin API {api_url}", err=True)


def main() -> NoReturn:
    """Run the command line and exit with its status (controller.cli.common.end_process: no teardown)."""
    single_threaded_libraries(sys.argv[1:], os.environ)
    short_lived()
    code: object
    try:
        code = cli.main(prog_name="mlcanary")  # standalone mode: exits itself, with the status
    except SystemExit as done:
        code = done.code
    end_process(code)
