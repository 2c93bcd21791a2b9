"""The parity gate: score a version's golden set through the exact serving path and compare with research.

The golden set (registered with the version) holds raw input rows and the outputs the research
environment produced for them (for an HTTP upstream registered with ``--golden``: the upstream's own
answers at registration, classes and scores as served, so a different model behind the same URL fails). ``check`` sends those rows the way a client would — an MLflow JSON
body with ``dataframe_split`` — decodes it with the router's own ``router.mlflow.read_columns`` and
``router.inputs.build_batch`` against the version's registered schema, predicts with the backend
class the router uses (``router.backends.create_backend``), and compares:

* classes (classification) must be identical;
* scores (the positive-class probability for two classes, else the top probability, exactly as the
  router records them) and regression values must agree within ``|actual - expected| <= rtol *
  |expected| + atol`` (default rtol 1e-9: a tight tolerance that still allows for summation order);
* a missing output on both sides (JSON null / NaN) is agreement.

The report lists the first differing rows with the output, expected and actual values, the relative
error and the row's raw inputs, plus the *decoding changes*: input values the serving path turned
into something else (e.g. ``""`` decoded as NaN, an int sent to a str column, columns reordered), which
usually explain a mismatch. The serving environment's fingerprint (Python, numpy, scipy,
scikit-learn, pandas, skops, platform) is compared with the research one captured at registration;
a difference is a warning, never a failure on its own.

A version without a golden set is reported as not checked (``checked`` False, ``passed`` True).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from router.backends import Backend, MissingBackend, Predictions, create_backend
from router.errors import RouterError
from router.inputs import build_batch
from router.mlflow import read_columns
from router.settings import RouterSettings
from storage.artifacts import environment_fingerprint
from storage.entities import PipelineVersion

DEFAULT_RTOL = 1e-9
DEFAULT_ATOL = 1e-12

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "DecodingChange",
    "EnvironmentDifference",
    "Mismatch",
    "ParityReport",
    "check",
    "environment_differences",
    "serving_environment",
]


def serving_environment() -> dict[str, str]:
    """Fingerprint this serving process's environment (the same description registration records)."""
    return environment_fingerprint()


@dataclass(frozen=True)
class EnvironmentDifference:
    """One fingerprint entry that differs between research (registration) and serving."""

    key: str
    research: str | None
    serving: str | None


@dataclass(frozen=True)
class Mismatch:
    """One golden row whose served output differs from the research output.

    ``output``: "prediction" (class or value) or "score"; ``relative_error`` is None for classes;
    ``inputs``: the row's raw inputs as the client sent them.
    """

    row: int
    output: str
    expected: Any
    actual: Any
    relative_error: float | None
    inputs: dict[str, Any]


@dataclass(frozen=True)
class DecodingChange:
    """An input value the serving path decoded into something other than what was sent."""

    row: int
    column: str
    sent: Any
    decoded: Any
    note: str


