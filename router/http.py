"""Flask routes of the data plane: MLflow and V2 scoring, V2 metadata and health, probes, metrics.

The blueprint finds its DataPlane at `current_app.extensions["mlcanary.dataplane"]`. Every error is
JSON `{"error": {"code": ..., "message": ...}}` with the status of its router.errors class.

Headers: `X-Request-Id` is taken from the request (else the V2 body's `id`, else generated) and
echoed; `X-Routing-Key` is the sticky assignment key (default: the request id). Responses carry
`X-Mlcanary-Arm` (champion | challenger) and `X-Mlcanary-Version` (NAME:VERSION).
"""

from __future__ import annotations

import functools
import io
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_content_length, get_input_stream

from router import mlflow, v2
from router.backends import MissingBackend
from router.dataplane import DataPlane
from router.edge import check_id, header_value, write_json
from router.errors import PayloadTooLarge, RouterError, UnsupportedMediaType
from router.inputs import build_batch
from router.metrics import exposition, get_metrics

log = logging.getLogger(__name__)

blueprint = Blueprint("mlcanary_router", __name__)
EXTENSION = "mlcanary.dataplane"


def dataplane() -> DataPlane:
    """Return the current app's DataPlane."""
    plane: DataPlane = current_app.extensions[EXTENSION]
    return plane


@blueprint.post("/v1/models/<deployment>/invocations")
def invocations(deployment: str) -> Response:
    """Score an MLflow scoring-protocol request (JSON or CSV)."""
    return _predict(deployment, "mlflow")


@blueprint.post("/v2/models/<deployment>/infer")
@blueprint.post("/v2/models/<deployment>/versions/<version>/infer")
def infer(deployment: str, version: str | None = None) -> Response:
    """Score an Open Inference (V2) request; a version in the path is ignored (the router picks it)."""
    return _predict(deployment, "v2")


def _predict(deployment: str, protocol: str) -> Response:
    plane = dataplane()
    answer = score(plane, deployment, protocol, request.environ)
    response = Response(answer.body, status=answer.status, mimetype="application/json")
    response.headers.extend(answer.headers)
    response.call_on_close(functools.partial(_answered, plane, answer.after))
    return response


