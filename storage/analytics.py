"""SQL aggregates over the paired outputs of one rollout step: counts, sums and histograms, never rows.

Everything is filtered by ``rollout_id`` and ``step`` (the index on paired_outputs), so steps with
different splits are never pooled and a look costs a handful of aggregate queries whatever the history.
Only numeric and short text columns are read; uuid-like ids, JSON outputs and raw inputs never leave
the database. Pure SQLAlchemy Core: the same SQL runs on SQLite and PostgreSQL.

Cohorts:
- ``paired`` (shadow steps): rows on which both arms ran (an arm "ran" when it has a latency or an
  error); each arm is read from its own columns;
- ``served`` (canary steps): each arm's cohort is the rows it answered (``served_arm``), read from that
  arm's columns; agreement still uses the rows on which the other arm also scored in shadow.

Labels join on (deployment, request_id, row_index) and count only for requests received at or before
``label_cutoff`` (the label maturity); an arm "failed" when its error column is set, and failed rows
are left out of agreement, accuracy, regression and output histograms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Float, and_, case, cast, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from storage.database import Database
from storage.models import LabelRow, PairedOutputRow

Cohort = Literal["paired", "served"]
ARMS = ("champion", "challenger")

PAIRS = PairedOutputRow.__table__
LABELS = LabelRow.__table__
P = PAIRS.c
L = LABELS.c


@dataclass(frozen=True)
class LatencyBuckets:
    """Log buckets: [0, start), then [start * growth**i, start * growth**(i+1)), the last one open-ended.

    ``count`` is the number of buckets; matches ``controller.core.stats.latency_edges`` with the same values.
    """

    start_ms: float
    growth: float
    count: int


@dataclass(frozen=True)
class ArmAggregates:
    """One arm's figures over its cohort. Histograms map a bucket index (or a class) to a count."""

    n: int = 0
    failed: int = 0
    units: int = 0  # served cohort: distinct routing keys the arm answered (the units of randomisation)
    labelled: int = 0  # labelled rows the arm answered without error (classification or regression)
    correct: int = 0  # classification: of those, predicted class == label
    abs_error_sum: float = 0.0  # regression: sum of |prediction - label| over labelled rows
    abs_error_sumsq: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    values: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StepAggregates:
    """Aggregates of one (rollout, step) cohort; the controller turns them into judge.StepMetrics.

    Paired fields are filled for the ``paired`` cohort: ``pairs`` rows where both arms ran;
    ``worse`` / ``better``: challenger failed alone / champion failed alone; ``compared`` / ``agreed``:
    pairs where both succeeded / and predicted the same class; ``labelled_pairs``, ``labelled_worse``
    (champion right, challenger wrong), ``labelled_better``; ``diff_*``: moments of
    |challenger - label| - |champion - label|. ``value_range``: (low, high) of the regression outputs
    bucketed in ``values`` histograms, or None.
    """

    cohort: Cohort
    champion: ArmAggregates
    challenger: ArmAggregates
    pairs: int = 0
    worse: int = 0
    better: int = 0
    compared: int = 0
    agreed: int = 0
    labelled_pairs: int = 0
    labelled_worse: int = 0
    labelled_better: int = 0
    diff_n: int = 0
    diff_sum: float = 0.0
    diff_sumsq: float = 0.0
    value_range: tuple[float, float] | None = None


def _ran(arm: str) -> ColumnElement[bool]:
    return or_(P[f"{arm}_latency_ms"].is_not(None), P[f"{arm}_error"].is_not(None))


def _ok(arm: str) -> ColumnElement[bool]:
    return and_(_ran(arm), P[f"{arm}_error"].is_(None))


