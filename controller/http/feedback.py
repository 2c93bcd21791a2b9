"""Ground-truth labels: the data-plane feedback endpoint and the parsing shared with the admin API.

    POST /v1/models/{deployment}/feedback
    Authorization: Bearer <labeller or operator token>      (unless MLCANARY_FEEDBACK_AUTH=open)
    {"labels": [{"request_id": "abc", "row": 0, "label": 1, "outcome": 12.5}, ...]}
    -> 200 {"stored": 1, "unknown_request_ids": [], "dropped_request_ids": []}

Feedback is data plane (served by `mlcanary router` and `mlcanary serve`), guarded by a labeller
token by default (`mlcanary tokens create NAME --role labeller`; a labeller token can do nothing
else), at most feedback_max_labels labels per request (413) and feedback_rate labels per second per
deployment and process (429 with Retry-After).

``outcome`` (optional): a numeric business outcome of the request row — revenue, a 0/1 conversion,
a cost — next to the label or instead of it (an item needs at least one of the two); the policy's
``outcome`` gate compares the arms on it. ``outcome_base`` (optional, with an outcome): the
denominator of a ratio outcome, e.g. the visits behind the revenue (revenue per visit). An item without a label keeps a label sent earlier, and
one without an outcome keeps an earlier outcome.
Idempotent: the last label of a request row wins, so a client may resend a batch after a timeout.
Labels are checked against the deployment: one of the classes of its champion (or active
challenger) for classification, a finite number for regression; a bad one is a 400 naming it.
Request ids with no paired output in the deployment yet are reported and their labels kept as
pending (a label may overtake its pair, which the router writes in batches) for at most
feedback_pending_s seconds and feedback_pending_max labels per deployment; labels beyond that bound
are not stored and reported in dropped_request_ids. A bad body is a 4xx JSON error naming the
problem; nothing of a refused batch is stored.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app, request

from controller.http.auth import AuthError, authenticate
from controller.http.errors import LabelsError, error_response, json_response
from storage import DataRefused, NotFound, StorageError, Store, Unavailable
from storage.entities import MAX_CLASS_TEXT, storable_text, valid_request_id

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


def parse_labels(
    body: Any,
    *,
    max_labels: int = MAX_LABELS,
    accept: Callable[[Any], str | None] | None = None,
) -> list[tuple[str, int, Any, float | None, float | None]]:
    """Validate a labels document; return (request_id, row, label, outcome, outcome_base) tuples, last duplicate winning.

    Labels must be JSON scalars (string, number, boolean); null and non-finite numbers are refused,
    and `accept` (see label_rule) may refuse more, its answer naming what is expected. ``outcome``
    must be a finite number; ``label`` or ``outcome`` may be left out (not both), a left-out one is None.
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
    if len(items) > max_labels:
        raise LabelsError(
            413, "too_many_labels", f"{len(items)} labels in one request; send at most {max_labels}"
        )
    rows: dict[tuple[str, int], tuple[Any, float | None, float | None]] = {}
    for position, item in enumerate(items):
        where = f"labels[{position}]"
        if not isinstance(item, Mapping):
            raise LabelsError(400, "invalid_labels", f"{where} must be an object")
        unknown = set(item) - {"request_id", "row", "label", "outcome", "outcome_base"}
        if unknown:
            raise LabelsError(400, "invalid_labels", f"{where} has unknown keys {sorted(unknown)}")
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not valid_request_id(request_id):
            raise LabelsError(
                400,
                "invalid_labels",
                f"{where}.request_id must be a string of 1..{MAX_REQUEST_ID} printable ASCII characters",
            )
        row = item.get("row", 0)
        if isinstance(row, bool) or not isinstance(row, int) or row < 0:
            raise LabelsError(400, "invalid_labels", f"{where}.row must be an integer >= 0")
        if "label" not in item and "outcome" not in item:
            raise LabelsError(
                400, "invalid_labels", f"{where}.label is missing (give a label, an outcome or both)"
            )
        label = item.get("label")
        if "label" in item:
            if not isinstance(label, str | int | float | bool) or (
                isinstance(label, float) and not math.isfinite(label)
            ):
                raise LabelsError(
                    400, "invalid_labels", f"{where}.label must be a string, a finite number or a boolean"
                )
            if isinstance(label, str) and not storable_text(label):
                raise LabelsError(
                    400, "invalid_labels", f"{where}.label holds a NUL or an unpaired surrogate"
                )
            if isinstance(label, str) and len(label) > MAX_CLASS_TEXT:
                raise LabelsError(
                    400, "invalid_labels", f"{where}.label is longer than {MAX_CLASS_TEXT} characters"
                )
            problem = accept(label) if accept is not None else None
            if problem is not None:
                raise LabelsError(400, "invalid_labels", f"{where}.label {_shown(label)} is not {problem}")
        outcome = _outcome(item.get("outcome"), where) if "outcome" in item else None
        base = _outcome(item.get("outcome_base"), where, "outcome_base") if "outcome_base" in item else None
        if base is not None and outcome is None:
            raise LabelsError(400, "invalid_labels", f"{where}.outcome_base needs an outcome")
        rows[(request_id, row)] = (label, outcome, base)
    return [(rid, row, *values) for (rid, row), values in rows.items()]


