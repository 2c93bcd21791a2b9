"""The admin API (`/api/v1`, bearer token) and the dashboard page (`/`).

    blueprint   every /api/v1 route; a before_request hook authenticates and authorizes each call
                (viewer: reads; operator: everything) except the OpenAPI document
    dashboard   GET / : the dashboard page, which talks to the API with a token the user pastes

Rollout actions go through `controller.loop.actions` (the state machine's owner); this module only
translates HTTP to calls and errors to statuses:

    400 bad input · 401 no/bad token · 403 wrong role · 404 unknown · 409 conflict or invalid
    transition · 413 too large · 415 not JSON/multipart · 422 invalid policy · 503 database unavailable

Errors are rendered by controller.http.errors (one handler); JSON is written by controller.encoding.

Every admin action is written as an event whose actor is the token's name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tempfile
from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, request, send_from_directory
from werkzeug.datastructures import FileStorage

from controller import lifecycle, registry
from controller.clock import Clock, parse_age, system_clock
from controller.config import Settings
from controller.http import dashboard as dashboard_view
from controller.http import documents, feedback, openapi
from controller.http.auth import AuthError, Principal, authorize
from controller.http.errors import ApiError, json_response, render_error
from controller.loop import actions
from controller.reports import build as reports
from storage import InvalidName, StorageError, Store, Unavailable
from storage.entities import (
    ApiToken,
    BatchingConfig,
    Column,
    NewEvent,
    PipelineVersion,
    check_name,
)
from storage.repositories import ROLES as TOKEN_ROLES

API_PREFIX = "/api/v1"
STATIC_DIR = Path(__file__).parent / "static"
CLOCK_EXTENSION = "mlcanary.clock"

blueprint = Blueprint("mlcanary_api", __name__, url_prefix=API_PREFIX)
dashboard = Blueprint("mlcanary_dashboard", __name__)


# ------------------------------------------------------------------------------------------ plumbing
def store() -> Store:
    found: Store = current_app.extensions[feedback.STORE_EXTENSION]
    return found


def settings() -> Settings:
    found: Settings = current_app.config["MLCANARY_SETTINGS"]
    return found


def principal() -> Principal:
    found: Principal = g.mlcanary_principal
    return found


def now() -> datetime:
    """Return the current time from the app's clock (create_app's ``clock=``; the system clock if none)."""
    clock: Clock = current_app.extensions.get(CLOCK_EXTENSION, system_clock)
    return clock()


@blueprint.before_request
def _check_token() -> Response | None:
    """Refuse every call without a valid token of the needed role, before any view runs."""
    if request.endpoint == f"{blueprint.name}.openapi_document":
        return None
    if request.endpoint == f"{blueprint.name}.pipelines_register":
        # artifacts may be larger than a scoring request; only an authorized operator's body is read
        request.max_content_length = settings().max_upload_bytes
    try:
        g.mlcanary_principal = authorize(store(), request.headers.get("Authorization"), request.method)
    except (AuthError, Unavailable) as error:
        return render_error(error)
    return None


@blueprint.errorhandler(Exception)
def _translate(error: Exception) -> Response:
    """Turn what a view raised into a JSON error with the right status; never a 500 for bad input."""
    return render_error(error)


def _json_object(
    *, allowed: Collection[str], required: Collection[str] = (), empty_ok: bool = False
) -> dict[str, Any]:
    """Read the body as a JSON object with only `allowed` keys and all `required` ones."""
    if empty_ok and not request.get_data(cache=True):
        return {}
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    unknown = set(body) - set(allowed)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(sorted(unknown))}")
    missing = set(required) - set(body)
    if missing:
        raise ApiError(400, "missing_field", f"missing field(s) {', '.join(sorted(missing))}")
    return body


def _string(body: Mapping[str, Any], key: str, *, default: str | None = None) -> str | None:
    value = body.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ApiError(400, "invalid_field", f"{key} must be a non-empty string")
    return value


def _object(body: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise ApiError(400, "invalid_field", f"{key} must be a JSON object")
    return value


def _int_arg(name: str, default: int, *, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer") from error
    if not low <= value <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be between {low} and {high}")
    return value


# ------------------------------------------------------------------------------------------ routes
@blueprint.get("/openapi.json")
def openapi_document() -> Response:
    """Serve the OpenAPI 3.1 document of the admin API and the data plane (no token needed)."""
    return json_response(openapi.document())


def _archived_arg() -> bool:
    raw = request.args.get("archived", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid_parameter", "archived must be true or false")
    return raw in ("true", "1")


@blueprint.get("/pipelines")
def pipelines_list() -> Response:
    """List pipeline versions (optionally ?name=; archived ones too with ?archived=true)."""
    name = request.args.get("name") or None
    listed = store().pipelines.list(name=name, archived=_archived_arg())
    return json_response({"pipelines": [documents.version_json(v) for v in listed]})


@blueprint.post("/pipelines")
def pipelines_register() -> Response:
    """Register a pipeline version: JSON for an HTTP upstream, multipart with the artifact file."""
    actor = principal().name
    if request.mimetype == "multipart/form-data":
        version = _register_artifact(actor)
    elif request.is_json:
        version = _register_upstream(actor)
    else:
        raise ApiError(
            415, "unsupported_media_type", "send JSON (an upstream) or multipart/form-data (an artifact file)"
        )
    response = json_response(documents.version_json(version), 201)
    response.headers["Location"] = f"{API_PREFIX}/pipelines/{version.name}/{version.version}"
    return response


_UPSTREAM_FIELDS = {
    "name",
    "version",
    "upstream",
    "protocol",
    "task",
    "schema",
    "classes",
    "metrics",
    "metadata",
    "kind",
    "upstream_settings",
    "sample",
    "golden",
    "golden_set",
    "probe",
}
_ARTIFACT_FIELDS = {
    "name",
    "version",
    "task",
    "schema",
    "target",
    "golden_set",
    "metrics",
    "environment",
    "metadata",
    "trust",
}
_ARTIFACT_FILES = {"artifact", "sample", "holdout", "golden"}
_TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".json", ".jsonl")
_ARTIFACT_SUFFIXES = (".skops", ".joblib", ".pkl", ".pickle")


def _schema_of(value: Any) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return registry.parse_schema(value)
    if isinstance(value, list) and all(isinstance(c, dict) and set(c) == {"name", "dtype"} for c in value):
        text = ",".join(f"{c['name']}:{c['dtype']}" for c in value)
        return tuple(Column(c.name, c.dtype) for c in registry.parse_schema(text))
    raise ApiError(400, "invalid_field", 'schema must be "col:float,col2:str" or [{"name", "dtype"}, ...]')


def _register_upstream(actor: str) -> PipelineVersion:
    body = _json_object(allowed=_UPSTREAM_FIELDS, required={"name", "version", "upstream", "task"})
    classes = body.get("classes")
    if classes is not None and not isinstance(classes, list):
        raise ApiError(400, "invalid_field", "classes must be a list")
    schema = _schema_of(body.get("schema"))
    sample, golden = _rows(body, "sample"), _rows(body, "golden")
    if schema is None and sample is not None:
        schema = registry.schema_from_frame(sample)
    return registry.register_upstream(
        store(),
        name=str(_string(body, "name")),
        version=str(_string(body, "version")),
        url=str(_string(body, "upstream")),
        protocol=_string(body, "protocol"),
        task=str(_string(body, "task")),
        schema=schema or (),
        classes=tuple(classes) if classes is not None else None,
        metrics=_object(body, "metrics"),
        metadata=_object(body, "metadata"),
        actor=actor,
        kind=_string(body, "kind"),
        settings=_object(body, "upstream_settings"),
        tools=current_app.extensions.get("mlcanary.upstreams"),  # set by controller.app
        sample=sample,
        golden=golden,
        golden_set=_object(body, "golden_set") or None,
        probe=body.get("probe", True) is not False,
    )


def _rows(body: Mapping[str, Any], key: str) -> Any:
    """Read rows given as {"columns": [...], "data": [[...], ...]} (pandas' split form) into a frame."""
    import pandas as pd

    value = body.get(key)
    if value is None:
        return None
    if not (
        isinstance(value, dict)
        and isinstance(value.get("columns"), list)
        and isinstance(value.get("data"), list)
        and all(isinstance(r, list) and len(r) == len(value["columns"]) for r in value["data"])
    ):
        raise ApiError(400, "invalid_field", f'{key} must be {{"columns": [...], "data": [[...], ...]}}')
    return pd.DataFrame(value["data"], columns=[str(c) for c in value["columns"]])


def _register_artifact(actor: str) -> PipelineVersion:
    form, files = request.form, request.files
    unknown = (set(form) - _ARTIFACT_FIELDS) | (set(files) - _ARTIFACT_FILES)
    if unknown:
        names = sorted(str(k) for k in unknown)  # a malformed multipart part may have no name (None)
        raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(names)}")
    for key in ("name", "version", "task"):
        if not form.get(key):
            raise ApiError(400, "missing_field", f"missing field {key}")
    if "artifact" not in files:
        raise ApiError(400, "missing_field", "missing file field artifact")

    def json_field(key: str) -> Any:
        raw = form.get(key)
        if raw is None or raw == "":
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ApiError(400, "invalid_field", f"{key} must be JSON: {error}") from error
        if not isinstance(value, dict):
            raise ApiError(400, "invalid_field", f"{key} must be a JSON object")
        return value

    config = settings()
    with tempfile.TemporaryDirectory(prefix="mlcanary-upload-") as folder:

        def saved(key: str, suffixes: tuple[str, ...]) -> Path | None:
            upload: FileStorage | None = files.get(key)
            if upload is None:
                return None
            suffix = Path(upload.filename or "").suffix.lower()
            if suffix not in suffixes:
                raise ApiError(400, "invalid_field", f"{key} file must end in {', '.join(suffixes)}")
            path = Path(folder) / f"{key}{suffix}"
            upload.save(path)
            return path

        def table(key: str) -> Any:
            path = saved(key, _TABLE_SUFFIXES)
            return registry.read_table(path) if path is not None else None

        artifact = saved("artifact", _ARTIFACT_SUFFIXES)
        assert artifact is not None
        return registry.register_artifact(
            store(),
            name=form["name"],
            version=form["version"],
            artifact=artifact,
            task=form["task"],
            artifact_dir=config.resolved_artifact_dir,
            trust_pickle=config.trust_pickle,  # a server setting: a client cannot make the server unpickle
            trusted_types=[t for value in form.getlist("trust") for t in value.split(",") if t.strip()],
            sample=table("sample"),
            schema=_schema_of(form.get("schema") or None),
            holdout=table("holdout"),
            target=form.get("target") or None,
            golden=table("golden"),
            golden_set=json_field("golden_set"),
            metrics=json_field("metrics"),
            environment=json_field("environment"),
            metadata=json_field("metadata"),
            actor=actor,
        )