@dataclass(frozen=True)
class Scored:
    """A scoring route's answer: status, the headers besides Content-Type and Content-Length, JSON body.

    after: what is left to do once the answer is sent (`_answered`): the pair's recording, the
    other arm's shadow scoring, the request's metrics.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    after: list[Callable[[], None]] = field(default_factory=list)


def score(plane: DataPlane, deployment: str, protocol: str, environ: dict[str, Any]) -> Scored:
    """Answer one scoring request (protocol "mlflow" or "v2") from its WSGI environ.

    The one implementation of the scoring routes, under Flask's views and the fast path alike
    (`FastScoring`). The request counts as in flight from here until the caller calls
    `_answered(plane, scored.after)` once the answer is sent (done here, if this raises). Answer
    first: under gunicorn (`mlcanary router`), which closes every response once sent, the pair's
    recording, the shadow arm's hand-off and the metrics wait in `after` until then, so the
    client does not wait for them (at one request at a time in front of a model server, the
    router's own work on the answer's path is what its added latency is). Under a server that may
    not close a response (Flask's test client leaves it to its caller) they are done before this
    returns.
    """
    started = time.perf_counter()
    request_id = environ.get("HTTP_X_REQUEST_ID") or ""
    arm = "none"
    # /metrics labels only deployments the router knows: a URL cannot add a series
    label = deployment if deployment in plane.routes.routes else "unknown"
    arrival = plane.enter(deployment if label != "unknown" else None, _kept_alive(environ))
    after: list[Callable[[], None]] = []
    try:
        headers: list[tuple[str, str]] = []
        try:
            if request_id:
                check_id(request_id, "X-Request-Id")
            routing_key = environ.get("HTTP_X_ROUTING_KEY")
            if routing_key is not None:
                check_id(routing_key, "X-Routing-Key")
            content_type = environ.get("CONTENT_TYPE", "")
            if protocol == "v2":
                _check_v2_media_type(content_type)
            body = _read_body(environ, plane.settings.max_body_bytes)
            route = plane.route(deployment)
            schema = route.entry.champion.input_schema
            if protocol == "mlflow":
                columns = mlflow.read_columns(body, content_type, schema)
                v2_id = None
            else:
                document, binary = v2.read_request(body, environ.get(_V2_LENGTH))
                columns = v2.read_columns(document, binary, schema)
                v2_id = document.get("id") if isinstance(document.get("id"), str) else None
                if v2_id is not None:
                    check_id(v2_id, "the V2 id")
            request_id = request_id or v2_id or uuid.uuid4().hex
            batch = build_batch(columns, schema, max_rows=plane.settings.max_rows)
            answer = plane.serve(
                route, batch, request_id=request_id, routing_key=routing_key, arrival=arrival, after=after
            )
            arm = answer.arm
            outputs = answer.predictions.outputs
            if protocol == "mlflow":
                payload: Any = mlflow.write_predictions(outputs)
            else:
                payload = v2.write_response(
                    model_name=deployment,
                    model_version=answer.version.ref,
                    request_id=v2_id or request_id,
                    outputs=outputs,
                    scores=answer.predictions.scores,
                )
            status, written = 200, write_json(payload)
            headers += [
                ("X-Mlcanary-Arm", answer.arm),
                ("X-Mlcanary-Version", header_value(answer.version.ref)),
            ]
            code = None
        except RouterError as exc:
            status, written = exc.status, write_json(public_error(exc))
            code = exc.code
        finally:
            plane.answered(arrival)
        headers.append(("X-Request-Id", header_value(request_id or uuid.uuid4().hex)))
        after.append(functools.partial(_count, label, arm, protocol, code, time.perf_counter() - started))
    except BaseException:
        _run(after)  # a pair already scored is still recorded
        plane.leave()
        raise
    if "gunicorn.socket" not in environ:  # a server that may never close the response: do it now
        _run(after)
        after = []
    else:
        plane.owe()  # paid in _answered, once the answer is sent
    return Scored(status, headers, written, after)


def _count(label: str, arm: str, protocol: str, code: str | None, seconds: float) -> None:
    """A scoring request's metrics: answered (or refused, with its error code), and its latency."""
    metrics = get_metrics()
    if code is None:
        metrics.child(metrics.requests, label, arm, protocol).inc()
    else:
        metrics.child(metrics.errors, label, code).inc()
    metrics.child(metrics.latency, label, arm).observe(seconds)


def _answered(plane: DataPlane, after: list[Callable[[], None]]) -> None:
    """Once a scoring answer is sent: what it left to do (`Scored.after`), then the request leaves.

    A failure here is logged and never reaches the client, who has its answer.
    """
    try:
        _run(after)
    finally:
        if after:
            plane.paid()
        plane.leave()


def _run(after: list[Callable[[], None]]) -> None:
    for work in after:
        try:
            work()
        except Exception:  # the answer stands: a failure to record or count is logged
            log.exception("after a scoring answer")


INTERNAL_ERROR = {"error": {"code": "internal_error", "message": "internal error; see the logs"}}
_SCORING_PATH = re.compile(r"/v1/models/([^/]+)/invocations|/v2/models/([^/]+)/(?:versions/[^/]+/)?infer")


class FastScoring:
    """WSGI middleware answering the scoring routes without Flask's dispatch, around app.wsgi_app.

    A POST to a scoring path (the blueprint's `invocations` and `infer` rules) goes straight to
    `score`; anything else, and a chunked body (which `bound_chunked_body` reads first), goes to
    the Flask app. Flask's request context, URL map, hooks and response object cost about a third
    of a millisecond of CPU per request on the proxied path (BENCHMARKS.md, "Tenth session"), as
    much as everything else the router adds to an upstream's answer but the HTTP client. The
    answer is the view's, byte for byte: `score` is the view's body; `headers` holds what the
    app's after_request hooks add to a scoring answer (the serve app's `X-Content-Type-Options`,
    `mirror_hook`), and a test compares both paths' answers for each role. An app with a request
    hook this path does not mirror gets its scoring routes through Flask (`active`).
    """

    def __init__(self, app: Flask, plane: DataPlane) -> None:
        self.app = app
        self.wsgi_app = app.wsgi_app
        self.plane = plane
        self.headers: list[tuple[str, str]] = []
        self.mirrored: set[Any] = {bound_chunked_body}  # the app's hooks this path does the work of
        self._active: bool | None = None

    def active(self) -> bool:
        """Whether every request hook of the app is one this path mirrors (decided at the first request).

        A hook added to the app later (a check of a token on the scoring routes, say) is not silently
        skipped: the scoring routes then go through Flask, and the log says why, once.
        """
        if self._active is None:
            hooks = [
                f
                for table in (self.app.before_request_funcs, self.app.after_request_funcs)
                for key in (None, blueprint.name)
                for f in table.get(key, [])
            ]
            unknown = [getattr(f, "__qualname__", repr(f)) for f in hooks if f not in self.mirrored]
            if unknown:
                log.warning("scoring routes served through Flask: request hooks %s", ", ".join(unknown))
            self._active = not unknown
        return self._active

    def claims(self, method: str, path: str) -> bool:
        """Whether this answers the request itself (not Flask): a server may then hand it over with a
        minimal environ (controller.server's plain path); the answer is the same either way."""
        return method == "POST" and _SCORING_PATH.fullmatch(path) is not None and self.active()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if (
            environ.get("REQUEST_METHOD") != "POST"
            or "HTTP_TRANSFER_ENCODING" in environ
            or not self.active()
        ):
            return self.wsgi_app(environ, start_response)
        found = _SCORING_PATH.fullmatch(environ.get("PATH_INFO", ""))
        if found is None:
            return self.wsgi_app(environ, start_response)
        # the deployment as werkzeug reads the path: WSGI's latin-1 string back to UTF-8 text
        name = (found.group(1) or found.group(2)).encode("latin-1").decode("utf-8", "replace")
        try:
            answer = score(self.plane, name, "mlflow" if found.group(1) else "v2", environ)
        except Exception:
            log.exception("unexpected error")  # as the app's error handler: a 500 without details
            answer = Scored(500, [], write_json(INTERNAL_ERROR))  # score has left the plane
            start_response(_status_line(500), _headers(answer, self.headers))
            return [answer.body]
        start_response(_status_line(answer.status), _headers(answer, self.headers))
        return _Answered(answer.body, functools.partial(_answered, self.plane, answer.after))


def _status_line(status: int) -> str:
    return f"{status} {HTTP_STATUS_CODES.get(status, 'Unknown').upper()}"  # as werkzeug writes it


def _headers(answer: Scored, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(answer.body))),
        *answer.headers,
        *extra,
    ]


