"""Ground-truth labels: the data-plane feedback endpoint and the parsing shared with the admin API.

    POST /v1/models/{deployment}/feedback
    {"labels": [{"request_id": "abc", "row": 0, "label": 1}, ...]}
    -> 200 {"stored": 1, "unknown_request_ids": []}

No token: like scoring, feedback is data plane (served by `mlcanary router` and `mlcanary serve`).
Idempotent: the last label of a request row wins, so a client may resend a batch after a timeout.
Request ids with no paired output in the deployment yet are reported and their labels kept (a label
may overtake its pair, which the router writes in batches); they do not fail the batch. A bad body is a 4xx JSON error naming the problem; nothing of a refused batch is stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, current_app, request

from controller.http.errors import HttpError, LabelsError, json_response, render_error
from storage import NotFound, Store

__all__ = ["LabelsError", "blueprint", "parse_labels", "read_json_body", "store_labels"]

MAX_LABELS = 10_000
MAX_REQUEST_ID = 128
STORE_EXTENSION = "mlcanary.store"

blueprint = Blueprint("mlcanary_feedback", __name__)


def read_json_body() -> Any:
    """Return the request's JSON document; LabelsError 415 if not JSON, 400 if malformed."""
    if not request.is_json:
        raise LabelsError(415, "unsupported_media_type", "send the body as application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise LabelsError(400, "invalid_json", "the body is not valid JSON")
    return body


def parse_labels(body: Any) -> list[tuple[str, int, Any]]:
    """Validate a labels document and return (request_id, row, label) triples, last duplicate winning.

    Labels must be JSON scalars (string, number, boolean); null and non-finite numbers are refused.
    """
    if not isinstance(body, Mapping) or set(body) != {"labels"}:
        raise LabelsError(
            400, "invalid_labels", 'the body must be {"labels": [{"request_id", "label", "row"?}]}'
        )
    items = body["labels"]
    if not isinstance(items, list) or not items:
        raise LabelsError(400, "invalid_labels", '"labels" must be a non-empty list')
    if len(items) > MAX_LABELS:
        raise LabelsError(
            413, "too_many_labels", f"{len(items)} labels in one request; send at most {MAX_LABELS}"
        )
    triples: dict[tuple[str, int], Any] = {}
    for position, item in enumerate(items):
        where = f"labels[{position}]"
        if not isinstance(item, Mapping):
            raise LabelsError(400, "invalid_labels", f"{where} must be an object")
        unknown = set(item) - {"request_id", "row", "label"}
        if unknown:
            raise LabelsError(400, "invalid_labels", f"{where} has unknown keys {sorted(unknown)}")
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_REQUEST_ID:
            raise LabelsError(
                400,
                "invalid_labels",
                f"{where}.request_id must be a string of 1..{MAX_REQUEST_ID} characters",
            )
        row = item.get("row", 0)
        if isinstance(row, bool) or not isinstance(row, int) or row < 0:
            raise LabelsError(400, "invalid_labels", f"{where}.row must be an integer >= 0")
        if "label" not in item:
            raise LabelsError(400, "invalid_labels", f"{where}.label is missing")
        label = item["label"]
        if not isinstance(label, str | int | float | bool) or (
            isinstance(label, float) and not math.isfinite(label)
        ):
            raise LabelsError(
                400, "invalid_labels", f"{where}.label must be a string, a finite number or a boolean"
            )
        triples[(request_id, row)] = label
    return [(rid, row, label) for (rid, row), label in triples.items()]


def store_labels(store: Store, deployment: str, triples: list[tuple[str, int, Any]]) -> dict[str, Any]:
    """Upsert labels for a deployment; return {"stored": n, "unknown_request_ids": [...]}.

    NotFound if the deployment does not exist.
    """
    target = store.deployments.get(deployment)
    stored, unknown = store.labels.upsert_many(target.id, triples)
    return {"stored": stored, "unknown_request_ids": unknown}


@blueprint.post("/v1/models/<deployment>/feedback")
def feedback(deployment: str) -> Response:
    """Store ground-truth labels for earlier requests of a deployment."""
    store: Store = current_app.extensions[STORE_EXTENSION]
    triples = parse_labels(read_json_body())
    try:
        result = store_labels(store, deployment, triples)
    except NotFound as error:
        raise HttpError(404, "deployment_not_found", str(error)) from error
    return json_response(result)


@blueprint.errorhandler(Exception)
def _render(error: Exception) -> Response:
    return render_error(error)