@blueprint.get("/pipelines/<name>/<version>")
def pipelines_show(name: str, version: str) -> Response:
    """Show one pipeline version."""
    return json_response(documents.version_json(store().pipelines.get_by_ref(f"{name}:{version}")))


@blueprint.post("/pipelines/<name>/<version>/<change>")
def pipelines_lifecycle(name: str, version: str, change: str) -> Response:
    """Archive or restore a pipeline version (refused while an active rollout or a deployment uses it)."""
    if change not in ("archive", "restore"):
        raise ApiError(404, "not_found", f"unknown change {change!r}; use archive or restore")
    reason = _string(_json_object(allowed={"reason"}, empty_ok=True), "reason") or ""
    do = lifecycle.archive_version if change == "archive" else lifecycle.restore_version
    return json_response(
        documents.version_json(do(store(), f"{name}:{version}", actor=principal().name, reason=reason))
    )


@blueprint.delete("/pipelines/<name>/<version>")
def pipelines_delete(name: str, version: str) -> Response:
    """Delete a pipeline version no deployment or rollout ever used (else 409 in_use: archive it)."""
    reason = _string(_json_object(allowed={"reason"}, empty_ok=True), "reason") or ""
    return json_response(
        lifecycle.delete_version(store(), f"{name}:{version}", actor=principal().name, reason=reason)
    )


