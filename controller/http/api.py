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

from controller import registry
from controller.clock import Clock, system_clock
from controller.config import Settings
from controller.http import feedback, openapi
from controller.http.auth import AuthError, Principal, authorize
from controller.http.errors import ApiError, json_response, render_error
from controller.loop import actions, measure
from controller.reports import build as reports
from storage import InvalidName, Store, Unavailable
from storage.entities import (
    Analysis,
    Column,
    Deployment,
    Event,
    NewEvent,
    PipelineVersion,
    Rollout,
    check_name,
)

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


# ------------------------------------------------------------------------------------------ views of entities
def version_json(v: PipelineVersion) -> dict[str, Any]:
    """Describe a pipeline version (never its golden set's rows: only their count)."""
    golden_rows = 0
    if v.golden_set:
        golden_rows = len((v.golden_set.get("outputs") or {}).get("prediction") or [])
    return {
        "id": v.id, "name": v.name, "version": v.version, "ref": v.ref, "kind": v.kind, "task": v.task,
        "input_schema": [{"name": c.name, "dtype": c.dtype} for c in v.input_schema],
        "classes": list(v.classes) if v.classes is not None else None, "sha256": v.sha256,
        "artifact_format": v.artifact_format, "upstream_url": v.upstream_url,
        "upstream_protocol": v.upstream_protocol, "offline_metrics": v.offline_metrics,
        "golden_set_rows": golden_rows, "environment": v.environment, "metadata": v.metadata,
        "trusted_types": list(v.trusted_types), "created_at": v.created_at,
    }  # fmt: skip


def rollout_json(r: Rollout, refs: Mapping[int, str]) -> dict[str, Any]:
    return {
        "id": r.id, "phase": r.phase, "active": r.active, "mode": r.mode, "step_index": r.step_index,
        "canary_weight": r.canary_weight, "shadow_rate": r.shadow_rate,
        "champion": refs.get(r.champion_id), "challenger": refs.get(r.challenger_id), "policy": r.policy,
        "version": r.version, "created_by": r.created_by, "created_at": r.created_at,
        "step_started_at": r.step_started_at, "ended_at": r.ended_at, "reason": r.reason,
    }  # fmt: skip


def event_json(e: Event) -> dict[str, Any]:
    return {
        "id": e.id, "at": e.at, "deployment_id": e.deployment_id, "rollout_id": e.rollout_id, "actor": e.actor,
        "action": e.action, "reason": e.reason, "message": e.message, "details": e.details,
    }  # fmt: skip


def analysis_json(a: Analysis) -> dict[str, Any]:
    return {
        "id": a.id, "step": a.step, "evaluated_at": a.evaluated_at, "outcome": a.outcome,
        "verdicts": a.verdicts, "metrics": a.metrics,
    }  # fmt: skip


def _refs(s: Store, *ids: int) -> dict[int, str]:
    return {i: s.pipelines.get(i).ref for i in set(ids)}


def live_figures(s: Store, rollout: Rollout) -> dict[str, Any]:
    """Summarise the current step per arm: requests, errors, latency p50/p99 (storage's LiveFigures).

    Requests are the unit (a request's row 0 stands for it: a 10-row request that fails is one error).
    ``served`` counts the requests an arm answered; ``scored`` those it ran (served or shadow, answered
    or failed; a skipped shadow job did not run). Latency quantiles are read off the step's latency
    histogram exactly as the judge reads its p99. ``shadow``: the step's shadow sample — coverage,
    effective share, skips by reason, queue wait — as the controller's measurement computes it.
    """
    figures = s.pairs.live_figures(rollout.id, rollout.step_index, latency=measure.LATENCY)
    arms: dict[str, Any] = {}
    for arm, f in (("champion", figures.champion), ("challenger", figures.challenger)):
        arms[arm] = {
            "served": f.served,
            "scored": f.scored,
            "errors": f.errors,
            "error_rate": f.errors / f.scored if f.scored else None,
            "latency_ms": {
                "p50": measure.latency_quantile(f.latency, 0.50),
                "p99": measure.latency_quantile(f.latency, 0.99),
                "n": sum(f.latency.values()),
            },
        }
    coverage = s.pairs.coverage(rollout.id, rollout.step_index)
    return {
        "rollout_id": figures.rollout_id,
        "step": figures.step,
        "requests": figures.requests,
        "first_at": figures.first_at,
        "last_at": figures.last_at,
        "arms": arms,
        "shadow": measure.shadow_summary(coverage, requests=figures.requests),
    }


