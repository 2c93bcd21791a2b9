"""SQL aggregates for comparison reports: one rollout's paired outputs summed in the database.

Every function here scans ``paired_outputs`` of one rollout (optionally joined to ``labels``) and
returns small plain structures: counts, sums, histograms. No uuid/request-id or JSON payload column is
ever loaded row by row; the raw input JSON is read only inside ``GROUP BY`` expressions for segments,
and as a bounded sample to cut numeric segment bins. SQLAlchemy Core; SQLite (3.35+, with its math
functions) and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import (
    Float,
    Integer,
    String,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from storage.analytics import ARMS, LatencyBuckets, latency_bucket, ran
from storage.database import Database
from storage.models import LabelRow, PairedOutputRow

P = PairedOutputRow.__table__.c
L = LabelRow.__table__.c

__all__ = [
    "StepCounts",
    "class_score_table",
    "confusion",
    "epoch_seconds",
    "label_confusion",
    "label_proba_reliability",
    "label_regression",
    "label_regression_sample",
    "latency_sample",
    "label_score_buckets",
    "latency_buckets",
    "labelled_count",
    "numeric_sample",
    "output_range",
    "score_buckets",
    "segment_sample",
    "recent_floor_id",
    "segments",
    "step_counts",
    "step_spans",
    "time_range",
    "time_bucket",
    "value_buckets",
]


@contextmanager
def _reading(db: Database) -> Iterator[Any]:
    """Yield a connection in a read-only transaction (SQLite: no write lock, so writers never wait).

    PostgreSQL: without JIT. Its cost model compiles every scan of a million rows, and compiling these
    expression-heavy aggregates (with inlining and optimisation above 500k cost units) takes longer
    than the scan it speeds up.
    """
    with db.session(write=False) as session:
        conn = session.connection()
        if db.dialect == "postgresql":
            conn.exec_driver_sql("SET LOCAL jit = off")
        yield conn


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    """COUNT of rows where condition holds: COUNT(CASE WHEN c THEN 1 END) skips the ELSE branch."""
    return func.count(case((condition, 1)))


def _output(arm: str) -> tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]:
    return P[f"{arm}_class"], P[f"{arm}_value"], P[f"{arm}_error"]


def _has_output(arm: str) -> ColumnElement[bool]:
    cls, value, error = _output(arm)
    return and_(error.is_(None), or_(cls.isnot(None), value.isnot(None)))


_ran = ran  # the one definition of "the arm ran" (storage.analytics), shared with the judge's figures


def _both_ok() -> ColumnElement[bool]:
    return and_(_has_output("champion"), _has_output("challenger"))


def epoch_seconds(db: Database, column: Any) -> ColumnElement[Any]:
    """Return an SQL expression for a stored naive-UTC timestamp as seconds since the epoch."""
    if db.dialect == "sqlite":
        return cast(func.strftime("%s", column), Integer)
    return func.extract("epoch", column)


@dataclass(frozen=True)
class StepCounts:
    """Counts and sums of one rollout step, in one scan. Arms: champion / challenger."""

    step: int | None
    rows: int
    served_champion: int
    served_challenger: int
    champion_ran: int
    challenger_ran: int
    champion_errors: int
    challenger_errors: int
    champion_latency_n: int
    challenger_latency_n: int
    champion_latency_sum: float
    challenger_latency_sum: float
    both_outputs: int
    shadow_dropped: int  # skipped: the queue (or the deployment's share of it) was full
    shadow_timeout: int  # the arm's own scoring ran past the timeout (its fault)
    shadow_cancelled: int  # skipped: the router shut down first
    shadow_other_errors: int
    shadow_missing: int  # the other arm was not asked (outside the configured shadow share)
    shadow_expired: int  # skipped: the timeout passed while the job waited in the queue
    shadow_shed: int  # skipped: load shedding lowered the shadow share
    shadow_wait_n: int
    shadow_wait_sum: float  # ms the scored shadow jobs waited in the router's queue
    agree: int
    diff_n: int
    diff_sum: float
    diff_sq: float
    diff_abs: float
    first_epoch: float | None
    last_epoch: float | None
    bucket: str | None = None


BUCKETS = {"second": 19, "minute": 16, "hour": 13, "day": 10}


def time_bucket(db: Database, unit: str) -> ColumnElement[Any]:
    """Return the start of a row's minute, hour or day: text on SQLite (no date parsing), a timestamp on
    PostgreSQL (cheaper to group by than its text; ``step_counts`` formats it after grouping)."""
    if db.dialect == "sqlite":
        return func.substr(P.received_at, 1, BUCKETS[unit])
    return func.date_trunc(unit, P.received_at)


def step_spans(db: Database, rollout_id: int) -> list[tuple[int | None, int, datetime, datetime]]:
    """Return (step, rows, first receive time, last receive time) per step, from the index alone."""
    query = (
        select(P.step, func.count(), func.min(P.received_at), func.max(P.received_at))
        .where(P.rollout_id == rollout_id)
        .group_by(P.step)
        .order_by(P.step)
    )
    with _reading(db) as conn:
        return [(s, int(n), lo, hi) for s, n, lo, hi in conn.execute(query)]


def _overview_columns() -> list[Any]:
    """The overview's aggregates, each as cheap as it can be for SQLite, which evaluates every one per row.

    ``COUNT(*) FILTER (WHERE ...)`` (SQLite 3.30+, PostgreSQL) instead of ``COUNT(CASE ...)``; plain
    ``COUNT(column)`` where a NULL test is all it takes; the shadow error kinds only look at the error
    text when a row has an error at all (rare), so most rows skip the CASE and the LIKEs. Skips (jobs
    the router never started) are read from ``skip_reason``, which only a skipped row has.
    """
    shadow_error = case((P.served_arm == "champion", P.challenger_error), else_=P.champion_error)
    shadow_status = case((P.served_arm == "champion", P.challenger_status), else_=P.champion_status)
    any_error = or_(P.champion_error.isnot(None), P.challenger_error.isnot(None))
    skipped = P.skip_reason.isnot(None)
    diff = P.challenger_value - P.champion_value
    score_diff = P.challenger_score - P.champion_score
    both = _both_ok()
    value_diff = case((both, func.coalesce(diff, score_diff)), else_=None)

    def count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.count().filter(condition)

    def count_error(kind: str) -> ColumnElement[Any]:
        return count_if(and_(any_error, shadow_error.like(kind)))

    def count_skip(*reasons: str) -> ColumnElement[Any]:
        return count_if(and_(skipped, P.skip_reason.in_(reasons)))

    return [
        func.count(),
        count_if(P.served_arm == "champion"),
        count_if(P.served_arm == "challenger"),
        count_if(_ran("champion")),
        count_if(_ran("challenger")),
        func.count(P.champion_error),
        func.count(P.challenger_error),
        func.count(P.champion_latency_ms),
        func.count(P.challenger_latency_ms),
        func.coalesce(func.sum(P.champion_latency_ms), 0.0),
        func.coalesce(func.sum(P.challenger_latency_ms), 0.0),
        count_if(both),
        count_skip("queue_full", "budget"),
        count_error("shadow_timeout%"),
        count_skip("shutdown"),
        count_if(and_(any_error, shadow_error.isnot(None), ~shadow_error.like("shadow_%"))),
        count_if(shadow_status.is_(None)),
        count_skip("expired"),
        count_skip("shed"),
        func.count(P.shadow_wait_ms),
        func.coalesce(func.sum(P.shadow_wait_ms), 0.0),
        count_if(and_(both, P.champion_class == P.challenger_class)),
        func.count(value_diff),
        func.coalesce(func.sum(value_diff), 0.0),
        func.coalesce(func.sum(value_diff * value_diff), 0.0),
        func.coalesce(func.sum(func.abs(value_diff)), 0.0),
        func.min(P.received_at),
        func.max(P.received_at),
    ]


UNITS = {"second": (timedelta(seconds=1), "%Y-%m-%d %H:%M:%S"),
         "minute": (timedelta(minutes=1), "%Y-%m-%d %H:%M"), "hour": (timedelta(hours=1), "%Y-%m-%d %H"),
         "day": (timedelta(days=1), "%Y-%m-%d")}  # fmt: skip


Span = tuple[int | None, int, datetime, datetime]  # step_spans's rows: (step, rows, first, last)


def _floor(t: datetime, unit: str) -> datetime:
    t = t.replace(microsecond=0)
    if unit == "second":
        return t
    t = t.replace(second=0)
    if unit in ("hour", "day"):
        t = t.replace(minute=0)
    return t.replace(hour=0) if unit == "day" else t


def _ranges(spans: Sequence[Span], unit: str) -> Iterator[tuple[int | None, datetime, datetime]]:
    """Yield (step, start, end) of every ``unit`` between each step's first and last row (UTC)."""
    width = UNITS[unit][0]
    for step, _rows, first, last in spans:
        t = _floor(first, unit)
        while t <= last:
            yield step, t, t + width
            t += width