# ------------------------------------------------------------------------------------------ tokens, retention
def _operator_only() -> None:
    """Tokens are an operator's business, reads included (names and roles say who may do what)."""
    if not principal().may("operator"):
        raise AuthError(
            403, "forbidden", f"token {principal().name!r} has role {principal().role}; tokens need operator"
        )


def token_json(t: ApiToken) -> dict[str, Any]:
    return {"name": t.name, "role": t.role, "created_at": t.created_at, "revoked_at": t.revoked_at}


@blueprint.get("/tokens")
def tokens_list() -> Response:
    """List admin tokens, revoked ones too (never a secret)."""
    _operator_only()
    return json_response({"tokens": [token_json(t) for t in store().tokens.list()]})


@blueprint.post("/tokens")
def tokens_create() -> Response:
    """Create a token and answer its secret once (only its hash is stored)."""
    body = _json_object(allowed={"name", "role"}, required={"name"})
    name, role = _string(body, "name"), _string(body, "role", default="viewer")
    assert name is not None and role is not None
    if role not in TOKEN_ROLES:
        raise ApiError(400, "invalid_field", f"role must be one of {', '.join(TOKEN_ROLES)}, got {role!r}")
    try:
        check_name("token name", name)
    except InvalidName as error:
        raise ApiError(400, "invalid_field", str(error)) from error
    event = NewEvent(
        actor=principal().name, action="token.create", reason="created", message=f"token {name} ({role})"
    )
    secret, token = store().tokens.create(name, role, event=event)
    response = json_response({**token_json(token), "token": secret}, 201)
    response.headers["Location"] = f"{API_PREFIX}/tokens/{name}"
    response.headers["Cache-Control"] = "no-store"  # the secret is shown once
    return response


