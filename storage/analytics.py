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

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Float, and_, case, cast, func, literal, or_, select
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


def _coverage(conn: Any, where: ColumnElement[bool]) -> Coverage:
    scored = SHADOW_STATUS.in_(("ok", "error"))
    row = conn.execute(
        select(
            _count(SHADOW_STATUS.is_not(None)),
            _count(scored),
            func.count(P.shadow_wait_ms),
            func.coalesce(func.sum(case((scored, P.shadow_wait_ms), else_=None)), 0.0),
            func.max(case((scored, P.shadow_wait_ms), else_=None)),
        ).where(where)
    ).one()
    skipped = {
        str(reason): int(n)
        for reason, n in conn.execute(
            select(P.skip_reason, func.count())
            .where(where, SHADOW_STATUS == "skipped")
            .group_by(P.skip_reason)
        )
    }
    return Coverage(
        sampled=int(row[0] or 0),
        scored=int(row[1] or 0),
        skipped=skipped,
        wait_n=int(row[2] or 0),
        wait_sum_ms=float(row[3] or 0.0),
        wait_max_ms=None if row[4] is None else float(row[4]),
    )


def _count(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _fsum(expr: Any) -> Any:
    return func.coalesce(func.sum(cast(expr, Float)), 0.0)


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


def _joint_histograms(
    conn: Any, where: ColumnElement[bool], keys: dict[str, tuple[ColumnElement[bool], Any]]
) -> dict[str, dict[Any, int]]:
    """Per-arm histograms from one scan: GROUP BY the arms' keys together, then sum the margins.

    ``keys``: arm -> (the rows this arm counts, its key: never NULL on them); the same rows and counts
    as one GROUP BY key per arm, in one pass (the key pairs seen are few: buckets or classes).
    """
    columns = [
        case((member, key), else_=None).label(f"k{i}") for i, (member, key) in enumerate(keys.values())
    ]
    query = (
        select(*columns, func.count())
        .where(where, or_(*[member for member, _ in keys.values()]))
        .group_by(*columns)
    )
    out: dict[str, dict[Any, int]] = {arm: {} for arm in keys}
    for row in conn.execute(query):
        n = int(row[-1])
        for arm, k in zip(keys, row[:-1], strict=True):
            if k is not None:
                out[arm][k] = out[arm].get(k, 0) + n
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


def _cluster_sums(
    conn: Any,
    source: Any,
    where: ColumnElement[bool],
    cluster: Any,
    specs: dict[str, tuple[ColumnElement[bool], Any, Any]],
) -> dict[str, ClusterAggregate]:
    """Sum cross products of per-cluster totals: one GROUP BY cluster inside one aggregate query.

    ``specs``: name -> (row belongs, a, b or None) with a, b per-row numeric expressions.
    """
    if not specs:
        return {}
    inner_cols: list[Any] = []
    for i, (member, a, b) in enumerate(specs.values()):
        inner_cols += [
            _count(member).label(f"m{i}"),
            _fsum(case((member, a), else_=0.0)).label(f"a{i}"),
            _fsum(case((member, b if b is not None else 0.0), else_=0.0)).label(f"b{i}"),
        ]
    inner = select(*inner_cols).select_from(source).where(where).group_by(cluster).subquery()
    outer: list[Any] = []
    for i in range(len(specs)):
        m, a, b = inner.c[f"m{i}"], inner.c[f"a{i}"], inner.c[f"b{i}"]
        outer += [
            _count(m > 0),
            _fsum(m),
            _fsum(m * m),
            _fsum(m * a),
            _fsum(m * b),
            _fsum(a * a),
            _fsum(a * b),
            _fsum(b * b),
        ]
    row = conn.execute(select(*outer)).one()
    out: dict[str, ClusterAggregate] = {}
    for i, name in enumerate(specs):
        v = [float(x or 0.0) for x in row[8 * i : 8 * i + 8]]
        out[name] = ClusterAggregate(int(v[0]), *v[1:])
    return out


def _indicator(condition: ColumnElement[bool]) -> Any:
    return case((condition, 1.0), else_=0.0)


ERROR_BUCKETS = LatencyBuckets(start_ms=1e-9, growth=1.02, count=2400)
"""Log buckets of absolute errors (1e-9 .. ~1e11, 2% wide) for the champion's high quantile."""


def _upper_quantile(conn: Any, source: Any, where: ColumnElement[bool], value: Any, q: float) -> float | None:
    """Return the upper edge of the log bucket holding the q-quantile of ``value`` (>= the quantile)."""
    b = ERROR_BUCKETS
    raw = literal(1.0) + func.floor(func.ln(value / b.start_ms) / func.ln(b.growth))
    bucket = case((value < b.start_ms, 0), (raw > b.count - 1, b.count - 1), else_=raw)
    rows = conn.execute(
        select(bucket.label("b"), func.count()).select_from(source).where(where).group_by(bucket)
    ).all()
    counts = sorted((int(k), int(c)) for k, c in rows)
    total = sum(c for _, c in counts)
    if total == 0:
        return None
    seen = 0
    for k, c in counts:
        seen += c
        if seen >= q * total:
            return float(b.start_ms * b.growth**k)  # bucket k covers [start g^(k-1), start g^k)
    return float(b.start_ms * b.growth ** counts[-1][0])


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
    """
    step_filter = and_(P.rollout_id == rollout_id, P.step == step)
    both_ran = and_(ran("champion"), ran("challenger"))
    both_ok = and_(_ok("champion"), _ok("challenger"))

    def member(arm: str) -> ColumnElement[bool]:
        return both_ran if cohort == "paired" else and_(P.served_arm == arm, ran(arm))

    def request(condition: ColumnElement[bool]) -> Any:
        return _count(and_(FIRST_ROW, condition))

    def answered(arm: str) -> ColumnElement[bool]:
        """Rows whose output of this arm counts: both succeeded (paired) or this arm succeeded (served)."""
        return both_ok if cohort == "paired" else and_(P.served_arm == arm, _ok(arm))

    with db.connection() as conn:
        # 1. counts and failures per arm; discordance and agreement
        columns: list[Any] = []
        for arm in ARMS:
            columns += [request(member(arm)), request(and_(member(arm), _failed(arm))), _count(member(arm))]
        columns += [
            request(both_ran),
            request(and_(both_ran, _failed("challenger"), _ok("champion"))),
            request(and_(both_ran, _failed("champion"), _ok("challenger"))),
            request(literal(True)),
            _count(literal(True)),
        ]
        if task == "classification":
            columns += [_count(both_ok), _count(and_(both_ok, P.champion_class == P.challenger_class))]
        row = conn.execute(select(*columns).where(step_filter)).one()
        values = [int(x or 0) for x in row]
        arms: dict[str, dict[str, Any]] = {
            "champion": {"n": values[0], "failed": values[1], "rows": values[2]},
            "challenger": {"n": values[3], "failed": values[4], "rows": values[5]},
        }
        extra: dict[str, Any] = {"pairs": values[6], "worse": values[7], "better": values[8]}
        extra["requests"] = values[9]
        if task == "classification":
            extra.update(compared=values[11], agreed=values[12])
        extra["coverage"] = _coverage(conn, and_(step_filter, FIRST_ROW))
        # Clusters: rows of one request (shadow) or of one routing key (canary, sticky split).
        by = cluster_by or ("request" if cohort == "paired" else "routing_key")
        cluster = P.request_id if by == "request" else P.routing_key_hash
        failed = {arm: _indicator(_failed(arm)) for arm in ARMS}
        specs: dict[str, tuple[ColumnElement[bool], Any, Any]] = {
            "errors.paired": (and_(FIRST_ROW, both_ran), failed["challenger"] - failed["champion"], None)
        }
        if cohort == "served":
            for arm in ARMS:
                specs[f"errors.{arm}"] = (and_(FIRST_ROW, member(arm)), failed[arm], None)
        if task == "classification":
            specs["agreement"] = (both_ok, _indicator(P.champion_class != P.challenger_class), None)
        clusters = _cluster_sums(conn, PAIRS, step_filter, cluster, specs)
        if cohort == "served":
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
                cols += [
                    _count(and_(has, both_ok)),
                    _count(and_(has, both_ok, right["champion"], ~right["challenger"])),
                    _count(and_(has, both_ok, ~right["champion"], right["challenger"])),
                ]
                r = [
                    int(x or 0) for x in conn.execute(select(*cols).select_from(joined).where(matured)).one()
                ]
                for i, arm in enumerate(ARMS):
                    arms[arm].update(labelled=r[i], correct=r[2 + i])
                extra.update(labelled_pairs=r[4], labelled_worse=r[5], labelled_better=r[6])
                hit = {arm: _indicator(right[arm]) for arm in ARMS}
                lspecs: dict[str, tuple[ColumnElement[bool], Any, Any]] = {
                    "correct.paired": (and_(has, both_ok), hit["champion"] - hit["challenger"], None)
                }
                if cohort == "served":
                    for arm in ARMS:
                        lspecs[f"correct.{arm}"] = (and_(has, answered(arm)), hit[arm], None)
                clusters.update(_cluster_sums(conn, joined, matured, cluster, lspecs))
            else:
                has = L.label_value.is_not(None)
                err = {arm: func.abs(P[f"{arm}_value"] - L.label_value) for arm in ARMS}
                usable = {arm: and_(has, answered(arm), P[f"{arm}_value"].is_not(None)) for arm in ARMS}
                cols = []
                for arm in ARMS:
                    e = case((usable[arm], err[arm]), else_=None)
                    cols += [_count(usable[arm]), _fsum(e), _fsum(e * e)]
                both = and_(has, both_ok, P.champion_value.is_not(None), P.challenger_value.is_not(None))
                d = case((both, err["challenger"] - err["champion"]), else_=None)
                cols += [_count(both), _fsum(d), _fsum(d * d)]
                e1 = case((both, err["champion"]), else_=None)
                e2 = case((both, err["challenger"]), else_=None)
                cols += [_fsum(e1), _fsum(e1 * e1), _fsum(e2), _fsum(e2 * e2), _fsum(e1 * e2)]
                r = list(conn.execute(select(*cols).select_from(joined).where(matured)).one())
                for i, arm in enumerate(ARMS):
                    arms[arm].update(
                        labelled=int(r[3 * i] or 0),
                        abs_error_sum=float(r[3 * i + 1] or 0.0),
                        abs_error_sumsq=float(r[3 * i + 2] or 0.0),
                    )
                extra.update(
                    diff_n=int(r[6] or 0),
                    diff_sum=float(r[7] or 0.0),
                    diff_sumsq=float(r[8] or 0.0),
                    pair_abs=tuple(float(x or 0.0) for x in r[9:14]),
                )
                rspecs: dict[str, tuple[ColumnElement[bool], Any, Any]] = {
                    "abs_error.paired": (both, err["challenger"], err["champion"])
                }
                if cohort == "served":
                    for arm in ARMS:
                        rspecs[f"abs_error.{arm}"] = (usable[arm], err[arm], None)
                # catastrophic errors: above the champion's high quantile of |error| (its labelled rows)
                base = usable["champion"] if cohort == "served" else both
                cap = _upper_quantile(conn, joined, and_(matured, base), err["champion"], tail_quantile)
                if cap is not None:
                    above = {arm: err[arm] > cap for arm in ARMS}
                    t = conn.execute(
                        select(
                            _count(base),
                            _count(and_(base, above["champion"])),
                            _count(usable["challenger"] if cohort == "served" else both),
                            _count(
                                and_(
                                    usable["challenger"] if cohort == "served" else both, above["challenger"]
                                )
                            ),
                            _count(both),
                            _count(and_(both, above["challenger"], ~above["champion"])),
                            _count(and_(both, above["champion"], ~above["challenger"])),
                        )
                        .select_from(joined)
                        .where(matured)
                    ).one()
                    extra["error_tail"] = ErrorTailAggregate(cap, tail_quantile, *[int(x or 0) for x in t])
                    rspecs["abs_error_tail.paired"] = (
                        both,
                        _indicator(above["challenger"]) - _indicator(above["champion"]),
                        None,
                    )
                clusters.update(_cluster_sums(conn, joined, matured, cluster, rspecs))

        # 3. latency histograms: bucket = 1 + floor(ln(ms / start) / ln(growth)), clipped; both arms in one scan
        histograms = _joint_histograms(
            conn,
            and_(step_filter, FIRST_ROW),
            {
                arm: (
                    and_(member(arm), P[f"{arm}_latency_ms"].is_not(None)),
                    latency_bucket(P[f"{arm}_latency_ms"], latency),
                )
                for arm in ARMS
            },
        )
        for arm in ARMS:
            arms[arm]["latency"] = {int(b): c for b, c in histograms[arm].items()}

        # 4. output histograms: classes, or equal-width bins of regression values over both arms' range
        value_range: tuple[float, float] | None = None
        if task == "classification":
            histograms = _joint_histograms(
                conn,
                step_filter,
                {
                    arm: (and_(answered(arm), P[f"{arm}_class"].is_not(None)), P[f"{arm}_class"])
                    for arm in ARMS
                },
            )
            for arm in ARMS:
                arms[arm]["classes"] = {str(k): c for k, c in histograms[arm].items()}
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
        clusters=clusters,
        **extra,
    )