def _count(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _fsum(expr: Any) -> Any:
    return func.coalesce(func.sum(cast(expr, Float)), 0.0)


def step_aggregates(
    db: Database,
    *,
    rollout_id: int,
    step: int,
    cohort: Cohort,
    task: Literal["classification", "regression"],
    label_cutoff: datetime | None,
    latency: LatencyBuckets,
    value_bins: int = 10,
) -> StepAggregates:
    """Aggregate one rollout step in SQL; ``label_cutoff`` None ignores labels altogether."""
    step_filter = and_(P.rollout_id == rollout_id, P.step == step)
    both_ran = and_(_ran("champion"), _ran("challenger"))
    both_ok = and_(_ok("champion"), _ok("challenger"))

    def member(arm: str) -> ColumnElement[bool]:
        return both_ran if cohort == "paired" else and_(P.served_arm == arm, _ran(arm))

    def answered(arm: str) -> ColumnElement[bool]:
        """Rows whose output of this arm counts: both succeeded (paired) or this arm succeeded (served)."""
        return both_ok if cohort == "paired" else and_(P.served_arm == arm, _ok(arm))

    with db.connection() as conn:
        # 1. counts and failures per arm; discordance and agreement
        columns: list[Any] = []
        for arm in ARMS:
            columns += [_count(member(arm)), _count(and_(member(arm), P[f"{arm}_error"].is_not(None)))]
        columns += [
            _count(both_ran),
            _count(and_(both_ran, P.challenger_error.is_not(None), P.champion_error.is_(None))),
            _count(and_(both_ran, P.champion_error.is_not(None), P.challenger_error.is_(None))),
        ]
        if task == "classification":
            columns += [_count(both_ok), _count(and_(both_ok, P.champion_class == P.challenger_class))]
        row = conn.execute(select(*columns).where(step_filter)).one()
        values = [int(x or 0) for x in row]
        arms: dict[str, dict[str, Any]] = {
            "champion": {"n": values[0], "failed": values[1]},
            "challenger": {"n": values[2], "failed": values[3]},
        }
        extra: dict[str, Any] = {"pairs": values[4], "worse": values[5], "better": values[6]}
        if task == "classification":
            extra.update(compared=values[7], agreed=values[8])
        if cohort == "served":
            extra.update(pairs=0, worse=0, better=0)
            # The split is sticky per routing key, so keys, not requests, are the independent units
            # that a sample-ratio test may count (one busy client would otherwise look like a mismatch).
            units = select(P.served_arm, func.count(func.distinct(P.routing_key_hash))).where(step_filter)
            for arm, count in conn.execute(units.group_by(P.served_arm)):
                if arm in arms:
                    arms[arm]["units"] = int(count)

        # 2. labels that have matured
        if label_cutoff is not None:
            joined = PAIRS.join(
                LABELS,
                and_(
                    L.request_id == P.request_id,
                    L.row_index == P.row_index,
                    L.deployment_id == P.deployment_id,
                ),
            )
            matured = and_(step_filter, P.received_at <= label_cutoff)
            if task == "classification":
                has = L.label_class.is_not(None)
                right = {arm: P[f"{arm}_class"] == L.label_class for arm in ARMS}
                cols = [_count(and_(has, answered(arm))) for arm in ARMS]
                cols += [_count(and_(has, answered(arm), right[arm])) for arm in ARMS]
                if cohort == "paired":
                    cols += [
                        _count(and_(has, both_ok, right["champion"], ~right["challenger"])),
                        _count(and_(has, both_ok, ~right["champion"], right["challenger"])),
                    ]
                r = [
                    int(x or 0) for x in conn.execute(select(*cols).select_from(joined).where(matured)).one()
                ]
                for i, arm in enumerate(ARMS):
                    arms[arm].update(labelled=r[i], correct=r[2 + i])
                if cohort == "paired":
                    extra.update(labelled_pairs=r[0], labelled_worse=r[4], labelled_better=r[5])
            else:
                has = L.label_value.is_not(None)
                err = {arm: func.abs(P[f"{arm}_value"] - L.label_value) for arm in ARMS}
                usable = {arm: and_(has, answered(arm), P[f"{arm}_value"].is_not(None)) for arm in ARMS}
                cols = []
                for arm in ARMS:
                    e = case((usable[arm], err[arm]), else_=None)
                    cols += [_count(usable[arm]), _fsum(e), _fsum(e * e)]
                if cohort == "paired":
                    both = and_(usable["champion"], usable["challenger"])
                    d = case((both, err["challenger"] - err["champion"]), else_=None)
                    cols += [_count(both), _fsum(d), _fsum(d * d)]
                r = list(conn.execute(select(*cols).select_from(joined).where(matured)).one())
                for i, arm in enumerate(ARMS):
                    arms[arm].update(
                        labelled=int(r[3 * i] or 0),
                        abs_error_sum=float(r[3 * i + 1] or 0.0),
                        abs_error_sumsq=float(r[3 * i + 2] or 0.0),
                    )
                if cohort == "paired":
                    extra.update(
                        diff_n=int(r[6] or 0), diff_sum=float(r[7] or 0.0), diff_sumsq=float(r[8] or 0.0)
                    )

        # 3. latency histograms: bucket = 1 + floor(ln(ms / start) / ln(growth)), clipped
        for arm in ARMS:
            ms = P[f"{arm}_latency_ms"]
            raw = literal(1.0) + func.floor(func.ln(ms / latency.start_ms) / func.ln(latency.growth))
            bucket = case(
                (ms < latency.start_ms, 0),
                (raw > latency.count - 1, latency.count - 1),
                else_=raw,
            )
            query = (
                select(bucket.label("b"), func.count())
                .where(step_filter, member(arm), ms.is_not(None))
                .group_by(bucket)
            )
            arms[arm]["latency"] = {int(b): int(c) for b, c in conn.execute(query)}

        # 4. output histograms: classes, or equal-width bins of regression values over both arms' range
        value_range: tuple[float, float] | None = None
        if task == "classification":
            for arm in ARMS:
                klass = P[f"{arm}_class"]
                query = (
                    select(klass, func.count())
                    .where(step_filter, answered(arm), klass.is_not(None))
                    .group_by(klass)
                )
                arms[arm]["classes"] = {str(k): int(c) for k, c in conn.execute(query)}
        else:
            bounds = conn.execute(
                select(
                    *[
                        agg(case((answered(arm), P[f"{arm}_value"]), else_=None))
                        for arm in ARMS
                        for agg in (func.min, func.max)
                    ]
                ).where(step_filter)
            ).one()
            lows = [b for b in (bounds[0], bounds[2]) if b is not None]
            highs = [b for b in (bounds[1], bounds[3]) if b is not None]
            if lows and highs:
                lo, hi = float(min(lows)), float(max(highs))
                value_range = (lo, hi)
                width = (hi - lo) / value_bins if hi > lo else 1.0
                for arm in ARMS:
                    v = P[f"{arm}_value"]
                    raw = func.floor((v - lo) / width)
                    bucket = case((raw < 0, 0), (raw > value_bins - 1, value_bins - 1), else_=raw)
                    query = (
                        select(bucket.label("b"), func.count())
                        .where(step_filter, answered(arm), v.is_not(None))
                        .group_by(bucket)
                    )
                    arms[arm]["values"] = {int(b): int(c) for b, c in conn.execute(query)}

    return StepAggregates(
        cohort=cohort,
        champion=ArmAggregates(**arms["champion"]),
        challenger=ArmAggregates(**arms["challenger"]),
        value_range=value_range,
        **extra,
    )