def _outcome(value: Any, where: str, name: str = "outcome") -> float:
    """A business outcome: a finite number (booleans are refused: send a conversion as 0 or 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LabelsError(400, "invalid_labels", f"{where}.{name} must be a finite number")
    return float(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def label_rule(store: Store, deployment: str) -> Callable[[Any], str | None]:
    """Return the check of one label for a deployment (NotFound if it does not exist).

    Classification: one of the classes of the champion or of the active rollout's challenger,
    compared as the text the pairs store (1 and "1" are the same class; True is not 1). Regression:
    a finite number (not a boolean). A version that declares no classes accepts any scalar.
    """
    target = store.deployments.get(deployment)
    champion = store.pipelines.get(target.champion_id)
    classes = list(champion.classes or ())
    active = [r for r in store.rollouts.list(deployment_id=target.id, active_only=True)]
    for rollout in active:
        classes.extend(store.pipelines.get(rollout.challenger_id).classes or ())
    if champion.task == "regression":

        def number(label: Any) -> str | None:
            finite = isinstance(label, int | float) and not isinstance(label, bool) and math.isfinite(label)
            return None if finite else "a finite number (this deployment is a regression)"

        return number
    if not classes:
        return lambda label: None
    names = {_class_text(c) for c in classes}
    expected = "one of the classes " + ", ".join(sorted(names)[:20])

    def member(label: Any) -> str | None:
        return None if _class_text(label) in names else expected

    return member


def _class_text(value: Any) -> str:
    """The text a class is stored as in pairs and labels (1, 1.0 and "1" agree; booleans stay True/False)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def store_labels(
    store: Store,
    deployment: str,
    triples: list[tuple[str, int, Any, float | None, float | None]],
    *,
    pending_limit: int | None = None,
    pending_window_s: float | None = None,
) -> dict[str, Any]:
    """Store labels for a deployment; return {"stored", "unknown_request_ids", "dropped_request_ids"}.

    NotFound if the deployment does not exist. Labels of request rows with no pair yet are kept as
    pending within the bounds given (count per deployment, seconds); beyond them they are dropped.
    """
    target = store.deployments.get(deployment)
    result = store.labels.store(
        target.id,
        triples,
        pending_limit=pending_limit,
        pending_window=None if pending_window_s is None else timedelta(seconds=pending_window_s),
    )
    return {
        "stored": result.stored,
        "unknown_request_ids": list(result.unknown),
        "dropped_request_ids": list(result.dropped),
    }


class RateLimiter:
    """A token bucket per key (deployment): `rate` labels per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, amount: int) -> float:
        """Take amount tokens; return 0 if granted, else the seconds to wait before they would be."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if amount > tokens:
                self._buckets[key] = (tokens, now)
                return (amount - tokens) / self.rate
            self._buckets[key] = (tokens - amount, now)
            return 0.0


def _settings() -> Any:
    from controller.config import Settings

    found = current_app.config.get("MLCANARY_SETTINGS")
    return found if found is not None else Settings()


def _limiter(config: Any) -> RateLimiter:
    limiter: RateLimiter | None = current_app.extensions.get("mlcanary.feedback_limiter")
    if limiter is None:
        burst = max(config.feedback_rate, config.feedback_max_labels)
        limiter = current_app.extensions["mlcanary.feedback_limiter"] = RateLimiter(
            config.feedback_rate, burst
        )
    return limiter


@blueprint.post("/v1/models/<deployment>/feedback")
def feedback(deployment: str) -> Response:
    """Store ground-truth labels for earlier requests of a deployment."""
    store: Store = current_app.extensions[STORE_EXTENSION]
    config = _settings()
    try:
        if config.feedback_auth == "token":
            principal = authenticate(store, request.headers.get("Authorization"))
            if principal.role not in ("labeller", "operator"):
                raise AuthError(403, "forbidden", f"token {principal.name!r} is not a labeller token")
        body = read_json_body()
        count = (
            len(body.get("labels") or [])
            if isinstance(body, dict) and isinstance(body.get("labels"), list)
            else 0
        )
        accept = label_rule(store, deployment)  # 404 for an unknown deployment, before any limit
        if count > config.feedback_max_labels:
            raise LabelsError(
                413,
                "too_many_labels",
                f"{count} labels in one request; send at most {config.feedback_max_labels}",
            )
        wait = _limiter(config).take(deployment, max(count, 1))
        if wait > 0:
            response = error_response(
                429, "rate_limited", f"more than {config.feedback_rate:g} labels per second; retry later"
            )
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        triples = parse_labels(body, max_labels=config.feedback_max_labels, accept=accept)
        result = store_labels(
            store,
            deployment,
            triples,
            pending_limit=config.feedback_pending_max,
            pending_window_s=config.feedback_pending_s,
        )
    except AuthError as error:
        response = error_response(error.status, error.code, error.message)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="mlcanary"'
        return response
    except LabelsError as error:
        return error_response(error.status, error.code, error.message)
    except NotFound as error:
        return error_response(404, "deployment_not_found", str(error))
    except DataRefused as error:  # a value the database cannot hold (PostgreSQL: a label over 200 chars)
        return error_response(400, "invalid_value", f"a label cannot be stored: {error}")
    except Unavailable:  # anonymous callers get no database address or driver text
        current_app.logger.warning("feedback: storage unavailable", exc_info=True)
        return error_response(503, "storage_unavailable", "storage is unavailable; try again later")
    except StorageError as error:
        current_app.logger.exception("feedback failed")
        return error_response(500, "storage_error", type(error).__name__)
    return json_response(result)