def _in_range(query: Any, step: int | None) -> Any:
    """``query`` limited to one step's rows received in [:lo, :hi) (a range read of the rollout index)."""
    return query.where(
        P.received_at >= bindparam("lo", type_=P.received_at.type),
        P.received_at < bindparam("hi", type_=P.received_at.type),
        P.step.is_(None) if step is None else P.step == bindparam("step", type_=Integer),
    )


def step_counts(
    db: Database,
    rollout_id: int,
    *,
    bucket: str | None = None,
    spans: Sequence[Span] | None = None,
) -> list[StepCounts]:
    """Aggregate requests, errors, shadow coverage, agreement and output differences per step.

    With ``bucket`` ("minute", "hour" or "day") the rows are counted per step and time bucket;
    ``StepCounts.bucket`` is then the bucket's start as text (UTC). PostgreSQL groups them in one
    hashed scan. SQLite would sort every row for that GROUP BY (half the scan's cost), so there each
    (step, bucket) is its own range read of the (rollout_id, step, received_at) index: one ordered
    pass over the rows in all, no sort. ``spans`` are ``step_spans``'s rows when the caller has them.
    """
    columns = _overview_columns()
    if bucket is None or db.dialect != "sqlite":
        key = time_bucket(db, bucket) if bucket else literal(None)
        query = (
            select(P.step, *columns, key.label("bucket"))
            .where(P.rollout_id == rollout_id)
            .group_by(P.step, key)
            .order_by(P.step, key)
        )
        fmt = UNITS[bucket][1] if bucket else ""
        with _reading(db) as conn:
            return [
                _step_row(r[0], r[1:-1], r[-1] if isinstance(r[-1], str | None) else r[-1].strftime(fmt))
                for r in conn.execute(query)
            ]
    if spans is None:
        spans = step_spans(db, rollout_id)
    fmt = UNITS[bucket][1]
    base = select(*columns).where(P.rollout_id == rollout_id)
    out = []
    with _reading(db) as conn:
        for step, lo, hi in _ranges(spans, bucket):
            row = conn.execute(_in_range(base, step), {"lo": lo, "hi": hi, "step": step}).one()
            if row[0]:
                out.append(_step_row(step, row, lo.strftime(fmt)))
    return out