def deployment_json(s: Store, d: Deployment, *, detail: bool) -> dict[str, Any]:
    """Describe a deployment; with detail, its latest rollout's live figures and last verdicts."""
    rollout = s.rollouts.latest(d.id)
    refs = _refs(s, d.champion_id, *((rollout.champion_id, rollout.challenger_id) if rollout else ()))
    active = rollout if rollout is not None and rollout.active else None
    body: dict[str, Any] = {
        "name": d.name,
        "champion": refs[d.champion_id],
        "challenger": refs[active.challenger_id] if active else None,
        "phase": active.phase if active else "stable",
        "mode": active.mode if active else None,
        "step_index": active.step_index if active else None,
        "weights": {
            "champion": 100.0 - active.canary_weight if active else 100.0,
            "challenger": active.canary_weight if active else 0.0,
            "shadow_rate": active.shadow_rate if active else 0.0,
        },
        "store_raw_inputs": d.store_raw_inputs,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }
    if not detail:
        body["rollout_id"] = active.id if active else None
        return body
    body["rollout"] = rollout_json(rollout, refs) if rollout else None
    if rollout is not None:
        # the words behind the reason code (an operator's --reason for manual_pause, the judge's text)
        said = [e for e in s.events.list(rollout_id=rollout.id, limit=10_000) if e.reason == rollout.reason]
        body["rollout"]["reason_message"] = said[-1].message if said else None
    body["live"] = live_figures(s, rollout) if rollout else None
    latest = s.analyses.latest(rollout.id) if rollout else None
    body["last_analysis"] = analysis_json(latest) if latest else None
    return body


# ------------------------------------------------------------------------------------------ routes
@blueprint.get("/openapi.json")
def openapi_document() -> Response:
    """Serve the OpenAPI 3.1 document of the admin API and the data plane (no token needed)."""
    return json_response(openapi.document())


@blueprint.get("/pipelines")
def pipelines_list() -> Response:
    """List pipeline versions (optionally ?name=)."""
    name = request.args.get("name") or None
    return json_response({"pipelines": [version_json(v) for v in store().pipelines.list(name=name)]})


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
    response = json_response(version_json(version), 201)
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
    return registry.register_upstream(
        store(),
        name=str(_string(body, "name")),
        version=str(_string(body, "version")),
        url=str(_string(body, "upstream")),
        protocol=str(_string(body, "protocol", default="v2")),
        task=str(_string(body, "task")),
        schema=schema or (),
        classes=tuple(classes) if classes is not None else None,
        metrics=_object(body, "metrics"),
        metadata=_object(body, "metadata"),
        actor=actor,
    )


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
    return json_response(version_json(store().pipelines.get_by_ref(f"{name}:{version}")))


@blueprint.get("/deployments")
def deployments_list() -> Response:
    """List deployments with their champion, phase and weights."""
    s = store()
    return json_response({"deployments": [deployment_json(s, d, detail=False) for d in s.deployments.list()]})


@blueprint.post("/deployments")
def deployments_create() -> Response:
    """Create a deployment served by a champion version."""
    body = _json_object(allowed={"name", "champion", "store_raw_inputs"}, required={"name", "champion"})
    name, champion = _string(body, "name"), _string(body, "champion")
    assert name is not None and champion is not None
    try:
        check_name("deployment name", name)
    except InvalidName as error:
        raise ApiError(400, "invalid_field", str(error)) from error
    raw = body.get("store_raw_inputs", True)
    if not isinstance(raw, bool):
        raise ApiError(400, "invalid_field", "store_raw_inputs must be a boolean")
    s = store()
    version = s.pipelines.get_by_ref(champion)
    registry.check_loadable(version, trust_pickle=settings().trust_pickle)
    event = NewEvent(
        actor=principal().name,
        action="deployment.create",
        reason="created",
        message=f"champion {version.ref}",
    )
    deployment = s.deployments.create(name, version.id, store_raw_inputs=raw, event=event)
    response = json_response(deployment_json(s, deployment, detail=True), 201)
    response.headers["Location"] = f"{API_PREFIX}/deployments/{deployment.name}"
    return response


@blueprint.get("/deployments/<name>")
def deployments_show(name: str) -> Response:
    """Show a deployment: phase, weights, step, live figures of the current step, last verdicts."""
    s = store()
    return json_response(deployment_json(s, s.deployments.get(name), detail=True))


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
    response = json_response(rollout_json(rollout, _refs(s, rollout.champion_id, rollout.challenger_id)), 201)
    response.headers["Location"] = f"{API_PREFIX}/deployments/{name}"
    return response


@blueprint.get("/deployments/<name>/rollouts")
def rollouts_list(name: str) -> Response:
    """List a deployment's rollouts, oldest first."""
    s = store()
    deployment = s.deployments.get(name)
    rollouts = s.rollouts.list(deployment_id=deployment.id)
    refs = _refs(s, *(i for r in rollouts for i in (r.champion_id, r.challenger_id)))
    return json_response({"rollouts": [rollout_json(r, refs) for r in rollouts]})


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
    return json_response(rollout_json(rollout, _refs(s, rollout.champion_id, rollout.challenger_id)))


@blueprint.get("/deployments/<name>/events")
def events_list(name: str) -> Response:
    """List a deployment's events after an id (?after_id=, ?limit= up to 1000), oldest first."""
    s = store()
    deployment = s.deployments.get(name)
    after_id = _int_arg("after_id", 0, low=0, high=2**63 - 1)
    limit = _int_arg("limit", 200, low=1, high=1000)
    events = s.events.list(deployment_id=deployment.id, after_id=after_id, limit=limit)
    return json_response(
        {"events": [event_json(e) for e in events], "next_after_id": events[-1].id if events else after_id}
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