@blueprint.delete("/tokens/<name>")
def tokens_revoke(name: str) -> Response:
    """Revoke a token by name (again is harmless); requests with it are refused (401) from now on."""
    event = NewEvent(actor=principal().name, action="token.revoke", reason="revoked", message=f"token {name}")
    return json_response(token_json(store().tokens.revoke(name, event=event)))


@blueprint.post("/prune")
def prune() -> Response:
    """Delete paired outputs and labels received before ``older_than`` ago (30d, 12h, 90m), in batches."""
    body = _json_object(allowed={"older_than", "batch_size"}, required={"older_than"})
    older_than = _string(body, "older_than")
    assert older_than is not None
    batch_size = body.get("batch_size", 5000)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 1_000_000:
        raise ApiError(400, "invalid_field", "batch_size must be an integer in 1..1000000")
    try:
        cutoff = now() - parse_age(older_than)
    except ValueError as error:
        raise ApiError(400, "invalid_field", f"older_than: {error}") from error
    s = store()
    pairs = s.pairs.prune(before=cutoff, batch_size=batch_size)
    labels = s.labels.prune(before=cutoff, batch_size=batch_size)
    s.events.add(
        NewEvent(actor=principal().name, action="data.prune", reason="pruned",
                 message=f"{pairs} paired outputs and {labels} labels received before {cutoff.isoformat()}")
    )  # fmt: skip
    return json_response({"pairs": pairs, "labels": labels, "before": cutoff})


@blueprint.get("/deployments")
def deployments_list() -> Response:
    """List deployments with their champion, phase and weights (archived ones too with ?archived=true)."""
    s = store()
    listed = s.deployments.list(archived=_archived_arg())
    return json_response(
        {"deployments": [documents.deployment_json(s, d, detail=False, now=now()) for d in listed]}
    )


@blueprint.post("/deployments/<name>/<change>")
def deployments_lifecycle(name: str, change: str) -> Response:
    """Archive (stop routing; kept with its history) or restore a deployment; refused while a rollout is active."""
    if change not in ("archive", "restore"):
        raise ApiError(404, "not_found", f"unknown change {change!r}; use archive or restore")
    reason = _string(_json_object(allowed={"reason"}, empty_ok=True), "reason") or ""
    do = lifecycle.archive_deployment if change == "archive" else lifecycle.restore_deployment
    s = store()
    return json_response(
        documents.deployment_json(
            s, do(s, name, actor=principal().name, reason=reason), detail=False, now=now()
        )
    )


@blueprint.delete("/deployments/<name>")
def deployments_delete(name: str) -> Response:
    """Delete a deployment with its rollouts, pairs and labels (its events stay); refused while a rollout is active."""
    reason = _string(_json_object(allowed={"reason"}, empty_ok=True), "reason") or ""
    return json_response(lifecycle.delete_deployment(store(), name, actor=principal().name, reason=reason))


@blueprint.post("/deployments")
def deployments_create() -> Response:
    """Create a deployment served by a champion version."""
    body = _json_object(
        allowed={"name", "champion", "store_raw_inputs", "batching"}, required={"name", "champion"}
    )
    name, champion = _string(body, "name"), _string(body, "champion")
    assert name is not None and champion is not None
    try:
        check_name("deployment name", name)
    except InvalidName as error:
        raise ApiError(400, "invalid_field", str(error)) from error
    raw = body.get("store_raw_inputs", True)
    if not isinstance(raw, bool):
        raise ApiError(400, "invalid_field", "store_raw_inputs must be a boolean")
    try:
        batching = BatchingConfig.from_json(body.get("batching"))
    except (ValueError, TypeError) as error:
        raise ApiError(400, "invalid_field", f"batching: {error}") from error
    s = store()
    version = s.pipelines.get_by_ref(champion)
    registry.check_loadable(version, trust_pickle=settings().trust_pickle)
    event = NewEvent(
        actor=principal().name,
        action="deployment.create",
        reason="created",
        message=f"champion {version.ref}",
    )
    deployment = s.deployments.create(name, version.id, store_raw_inputs=raw, batching=batching, event=event)
    response = json_response(documents.deployment_json(s, deployment, detail=True, now=now()), 201)
    response.headers["Location"] = f"{API_PREFIX}/deployments/{deployment.name}"
    return response


