"""The `mlcanary` command line. Operator mistakes give one clear line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click

from controller.config import ConfigError, Settings
from storage import StorageError, Store
from storage.artifacts import ArtifactError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    StorageError,
    ConfigError,
    ArtifactError,
    ValueError,
    OSError,
)


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class Cli(click.Group):
    """A group that turns expected errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as error:
            raise click.ClickException(_one_line(error)) from error


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
        raise click.ClickException(_one_line(error)) from error


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


def store_of(ctx: click.Context) -> Store:
    from controller.app import open_store

    return open_store(settings_of(ctx))


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


# ---------------------------------------------------------------------------------------------- db
@cli.group()
def db() -> None:
    """Database schema: upgrade and check."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the migrations up to head (SQLite or PostgreSQL)."""
    from storage import Database
    from storage import schema as db_schema

    settings = settings_of(ctx)
    database = Database(settings.resolved_database_url)
    before, after = db_schema.upgrade(database)
    click.echo(f"{database.display_url}: schema {before or 'empty'} -> {after}")


@db.command("check")
@click.pass_context
def db_check(ctx: click.Context) -> None:
    """Exit non-zero unless the schema is at head."""
    from storage import Database
    from storage import schema as db_schema

    database = Database(settings_of(ctx).resolved_database_url)
    db_schema.check(database)
    click.echo(f"{database.display_url}: schema at head {db_schema.head_revision(database)}")


# ---------------------------------------------------------------------------------------- pipelines
@cli.group()
def pipelines() -> None:
    """Register, list and show pipeline versions."""


def _json_option(value: str | None, what: str) -> Any:
    if value is None:
        return None
    path = Path(value)
    try:
        text = path.read_text() if path.suffix == ".json" and path.is_file() else value
        return json.loads(text)
    except (json.JSONDecodeError, OSError) as error:
        raise click.BadParameter(f"{what} must be JSON or a .json file: {error}") from error


@pipelines.command("register")
@click.argument("name")
@click.argument("version")
@click.option(
    "--artifact",
    type=click.Path(path_type=Path),
    help="Fitted pipeline (.skops, or .joblib with --trust-pickle).",
)
@click.option("--upstream", help="URL of a model server, instead of an artifact.")
@click.option("--protocol", type=click.Choice(["v2", "mlflow"]), default="v2", show_default=True)
@click.option("--task", required=True, help="classification or regression.")
@click.option(
    "--sample", type=click.Path(path_type=Path), help="CSV/Parquet of raw inputs: gives the schema."
)
@click.option("--schema", "schema_text", help='Input schema as "col:float,col2:str".')
@click.option(
    "--holdout", type=click.Path(path_type=Path), help="Holdout file with the target: offline metrics."
)
@click.option("--target", help="Target column of the holdout.")
@click.option("--golden", type=click.Path(path_type=Path), help="Raw input rows for the golden set.")
@click.option("--golden-set", "golden_set", help="Golden set JSON (inputs + research outputs) or .json file.")
@click.option("--metrics", help="Offline metrics JSON (or .json file) measured in research.")
@click.option("--environment", help="Research environment fingerprint JSON (default: this one).")
@click.option("--metadata", help="Free-form metadata JSON.")
@click.option(
    "--trust-pickle", is_flag=True, help="Allow a joblib/pickle artifact (it can run code when loaded)."
)
@click.pass_context
def pipelines_register(ctx: click.Context, name: str, version: str, **opts: Any) -> None:
    """Register pipeline version NAME VERSION from a fitted artifact or an HTTP upstream."""
    from controller import registry

    if bool(opts["artifact"]) == bool(opts["upstream"]):
        raise click.UsageError("give exactly one of --artifact FILE or --upstream URL")
    settings = settings_of(ctx)
    schema = registry.parse_schema(opts["schema_text"]) if opts["schema_text"] else None
    sample = registry.read_table(opts["sample"]) if opts["sample"] else None
    metrics = _json_option(opts["metrics"], "--metrics")
    metadata = _json_option(opts["metadata"], "--metadata")
    store = store_of(ctx)
    if opts["upstream"]:
        resolved = schema or (registry.schema_from_frame(sample) if sample is not None else ())
        version_entity = registry.register_upstream(
            store, name=name, version=version, url=opts["upstream"], protocol=opts["protocol"],
            task=opts["task"], schema=resolved, metrics=metrics, metadata=metadata,
        )  # fmt: skip
    else:
        version_entity = registry.register_artifact(
            store,
            name=name,
            version=version,
            artifact=opts["artifact"],
            task=opts["task"],
            artifact_dir=settings.resolved_artifact_dir,
            trust_pickle=opts["trust_pickle"] or settings.trust_pickle,
            sample=sample,
            schema=schema,
            holdout=registry.read_table(opts["holdout"]) if opts["holdout"] else None,
            target=opts["target"],
            golden=registry.read_table(opts["golden"]) if opts["golden"] else None,
            golden_set=_json_option(opts["golden_set"], "--golden-set"),
            metrics=metrics,
            environment=_json_option(opts["environment"], "--environment"),
            metadata=metadata,
        )
    v = version_entity
    click.echo(
        f"registered {v.ref} (id {v.id}, {v.task}, {v.kind}{', sha256 ' + v.sha256[:12] if v.sha256 else ''})"
    )


