"""Ground-truth labels: the data-plane feedback endpoint and the parsing shared with the admin API.

    POST /v1/models/{deployment}/feedback
    {"labels": [{"request_id": "abc", "row": 0, "label": 1, "outcome": 12.5}, ...]}
    -> 200 {"stored": 1, "unknown_request_ids": []}

``outcome`` (optional): a numeric business outcome of the request row — revenue, a 0/1 conversion,
a cost — next to the label or instead of it (an item needs at least one of the two); the policy's
``outcome`` gate compares the arms on it. ``outcome_base`` (optional, with an outcome): the
denominator of a ratio outcome, e.g. the visits behind the revenue (revenue per visit). An item without a label keeps a label sent earlier, and
one without an outcome keeps an earlier outcome.

No token: like scoring, feedback is data plane (served by `mlcanary router` and `mlcanary serve`).
Idempotent: the last label of a request row wins, so a client may resend a batch after a timeout.
Request ids with no paired output in the deployment yet are reported and their labels kept (a label
may overtake its pair, which the router writes in batches); they do not fail the batch. A bad body is a 4xx JSON error naming the problem; nothing of a refused batch is stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from storage import NotFound, StorageError, Store, Unavailable

MAX_LABELS = 10_000
MAX_REQUEST_ID = 128
STORE_EXTENSION = "mlcanary.store"

blueprint = Blueprint("mlcanary_feedback", __name__)


class LabelsError(ValueError):
    """A labels body is invalid; carries the HTTP status and a stable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> Response:
    """Answer `{"error": {"code": ..., "message": ...}}` with a status."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def read_json_body() -> Any:
    """Return the request's JSON document; LabelsError 415 if not JSON, 400 if malformed."""
    if not request.is_json:
        raise LabelsError(415, "unsupported_media_type", "send the body as application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise LabelsError(400, "invalid_json", "the body is not valid JSON")
    return body


def parse_labels(body: Any) -> list[tuple[str, int, Any, float | None, float | None]]:
    """Validate a labels document; return (request_id, row, label, outcome, outcome_base) tuples, last duplicate winning.

    Labels must be JSON scalars (string, number, boolean); null and non-finite numbers are refused.
    ``outcome`` must be a finite number; ``label`` or ``outcome`` may be left out (not both), and a
    left-out one is None.
    """
    if not isinstance(body, Mapping) or set(body) != {"labels"}:
        raise LabelsError(
            400,
            "invalid_labels",
            'the body must be {"labels": [{"request_id", "label"?, "outcome"?, "row"?}]}',
        )
    items = body["labels"]
    if not isinstance(items, list) or not items:
        raise LabelsError(400, "invalid_labels", '"labels" must be a non-empty list')
    if len(items) > MAX_LABELS:
        raise LabelsError(
            413, "too_many_labels", f"{len(items)} labels in one request; send at most {MAX_LABELS}"
        )
    triples: dict[tuple[str, int], tuple[Any, float | None, float | None]] = {}
    for position, item in enumerate(items):
        where = f"labels[{position}]"
        if not isinstance(item, Mapping):
            raise LabelsError(400, "invalid_labels", f"{where} must be an object")
        unknown = set(item) - {"request_id", "row", "label", "outcome", "outcome_base"}
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
        if "label" not in item and "outcome" not in item:
            raise LabelsError(
                400, "invalid_labels", f"{where}.label is missing (give a label, an outcome or both)"
            )
        label = item.get("label")
        if "label" in item and (
            not isinstance(label, str | int | float | bool)
            or (isinstance(label, float) and not math.isfinite(label))
        ):
            raise LabelsError(
                400, "invalid_labels", f"{where}.label must be a string, a finite number or a boolean"
            )
        outcome = _outcome(item.get("outcome"), where) if "outcome" in item else None
        base = _outcome(item.get("outcome_base"), where, "outcome_base") if "outcome_base" in item else None
        if base is not None and outcome is None:
            raise LabelsError(400, "invalid_labels", f"{where}.outcome_base needs an outcome")
        triples[(request_id, row)] = (label, outcome, base)
    return [(rid, row, *values) for (rid, row), values in triples.items()]


def _outcome(value: Any, where: str, name: str = "outcome") -> float:
    """A business outcome: a finite number (booleans are refused: send a conversion as 0 or 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LabelsError(400, "invalid_labels", f"{where}.{name} must be a finite number")
    return float(value)


def store_labels(
    store: Store, deployment: str, triples: list[tuple[str, int, Any, float | None, float | None]]
) -> dict[str, Any]:
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
    try:
        result = store_labels(store, deployment, parse_labels(read_json_body()))
    except LabelsError as error:
        return error_response(error.status, error.code, error.message)
    except NotFound as error:
        return error_response(404, "deployment_not_found", str(error))
    except Unavailable as error:
        return error_response(503, "storage_unavailable", str(error))
    except StorageError as error:
        current_app.logger.exception("feedback failed")
        return error_response(500, "storage_error", type(error).__name__)
    return jsonify(result)
