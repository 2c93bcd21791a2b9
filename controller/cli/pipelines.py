"""`mlcanary pipelines`: register, list, show, archive, restore and delete pipeline versions."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from controller.cli.common import (
    api_of,
    archive_or_restore,
    echo_json,
    json_option,
    say_database,
    settings_of,
    store_of,
)
from controller.cli.remote import ApiClient


@click.group()
def pipelines() -> None:
    """Register, list, show, archive, restore and delete pipeline versions."""


@pipelines.command("register")
@click.argument("name")
@click.argument("version")
@click.option(
    "--artifact",
    type=click.Path(path_type=Path),
    help="Fitted pipeline (.skops, or .joblib with --trust-pickle).",
)
@click.option("--upstream", help="URL of a model server, instead of an artifact.")
@click.option(
    "--protocol",
    type=click.Choice(["v2", "mlflow"]),
    help="Upstream protocol (default: from the kind, else v2).",
)
@click.option(
    "--upstream-kind",
    type=click.Choice(["mlserver", "kserve", "triton", "mlflow"]),
    help="Preset encoding and output names for this model server.",
)
@click.option(
    "--encoding", type=click.Choice(["v2-columns", "v2-tensor", "mlflow"]), help="Upstream request encoding."
)
@click.option("--tensor-name", help="v2-tensor: the input tensor's name.")
@click.option(
    "--tensor-datatype",
    type=click.Choice(["FP64", "FP32", "INT64", "INT32", "BYTES"]),
    help="v2-tensor: the input tensor's datatype.",
)
@click.option("--class-output", help="Output holding the class (classification); '' for the first one.")
@click.option("--proba-output", help="Output holding class probabilities [n, classes]; '' for none.")
@click.option("--score-output", help="Output holding a ready score per row; '' for none.")
@click.option("--value-output", help="Output holding the value (regression).")
@click.option("--request-output", "request_outputs", multiple=True, help="V2 output to ask for (repeatable).")
@click.option("--upstream-timeout", type=float, help="Seconds per upstream call (default: the router's).")
@click.option("--upstream-pool", type=int, help="Pooled connections to the upstream per router process.")
@click.option("--upstream-retries", type=int, help="Re-sends of an undelivered request (never of a timeout).")
@click.option("--health-url", help="Checked when the router loads the version ('' for no check).")
@click.option("--classes", "classes_text", help='Classes the upstream may answer, as "0,1" or a JSON list.')
@click.option("--no-probe", is_flag=True, help="Do not send the sample rows to the upstream to check it.")
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
        from router.backends.upstream import UpstreamTools

        golden = registry.read_table(opts["golden"]) if opts["golden"] else None
        resolved = schema or (registry.schema_from_frame(sample) if sample is not None else ())
        upstream_settings = _upstream_settings(opts)
        version_entity = registry.register_upstream(
            store, name=name, version=version, url=opts["upstream"], protocol=opts["protocol"],
            task=opts["task"], schema=resolved, metrics=metrics, metadata=metadata,
            classes=_classes(opts["classes_text"]), kind=opts["upstream_kind"], settings=upstream_settings,
            tools=UpstreamTools(timeout_s=settings.upstream_timeout_s), sample=sample, golden=golden,
            golden_set=json_option(opts["golden_set"], "--golden-set"), probe=not opts["no_probe"],
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
        for key in ("metrics", "metadata", "golden_set"):
            if opts[key]:
                body[key] = json_option(opts[key], "--" + key.replace("_", "-"))
        if opts["upstream_kind"]:
            body["kind"] = opts["upstream_kind"]
        classes = _classes(opts["classes_text"])
        if classes is not None:
            body["classes"] = list(classes)
        settings = {k: v for k, v in _upstream_settings(opts).items() if v is not None}
        if settings:
            body["upstream_settings"] = settings
        if opts["no_probe"]:
            body["probe"] = False
        for key in ("sample", "golden"):  # rows as pandas' split form, as the API reads them
            if opts[key]:
                from controller import registry

                frame = registry.read_table(opts[key])
                body[key] = {"columns": [str(c) for c in frame.columns], "data": frame.to_numpy().tolist()}
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


def _upstream_settings(opts: dict[str, Any]) -> dict[str, Any]:
    """The upstream options as registry.register_upstream's ``settings`` (None = the kind's preset)."""
    return {
        "encoding": opts["encoding"], "tensor_name": opts["tensor_name"],
        "tensor_datatype": opts["tensor_datatype"], "class_output": opts["class_output"],
        "proba_output": opts["proba_output"], "score_output": opts["score_output"],
        "value_output": opts["value_output"], "request_outputs": list(opts["request_outputs"]) or None,
        "timeout_s": opts["upstream_timeout"], "pool_size": opts["upstream_pool"],
        "retries": opts["upstream_retries"], "health_url": opts["health_url"],
    }  # fmt: skip


def _classes(text: str | None) -> tuple[Any, ...] | None:
    """Read --classes: a JSON list, or comma-separated values (all integers become ints)."""
    import json

    if not text:
        return None
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except ValueError as error:
            raise click.UsageError(f"--classes is not a JSON list: {error}") from error
        if not isinstance(values, list):
            raise click.UsageError("--classes must be a list")
        return tuple(values)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        return tuple(parts)


@pipelines.command("list")
@click.option("--name", help="Only versions of this pipeline.")
@click.option("--all", "archived", is_flag=True, help="Archived versions too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pipelines_list(ctx: click.Context, name: str | None, archived: bool, as_json: bool) -> None:
    """List registered pipeline versions (not the archived ones, unless --all)."""
    given = api_of(ctx)
    if given is not None:
        answer = ApiClient(*given).call("GET", "/pipelines", name=name, archived="true" if archived else None)
        summaries = answer["pipelines"]
    else:
        listed = store_of(ctx).pipelines.list(name=name, archived=archived)
        summaries = [_version_summary(v) for v in listed]
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
        mark = " (archived)" if v.get("archived_at") else ""
        click.echo(f"{v['id']:>4}  {v['ref']:30} {v['task']:15} {v['kind']:9} {metrics}{mark}")


def _ref_path(ref: str) -> str:
    name, sep, version = ref.partition(":")
    if not sep or not name or not version:
        raise click.UsageError(f"refer to a pipeline version as NAME:VERSION, got {ref!r}")
    return f"/pipelines/{name}/{version}"


@pipelines.command("archive")
@click.argument("ref", metavar="NAME:VERSION")
@click.option("--reason", default="", help="Why (written in the event).")
@click.pass_context
def pipelines_archive(ctx: click.Context, ref: str, reason: str) -> None:
    """Archive a version: kept with its history, but no new deployment or rollout may use it.

    Refused while it is a deployment's champion or an arm of an active rollout.
    """
    from controller import lifecycle

    def local(store: Any, actor: str) -> str:
        version = lifecycle.archive_version(store, ref, actor=actor, reason=reason)
        return f"archived {version.ref} (restore it with: mlcanary pipelines restore {version.ref})"

    archive_or_restore(ctx, _ref_path(ref), "archive", ref, reason, local)


@pipelines.command("restore")
@click.argument("ref", metavar="NAME:VERSION")
@click.option("--reason", default="", help="Why (written in the event).")
@click.pass_context
def pipelines_restore(ctx: click.Context, ref: str, reason: str) -> None:
    """Restore an archived version: it may be deployed and rolled out again."""
    from controller import lifecycle

    def local(store: Any, actor: str) -> str:
        return f"restored {lifecycle.restore_version(store, ref, actor=actor, reason=reason).ref}"

    archive_or_restore(ctx, _ref_path(ref), "restore", ref, reason, local)


@pipelines.command("delete")
@click.argument("ref", metavar="NAME:VERSION")
@click.option("--reason", default="", help="Why (written in the event).")
@click.pass_context
def pipelines_delete(ctx: click.Context, ref: str, reason: str) -> None:
    """Delete a version no deployment or rollout ever used, and its artifact file (unless shared).

    A version with a history (a deployment's champion, an arm of any rollout) is refused: archive it.
    """
    given = api_of(ctx)
    if given is not None:
        ApiClient(*given).call("DELETE", _ref_path(ref), {"reason": reason} if reason else {})
        click.echo(f"deleted {ref} through {given[0]}")
        return
    from controller import lifecycle
    from controller.cli.common import actor

    deleted = lifecycle.delete_version(store_of(ctx), ref, actor=actor(), reason=reason)
    removed = ", artifact file removed" if deleted["artifact_removed"] else ""
    click.echo(f"deleted {deleted['ref']} (id {deleted['id']}{removed})")
    say_database(ctx, always=True)


def _version_summary(v: Any) -> dict[str, Any]:
    return {
        "id": v.id, "name": v.name, "version": v.version, "ref": v.ref, "kind": v.kind, "task": v.task,
        "input_schema": [{"name": c.name, "dtype": c.dtype} for c in v.input_schema],
        "classes": v.classes, "sha256": v.sha256, "artifact_format": v.artifact_format,
        "upstream_url": v.upstream_url, "upstream_protocol": v.upstream_protocol,
        "trusted_types": list(v.trusted_types), "upstream_config": v.upstream_config,
        "archived_at": v.archived_at.isoformat() if v.archived_at else None,
        "offline_metrics": v.offline_metrics, "golden_set_rows": len(v.golden_set["outputs"]["prediction"])
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