class _Answered:
    """The fast path's response iterable: the body; once it is sent, what is left (`_answered`)."""

    __slots__ = ("body", "close")

    def __init__(self, body: bytes, close: Any) -> None:
        self.body = body
        self.close = close  # the server calls close() after the last byte (PEP 3333)

    def __iter__(self) -> Any:
        yield self.body


def mirror_hook(app: Flask, hook: Any, headers: list[tuple[str, str]]) -> None:
    """Say that the fast path does what an app hook does to a scoring answer: add these headers."""
    fast = app.wsgi_app
    if not isinstance(fast, FastScoring):
        raise TypeError("the app's scoring routes have no fast path (router.create_app installs it)")
    fast.headers.extend(headers)
    fast.mirrored.add(hook)


_V2_LENGTH = "HTTP_" + v2.HEADER_LENGTH.upper().replace("-", "_")


def _kept_alive(environ: dict[str, Any]) -> int | None:
    """Return a key of the client connection if the server keeps it open after the answer, else None.

    Only the router's own worker (controller.server) says so, on its sockets (`keeps_alive`, when
    gunicorn's keepalive is on); under any other server the batcher counts no returning connections.
    """
    sock = environ.get("gunicorn.socket")
    if not getattr(sock, "keeps_alive", False):
        return None
    connection = environ.get("HTTP_CONNECTION", "").lower()
    if "close" in connection:
        return None
    if environ.get("SERVER_PROTOCOL") == "HTTP/1.0" and "keep-alive" not in connection:
        return None
    return id(sock)


