"""`mlcanary pipelines`: register, list and show pipeline versions."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from controller.cli.common import api_of, echo_json, json_option, say_database, settings_of, store_of
from controller.cli.remote import ApiClient


@click.group()
def pipelines() -> None:
    """Register, list and show pipeline versions."""


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
@click.option(
    "--trust",
    "--trust-type",
    "trust",
    multiple=True,
    metavar="MODULE.NAME",
    help="Trust one more type or function in the skops artifact (repeatable), e.g. mymodule.add_ratios. "
    "It runs with the server's rights: trust only code you wrote or reviewed.",
)
@click.pass_context
def pipelines_register(ctx: click.Context, name: str, version: str, **opts: Any) -> None:
    """Register pipeline version NAME VERSION from a fitted artifact or an HTTP upstream."""
    if bool(opts["artifact"]) == bool(opts["upstream"]):
        raise click.UsageError("give exactly one of --artifact FILE or --upstream URL")
    given = api_of(ctx)
    if given is not None:
        answer = _register_remote(ApiClient(*given), name, version, opts)
        click.echo(f"registered {answer['ref']} (id {answer['id']}, {answer['task']}) through {given[0]}")
        return
    from controller import registry

    settings = settings_of(ctx)
    schema = registry.parse_schema(opts["schema_text"]) if opts["schema_text"] else None
    sample = registry.read_table(opts["sample"]) if opts["sample"] else None
    metrics = json_option(opts["metrics"], "--metrics")
    metadata = json_option(opts["metadata"], "--metadata")
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
            trusted_types=opts["trust"],
            sample=sample,
            schema=schema,
            holdout=registry.read_table(opts["holdout"]) if opts["holdout"] else None,
            target=opts["target"],
            golden=registry.read_table(opts["golden"]) if opts["golden"] else None,
            golden_set=json_option(opts["golden_set"], "--golden-set"),
            metrics=metrics,
            environment=json_option(opts["environment"], "--environment"),
            metadata=metadata,
        )
    click.echo(
        f"registered {version_entity.ref} (id {version_entity.id}, {version_entity.task}, {version_entity.kind}"
        f"{', sha256 ' + version_entity.sha256[:12] if version_entity.sha256 else ''})"
    )
    say_database(ctx, always=True)  # a write: always say where it went


_FORM_OPTIONS = {"schema_text": "schema", "target": "target", "golden_set": "golden_set", "metrics": "metrics",
                 "environment": "environment", "metadata": "metadata"}  # fmt: skip


def _register_remote(api: ApiClient, name: str, version: str, opts: dict[str, Any]) -> dict[str, Any]:
    """POST /api/v1/pipelines: JSON for an upstream, multipart with the files for an artifact."""
    if opts["upstream"]:
        body: dict[str, Any] = {"name": name, "version": version, "upstream": opts["upstream"],
                                "protocol": opts["protocol"], "task": opts["task"]}  # fmt: skip
        if opts["schema_text"]:
            body["schema"] = opts["schema_text"]
        for key in ("metrics", "metadata"):
            if opts[key]:
                body[key] = json_option(opts[key], f"--{key}")
        result: dict[str, Any] = api.call("POST", "/pipelines", body)
        return result
    if opts["trust_pickle"]:
        raise click.UsageError("--trust-pickle is the server's setting (MLCANARY_TRUST_PICKLE) with --api")
    form: dict[str, Any] = {"name": name, "version": version, "task": opts["task"]}
    for option, field in _FORM_OPTIONS.items():
        if opts[option]:
            value = opts[option]
            path = Path(value)
            form[field] = path.read_text() if path.suffix == ".json" and path.is_file() else value
    if opts["trust"]:
        form["trust"] = ",".join(opts["trust"])
    with contextlib.ExitStack() as stack:
        files = {
            key: (Path(opts[key]).name, stack.enter_context(Path(opts[key]).open("rb")))
            for key in ("artifact", "sample", "holdout", "golden")
            if opts[key]
        }
        result = api.request("POST", "/pipelines", data=form, files=files).json()
    return result


@pipelines.command("list")
@click.option("--name", help="Only versions of this pipeline.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pipelines_list(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List registered pipeline versions."""
    given = api_of(ctx)
    if given is not None:
        summaries = ApiClient(*given).call("GET", "/pipelines", name=name)["pipelines"]
    else:
        summaries = [_version_summary(v) for v in store_of(ctx).pipelines.list(name=name)]
    if as_json:
        echo_json(summaries)
        return
    versions = summaries
    if not versions:
        click.echo("no pipeline versions registered")
        return
    click.echo(f"{'ID':>4}  {'VERSION':30} {'TASK':15} {'KIND':9} {'METRICS'}")
    for v in versions:
        metrics = ", ".join(
            f"{k}={val:.4g}" for k, val in v["offline_metrics"].items() if isinstance(val, float)
        )
        click.echo(f"{v['id']:>4}  {v['ref']:30} {v['task']:15} {v['kind']:9} {metrics}")


def _version_summary(v: Any) -> dict[str, Any]:
    return {
        "id": v.id, "name": v.name, "version": v.version, "ref": v.ref, "kind": v.kind, "task": v.task,
        "input_schema": [{"name": c.name, "dtype": c.dtype} for c in v.input_schema],
        "classes": v.classes, "sha256": v.sha256, "artifact_format": v.artifact_format,
        "upstream_url": v.upstream_url, "upstream_protocol": v.upstream_protocol,
        "trusted_types": list(v.trusted_types), "offline_metrics": v.offline_metrics, "golden_set_rows": len(v.golden_set["outputs"]["prediction"])
        if v.golden_set else 0, "environment": v.environment, "metadata": v.metadata,
        "created_at": v.created_at.isoformat(),
    }  # fmt: skip


@pipelines.command("show")
@click.argument("ref")
@click.pass_context
def pipelines_show(ctx: click.Context, ref: str) -> None:
    """Show one pipeline version (NAME:VERSION or id) as JSON."""
    given = api_of(ctx)
    if given is not None:
        if ":" not in ref:
            raise click.UsageError("with --api, name the version as NAME:VERSION")
        pipeline, version = ref.split(":", 1)
        echo_json(ApiClient(*given).call("GET", f"/pipelines/{pipeline}/{version}"))
        return
    echo_json(_version_summary(store_of(ctx).pipelines.get_by_ref(ref)))