@pipelines.command("list")
@click.option("--name", help="Only versions of this pipeline.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pipelines_list(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List registered pipeline versions."""
    versions = store_of(ctx).pipelines.list(name=name)
    if as_json:
        echo_json([_version_summary(v) for v in versions])
        return
    if not versions:
        click.echo("no pipeline versions registered")
        return
    click.echo(f"{'ID':>4}  {'VERSION':30} {'TASK':15} {'KIND':9} {'METRICS'}")
    for v in versions:
        metrics = ", ".join(
            f"{k}={val:.4g}" for k, val in v.offline_metrics.items() if isinstance(val, float)
        )
        click.echo(f"{v.id:>4}  {v.ref:30} {v.task:15} {v.kind:9} {metrics}")


def _version_summary(v: Any) -> dict[str, Any]:
    return {
        "id": v.id, "name": v.name, "version": v.version, "ref": v.ref, "kind": v.kind, "task": v.task,
        "input_schema": [{"name": c.name, "dtype": c.dtype} for c in v.input_schema],
        "classes": v.classes, "sha256": v.sha256, "artifact_format": v.artifact_format,
        "upstream_url": v.upstream_url, "upstream_protocol": v.upstream_protocol,
        "offline_metrics": v.offline_metrics, "golden_set_rows": len(v.golden_set["outputs"]["prediction"])
        if v.golden_set else 0, "environment": v.environment, "metadata": v.metadata,
        "created_at": v.created_at.isoformat(),
    }  # fmt: skip


@pipelines.command("show")
@click.argument("ref")
@click.pass_context
def pipelines_show(ctx: click.Context, ref: str) -> None:
    """Show one pipeline version (NAME:VERSION or id) as JSON."""
    echo_json(_version_summary(store_of(ctx).pipelines.get_by_ref(ref)))


# -------------------------------------------------------------------------------------- deployments
@cli.group()
def deployments() -> None:
    """Create, list and show deployments."""


@deployments.command("create")
@click.argument("name")
@click.option("--champion", required=True, help="The first champion, NAME:VERSION.")
@click.option("--no-raw-inputs", is_flag=True, help="Never store raw inputs of this deployment (privacy).")
@click.pass_context
def deployments_create(ctx: click.Context, name: str, champion: str, no_raw_inputs: bool) -> None:
    """Create deployment NAME served by a champion version."""
    from storage.entities import NewEvent

    store = store_of(ctx)
    version = store.pipelines.get_by_ref(champion)
    event = NewEvent(
        actor="cli", action="deployment.create", reason="created", message=f"champion {version.ref}"
    )
    deployment = store.deployments.create(name, version.id, store_raw_inputs=not no_raw_inputs, event=event)
    click.echo(f"created deployment {deployment.name} with champion {version.ref}")


@deployments.command("list")
@click.pass_context
def deployments_list(ctx: click.Context) -> None:
    """List deployments with their champion and active rollout."""
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
    from controller.cli_rollout import status

    ctx.invoke(status, deployment=name, as_json=as_json)


# ------------------------------------------------------------------------------------------- tokens
@cli.group()
def tokens() -> None:
    """Admin API bearer tokens (stored hashed; shown once)."""


@tokens.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator"]), default="viewer", show_default=True)
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


# ---------------------------------------------------------------------------------------- retention
def parse_age(text: str) -> timedelta:
    """Parse an age such as 30d, 12h or 90m."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise click.BadParameter(f"{text!r}: write a positive number followed by d, h or m (e.g. 30d)")
    return timedelta(**{units[unit]: int(number)})


@cli.command()
@click.option("--older-than", "older_than", required=True, help="Age to keep, e.g. 30d, 12h.")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.pass_context
def prune(ctx: click.Context, older_than: str, batch_size: int) -> None:
    """Delete paired outputs and labels older than an age, in small batches that never block writers."""
    cutoff = datetime.now(UTC) - parse_age(older_than)
    store = store_of(ctx)
    pairs = store.pairs.prune(before=cutoff, batch_size=batch_size)
    labels = store.labels.prune(before=cutoff, batch_size=batch_size)
    click.echo(f"pruned {pairs} paired outputs and {labels} labels received before {cutoff.isoformat()}")


# ------------------------------------------------------------------------------------------ servers
def _serve(ctx: click.Context, role: str, host: str | None, port: int | None, workers: int | None) -> None:
    from controller import server
    from controller.app import create_app, open_store

    settings = settings_of(ctx).replace(
        **{k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    )
    settings.validate()
    open_store(settings).db.dispose()  # create the embedded database / refuse an old schema before forking
    click.echo(
        f"mlcanary {role} on http://{settings.host}:{settings.port} ({settings.workers} workers)", err=True
    )
    # `serve` is the whole product: one controller loop runs beside gunicorn as a child process.
    child = _start_controller_child(settings) if role == "serve" else None
    try:
        server.run(
            lambda: create_app(settings, role=role),
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            data_dir=settings.data_dir,
            log_level=settings.log_level,
        )
    finally:
        if child is not None:
            _stop_child(child)


def _start_controller_child(settings: Settings) -> subprocess.Popen[bytes]:
    """Start `python -m controller ... controller` on the same database and data directory."""
    command = [
        sys.executable, "-m", "controller",
        "--database-url", settings.resolved_database_url, "--data-dir", str(settings.data_dir), "controller",
    ]  # fmt: skip
    return subprocess.Popen(command)


def _stop_child(child: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@cli.command()
@click.pass_context
def controller(ctx: click.Context) -> None:
    """Run the control loop: judge every active rollout each interval and apply the decisions.

    Several may run against one database: one leads (PostgreSQL advisory lock, or a file lock beside
    the SQLite file), the others stand by and take over within two intervals if it dies.
    """
    import logging
    import signal
    import threading

    from controller import loop, webhooks
    from controller.app import open_store
    from controller.leader import Tracked, leadership_for

    settings = settings_of(ctx)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    store = open_store(settings)
    leadership = Tracked(leadership_for(store.db.url))
    stop = threading.Event()
    # Webhooks follow the event log; only the leader sends, so standbys never duplicate a delivery.
    dispatcher = webhooks.Dispatcher(store, settings, leading=lambda: leadership.held).start()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(
        f"mlcanary controller on {store.db.display_url}, every {settings.controller_interval:g} s", err=True
    )
    try:
        loop.run(store, settings, stop=stop, leadership=leadership)
    finally:
        dispatcher.stop()
        leadership.release()
        store.db.dispose()


_host = click.option("--host", help="Bind address (default 127.0.0.1).")
_port = click.option("--port", type=int, help="Port (default 8080).")
_workers = click.option("--workers", type=int, help="gunicorn workers (default 2).")


@cli.command()
@_host
@_port
@_workers
@click.pass_context
def router(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the data plane only (scale-out replicas behind a load balancer)."""
    _serve(ctx, "router", host, port, workers)


@cli.command()
@_host
@_port
@_workers
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Run everything on one machine: data plane, admin API and dashboard."""
    _serve(ctx, "serve", host, port, workers)


from controller.cli_report import report as _report_command  # noqa: E402

cli.add_command(_report_command)


@cli.command()
@click.option("--fast", is_flag=True, envvar="MLCANARY_DEMO_FAST", help="A smaller, quicker run (used by the tests).")
@click.option("--port", type=int, help="Port for the demo server (default: a free one).")
@click.pass_context
def demo(ctx: click.Context, fast: bool, port: int | None) -> None:
    """Show the whole job on real pipelines: shadow, canary, parity gate, rollback, promotion."""
    from controller.demo import Demo, DemoError

    data_dir = settings_of(ctx).data_dir / "demo"
    try:
        outcomes = Demo(data_dir=data_dir, fast=fast).run(port=port)
    except DemoError as error:
        raise click.ClickException(str(error)) from error
    if not all(o.as_expected for o in outcomes):
        raise click.ClickException("some rollouts did not end as expected; see the table above")


from controller.cli_replay import replay_command  # noqa: E402  (uses the helpers above)

cli.add_command(replay_command)

from controller.cli_rollout import labels as labels_group  # noqa: E402
from controller.cli_rollout import rollout as rollout_group  # noqa: E402

cli.add_command(rollout_group)
cli.add_command(labels_group)


def main() -> NoReturn:
    sys.exit(cli.main(prog_name="mlcanary"))