@blueprint.get("/deployments/<name>")
def deployments_show(name: str) -> Response:
    """Show a deployment: phase, weights, step, live figures of the current step, last verdicts."""
    s = store()
    cache = current_app.extensions.get(dashboard_view.SERIES_CACHE)  # the dashboard polls this document
    return json_response(
        documents.deployment_json(s, s.deployments.get(name), detail=True, now=now(), cache=cache)
    )


@blueprint.patch("/deployments/<name>")
def deployments_configure(name: str) -> Response:
    """Change a deployment's adaptive batching: ``{"batching": {...}}`` with any of its three settings.

    Settings left out keep their value; routers apply the change within a refresh interval.
    """
    body = _json_object(allowed={"batching"}, required={"batching"})
    changes = body["batching"]
    if not isinstance(changes, dict) or not changes:
        raise ApiError(
            400,
            "invalid_field",
            "batching must be an object with enabled, max_batch_delay_ms or max_batch_rows",
        )
    unknown = sorted(set(changes) - {"enabled", "max_batch_delay_ms", "max_batch_rows"})
    if unknown:
        raise ApiError(400, "invalid_field", f"unknown batching setting(s): {', '.join(unknown)}")
    if any(value is None for value in changes.values()):
        raise ApiError(
            400, "invalid_field", "batching settings cannot be null: leave a setting out to keep it"
        )
    s = store()
    try:
        deployment = lifecycle.configure_deployment(s, name, actor=principal().name, **changes)
    except ValueError as error:
        if isinstance(error, StorageError):
            raise
        raise ApiError(400, "invalid_field", f"batching: {error}") from error
    return json_response(documents.deployment_json(s, deployment, detail=True, now=now()))


@blueprint.post("/deployments/<name>/rollouts")
def rollouts_start(name: str) -> Response:
    """Start a rollout of a challenger under a policy."""
    body = _json_object(allowed={"challenger", "mode", "policy", "reason"}, required={"challenger"})
    s = store()
    s.deployments.get(name)  # 404 before anything else
    challenger = _string(body, "challenger")
    assert challenger is not None
    rollout = actions.start_rollout(
        s,
        name,
        challenger,
        mode=_string(body, "mode"),
        policy=_object(body, "policy"),  # an object only: a string would name a file on this server
        actor=principal().name,
        reason=_string(body, "reason") or "",
        now=now(),
        parity_check=current_app.extensions.get("mlcanary.parity_check"),  # set by controller.app
    )
    response = json_response(
        documents.rollout_json(rollout, documents.refs_of(s, rollout.champion_id, rollout.challenger_id)), 201
    )
    response.headers["Location"] = f"{API_PREFIX}/deployments/{name}"
    return response


@blueprint.get("/deployments/<name>/rollouts")
def rollouts_list(name: str) -> Response:
    """List a deployment's rollouts, oldest first."""
    s = store()
    deployment = s.deployments.get(name)
    rollouts = s.rollouts.list(deployment_id=deployment.id)
    refs = documents.refs_of(s, *(i for r in rollouts for i in (r.champion_id, r.challenger_id)))
    return json_response({"rollouts": [documents.rollout_json(r, refs) for r in rollouts]})


@blueprint.post("/deployments/<name>/rollout/<action>")
def rollout_action(name: str, action: str) -> Response:
    """Promote (next step, or full), roll back, pause, resume or abort the active rollout."""
    if action not in actions.ROLLOUT_ACTIONS:
        raise ApiError(
            404,
            "unknown_action",
            f"unknown rollout action {action!r}; use {', '.join(actions.ROLLOUT_ACTIONS)}",
        )
    allowed = {"reason", "full"} if action == "promote" else {"reason"}
    body = _json_object(allowed=allowed, empty_ok=True)
    reason = _string(body, "reason")
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise ApiError(400, "invalid_field", "full must be a boolean")
    s = store()
    s.deployments.get(name)
    rollout = actions.act(s, name, action, actor=principal().name, full=full, reason=reason or "", now=now())
    return json_response(
        documents.rollout_json(rollout, documents.refs_of(s, rollout.champion_id, rollout.challenger_id))
    )