@dataclass(frozen=True)
class ParityReport:
    """The parity gate's result for one version. ``passed`` is what blocks a rollout.

    ``error``: the serving path could not score the golden set at all (decode or backend error);
    ``mismatched_rows``: rows with at least one differing output; ``mismatches``: the first of them
    (one entry per differing output); ``decoding_changes`` / ``decoding_summary``: values changed by
    decoding (first ones / count per column); ``notes``: other findings (reordered columns).
    """

    version: str
    checked: bool
    passed: bool
    rows_checked: int
    mismatched_rows: int
    mismatches: tuple[Mismatch, ...]
    rtol: float
    atol: float
    serving_environment: dict[str, str]
    research_environment: dict[str, Any]
    environment_differences: tuple[EnvironmentDifference, ...]
    decoding_changes: tuple[DecodingChange, ...] = ()
    decoding_summary: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    error: str | None = None

    @property
    def environment_differs(self) -> bool:
        return bool(self.environment_differences)

    def message(self) -> str:
        """Say in one paragraph what was found: the verdict, the first differences and their likely cause."""
        if not self.checked:
            text = f"parity not checked for {self.version}: no golden set registered"
        elif self.error is not None:
            text = f"parity failed for {self.version}: the serving path cannot score the golden set: {self.error}"
        elif self.passed:
            text = f"parity passed for {self.version}: {self.rows_checked} golden rows reproduced (rtol {self.rtol:g})"
        else:
            shown = "; ".join(
                f"row {m.row} {m.output} expected {_show(m.expected)} got {_show(m.actual)}"
                + ("" if m.relative_error is None else f" (rel. error {m.relative_error:.3g})")
                for m in self.mismatches[:3]
            )
            text = (
                f"parity failed for {self.version}: {self.mismatched_rows} of {self.rows_checked} golden rows "
                f"differ from research (rtol {self.rtol:g}); first: {shown}"
            )
        if self.checked and self.decoding_summary:
            first = {c.column: c for c in reversed(self.decoding_changes)}
            parts = [
                f"{column} in {count} rows (e.g. {first[column].note})"
                if column in first
                else f"{column} in {count} rows"
                for column, count in self.decoding_summary.items()
            ]
            text += "; the serving path decoded inputs differently: " + ", ".join(parts)
        if self.notes:
            text += "; " + "; ".join(self.notes)
        if self.environment_differences:
            text += "; environment differs from research: " + ", ".join(
                f"{d.key} {d.research} -> {d.serving}" for d in self.environment_differences
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-able data (for events, the API and the HTML report)."""
        data = asdict(self)
        data["message"] = self.message()
        data["environment_differs"] = self.environment_differs
        return json.loads(
            json.dumps(data, default=_json_default, allow_nan=True), parse_constant=lambda _c: None
        )


def environment_differences(
    research: Mapping[str, Any], serving: Mapping[str, Any]
) -> tuple[EnvironmentDifference, ...]:
    """List the fingerprint entries that differ; an empty research fingerprint (upstreams) differs in nothing."""
    if not research:
        return ()
    keys = list(dict.fromkeys([*research, *serving]))
    return tuple(
        EnvironmentDifference(k, _text(research.get(k)), _text(serving.get(k)))
        for k in keys
        if _text(research.get(k)) != _text(serving.get(k))
    )


def check(
    version: PipelineVersion,
    settings: RouterSettings | None = None,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    backend: Backend | None = None,
    max_mismatches: int = 20,
    max_decoding_changes: int = 20,
) -> ParityReport:
    """Score the version's golden set through the serving path and compare it with the research outputs.

    ``backend``: an already loaded backend of this version (a router passes its own); else one is
    created with ``create_backend(version, settings)`` and closed afterwards. Never raises for a bad
    golden set or a failing pipeline: that is a failed report with ``error`` set.
    """
    if rtol < 0 or atol < 0:
        raise ValueError("rtol and atol must be >= 0")
    settings = settings or RouterSettings()
    serving = serving_environment()
    research = dict(version.environment or {})
    base: dict[str, Any] = {
        "version": version.ref,
        "rtol": rtol,
        "atol": atol,
        "serving_environment": serving,
        "research_environment": research,
        "environment_differences": environment_differences(research, serving),
    }
    golden = version.golden_set
    if not golden:
        return ParityReport(
            checked=False, passed=True, rows_checked=0, mismatched_rows=0, mismatches=(), **base
        )
    try:
        columns = [str(c) for c in golden["inputs"]["columns"]]
        rows = list(golden["inputs"]["data"])
        expected_outputs = golden["outputs"]
        expected_predictions = list(expected_outputs["prediction"])
        expected_proba = expected_outputs.get("proba")
        expected_score = expected_outputs.get("score")
    except (KeyError, TypeError) as exc:
        return _failed(base, 0, f"the golden set is malformed: {exc!r}")
    if len(expected_predictions) != len(rows):
        return _failed(
            base, len(rows), f"{len(rows)} golden input rows but {len(expected_predictions)} outputs"
        )

    notes: list[str] = []
    schema_order = list(version.column_names)
    sent_order = [c for c in columns if c in schema_order]
    if sent_order != [c for c in schema_order if c in columns]:
        notes.append(
            "golden columns arrive in the order "
            + ", ".join(sent_order)
            + "; the serving path reorders them to the registered schema "
            + ", ".join(schema_order)
        )

    owned = backend is None
    scorer = backend if backend is not None else create_backend(version, settings)
    try:
        if isinstance(scorer, MissingBackend):
            return _failed(base, len(rows), scorer.reason, notes=notes)
        outputs: list[Any] = []
        scores: list[float] | None = []
        changes: list[DecodingChange] = []
        summary: dict[str, int] = {}
        chunk = max(1, settings.max_rows)
        for start in range(0, max(len(rows), 1), chunk):
            part = rows[start : start + chunk]
            body = json.dumps(
                {"dataframe_split": {"columns": columns, "data": part}}, allow_nan=True
            ).encode()
            try:
                sent = read_columns(body, "application/json", version.input_schema)
                batch = build_batch(sent, version.input_schema, max_rows=chunk)
                predictions: Predictions = scorer.predict(batch.frame)
            except RouterError as exc:
                return _failed(base, len(rows), f"{type(exc).__name__}: {exc.message}", notes=notes)
            _decoding(sent, batch.frame, start, changes, summary, limit=max_decoding_changes)
            outputs.extend(predictions.outputs)
            if scores is not None and predictions.scores is not None:
                scores.extend(predictions.scores)
            else:
                scores = None
    finally:
        if owned:
            scorer.close()

    mismatches: list[Mismatch] = []
    bad_rows: set[int] = set()
    regression = version.task == "regression"
    expected_scores = _scores(expected_proba) if expected_proba is not None and not regression else None
    if expected_score is not None and not regression:  # an upstream's own answers: scores as served
        expected_scores = [None if v is None else float(v) for v in expected_score]
    if expected_scores is not None and len(expected_scores) != len(rows):
        return _failed(
            base, len(rows), f"{len(rows)} golden input rows but {len(expected_scores)} probabilities"
        )
    if expected_scores is not None and scores is None:
        notes.append(
            "the research outputs have probabilities but the served pipeline gives none; scores not compared"
        )
    for i, (want, got) in enumerate(zip(expected_predictions, outputs, strict=True)):
        found: list[Mismatch] = []
        if regression:
            rel = _difference(want, got, rtol, atol)
            if rel is not None:
                found.append(Mismatch(i, "prediction", want, got, rel, _row(columns, rows[i])))
        elif not _same_class(want, got):
            found.append(Mismatch(i, "prediction", want, got, None, _row(columns, rows[i])))
        if expected_scores is not None and scores is not None:
            rel = _difference(expected_scores[i], scores[i], rtol, atol)
            if rel is not None:
                found.append(Mismatch(i, "score", expected_scores[i], scores[i], rel, _row(columns, rows[i])))
        if found:
            bad_rows.add(i)
            if len(mismatches) < max_mismatches:
                mismatches.extend(found[: max_mismatches - len(mismatches)])
    return ParityReport(
        checked=True,
        passed=not bad_rows,
        rows_checked=len(rows),
        mismatched_rows=len(bad_rows),
        mismatches=tuple(mismatches),
        decoding_changes=tuple(changes),
        decoding_summary=summary,
        notes=tuple(notes),
        **base,
    )


# ------------------------------------------------------------------------------------------ helpers


def _failed(base: dict[str, Any], rows: int, error: str, *, notes: Sequence[str] = ()) -> ParityReport:
    return ParityReport(
        checked=True,
        passed=False,
        rows_checked=rows,
        mismatched_rows=rows,
        mismatches=(),
        error=error,
        notes=tuple(notes),
        **base,
    )


def _scores(proba: Any) -> list[float | None]:
    """Reduce research probabilities to the router's score: P(second class) for two classes, else the top one."""
    out: list[float | None] = []
    for row in proba:
        values = [math.nan if v is None else float(v) for v in row]
        if not values or any(math.isnan(v) for v in values):
            out.append(None)
        else:
            out.append(values[1] if len(values) == 2 else max(values))
    return out


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def _difference(expected: Any, actual: Any, rtol: float, atol: float) -> float | None:
    """Return the relative error if the two numbers differ beyond the tolerance, else None."""
    if _is_missing(expected) and _is_missing(actual):
        return None
    if _is_missing(expected) or _is_missing(actual):
        return math.inf
    try:
        e, a = float(expected), float(actual)
    except (TypeError, ValueError):
        return None if expected == actual else math.inf
    diff = abs(a - e)
    if diff <= rtol * abs(e) + atol:
        return None
    return diff / abs(e) if e != 0 else math.inf


def _same_class(expected: Any, actual: Any) -> bool:
    """Classes match when they are the same value of the same kind (1 and "1" differ; 1 and 1.0 do not)."""
    if hasattr(actual, "item"):
        actual = actual.item()
    if _is_missing(expected) and _is_missing(actual):
        return True
    if isinstance(expected, bool) != isinstance(actual, bool):
        return False
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return bool(expected == actual)
    return type(expected) is type(actual) and bool(expected == actual)


def _row(columns: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(columns, values, strict=False))


def _decoding(
    sent: Mapping[str, Sequence[Any]],
    frame: pd.DataFrame,
    offset: int,
    changes: list[DecodingChange],
    summary: dict[str, int],
    *,
    limit: int,
) -> None:
    """Record input values whose decoded form is not what was sent (missing-value and type changes)."""
    for column in frame.columns:
        decoded = frame[column].tolist()
        for i, (value, got) in enumerate(zip(sent[column], decoded, strict=True)):
            note = _changed(value, got)
            if note is None:
                continue
            summary[column] = summary.get(column, 0) + 1
            if len(changes) < limit:
                changes.append(DecodingChange(offset + i, str(column), value, _plain(got), note))


def _changed(sent: Any, decoded: Any) -> str | None:
    """Describe how decoding changed a value, or None if it is the same value."""
    if hasattr(decoded, "item"):
        decoded = decoded.item()
    sent_na, decoded_na = _is_missing(sent), _is_missing(decoded)
    if sent_na and decoded_na:
        return None
    if decoded_na:
        return f"{sent!r} decoded as missing (NaN)"
    if sent_na:
        return f"missing value decoded as {decoded!r}"
    if isinstance(sent, bool) or isinstance(decoded, bool):
        return (
            None
            if sent == decoded and isinstance(sent, bool) == isinstance(decoded, bool)
            else (f"{sent!r} ({type(sent).__name__}) decoded as {decoded!r} ({type(decoded).__name__})")
        )
    if isinstance(sent, int | float) and isinstance(decoded, int | float):
        return None if float(sent) == float(decoded) else f"{sent!r} decoded as {decoded!r}"
    if isinstance(sent, str) and isinstance(decoded, str):
        return None if sent == decoded else f"{sent!r} decoded as {decoded!r}"
    return f"{sent!r} ({type(sent).__name__}) decoded as {decoded!r} ({type(decoded).__name__})"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if _is_missing(value) else value


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    return repr(value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