def _counts(
    db: Database, query: Any, *, spans: Sequence[Span] | None, bucket: str | None
) -> dict[tuple[Any, ...], int]:
    """Run ``query`` (one rollout's rows, GROUP BY its keys, COUNT last) and return keys -> count.

    On SQLite with ``spans`` and ``bucket``, once per (step, time bucket) range of the rollout index,
    summed here: SQLite sorts every row for a GROUP BY, and many small sorts of a few thousand rows
    cost about a third less CPU than one of a million (bench/report_bench.py). PostgreSQL hashes the
    groups in one scan.
    """
    out: dict[tuple[Any, ...], int] = {}
    with _reading(db) as conn:
        if db.dialect != "sqlite" or spans is None or bucket is None:
            results: Iterator[Any] = iter([conn.execute(query)])
        else:
            results = (
                conn.execute(_in_range(query, step), {"lo": lo, "hi": hi, "step": step})
                for step, lo, hi in _ranges(spans, bucket)
            )
        for result in results:
            for *key, n in result:
                k = tuple(key)
                out[k] = out.get(k, 0) + int(n)
    return out


def _step_row(step: int | None, values: Sequence[Any], bucket: Any) -> StepCounts:
    names = [f.name for f in fields(StepCounts)]
    out: list[Any] = [step]
    for name, v in zip(names[1:-3], values[:-2], strict=True):
        kind = StepCounts.__dataclass_fields__[name].type
        out.append(int(v) if kind == "int" else float(v))
    out += [None if t is None else t.timestamp() for t in values[-2:]]
    out.append(None if bucket is None else str(bucket))
    return StepCounts(**dict(zip(names, out, strict=True)))