@blueprint.get("/deployments/<name>/events")
def events_list(name: str) -> Response:
    """List a deployment's events after an id (?after_id=, ?limit= up to 1000), oldest first."""
    s = store()
    deployment = s.deployments.get(name)
    after_id = _int_arg("after_id", 0, low=0, high=2**63 - 1)
    limit = _int_arg("limit", 200, low=1, high=1000)
    events = s.events.list(deployment_id=deployment.id, after_id=after_id, limit=limit)
    return json_response(
        {
            "events": [documents.event_json(e) for e in events],
            "next_after_id": events[-1].id if events else after_id,
        }
    )


@blueprint.get("/deployments/<name>/dashboard")
def deployments_dashboard(name: str) -> Response:
    """Show what the dashboard plots: state, verdict, plan and progress, time series, timeline."""
    s = store()
    events = _int_arg("events", 50, low=1, high=500)
    cache = current_app.extensions.get(dashboard_view.SERIES_CACHE)  # set by controller.app
    return json_response(
        dashboard_view.overview(s, s.deployments.get(name), now=now(), events=events, cache=cache)
    )


@blueprint.post("/deployments/<name>/labels")
def labels_upload(name: str) -> Response:
    """Store ground-truth labels in bulk as an operator (same body as the feedback endpoint)."""
    s = store()
    triples = feedback.parse_labels(feedback.read_json_body(), accept=feedback.label_rule(s, name))
    result = feedback.store_labels(s, name, triples)
    deployment = s.deployments.get(name)
    s.events.add(
        NewEvent(
            actor=principal().name,
            action="labels.upload",
            reason="labels uploaded",
            message=f"{result['stored']} labels stored, {len(result['unknown_request_ids'])} unknown request ids",
            deployment_id=deployment.id,
            details={"stored": result["stored"], "unknown": len(result["unknown_request_ids"])},
        )
    )
    return json_response(result)


@blueprint.get("/deployments/<name>/report")
def report(name: str) -> Response:
    """Build the comparison report as JSON, or HTML (?format=html or Accept: text/html), or Markdown."""
    s = store()
    s.deployments.get(name)
    rollout_id = _int_arg("rollout", 0, low=1, high=2**63 - 1) if request.args.get("rollout") else None
    wanted = request.args.get("format")
    if wanted is None:
        best = request.accept_mimetypes.best_match(["application/json", "text/html", "text/markdown"])
        wanted = {"text/html": "html", "text/markdown": "markdown"}.get(best or "", "json")
    wanted = "markdown" if wanted == "md" else wanted  # the CLI's old spelling, accepted here too
    if wanted not in ("json", "html", "markdown"):
        raise ApiError(400, "invalid_parameter", "format must be json, html or markdown")
    built = reports.build_report(s, name, rollout_id)
    if wanted == "html":
        return Response(reports.render_html(built), mimetype="text/html")
    if wanted == "markdown":
        return Response(reports.render_markdown(built), mimetype="text/markdown")
    return json_response(built)


# ------------------------------------------------------------------------------------------ dashboard
@dashboard.get("/")
def dashboard_page() -> Response:
    """Serve the dashboard page (no token to load it; its API calls send the user's token)."""
    return send_from_directory(STATIC_DIR, "dashboard.html", mimetype="text/html", max_age=0)


# ------------------------------------------------------------------------------------------ headers
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'{scripts}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def content_security_policy(html: bytes | None) -> str:
    """Return the CSP for an HTML page: no external origin; inline scripts allowed by their SHA-256 only."""
    hashes = []
    for script in _INLINE_SCRIPT.findall(html or b""):
        digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
        hashes.append(f" 'sha256-{digest}'")
    return CONTENT_SECURITY_POLICY.format(scripts="".join(sorted(set(hashes))))


def secure_headers(response: Response) -> Response:
    """Add security headers: a strict CSP on HTML, nosniff everywhere, no caching of admin answers."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        body = None if response.direct_passthrough or response.is_streamed else response.get_data()
        response.headers["Content-Security-Policy"] = content_security_policy(body)
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
    if request.path.startswith(API_PREFIX + "/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response
