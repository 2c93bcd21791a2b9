"""SQL aggregates over the paired outputs of one rollout step: counts, sums and histograms, never rows.

Everything is filtered by ``rollout_id`` and ``step`` (the index on paired_outputs), so steps with
different splits are never pooled and a look costs a handful of aggregate queries whatever the history.
Only numeric and short text columns are read; uuid-like ids, JSON outputs and raw inputs never leave
the database. Pure SQLAlchemy Core: the same SQL runs on SQLite and PostgreSQL.

Outcomes: an arm "ran" on a request when its status is "ok" or "error" and "failed" when it is
"error" (its own fault: it raised, answered garbage or its own scoring ran past the timeout). A
shadow job that never started scoring is "skipped" (``skip_reason``): it did not run, is no pair and
no error, and counts only as coverage lost (``Coverage``).

The unit of analysis is the request: counts of requests, failures, pairs, discordant pairs and
latency histograms count a request once however many rows it has (its row 0 stands for it; every
row of a request shares its arms' statuses and latencies). Row-level quality figures (agreement,
accuracy, absolute errors, output histograms) keep rows; ``clusters`` (``ClusterAggregate``) give
their per-cluster sums — by request in shadow steps, by routing key in canary steps — so that a
variance can account for rows of one cluster being scored together.

Cohorts:
- ``paired`` (shadow steps): requests on which both arms ran; each arm is read from its own columns;
- ``served`` (canary steps): each arm's cohort is the requests it answered (``served_arm``), read from
  that arm's columns; agreement still uses the rows on which the other arm also scored in shadow.

Labels join on (deployment, request_id, row_index) and count only for requests received at or before
``label_cutoff`` (the label maturity); failed rows are left out of agreement, accuracy, regression
and output histograms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Float, Integer, and_, bindparam, case, cast, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from storage.database import Database
from storage.entities import ArmLiveFigures, LiveFigures
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
class Coverage:
    """What became of the shadow jobs of one step, counted in requests.

    ``sampled``: requests whose other arm was to be scored in shadow; ``scored``: of those, the ones
    whose call ran (answered or failed); ``skipped``: reason → requests that never started scoring;
    ``wait_n`` / ``wait_sum_ms`` / ``wait_max_ms``: queue waits of the scored jobs (the router's
    health, never an arm's latency).
    """

    sampled: int = 0
    scored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    wait_n: int = 0
    wait_sum_ms: float = 0.0
    wait_max_ms: float | None = None

    @property
    def share(self) -> float | None:
        """Scored / sampled, None before any sampled request."""
        return self.scored / self.sampled if self.sampled else None


@dataclass(frozen=True)
class ArmAggregates:
    """One arm's figures over its cohort. Histograms map a bucket index (or a class) to a count.

    ``n`` and ``failed`` count requests; ``rows`` the rows of those requests.
    """

    n: int = 0
    failed: int = 0
    rows: int = 0
    units: int = 0  # served cohort: distinct routing keys the arm answered (the units of randomisation)
    labelled: int = 0  # labelled rows the arm answered without error (classification or regression)
    correct: int = 0  # classification: of those, predicted class == label
    abs_error_sum: float = 0.0  # regression: sum of |prediction - label| over labelled rows
    abs_error_sumsq: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    values: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterAggregate:
    """Per-cluster totals summed as cross products: K clusters with rows m_k (N in all), quantities a_k, b_k.

    ``mm`` = sum m_k^2, ``ma`` = sum m_k a_k, ... — what a cluster-robust variance needs, from one
    GROUP BY inside one aggregate (never the clusters themselves).
    """

    clusters: int = 0
    rows: float = 0.0
    mm: float = 0.0
    ma: float = 0.0
    mb: float = 0.0
    aa: float = 0.0
    ab: float = 0.0
    bb: float = 0.0


@dataclass(frozen=True)
class ErrorTailAggregate:
    """Labelled rows whose absolute error exceeds ``cap`` (the champion's ``quantile`` of |error|)."""

    cap: float
    quantile: float
    champion_n: int = 0
    champion_above: int = 0
    challenger_n: int = 0
    challenger_above: int = 0
    pairs: int = 0
    worse: int = 0  # only the challenger above the cap
    better: int = 0  # only the champion above the cap


@dataclass(frozen=True)
class StepAggregates:
    """Aggregates of one (rollout, step) cohort; the controller turns them into judge.StepMetrics.

    Paired fields are filled for the ``paired`` cohort: ``pairs`` rows where both arms ran;
    ``worse`` / ``better``: challenger failed alone / champion failed alone (all three in requests); ``compared`` / ``agreed``:
    pairs where both succeeded / and predicted the same class; ``labelled_pairs``, ``labelled_worse``
    (champion right, challenger wrong), ``labelled_better``; ``diff_*``: moments of
    |challenger - label| - |champion - label|. ``value_range``: (low, high) of the regression outputs
    bucketed in ``values`` histograms, or None. ``pair_abs``: over the ``diff_n`` labelled pairs, sums
    of e1, e1^2, e2, e2^2 and e1 e2 (champion e1, challenger e2). ``error_tail``: rows above the
    champion's high quantile of |error|. ``clusters``: per-cluster sums for the cluster-robust variance,
    clusters being requests (``paired`` cohort: rows of one multi-row request) or routing keys
    (``served`` cohort: the split is sticky per key); keys as ``judge.StepMetrics.clusters``.

    In the ``served`` cohort the paired fields describe the rows on which both arms ran (the canary's
    shadow share), clustered by routing key: the paired analysis of a canary step.
    ``requests``: the step's requests; ``coverage``: the shadow jobs' fate (scored, skipped by reason).
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
    pair_abs: tuple[float, float, float, float, float] | None = None
    error_tail: ErrorTailAggregate | None = None
    clusters: dict[str, ClusterAggregate] = field(default_factory=dict)
    value_range: tuple[float, float] | None = None
    requests: int = 0
    coverage: Coverage = field(default_factory=Coverage)


def ran(arm: str) -> ColumnElement[bool]:
    """Whether an arm ran on a row: it answered or failed, not skipped (the one definition; reports use it too)."""
    return P[f"{arm}_status"].in_(("ok", "error"))


def _ok(arm: str) -> ColumnElement[bool]:
    return P[f"{arm}_status"] == "ok"


def _failed(arm: str) -> ColumnElement[bool]:
    return P[f"{arm}_status"] == "error"


FIRST_ROW = P.row_index == 0  # a request's row 0 stands for the request
SHADOW_STATUS = case((P.served_arm == "champion", P.challenger_status), else_=P.champion_status)


def coverage(db: Database, *, rollout_id: int, step: int | None = None) -> Coverage:
    """Count a rollout's (or one step's) shadow jobs by fate, in requests, with their queue waits."""
    where = [P.rollout_id == rollout_id, FIRST_ROW]
    if step is not None:
        where.append(P.step == step)
    with db.connection() as conn:
        return _coverage(conn, and_(*where))


def _coverage_figures() -> dict[str, tuple[str, ColumnElement[bool], Any]]:
    """The figures of ``Coverage`` but the skipped reasons, over a step's row-0 rows (see ``_figures``)."""
    scored = SHADOW_STATUS.in_(("ok", "error"))
    return {
        "sampled": ("count", SHADOW_STATUS.is_not(None), None),
        "scored": ("count", scored, None),
        "wait_n": ("count", P.shadow_wait_ms.is_not(None), None),
        "wait_sum_ms": ("sum", scored, P.shadow_wait_ms),
        "wait_max_ms": ("max", scored, P.shadow_wait_ms),
    }


def _skipped_query(where: ColumnElement[bool]) -> Any:
    """Count the skipped shadow jobs of the rows ``where`` selects by reason."""
    return (
        select(P.skip_reason, func.count()).where(where, SHADOW_STATUS == "skipped").group_by(P.skip_reason)
    )


def _coverage_of(figures: dict[str, Any], skipped: dict[str, int]) -> Coverage:
    return Coverage(
        sampled=int(figures["sampled"] or 0),
        scored=int(figures["scored"] or 0),
        skipped=skipped,
        wait_n=int(figures["wait_n"] or 0),
        wait_sum_ms=float(figures["wait_sum_ms"] or 0.0),
        wait_max_ms=None if figures["wait_max_ms"] is None else float(figures["wait_max_ms"]),
    )


def _coverage(conn: Any, where: ColumnElement[bool]) -> Coverage:
    columns = _plain_columns(_coverage_figures())
    row = conn.execute(select(*columns.values()).where(where)).one()
    skipped = {str(reason): int(n) for reason, n in conn.execute(_skipped_query(where))}
    return _coverage_of(dict(zip(columns, row, strict=True)), skipped)


def _plain_columns(figures: dict[str, tuple[str, ColumnElement[bool], Any]]) -> dict[str, Any]:
    """One aggregate column per figure: ("count", rows), ("sum", rows, value) or ("max", rows, value).

    Each aggregates only the rows it selects (``FILTER (WHERE ...)``, on SQLite and PostgreSQL alike):
    the same figures as a CASE inside the aggregate, without evaluating the aggregate on other rows.
    """
    out: dict[str, Any] = {}
    for name, (kind, member, value) in figures.items():
        if kind == "count":
            out[name] = func.count().filter(member)
        elif kind == "sum":
            out[name] = func.coalesce(func.sum(value).filter(member), 0.0)
        else:
            out[name] = func.max(value).filter(member)
    return out


def _distinct_columns(columns: dict[str, Any]) -> tuple[list[Any], dict[str, int]]:
    """Compute each distinct aggregate once: the distinct columns, and each name's index among them.

    Paired cohorts ask for the same figure under several names (both arms' requests are the pairs).
    """
    distinct: list[Any] = []
    index: dict[str, int] = {}
    for name, column in columns.items():
        found = next((i for i, seen in enumerate(distinct) if column.compare(seen)), None)
        if found is None:
            found = len(distinct)
            distinct.append(column)
        index[name] = found
    return distinct, index


def _count(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _fsum(expr: Any) -> Any:
    return func.coalesce(func.sum(cast(expr, Float)), 0.0)


def _fsum_of(expr: Any, rows: ColumnElement[bool]) -> Any:
    """The float sum of ``expr`` over the rows selected (0.0 without any)."""
    return func.coalesce(func.sum(cast(expr, Float)).filter(rows), 0.0)


def latency_bucket(ms: Any, latency: LatencyBuckets) -> ColumnElement[Any]:
    """Return the bucket of ``latency`` holding a latency (SQL; NULL for a NULL latency)."""
    raw = literal(1.0) + func.floor(func.ln(ms / latency.start_ms) / func.ln(latency.growth))
    return case(
        (ms < latency.start_ms, 0),
        (raw > latency.count - 1, latency.count - 1),
        else_=raw,
    )


def latency_histogram(
    conn: Any, where: ColumnElement[bool], arm: str, latency: LatencyBuckets
) -> dict[int, int]:
    """Count an arm's latencies per bucket of ``latency`` over the rows ``where`` selects."""
    ms = P[f"{arm}_latency_ms"]
    bucket = latency_bucket(ms, latency)
    query = select(bucket.label("b"), func.count()).where(where, ms.is_not(None)).group_by(bucket)
    return {int(b): int(c) for b, c in conn.execute(query)}


def _joint_query(where: ColumnElement[bool], keys: list[tuple[ColumnElement[bool], Any]]) -> Any:
    """Per-arm histograms from one scan: GROUP BY the arms' keys together (``_read_joint`` sums the margins).

    ``keys``: per arm (the rows this arm counts, its key: never NULL on them); the same rows and counts
    as one GROUP BY key per arm, in one pass (the key pairs seen are few: buckets or classes).
    """
    columns = [case((member, key), else_=None).label(f"k{i}") for i, (member, key) in enumerate(keys)]
    return (
        select(*columns, func.count()).where(where, or_(*[member for member, _ in keys])).group_by(*columns)
    )


def _read_joint(rows: Any, names: tuple[str, ...]) -> dict[str, dict[Any, int]]:
    """The margins of a ``_joint_query``'s counts: name -> key -> count."""
    out: dict[str, dict[Any, int]] = {name: {} for name in names}
    for row in rows:
        n = int(row[-1])
        for name, k in zip(names, row[:-1], strict=True):
            if k is not None:
                out[name][k] = out[name].get(k, 0) + n
    return out


def live_figures(db: Database, *, rollout_id: int, step: int, latency: LatencyBuckets) -> LiveFigures:
    """Count one step's requests and, per arm, the requests it answered, ran and failed, and its latencies.

    "Ran" and the latency buckets are those of ``step_aggregates`` (the judge's figures).
    """
    step_filter = and_(P.rollout_id == rollout_id, P.step == step)
    with db.connection() as conn:
        columns: list[Any] = [func.count(), func.min(P.received_at), func.max(P.received_at)]
        for arm in ARMS:
            columns += [
                _count(P.served_arm == arm),
                _count(ran(arm)),
                _count(_failed(arm)),
            ]
        # a request's row 0 stands for it: a 10-row request that fails is one error
        row = conn.execute(select(*columns).where(step_filter, FIRST_ROW)).one()
        figures = {
            arm: ArmLiveFigures(
                served=int(row[3 + 3 * i] or 0),
                scored=int(row[4 + 3 * i] or 0),
                errors=int(row[5 + 3 * i] or 0),
                latency=latency_histogram(conn, and_(step_filter, FIRST_ROW, ran(arm)), arm, latency),
            )
            for i, arm in enumerate(ARMS)
        }
    return LiveFigures(
        rollout_id=rollout_id,
        step=step,
        requests=int(row[0] or 0),
        first_at=row[1],
        last_at=row[2],
        champion=figures["champion"],
        challenger=figures["challenger"],
    )


Figure = tuple[str, ColumnElement[bool], Any]
"""("count", rows, None), ("sum", rows, value) or ("max", rows, value): one plain aggregate of a step."""


def _cluster_query(
    source: Any,
    where: ColumnElement[bool],
    cluster: Any,
    specs: dict[str, tuple[ColumnElement[bool], Any, Any]],
) -> Any:
    """Sum cross products of per-cluster totals: one GROUP BY cluster inside one aggregate query.

    ``specs``: name -> (row belongs, a, b or None) with a, b per-row numeric expressions; without b its
    cross products are 0 and not computed. ``_read_clusters`` reads the row.
    """
    inner_cols: list[Any] = []
    for i, (member, a, b) in enumerate(specs.values()):
        inner_cols += [func.count().filter(member).label(f"m{i}"), _fsum_of(a, member).label(f"a{i}")]
        if b is not None:
            inner_cols.append(_fsum_of(b, member).label(f"b{i}"))
    inner = select(*inner_cols).select_from(source).where(where).group_by(cluster).subquery()
    outer: list[Any] = []
    for i, (_, _, b) in enumerate(specs.values()):
        # a cluster without rows of a spec adds 0 to each of its sums: only the others are summed
        m, a = inner.c[f"m{i}"], inner.c[f"a{i}"]
        some = m > 0
        outer += [func.count().filter(some), _fsum_of(m, some), _fsum_of(m * m, some), _fsum_of(m * a, some)]
        if b is not None:
            outer.append(_fsum_of(m * inner.c[f"b{i}"], some))
        outer.append(_fsum_of(a * a, some))
        if b is not None:
            outer += [
                _fsum_of(a * inner.c[f"b{i}"], some),
                _fsum_of(inner.c[f"b{i}"] * inner.c[f"b{i}"], some),
            ]
    return select(*outer)


def _read_clusters(row: Any, specs: tuple[tuple[str, bool], ...]) -> dict[str, ClusterAggregate]:
    """Turn a ``_cluster_query`` row into ``ClusterAggregate``s (specs: name, whether it has a b)."""
    values = iter(row)
    out: dict[str, ClusterAggregate] = {}
    for name, has_b in specs:
        clusters, rows, mm, ma = (next(values) for _ in range(4))
        mb = next(values) if has_b else 0.0
        aa = next(values)
        ab, bb = (next(values), next(values)) if has_b else (0.0, 0.0)
        v = [float(x or 0.0) for x in (clusters, rows, mm, ma, mb, aa, ab, bb)]
        out[name] = ClusterAggregate(int(v[0]), *v[1:])
    return out


def _indicator(condition: ColumnElement[bool]) -> Any:
    return case((condition, 1.0), else_=0.0)


ERROR_BUCKETS = LatencyBuckets(start_ms=1e-9, growth=1.02, count=2400)
"""Log buckets of absolute errors (1e-9 .. ~1e11, 2% wide) for the champion's high quantile."""


# Values a look's statements take at each execution; everything else is fixed by their shape.
ROLLOUT = bindparam("rollout_id", type_=Integer)
STEP = bindparam("step", type_=Integer)
CUTOFF = bindparam("label_cutoff", type_=P.received_at.type)
CAP = bindparam("cap", type_=Float)
LOW = bindparam("low", type_=Float)
WIDTH = bindparam("width", type_=Float)


def _upper_quantile_of(counts: list[tuple[int, int]], q: float) -> float | None:
    """Return the upper edge of the log bucket holding the q-quantile of (bucket, count) (>= the quantile)."""
    b = ERROR_BUCKETS
    counts = sorted(counts)
    total = sum(c for _, c in counts)
    if total == 0:
        return None
    seen = 0
    for k, c in counts:
        seen += c
        if seen >= q * total:
            return float(b.start_ms * b.growth**k)  # bucket k covers [start g^(k-1), start g^k)
    return float(b.start_ms * b.growth ** counts[-1][0])


def _upper_quantile_query(source: Any, where: ColumnElement[bool], value: Any) -> Any:
    """Count ``value`` per log bucket of ``ERROR_BUCKETS`` (see ``_upper_quantile_of``)."""
    b = ERROR_BUCKETS
    raw = literal(1.0) + func.floor(func.ln(value / b.start_ms) / func.ln(b.growth))
    bucket = case((value < b.start_ms, 0), (raw > b.count - 1, b.count - 1), else_=raw)
    return select(bucket.label("b"), func.count()).select_from(source).where(where).group_by(bucket)


@dataclass(frozen=True)
class _StepQueries:
    """The statements of one shape of ``step_aggregates``, built once (``_step_queries``).

    They take ``ROLLOUT``, ``STEP`` and, as their shape needs, ``CUTOFF``, ``CAP``, ``LOW`` / ``WIDTH``.
    """

    figures: Any
    figure_index: dict[str, int]
    clusters: Any
    specs: tuple[tuple[str, bool], ...]  # cluster sum names, and whether each has a second quantity
    skipped: Any
    units: Any | None
    latency: dict[str, Any]
    classes: Any | None
    bounds: Any | None
    values: dict[str, Any]
    cap: Any | None


@functools.lru_cache(maxsize=64)
def _step_queries(
    cohort: Cohort,
    task: str,
    by: str,
    labelled: bool,
    tail: bool,
    latency: LatencyBuckets,
    value_bins: int,
) -> _StepQueries:
    """Build the statements of ``step_aggregates`` for one shape: its cohort, task, clusters, whether
    labels count (``labelled``) and the regression tail is known (``tail``: ``CAP`` bound)."""
    step_filter = and_(P.rollout_id == ROLLOUT, P.step == STEP)
    both_ran = and_(ran("champion"), ran("challenger"))
    both_ok = and_(_ok("champion"), _ok("challenger"))

    def member(arm: str) -> ColumnElement[bool]:
        return both_ran if cohort == "paired" else and_(P.served_arm == arm, ran(arm))

    def answered(arm: str) -> ColumnElement[bool]:
        """Rows whose output of this arm counts: both succeeded (paired) or this arm succeeded (served)."""
        return both_ok if cohort == "paired" else and_(P.served_arm == arm, _ok(arm))

    # Clusters: rows of one request (shadow) or of one routing key (canary, sticky split).
    cluster = P.request_id if by == "request" else P.routing_key_hash
    # The step's rows are read twice, each time with their matured labels (an outer join): once for
    # every plain figure (counts, failures, coverage, labelled counts and sums) and once grouped by
    # cluster for every cluster sum. A request's row 0 stands for the request.
    figures: dict[str, Figure] = {}

    def count(name: str, *conditions: ColumnElement[bool]) -> None:
        figures[name] = ("count", and_(*conditions), None)

    def total(name: str, condition: ColumnElement[bool], value: Any) -> None:
        figures[name] = ("sum", condition, cast(value, Float))

    for arm in ARMS:
        count(f"{arm}.n", FIRST_ROW, member(arm))
        count(f"{arm}.failed", FIRST_ROW, member(arm), _failed(arm))
        count(f"{arm}.rows", member(arm))
    count("pairs", FIRST_ROW, both_ran)
    count("worse", FIRST_ROW, both_ran, _failed("challenger"), _ok("champion"))
    count("better", FIRST_ROW, both_ran, _failed("champion"), _ok("challenger"))
    count("requests", FIRST_ROW)
    if task == "classification":
        count("compared", both_ok)
        count("agreed", both_ok, P.champion_class == P.challenger_class)
    for name, (kind, rows, value) in _coverage_figures().items():
        figures[f"coverage.{name}"] = (kind, and_(FIRST_ROW, rows), value)
    count("coverage.skipped", FIRST_ROW, SHADOW_STATUS == "skipped")  # by reason only when there are some
    failed = {arm: _indicator(_failed(arm)) for arm in ARMS}
    specs: dict[str, tuple[ColumnElement[bool], Any, Any]] = {
        "errors.paired": (and_(FIRST_ROW, both_ran), failed["challenger"] - failed["champion"], None)
    }
    if cohort == "served":
        for arm in ARMS:
            specs[f"errors.{arm}"] = (and_(FIRST_ROW, member(arm)), failed[arm], None)
    if task == "classification":
        specs["agreement"] = (both_ok, _indicator(P.champion_class != P.challenger_class), None)

    source: Any = PAIRS
    cap_query = None
    if labelled:
        # labels that have matured: one label at most per row (the labels' key), so the outer join keeps
        # every row and a row without a matured label counts in no labelled figure
        on = and_(
            L.request_id == P.request_id, L.row_index == P.row_index, L.deployment_id == P.deployment_id
        )
        source = PAIRS.outerjoin(LABELS, on)
        mature = P.received_at <= CUTOFF
        if task == "classification":
            has = and_(mature, L.label_class.is_not(None))
            right = {arm: P[f"{arm}_class"] == L.label_class for arm in ARMS}
            for arm in ARMS:
                count(f"{arm}.labelled", has, answered(arm))
                count(f"{arm}.correct", has, answered(arm), right[arm])
            count("labelled_pairs", has, both_ok)
            count("labelled_worse", has, both_ok, right["champion"], ~right["challenger"])
            count("labelled_better", has, both_ok, ~right["champion"], right["challenger"])
            hit = {arm: _indicator(right[arm]) for arm in ARMS}
            specs["correct.paired"] = (and_(has, both_ok), hit["champion"] - hit["challenger"], None)
            if cohort == "served":
                for arm in ARMS:
                    specs[f"correct.{arm}"] = (and_(has, answered(arm)), hit[arm], None)
        else:
            has = and_(mature, L.label_value.is_not(None))
            err = {arm: func.abs(P[f"{arm}_value"] - L.label_value) for arm in ARMS}
            usable = {arm: and_(has, answered(arm), P[f"{arm}_value"].is_not(None)) for arm in ARMS}
            for arm in ARMS:
                count(f"{arm}.labelled", usable[arm])
                total(f"{arm}.abs_error_sum", usable[arm], err[arm])
                total(f"{arm}.abs_error_sumsq", usable[arm], err[arm] * err[arm])
            both = and_(has, both_ok, P.champion_value.is_not(None), P.challenger_value.is_not(None))
            d = err["challenger"] - err["champion"]
            count("diff_n", both)
            total("diff_sum", both, d)
            total("diff_sumsq", both, d * d)
            e1, e2 = err["champion"], err["challenger"]
            for i, e in enumerate((e1, e1 * e1, e2, e2 * e2, e1 * e2)):
                total(f"pair_abs.{i}", both, e)
            specs["abs_error.paired"] = (both, err["challenger"], err["champion"])
            if cohort == "served":
                for arm in ARMS:
                    specs[f"abs_error.{arm}"] = (usable[arm], err[arm], None)
            # catastrophic errors: above the champion's high quantile of |error| (its labelled rows)
            base = usable["champion"] if cohort == "served" else both
            joined = PAIRS.join(LABELS, on)
            cap_query = _upper_quantile_query(joined, and_(step_filter, base), err["champion"])
            if tail:
                above = {arm: err[arm] > CAP for arm in ARMS}
                other = usable["challenger"] if cohort == "served" else both
                count("tail.champion_n", base)
                count("tail.champion_above", base, above["champion"])
                count("tail.challenger_n", other)
                count("tail.challenger_above", other, above["challenger"])
                count("tail.pairs", both)
                count("tail.worse", both, above["challenger"], ~above["champion"])
                count("tail.better", both, above["champion"], ~above["challenger"])
                specs["abs_error_tail.paired"] = (
                    both,
                    _indicator(above["challenger"]) - _indicator(above["champion"]),
                    None,
                )
    distinct, figure_index = _distinct_columns(_plain_columns(figures))
    units = None
    if cohort == "served":
        # The split is sticky per routing key, so keys, not requests, are the independent units that a
        # sample-ratio test may count (one busy client would otherwise look like a mismatch).
        units = (
            select(P.served_arm, func.count(func.distinct(P.routing_key_hash)))
            .where(step_filter)
            .group_by(P.served_arm)
        )
    # latency histograms: bucket = 1 + floor(ln(ms / start) / ln(growth)), clipped; one query per arm (a
    # joint GROUP BY of both arms' buckets returns about as many key pairs as rows, read one by one)
    latency_queries = {}
    for arm in ARMS:
        ms = P[f"{arm}_latency_ms"]
        bucket = latency_bucket(ms, latency)
        latency_queries[arm] = (
            select(bucket.label("b"), func.count())
            .where(step_filter, FIRST_ROW, member(arm), ms.is_not(None))
            .group_by(bucket)
        )
    # output histograms: classes, or equal-width bins of regression values over both arms' range
    classes = bounds = None
    values: dict[str, Any] = {}
    if task == "classification":
        classes = _joint_query(
            step_filter,
            [(and_(answered(arm), P[f"{arm}_class"].is_not(None)), P[f"{arm}_class"]) for arm in ARMS],
        )
    else:
        bounds = select(
            *[
                agg(case((answered(arm), P[f"{arm}_value"]), else_=None))
                for arm in ARMS
                for agg in (func.min, func.max)
            ]
        ).where(step_filter)
        for arm in ARMS:
            v = P[f"{arm}_value"]
            raw = func.floor((v - LOW) / WIDTH)
            bucket = case((raw < 0, 0), (raw > value_bins - 1, value_bins - 1), else_=raw)
            values[arm] = (
                select(bucket.label("b"), func.count())
                .where(step_filter, answered(arm), v.is_not(None))
                .group_by(bucket)
            )
    return _StepQueries(
        figures=select(*distinct).select_from(source).where(step_filter),
        figure_index=figure_index,
        clusters=_cluster_query(source, step_filter, cluster, specs),
        specs=tuple((name, b is not None) for name, (_, _, b) in specs.items()),
        skipped=_skipped_query(and_(step_filter, FIRST_ROW)),
        units=units,
        latency=latency_queries,
        classes=classes,
        bounds=bounds,
        values=values,
        cap=cap_query,
    )


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
    tail_quantile: float = 0.99,
    cluster_by: Literal["request", "routing_key"] | None = None,
) -> StepAggregates:
    """Aggregate one rollout step in SQL; ``label_cutoff`` None ignores labels altogether.

    ``tail_quantile``: the quantile of the champion's absolute errors above which a regression error
    counts as catastrophic (``error_tail``). ``cluster_by``: the clusters of ``clusters`` — by default
    requests for the ``paired`` cohort (shadow steps) and routing keys for ``served`` (canary steps);
    pass ``"routing_key"`` when reading the ``paired`` cohort of a canary step (its paired analysis).
    The statements are built once per shape (``_step_queries``) and only bound to these values here.
    """
    by = cluster_by or ("request" if cohort == "paired" else "routing_key")
    labelled = label_cutoff is not None
    params: dict[str, Any] = {"rollout_id": rollout_id, "step": step}
    if labelled:
        params["label_cutoff"] = label_cutoff
    regression_labels = labelled and task == "regression"
    with db.connection() as conn:
        cap: float | None = None
        if regression_labels:
            cap_query = _step_queries(cohort, task, by, labelled, False, latency, value_bins).cap
            cap = _upper_quantile_of(
                [(int(k), int(c)) for k, c in conn.execute(cap_query, params).all()], tail_quantile
            )
            if cap is not None:
                params["cap"] = cap
        q = _step_queries(cohort, task, by, labelled, cap is not None, latency, value_bins)
        row = conn.execute(q.figures, params).one()
        f = {name: row[i] for name, i in q.figure_index.items()}
        clusters = _read_clusters(conn.execute(q.clusters, params).one(), q.specs)
        arms: dict[str, dict[str, Any]] = {
            arm: {"n": int(f[f"{arm}.n"]), "failed": int(f[f"{arm}.failed"]), "rows": int(f[f"{arm}.rows"])}
            for arm in ARMS
        }
        extra: dict[str, Any] = {name: int(f[name]) for name in ("pairs", "worse", "better", "requests")}
        if task == "classification":
            extra.update(compared=int(f["compared"]), agreed=int(f["agreed"]))
        skipped = (
            {str(reason): int(n) for reason, n in conn.execute(q.skipped, params).all()}
            if f["coverage.skipped"]
            else {}
        )
        extra["coverage"] = _coverage_of(
            {name: f[f"coverage.{name}"] for name in _coverage_figures()}, skipped
        )
        if q.units is not None:
            for arm, n in conn.execute(q.units, params).all():
                if arm in arms:
                    arms[arm]["units"] = int(n)
        if labelled and task == "classification":
            for arm in ARMS:
                arms[arm].update(labelled=int(f[f"{arm}.labelled"]), correct=int(f[f"{arm}.correct"]))
            extra.update({k: int(f[k]) for k in ("labelled_pairs", "labelled_worse", "labelled_better")})
        if regression_labels:
            for arm in ARMS:
                arms[arm].update(
                    labelled=int(f[f"{arm}.labelled"]),
                    abs_error_sum=float(f[f"{arm}.abs_error_sum"]),
                    abs_error_sumsq=float(f[f"{arm}.abs_error_sumsq"]),
                )
            extra.update(
                diff_n=int(f["diff_n"]),
                diff_sum=float(f["diff_sum"]),
                diff_sumsq=float(f["diff_sumsq"]),
                pair_abs=tuple(float(f[f"pair_abs.{i}"]) for i in range(5)),
            )
            if cap is not None:
                tail = (
                    "champion_n",
                    "champion_above",
                    "challenger_n",
                    "challenger_above",
                    "pairs",
                    "worse",
                    "better",
                )
                extra["error_tail"] = ErrorTailAggregate(
                    cap, tail_quantile, *[int(f[f"tail.{k}"]) for k in tail]
                )

        for arm in ARMS:
            arms[arm]["latency"] = {int(b): int(c) for b, c in conn.execute(q.latency[arm], params).all()}
        value_range: tuple[float, float] | None = None
        if q.classes is not None:
            histograms = _read_joint(conn.execute(q.classes, params).all(), ARMS)
            for arm in ARMS:
                arms[arm]["classes"] = {str(k): c for k, c in histograms[arm].items()}
        if q.bounds is not None:
            bounds = conn.execute(q.bounds, params).one()
            lows = [b for b in (bounds[0], bounds[2]) if b is not None]
            highs = [b for b in (bounds[1], bounds[3]) if b is not None]
            if lows and highs:
                lo, hi = float(min(lows)), float(max(highs))
                value_range = (lo, hi)
                width = (hi - lo) / value_bins if hi > lo else 1.0
                for arm in ARMS:
                    rows = conn.execute(q.values[arm], {**params, "low": lo, "width": width}).all()
                    arms[arm]["values"] = {int(b): int(c) for b, c in rows}

    return StepAggregates(
        cohort=cohort,
        champion=ArmAggregates(**arms["champion"]),
        challenger=ArmAggregates(**arms["challenger"]),
        value_range=value_range,
        clusters=clusters,
        **extra,
    )