def latency_buckets(
    db: Database,
    rollout_id: int,
    *,
    latency: LatencyBuckets,
    spans: Sequence[Span] | None = None,
    bucket: str | None = None,
) -> dict[str, dict[int, int]]:
    """Count each arm's latencies over the whole rollout per bucket of ``latency`` (the judge's buckets).

    One scan for both arms, grouped by the pair of buckets (a row without an arm's latency has a NULL
    bucket for it) and added up per arm here. ``spans`` and ``bucket``: as ``step_counts`` (SQLite
    then reads the rollout range by range).
    """
    keys = [latency_bucket(P[f"{arm}_latency_ms"], latency) for arm in ARMS]
    query = select(*keys, func.count()).where(P.rollout_id == rollout_id).group_by(*keys)
    out: dict[str, dict[int, int]] = {arm: {} for arm in ARMS}
    for pair, n in _counts(db, query, spans=spans, bucket=bucket).items():
        for arm, b in zip(ARMS, pair, strict=True):
            if b is not None:
                out[arm][int(b)] = out[arm].get(int(b), 0) + n
    return out


def confusion(db: Database, rollout_id: int, *, limit: int = 400) -> list[tuple[str, str, int]]:
    """Count (champion class, challenger class) over rows where both arms answered without error."""
    query = (
        select(P.champion_class, P.challenger_class, func.count().label("n"))
        .where(
            P.rollout_id == rollout_id,
            _both_ok(),
            P.champion_class.isnot(None),
            P.challenger_class.isnot(None),
        )
        .group_by(P.champion_class, P.challenger_class)
        .order_by(func.count().desc())
        .limit(limit)
    )
    with _reading(db) as conn:
        return [(str(a), str(b), int(n)) for a, b, n in conn.execute(query)]


def _bucket(column: Any, low: float, width: float, bins: int) -> ColumnElement[Any]:
    """Bucket index floor((x - low) / width); callers clamp it to 0..bins-1 (cheaper than in SQL)."""
    return cast(func.floor((column - low) / width), Integer)


def class_score_table(
    db: Database,
    rollout_id: int,
    *,
    bins: int,
    limit: int = 20_000,
    spans: Sequence[Span] | None = None,
    bucket: str | None = None,
) -> list[tuple[Any, ...]]:
    """Count (champion class, challenger class, champion score bucket, challenger score bucket) over pairs.

    One scan gives the agreement table, both class distributions and both score histograms (buckets of
    width 1/bins on [0, 1]; a missing score is bucket None); at most ``limit`` of these groups.
    ``spans`` and ``bucket``: as ``step_counts`` (SQLite then reads the rollout range by range).
    """
    b1 = _bucket(P.champion_score, 0.0, 1.0 / bins, bins)
    b2 = _bucket(P.challenger_score, 0.0, 1.0 / bins, bins)
    query = (
        select(P.champion_class, P.challenger_class, b1, b2, func.count())
        .where(
            P.rollout_id == rollout_id,
            _both_ok(),
            P.champion_class.isnot(None),
            P.challenger_class.isnot(None),
        )
        .group_by(P.champion_class, P.challenger_class, b1, b2)
    )
    counts = _counts(db, query, spans=spans, bucket=bucket)
    return [(str(a), str(b), x, y, n) for (a, b, x, y), n in list(counts.items())[:limit]]


def score_buckets(
    db: Database, rollout_id: int, *, bins: int = 50, paired_only: bool = True
) -> dict[str, dict[int, int]]:
    """Count classifier scores in ``bins`` equal buckets on [0, 1] per arm (paired rows by default)."""
    out: dict[str, dict[int, int]] = {}
    with _reading(db) as conn:
        for arm in ("champion", "challenger"):
            score = P[f"{arm}_score"]
            b = _bucket(score, 0.0, 1.0 / bins, bins)
            where = [P.rollout_id == rollout_id, score.isnot(None)]
            if paired_only:
                where.append(_both_ok())
            query = select(b, func.count()).where(*where).group_by(b)
            out[arm] = _clamped(conn.execute(query), bins)
    return out