_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", re.IGNORECASE)
_PATH = re.compile(r"(?<![\w.:])/(?:[^\s/'\":]+/)+[^\s/'\":]*")


def public_error(exc: RouterError) -> dict[str, dict[str, str]]:
    """Return the error body for an anonymous client: a model's failure without URLs or file paths.

    The full message (upstream address, artifact path) is what the pair records and the log shows.
    """
    body = exc.to_json()
    if exc.status >= 500:
        message = _PATH.sub("<path>", _URL.sub("<upstream>", exc.message))
        body["error"]["message"] = message
        if message != exc.message:
            log.info("%s answered to the client as: %s (was: %s)", exc.code, message, exc.message)
    return body


def _check_v2_media_type(content_type: str) -> None:
    """Refuse V2 bodies that are not JSON or binary: a cross-site form or text/plain post never scores."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json") or media == "application/octet-stream":
        return
    raise UnsupportedMediaType(
        f"content type {media or 'none'!r} is not accepted; send application/json "
        "(or application/octet-stream with the binary tensor extension)"
    )


def bound_chunked_body() -> None:
    """Read a chunked body whole before any view, refusing it (413) past the app's size limit.

    A chunked body has no Content-Length, and werkzeug's own stream stops at MAX_CONTENT_LENGTH and
    hands back a truncated body, which would be parsed and scored (a row's 419999 read as 41). So the
    server's terminated input is read here, one byte past the limit, and the request continues with
    the whole body and its length. Multipart uploads (artifacts, with their own larger limit) are
    left to the form parser.
    """
    environ = request.environ
    if not environ.get("wsgi.input_terminated") or request.content_length is not None:
        return  # the environ first: werkzeug's content_length parses headers (~3 us a request)
    if (request.mimetype or "").startswith("multipart/"):
        return
    limit = int(current_app.config.get("MAX_CONTENT_LENGTH") or 0) or dataplane().settings.max_body_bytes
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(1 << 16, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise PayloadTooLarge(f"the chunked body is larger than {limit} bytes; at most {limit} are accepted")
    environ["wsgi.input"] = io.BytesIO(b"".join(chunks))
    environ["CONTENT_LENGTH"] = str(size)
    environ.pop("wsgi.input_terminated", None)
    environ.pop("HTTP_TRANSFER_ENCODING", None)


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """Read the whole body, or PayloadTooLarge (413) beyond limit bytes (chunked: see bound_chunked_body).

    Read as Flask's request.stream reads it (werkzeug's input stream, bounded by the app's
    MAX_CONTENT_LENGTH, which create_app sets to the same limit).
    """
    length = get_content_length(environ)
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body has {length} bytes; at most {limit} are accepted")
    if length is not None and environ.get("wsgi.input_terminated"):
        # the server ends the input at the body's end (gunicorn): read it as it is; werkzeug's
        # bounded stream first allocates `limit` bytes for a file-like input (0.5 ms at 10 MiB)
        return bytes(environ["wsgi.input"].read(length))
    body = get_input_stream(environ, max_content_length=limit).read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes; at most {limit} are accepted")
    return body


def _json_response(payload: Any, status: int) -> Response:
    return Response(write_json(payload), status=status, mimetype="application/json")


@blueprint.get("/v2/models/<deployment>")
@blueprint.get("/v2/models/<deployment>/versions/<version>")
def model_metadata(deployment: str, version: str | None = None) -> Response:
    """Describe a deployment's inputs and outputs (its champion's schema), V2 style."""
    try:
        route = dataplane().route(deployment)
    except RouterError as exc:
        return _json_response(exc.to_json(), exc.status)
    return _json_response(v2.metadata(deployment, route.entry.champion), 200)


@blueprint.get("/v2/models/<deployment>/ready")
@blueprint.get("/v2/models/<deployment>/versions/<version>/ready")
def model_ready(deployment: str, version: str | None = None) -> Response:
    """Answer 200 when the deployment's champion is loaded, else 503 (404 if unknown).

    With a version (its VERSION or NAME:VERSION, the champion's or the challenger's): whether that
    version is loaded. An upstream that is down makes its own version not ready, nothing else.
    """
    plane = dataplane()
    try:
        route = plane.route(deployment)
    except RouterError as exc:
        return _json_response(exc.to_json(), exc.status)
    backend = route.champion
    if version is not None:
        arms = [route.champion] + ([route.challenger] if route.challenger is not None else [])
        found = [b for b in arms if version in (b.version.version, b.version.ref)]
        if not found:
            error = {"code": "version_not_found", "message": f"{deployment} routes no version {version!r}"}
            return _json_response({"error": error}, 404)
        backend = found[0]
    ready = plane.ready and not isinstance(backend, MissingBackend)
    body: dict[str, Any] = {"name": deployment, "ready": ready}
    if version is not None:
        body["version"] = backend.version.ref
    if isinstance(backend, MissingBackend):
        body["reason"] = backend.reason
    return _json_response(body, 200 if ready else 503)


@blueprint.get("/v2")
def server_metadata() -> Response:
    return _json_response({"name": "mlcanary", "version": "1", "extensions": ["binary_tensor_data"]}, 200)


@blueprint.get("/v2/health/live")
@blueprint.get("/healthz")
def live() -> Response:
    """Answer 200 while the process runs."""
    return _json_response({"status": "ok", "live": True}, 200)


@blueprint.get("/v2/health/ready")
@blueprint.get("/readyz")
def ready() -> Response:
    """Answer 200 once the routing table and its versions are loaded, else 503.

    503 too while a deployment's champion artifact cannot load here (``unservable``: deployment -> why);
    a challenger that cannot load, or an HTTP upstream that is down, is listed in ``failed_versions`` but
    leaves the process ready (router.routes says why).
    """
    plane = dataplane()
    ready = plane.ready
    body = {
        "status": "ready" if ready else "not_ready",
        "ready": ready,
        "deployments": sorted(plane.routes.routes),
        "failed_versions": plane.routes.failures(),
        "unservable": plane.routes.unservable(),
        "warming": sorted(plane.routes.warming),
        "warmed_ms": dict(plane.routes.warmed),
    }
    if plane.routes.last_error:  # the text (database address, driver message) goes to the log only
        body["storage_error"] = "storage is unavailable; serving the last routing table"
    return _json_response(body, 200 if ready else 503)


@blueprint.get("/metrics")
def metrics() -> Response:
    """Expose Prometheus metrics (summed over gunicorn workers in multiprocess mode)."""
    text, content_type = exposition()
    return Response(text, status=200, content_type=content_type)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def install_error_handlers(app: Flask) -> None:
    """Answer every error as JSON; unexpected exceptions become a logged 500 without details."""

    @app.errorhandler(RouterError)
    def _router_error(exc: RouterError) -> Response:
        return _json_response(exc.to_json(), exc.status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, (exc.name or "error").lower().replace(" ", "_"))
        response = _json_response({"error": {"code": code, "message": exc.description or exc.name}}, status)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return _json_response(INTERNAL_ERROR, 500)