def _clamped(rows: Any, bins: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for k, n in rows:
        key = min(max(int(k), 0), bins - 1)
        counts[key] = counts.get(key, 0) + int(n)
    return counts


def output_range(db: Database, rollout_id: int, column: str = "value") -> tuple[float, float] | None:
    """Return (min, max) of both arms' ``*_value`` (or ``*_score``) over paired rows, or None."""
    a, b = P[f"champion_{column}"], P[f"challenger_{column}"]
    query = select(func.min(a), func.max(a), func.min(b), func.max(b)).where(
        P.rollout_id == rollout_id, _both_ok()
    )
    with _reading(db) as conn:
        row = conn.execute(query).one()
    lows = [float(v) for v in (row[0], row[2]) if v is not None]
    highs = [float(v) for v in (row[1], row[3]) if v is not None]
    if not lows:
        return None
    return min(lows), max(highs)


def value_buckets(
    db: Database, rollout_id: int, *, low: float, high: float, bins: int
) -> dict[str, dict[int, int]]:
    """Count regression outputs in ``bins`` equal buckets on [low, high] per arm over paired rows."""
    width = (high - low) / bins if high > low else 1.0
    out: dict[str, dict[int, int]] = {}
    with _reading(db) as conn:
        for arm in ("champion", "challenger"):
            value = P[f"{arm}_value"]
            b = _bucket(value, low, width, bins)
            query = (
                select(b, func.count())
                .where(P.rollout_id == rollout_id, _both_ok(), value.isnot(None))
                .group_by(b)
            )
            out[arm] = _clamped(conn.execute(query), bins)
    return out


def numeric_sample(
    db: Database, rollout_id: int, column: str, *, limit: int, total: int
) -> list[tuple[float, float]]:
    """Return up to ``limit`` (champion, challenger) pairs of ``*_score`` or ``*_value`` from paired rows.

    A systematic sample: every k-th row by id, k = total // limit, so it spreads over the whole rollout.
    """
    a, b = P[f"champion_{column}"], P[f"challenger_{column}"]
    step = max(total // max(limit, 1), 1)
    where = [P.rollout_id == rollout_id, _both_ok(), a.isnot(None), b.isnot(None)]
    if step > 1:
        where.append(P.id % step == 0)
    query = select(a, b).where(*where).limit(limit)
    with _reading(db) as conn:
        return [(float(x), float(y)) for x, y in conn.execute(query)]


def time_range(db: Database, rollout_id: int) -> tuple[float, float] | None:
    """Return the first and last receive time of the rollout's rows as epoch seconds."""
    with _reading(db) as conn:
        lo, hi = conn.execute(
            select(func.min(P.received_at), func.max(P.received_at)).where(P.rollout_id == rollout_id)
        ).one()
    return None if lo is None else (lo.timestamp(), hi.timestamp())


def _label_join() -> Any:
    return PairedOutputRow.__table__.join(
        LabelRow.__table__,
        and_(L.request_id == P.request_id, L.row_index == P.row_index, L.deployment_id == P.deployment_id),
    )


def labelled_count(db: Database, rollout_id: int) -> int:
    """Count the rollout's rows that have a label."""
    query = select(func.count()).select_from(_label_join()).where(P.rollout_id == rollout_id)
    with _reading(db) as conn:
        return int(conn.execute(query).scalar() or 0)


def label_confusion(
    db: Database, rollout_id: int, *, score_bins: int | None = None
) -> list[tuple[str, str, str, int | None, int | None, int]]:
    """Count (champion class, challenger class, label class[, score buckets]) over labelled paired rows.

    With ``score_bins`` each arm's score bucket on [0, 1] (None for a missing score) is part of the
    key, so the same scan gives accuracy, F1, McNemar's cells and the score histograms by label that
    ROC AUC needs (one join instead of three).
    """
    keys: list[Any] = [P.champion_class, P.challenger_class, L.label_class]
    if score_bins:
        keys += [_bucket(P.champion_score, 0.0, 1.0 / score_bins, score_bins),
                 _bucket(P.challenger_score, 0.0, 1.0 / score_bins, score_bins)]  # fmt: skip
    query = (
        select(*keys, func.count())
        .select_from(_label_join())
        .where(P.rollout_id == rollout_id, _both_ok(), L.label_class.isnot(None))
        .group_by(*keys)
    )
    top = (score_bins or 1) - 1

    def clamp(b: Any) -> int | None:
        return None if b is None else min(max(int(b), 0), top)

    with _reading(db) as conn:
        rows = conn.execute(query).all()
    if score_bins:
        return [(str(a), str(b), str(y), clamp(b1), clamp(b2), int(n)) for a, b, y, b1, b2, n in rows]
    return [(str(a), str(b), str(y), None, None, int(n)) for a, b, y, n in rows]


def label_score_buckets(
    label_rows: Sequence[tuple[str, str, str, int | None, int | None, int]],
) -> dict[str, dict[tuple[int, str], int]]:
    """Collapse ``label_confusion`` rows with score buckets to (bucket, label class) counts per arm (ROC AUC)."""
    out: dict[str, dict[tuple[int, str], int]] = {"champion": {}, "challenger": {}}
    for _a, _b, y, b1, b2, n in label_rows:
        for arm, b in (("champion", b1), ("challenger", b2)):
            if b is not None:
                out[arm][(b, y)] = out[arm].get((b, y), 0) + n
    return out


ReliabilityBins = dict[str, dict[int, list[float]]]
"""Per arm, per bin: [sum of the predicted probabilities, rows whose event happened, rows]."""


def label_proba_reliability(
    db: Database, rollout_id: int, classes: Sequence[str], *, shown: Sequence[str], bins: int = 10
) -> dict[str, ReliabilityBins]:
    """Sum the probability vectors of labelled pairs into reliability bins, per arm (more than 2 classes).

    Panels: ``"top"`` (confidence = the vector's largest probability; the event: the arm's answer equals
    the label) and, for each class of ``shown``, one-vs-rest (p[class]; the event: the label is that
    class). Bins are ``bins`` equal widths on [0, 1] with sklearn's ``calibration_curve`` edges: bin i
    holds edge_i < p <= edge_i+1 (the first bin takes 0 too), so the sums match it exactly. Rows are the
    ``label_confusion`` rows (both arms answered, a label) with the arm's stored vector (a class missing
    from a vector is 0). One statement: the rows' probabilities read once, then a ``GROUP BY`` of both arms'
    bins per panel.
    """
    edges = [float(e) for e in np.linspace(0.0, 1.0, bins + 1)[1:-1]]
    where = and_(P.rollout_id == rollout_id, _both_ok(), L.label_class.isnot(None))
    # Each row's probabilities are read from the JSON once, into a materialised CTE (SQLite would
    # otherwise re-read the JSON for every comparison of every bin); the panels group its columns.
    names = {c: f"p{i}" for i, c in enumerate(classes)}

    def probability(arm: str, cls: str) -> ColumnElement[Any]:
        column = P[f"{arm}_proba"]
        value = case((column.is_(None), None), else_=func.coalesce(column[cls].as_float(), 0.0))
        return value.label(f"{arm}_{names[cls]}")

    vectors = (
        select(L.label_class.label("label"), P.champion_class.label("champion_class"),
               P.challenger_class.label("challenger_class"),
               *(probability(a, c) for a in ARMS for c in classes))
        .select_from(_label_join()).where(where)
        .cte("vectors").prefix_with("MATERIALIZED")
    )  # fmt: skip
    v = vectors.c

    def confidence(arm: str) -> ColumnElement[Any]:
        values = [v[f"{arm}_{names[c]}"] for c in classes]  # NULL for a row without a vector
        return func.max(*values) if db.dialect == "sqlite" else func.greatest(*values)

    def binned(p: ColumnElement[Any]) -> ColumnElement[Any]:
        return case((p.is_(None), None), else_=sum((case((p > e, 1), else_=0) for e in edges), literal(0)))

    panels: list[tuple[str, dict[str, ColumnElement[Any]], dict[str, ColumnElement[Any]]]] = [
        ("top", {a: confidence(a) for a in ARMS}, {a: v[f"{a}_class"] == v.label for a in ARMS})
    ]
    panels += [(c, {a: v[f"{a}_{names[c]}"] for a in ARMS}, {a: v.label == c for a in ARMS}) for c in shown]
    selects = []
    for i, (_name, p, event) in enumerate(panels):
        hit = {a: case((event[a], 1), else_=0) for a in ARMS}
        b = {a: binned(p[a]) for a in ARMS}
        keys = [hit["champion"], hit["challenger"], b["champion"], b["challenger"]]
        selects.append(
            select(literal(i).label("panel"), *keys, func.sum(p["champion"]), func.sum(p["challenger"]),
                   func.count()).select_from(vectors).group_by(*keys)
        )  # fmt: skip
    out: dict[str, ReliabilityBins] = {name: {a: {} for a in ARMS} for name, _, _ in panels}
    with _reading(db) as conn:
        rows = conn.execute(union_all(*selects)).all()
    for panel, h1, h2, b1, b2, s1, s2, n in rows:
        name = panels[int(panel)][0]
        for arm, hit, b, s in (("champion", h1, b1, s1), ("challenger", h2, b2, s2)):
            if b is None:
                continue
            cell = out[name][arm].setdefault(int(b), [0.0, 0, 0])
            cell[0] += float(s)
            cell[1] += int(n) * int(hit)
            cell[2] += int(n)
    return out


def label_regression(db: Database, rollout_id: int) -> dict[str, float]:
    """Sum absolute and squared errors per arm and the paired abs-error difference over labelled rows."""
    e1 = func.abs(P.champion_value - L.label_value)
    e2 = func.abs(P.challenger_value - L.label_value)
    d = e2 - e1
    ok = and_(
        _both_ok(), L.label_value.isnot(None), P.champion_value.isnot(None), P.challenger_value.isnot(None)
    )
    query = (
        select(
            func.count(),
            func.sum(e1), func.sum(e1 * e1), func.sum(e1 * e1 * e1 * e1),
            func.sum(e2), func.sum(e2 * e2), func.sum(e2 * e2 * e2 * e2),
            func.sum(d), func.sum(d * d),
        )
        .select_from(_label_join())
        .where(P.rollout_id == rollout_id, ok)
    )  # fmt: skip
    with _reading(db) as conn:
        row = conn.execute(query).one()
    keys = ("n", "abs1", "sq1", "quad1", "abs2", "sq2", "quad2", "diff", "diff_sq")
    return {k: float(v or 0.0) for k, v in zip(keys, row, strict=True)}


def recent_floor_id(db: Database, rollout_id: int, rows: int) -> int | None:
    """Return the id of the rollout's ``rows``-th newest row (by id), or None when it has fewer rows.

    SQLite walks the table backwards from its newest row (``rollout_id + 0`` keeps it off the rollout
    index, which would sort every row of the rollout by id); PostgreSQL plans it with its statistics.
    """
    query = (
        select(P.id)
        .where(_in_rollout(db, rollout_id))
        .order_by(P.id.desc())
        .offset(max(rows - 1, 0))
        .limit(1)
    )
    with _reading(db) as conn:
        found = conn.execute(query).scalar()
    return None if found is None else int(found)


def _in_rollout(db: Database, rollout_id: int, min_id: int | None = None) -> ColumnElement[bool]:
    """The rollout's rows from ``min_id`` on. SQLite reads them by id range (``rollout_id + 0`` keeps
    it off the rollout index, where it would visit every row of the rollout)."""
    rollout = (P.rollout_id + 0) == rollout_id if db.dialect == "sqlite" else P.rollout_id == rollout_id
    return rollout if min_id is None else and_(rollout, P.id >= min_id)


def segment_sample(
    db: Database, rollout_id: int, column: str, *, limit: int, total: int, min_id: int | None = None
) -> list[Any]:
    """Return up to ``limit`` values of one raw-input column (a systematic sample, as numeric_sample).

    ``min_id``: only rows from this id on (``recent_floor_id``); ``total`` is then the rows from there.
    """
    step = max(total // max(limit, 1), 1)
    in_rollout = P.rollout_id == rollout_id if min_id is None else _in_rollout(db, rollout_id, min_id)
    where = [in_rollout, P.raw_input.isnot(None)]
    if step > 1:
        where.append(P.id % step == 0)
    value = (
        P.raw_input[column].as_string()
        if db.dialect == "postgresql"
        else func.json_extract(P.raw_input, f'$."{column}"')
    )
    query = select(value).where(*where).limit(limit)
    with _reading(db) as conn:
        return [v for (v,) in conn.execute(query)]


def segments(
    db: Database,
    rollout_id: int,
    column: str,
    *,
    numeric_edges: Sequence[float] | None = None,
    labelled: bool = False,
    limit: int = 50,
    min_id: int | None = None,
) -> list[dict[str, Any]]:
    """Aggregate per value of one raw-input column (or per numeric bin when edges are given).

    ``min_id``: only the rollout's rows from this id on (``recent_floor_id``: the most recent rows).

    For each segment: rows, errors per arm, paired rows, agreement, sum of output differences, and
    with ``labelled`` the labelled pairs, McNemar's discordant cells (classes) and abs-error sums.
    Numeric bins: segment k holds edges[k-1] <= v < edges[k] (k = 0 below the first edge, "missing"
    for null). Categorical: the ``limit`` most frequent values.
    """
    if db.dialect == "postgresql":
        text_value: ColumnElement[Any] = P.raw_input[column].as_string()
        number: ColumnElement[Any] = cast(text_value, Float)
    else:
        text_value = cast(func.json_extract(P.raw_input, f'$."{column}"'), String)
        number = cast(func.json_extract(P.raw_input, f'$."{column}"'), Float)
    if numeric_edges is not None:
        whens: list[tuple[ColumnElement[bool], Any]] = [(text_value.is_(None), literal("missing"))]
        whens += [(number < edge, literal(f"bin{i}")) for i, edge in enumerate(numeric_edges)]
        key: ColumnElement[Any] = case(*whens, else_=literal(f"bin{len(numeric_edges)}"))
    else:
        key = func.coalesce(text_value, literal("missing"))
    both = _both_ok()
    diff = case(
        (both, func.coalesce(P.challenger_value - P.champion_value, P.challenger_score - P.champion_score)),
        else_=None,
    )
    columns: list[Any] = [
        key.label("segment"),
        func.count().label("rows"),
        _count_if(P.champion_error.isnot(None)),
        _count_if(P.challenger_error.isnot(None)),
        _count_if(both),
        _count_if(and_(both, P.champion_class == P.challenger_class)),
        func.coalesce(func.sum(diff), 0.0),
    ]
    source: Any = PairedOutputRow.__table__
    if labelled:
        source = PairedOutputRow.__table__.outerjoin(
            LabelRow.__table__,
            and_(
                L.request_id == P.request_id, L.row_index == P.row_index, L.deployment_id == P.deployment_id
            ),
        )
        lab = and_(both, or_(L.label_class.isnot(None), L.label_value.isnot(None)))
        right1 = P.champion_class == L.label_class
        right2 = P.challenger_class == L.label_class
        e1 = func.abs(P.champion_value - L.label_value)
        e2 = func.abs(P.challenger_value - L.label_value)
        columns += [
            _count_if(lab),
            _count_if(and_(lab, right1)),
            _count_if(and_(lab, right2)),
            _count_if(and_(lab, right1, ~right2)),
            _count_if(and_(lab, ~right1, right2)),
            func.coalesce(func.sum(case((lab, e1), else_=None)), 0.0),
            func.coalesce(func.sum(case((lab, e2), else_=None)), 0.0),
            func.coalesce(func.sum(case((lab, (e2 - e1) * (e2 - e1)), else_=None)), 0.0),
        ]
    query = (
        select(*columns)
        .select_from(source)
        .where(
            P.rollout_id == rollout_id if min_id is None else _in_rollout(db, rollout_id, min_id),
            P.raw_input.isnot(None),
        )
        .group_by(key)
        .order_by(func.count().desc())
        .limit(limit)
    )
    names = ["segment", "rows", "champion_errors", "challenger_errors", "pairs", "agree", "diff_sum"]
    if labelled:
        names += [
            "labelled",
            "champion_right",
            "challenger_right",
            "worse",
            "better",
            "abs1",
            "abs2",
            "diff_sq",
        ]
    with _reading(db) as conn:
        out = []
        for row in conn.execute(query):
            item = dict(zip(names, row, strict=True))
            item["segment"] = str(item["segment"])
            out.append(item)
        return out


def latency_sample(
    db: Database, rollout_id: int, *, limit: int, total: int
) -> list[tuple[datetime, float | None, float | None]]:
    """Return up to ``limit`` (receive time, champion latency, challenger latency) of the rollout's rows.

    A systematic sample (every k-th row by id, k = total // limit) spread over the whole rollout, for
    latency quantiles over time; the whole-rollout latency histogram is exact (``latency_buckets``).
    """
    step = max(total // max(limit, 1), 1)
    where = [P.rollout_id == rollout_id]
    if step > 1:
        where.append(P.id % step == 0)
    query = select(P.received_at, P.champion_latency_ms, P.challenger_latency_ms).where(*where).limit(limit)
    with _reading(db) as conn:
        return [
            (t, None if a is None else float(a), None if b is None else float(b))
            for t, a, b in conn.execute(query)
        ]


def label_regression_sample(
    db: Database, rollout_id: int, *, limit: int, total: int
) -> list[tuple[float, float, float]]:
    """Return up to ``limit`` (champion value, challenger value, label) of labelled pairs (regression).

    Every k-th row by id (k = total // limit, ``total`` the rollout's rows), so it spreads over the rollout.
    """
    step = max(total // max(limit, 1), 1)
    where = [
        P.rollout_id == rollout_id,
        _both_ok(),
        P.champion_value.isnot(None),
        P.challenger_value.isnot(None),
        L.label_value.isnot(None),
    ]
    if step > 1:
        where.append(P.id % step == 0)
    query = (
        select(P.champion_value, P.challenger_value, L.label_value)
        .select_from(_label_join())
        .where(*where)
        .limit(limit)
    )
    with _reading(db) as conn:
        return [(float(a), float(b), float(y)) for a, b, y in conn.execute(query)]
