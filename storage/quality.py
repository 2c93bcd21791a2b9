"""SQL aggregates of the quality gates of one rollout step: confusion counts, loss sums, outcome sums.

The twin of ``storage.analytics`` for ``controller.core.metrics``: every figure is a GROUP BY count or
a SUM over the step's rows joined with their matured labels, so a look costs a few aggregate queries
whatever the history. Only the fixed-horizon ROC AUC reads rows: the first ``horizon`` labelled rows'
scores (two floats and a short label each; for more than two classes each arm's probability vector),
once that many exist. Multi-class log loss and Brier read each arm's vector (``champion_proba`` /
``challenger_proba``, JSON keyed by class) with one JSON read per class and row.

Cohorts as in ``storage.analytics``: ``paired`` (shadow: rows both arms answered without error; the
confusion cells are (label, champion class, challenger class)) and ``served`` (canary: each arm's
answered rows, cells (arm, label, class)). Segments group the same aggregates by a raw-input column
(``raw_input`` JSON, read with the dialect's JSON operator) or by buckets of a numeric column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import Float, and_, case, cast, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from storage.analytics import ARMS, LABELS, PAIRS, Cohort
from storage.database import Database

_L = TypeVar("_L")  # a fixed-horizon sample's label type
_V = TypeVar("_V")  # and its value type

P = PAIRS.c
L = LABELS.c
EPS = 2.220446049250313e-16  # float64 machine epsilon: scikit-learn's clipping of probabilities
OTHER = "(other)"

__all__ = ["LossSums", "QualityAggregates", "SegmentColumn", "label_delay", "quality_aggregates", "swap_arms"]


@dataclass(frozen=True)
class SegmentColumn:
    """A raw-input column that defines segments: its values, or numeric buckets cut at ``edges``."""

    column: str
    edges: tuple[float, ...] | None = None


@dataclass(frozen=True)
class LossSums:
    """Per arm (count, sum, sum of squares) of a per-row loss; paired: the same of the difference."""

    champion: tuple[int, float, float] = (0, 0.0, 0.0)
    challenger: tuple[int, float, float] = (0, 0.0, 0.0)
    difference: tuple[int, float, float] = (0, 0.0, 0.0)


@dataclass(frozen=True)
class QualityAggregates:
    """Aggregates of one (rollout, step) cohort for the quality gates.

    ``paired_cells``: (label, champion class, challenger class) -> rows; ``served_cells``:
    (arm, label, class) -> rows. ``log_loss`` / ``brier``: proper scores, binary (``positive`` given,
    from the score) or multi-class (more than two ``classes``, from the stored probability vectors).
    ``squared``: RMSE sums per arm (n, sum e^2, sum e^4) and paired (n, sum e1^2 e2^2); ``pinball``:
    loss sums per quantile; ``abs_error``: MAE loss sums. ``outcome``: per arm (n, sum, sum of squares)
    over served requests with an outcome; ``outcome_ratio``: per arm (n, Σx, Σy, Σx², Σy², Σxy) of
    outcome x and its denominator y over the rows that have both (both over served rows, whatever ``cohort``). ``auc``: (available rows, labels, champion scores,
    challenger scores, challenger labels) of the first ``horizon`` rows; ``auc_multiclass`` the same for
    more than two classes, with each row's probability vector in ``classes`` order (a class an arm's
    vector lacks counts as probability 0) instead of one score. ``segments``: column ->
    value -> the confusion cells or MAE sums of that segment.
    """

    cohort: Cohort
    paired_cells: dict[tuple[str, ...], int] = field(default_factory=dict)
    served_cells: dict[tuple[str, ...], int] = field(default_factory=dict)
    log_loss: LossSums | None = None
    brier: LossSums | None = None
    squared: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    squared_cross: tuple[int, float] = (0, 0.0)
    pinball: dict[float, LossSums] = field(default_factory=dict)
    abs_error: LossSums | None = None
    outcome: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    outcome_ratio: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # n, Σx, Σy, Σx², Σy², Σxy
    auc: tuple[int, list[bool], list[float], list[float], list[bool]] | None = None
    auc_multiclass: tuple[int, list[str], list[list[float]], list[list[float]], list[str]] | None = None
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)


def _swap_sums(s: LossSums | None) -> LossSums | None:
    if s is None:
        return None
    n, total, squares = s.difference
    return LossSums(champion=s.challenger, challenger=s.champion, difference=(n, -total, squares))


def _swap_cells(cells: dict[tuple[str, ...], int], cohort: Cohort) -> dict[tuple[str, ...], int]:
    """Paired cells (label, champion class, challenger class) exchange their classes; served cells
    (arm, label, class) their arm."""
    if cohort == "paired":
        return {(k[0], k[2], k[1]): n for k, n in cells.items()}
    other = {"champion": "challenger", "challenger": "champion"}
    return {(other[k[0]], *k[1:]): n for k, n in cells.items()}


def _swap_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {{"champion": "challenger", "challenger": "champion"}.get(k, k): v for k, v in d.items()}


def swap_arms(a: QualityAggregates) -> QualityAggregates:
    """Exchange the arms of one step's quality aggregates, as ``controller.loop.measure.swap_aggregates``
    does for the core ones: in the post-promotion watch the router stores the new champion (the
    rollout's challenger) in the champion columns and the previous champion in the challenger columns,
    so the watch reads them swapped back and "challenger" is always the rollout's challenger.
    Differences (challenger - champion) change sign; sums of squares and counts stay."""
    segments: dict[str, dict[str, Any]] = {}
    for column, values in a.segments.items():
        segments[column] = {
            value: _swap_sums(data) if isinstance(data, LossSums) else _swap_cells(data, a.cohort)
            for value, data in values.items()
        }
    auc = a.auc
    if auc is not None:
        available, labels, s1, s2, labels2 = auc
        auc = (
            (available, labels, s2, s1, []) if a.cohort == "paired" else (available, labels2, s2, s1, labels)
        )
    multi = a.auc_multiclass
    if multi is not None:
        available, names, p1, p2, names2 = multi
        multi = (available, names, p2, p1, []) if a.cohort == "paired" else (available, names2, p2, p1, names)
    return replace(
        a,
        paired_cells=_swap_cells(a.paired_cells, "paired"),
        served_cells=_swap_cells(a.served_cells, "served"),
        log_loss=_swap_sums(a.log_loss),
        brier=_swap_sums(a.brier),
        squared=_swap_dict(a.squared),
        pinball={q: s for q, v in a.pinball.items() if (s := _swap_sums(v)) is not None},
        abs_error=_swap_sums(a.abs_error),
        outcome=_swap_dict(a.outcome),
        outcome_ratio=_swap_dict(a.outcome_ratio),
        auc=auc,
        auc_multiclass=multi,
        segments=segments,
    )


def _ran(arm: str) -> ColumnElement[bool]:
    return or_(P[f"{arm}_latency_ms"].is_not(None), P[f"{arm}_error"].is_not(None))


def _ok(arm: str) -> ColumnElement[bool]:
    return and_(_ran(arm), P[f"{arm}_error"].is_(None))


def _sums(condition: ColumnElement[bool], expr: Any) -> list[Any]:
    value = case((condition, cast(expr, Float)), else_=None)
    return [
        func.coalesce(func.sum(case((condition, 1), else_=0)), 0),
        func.coalesce(func.sum(value), 0.0),
        func.coalesce(func.sum(value * value), 0.0),
    ]


def _triple(row: Sequence[Any], i: int) -> tuple[int, float, float]:
    return int(row[i] or 0), float(row[i + 1] or 0.0), float(row[i + 2] or 0.0)


def segment_expression(segment: SegmentColumn) -> Any:
    """Return the SQL expression of a row's segment value (text), read from ``raw_input``."""
    if segment.edges is None:
        return P.raw_input[segment.column].as_string()
    x = P.raw_input[segment.column].as_float()
    e = segment.edges
    whens = [(x < e[0], literal(f"<{e[0]:g}"))]
    whens += [(x < b, literal(f"[{a:g}, {b:g})")) for a, b in zip(e, e[1:], strict=False)]
    whens.append((x >= e[-1], literal(f">={e[-1]:g}")))
    return case(*whens, else_=None)


def quality_aggregates(
    db: Database,
    *,
    rollout_id: int,
    step: int,
    cohort: Cohort,
    task: Literal["classification", "regression"],
    label_cutoff: datetime,
    positive: str | None = None,
    classes: Sequence[str] = (),
    quantiles: Sequence[float] = (),
    auc_horizon: int | None = None,
    segments: Sequence[SegmentColumn] = (),
    max_values: int = 20,
    outcome: bool = False,
    swapped: bool = False,
    proper_scores: bool = True,
    squared: bool = True,
) -> QualityAggregates:
    """Aggregate one step's labelled rows for the quality gates; see ``QualityAggregates``.

    ``positive``: a binary classifier's second class (proper scores and AUC from the score);
    ``classes``: a classifier's classes as text — with more than two (and no ``positive``), the proper
    scores and the AUC read the stored probability vectors (``champion_proba`` / ``challenger_proba``).
    ``swapped``: the step stored the rollout's challenger in the champion columns (the post-promotion
    watch); the result is turned back with ``swap_arms``. ``proper_scores`` / ``squared`` False: no
    log loss and Brier sums (classification) / no squared-error sums (regression), for a policy whose
    gates on them are off.
    """
    multiclass = task == "classification" and positive is None and len(classes) > 2
    step_filter = and_(P.rollout_id == rollout_id, P.step == step)
    joined = PAIRS.join(LABELS, and_(L.request_id == P.request_id, L.row_index == P.row_index))
    matured = and_(step_filter, P.received_at <= label_cutoff)
    both_ok = and_(_ok("champion"), _ok("challenger"))

    def answered(arm: str) -> ColumnElement[bool]:
        return both_ok if cohort == "paired" else and_(P.served_arm == arm, _ok(arm))

    out: dict[str, Any] = {"cohort": cohort}
    with db.connection() as conn:
        seg_exprs: list[tuple[str | None, Any]] = [(None, None)]
        seg_exprs += [(s.column, segment_expression(s)) for s in segments]
        if task == "classification":
            has = L.label_class.is_not(None)
            losses: dict[str, dict[str, Any]] | _Staged = {}
            present = {arm: P[f"{arm}_score"].is_not(None) for arm in ARMS}
            if proper_scores and multiclass:
                present = {arm: P[f"{arm}_proba"].is_not(None) for arm in ARMS}
                losses = _multiclass_losses(classes)
            elif proper_scores and positive is not None:
                y = case((L.label_class == positive, 1.0), else_=0.0)

                def clipped(arm: str) -> Any:
                    s = P[f"{arm}_score"]
                    p = case((L.label_class == positive, s), else_=1.0 - s)
                    return case((p < EPS, EPS), (p > 1.0 - EPS, 1.0 - EPS), else_=p)

                losses = {
                    "log_loss": {arm: -func.ln(clipped(arm)) for arm in ARMS},
                    "brier": {arm: (P[f"{arm}_score"] - y) * (P[f"{arm}_score"] - y) for arm in ARMS},
                }
            totals: dict[str, list[list[float]]] = {
                name: [[0, 0.0, 0.0] for _ in range(3)]
                for name in (losses.names if isinstance(losses, _Staged) else losses)
            }
            for column, expr in seg_exprs:
                # The overall confusion query also sums the proper scores (one scan of the join, not two).
                with_losses = losses if column is None else {}
                key = [] if expr is None else [expr]
                if cohort == "paired":
                    where = and_(
                        matured, has, both_ok, P.champion_class.is_not(None), P.challenger_class.is_not(None)
                    )
                    rows = _cells_with_losses(
                        conn, joined, where, [*key, L.label_class, P.champion_class, P.challenger_class],
                        with_losses, ARMS, totals, present,
                    )  # fmt: skip
                    cells = [(tuple(str(v) for v in k), n) for k, n in rows]
                else:
                    cells = []
                    for arm in ARMS:
                        klass = P[f"{arm}_class"]
                        where = and_(matured, has, answered(arm), klass.is_not(None))
                        rows = _cells_with_losses(
                            conn, joined, where, [*key, L.label_class, klass], with_losses, (arm,), totals,
                            present,
                        )  # fmt: skip
                        for k, n in rows:
                            values = tuple(str(v) for v in k)
                            cells.append(((*values[:-2], arm, *values[-2:]), n))
                target = "paired_cells" if cohort == "paired" else "served_cells"
                if column is None:
                    out[target] = {k: n for k, n in cells}
                else:
                    out.setdefault("segments", {})[column] = _top_segments(cells, max_values)
            for name, (t1, t2, td) in totals.items():
                out[name] = LossSums(
                    champion=(int(t1[0]), t1[1], t1[2]),
                    challenger=(int(t2[0]), t2[1], t2[2]),
                    difference=(int(td[0]), td[1], td[2]),
                )
            if positive is not None and auc_horizon:
                scored = {arm: and_(has, answered(arm), P[f"{arm}_score"].is_not(None)) for arm in ARMS}
                out["auc"] = _auc_rows(conn, joined, matured, scored, positive, auc_horizon, cohort)
            if multiclass and auc_horizon:
                scored = {arm: and_(has, answered(arm), P[f"{arm}_proba"].is_not(None)) for arm in ARMS}
                out["auc_multiclass"] = _auc_vectors(
                    conn, joined, matured, scored, classes, auc_horizon, cohort
                )
        else:
            has = L.label_value.is_not(None)
            usable = {arm: and_(has, answered(arm), P[f"{arm}_value"].is_not(None)) for arm in ARMS}
            err = {arm: P[f"{arm}_value"] - L.label_value for arm in ARMS}
            sums: list[Any] = []
            for arm in ARMS:
                sums += _sums(usable[arm], err[arm] * err[arm])
            both = and_(usable["champion"], usable["challenger"])
            sq = {arm: err[arm] * err[arm] for arm in ARMS}
            sums += [
                func.coalesce(func.sum(case((both, 1), else_=0)), 0),
                func.coalesce(
                    func.sum(case((both, cast(sq["champion"] * sq["challenger"], Float)), else_=None)), 0.0
                ),
            ]
            if squared:
                r = conn.execute(select(*sums).select_from(joined).where(matured)).one()
                out["squared"] = {arm: _triple(r, 3 * i) for i, arm in enumerate(ARMS)}
                out["squared_cross"] = (
                    (int(r[6] or 0), float(r[7] or 0.0)) if cohort == "paired" else (0, 0.0)
                )
            for q in quantiles:
                per_arm = {
                    arm: case((L.label_value >= P[f"{arm}_value"], q * (L.label_value - P[f"{arm}_value"])),
                              else_=(q - 1.0) * (L.label_value - P[f"{arm}_value"]))
                    for arm in ARMS
                }  # fmt: skip
                out.setdefault("pinball", {})[q] = _loss_sums(
                    conn, joined, matured, usable, per_arm, paired=cohort == "paired"
                )
            absolute = {arm: func.abs(err[arm]) for arm in ARMS}
            out["abs_error"] = _loss_sums(conn, joined, matured, usable, absolute, paired=cohort == "paired")
            for column, expr in seg_exprs[1:]:
                out.setdefault("segments", {})[column] = _segment_losses(
                    conn, joined, matured, usable, absolute, expr, cohort == "paired", max_values
                )
        if outcome:  # outcomes are the served arm's doing, whatever the cohort of the other figures
            has_outcome = L.outcome.is_not(None)
            outcome_sums: list[Any] = []
            for arm in ARMS:
                outcome_sums += _sums(and_(has_outcome, P.served_arm == arm, _ran(arm)), L.outcome)
            r = conn.execute(select(*outcome_sums).select_from(joined).where(matured)).one()
            out["outcome"] = {arm: _triple(r, 3 * i) for i, arm in enumerate(ARMS)}
            # ratio outcomes (e.g. revenue per visit): rows with a denominator, sums and cross products
            ratio_sums: list[Any] = []
            for arm in ARMS:
                has_both = and_(has_outcome, L.outcome_base.is_not(None), P.served_arm == arm, _ran(arm))
                x = case((has_both, cast(L.outcome, Float)), else_=None)
                y = case((has_both, cast(L.outcome_base, Float)), else_=None)
                ratio_sums += [
                    func.coalesce(func.sum(case((has_both, 1), else_=0)), 0),
                    *(func.coalesce(func.sum(e), 0.0) for e in (x, y, x * x, y * y, x * y)),
                ]
            r = conn.execute(select(*ratio_sums).select_from(joined).where(matured)).one()
            out["outcome_ratio"] = {
                arm: (int(r[6 * i] or 0), *(float(r[6 * i + k] or 0.0) for k in range(1, 6)))
                for i, arm in enumerate(ARMS)
            }
    result = QualityAggregates(**out)
    return swap_arms(result) if swapped else result


def label_delay(db: Database, *, rollout_id: int, recent: int = 2000) -> float | None:
    """Return the longest delay in seconds between a request and its label among the rollout's ``recent``
    latest labels (None without a label). Read as rows, not as a SQL difference of timestamps, which
    SQLite and PostgreSQL spell differently; ``recent`` bounds the cost of a look."""
    with db.connection() as conn:
        rows = conn.execute(
            select(L.received_at, P.received_at)
            .select_from(PAIRS.join(LABELS, and_(L.request_id == P.request_id, L.row_index == P.row_index)))
            .where(P.rollout_id == rollout_id)
            .order_by(L.received_at.desc())
            .limit(recent)
        ).all()
    delays = [(label_at - pair_at).total_seconds() for label_at, pair_at in rows]
    return max(delays) if delays else None


@dataclass(frozen=True)
class LabelCoverage:
    """Pairs (rows both arms answered with a class) received before a cutoff, and how many have a label.

    ``agreeing`` / ``disagreeing``: (pairs, labelled pairs) where the arms gave the same / a different
    class.
    """

    agreeing: tuple[int, int]
    disagreeing: tuple[int, int]


def label_coverage(db: Database, *, rollout_id: int, received_before: datetime) -> LabelCoverage:
    """Count the rollout's pairs received before ``received_before`` by agreement, and those labelled.

    What the outcome-dependent-labels check compares (``judge.hold_for_outcome_dependent_labels``):
    labels that arrive later for wrong answers leave disagreeing pairs less labelled than agreeing ones.
    """
    both = and_(
        _ok("champion"), _ok("challenger"), P.champion_class.is_not(None), P.challenger_class.is_not(None)
    )
    same = P.champion_class == P.challenger_class
    has = L.label_class.is_not(None)

    def count(condition: ColumnElement[bool]) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    joined = PAIRS.outerjoin(
        LABELS,
        and_(L.request_id == P.request_id, L.row_index == P.row_index, L.deployment_id == P.deployment_id),
    )
    with db.connection() as conn:
        row = conn.execute(
            select(count(same), count(and_(same, has)), count(~same), count(and_(~same, has)))
            .select_from(joined)
            .where(P.rollout_id == rollout_id, P.received_at <= received_before, both)
        ).one()
    a, la, d, ld = (int(x or 0) for x in row)
    return LabelCoverage(agreeing=(a, la), disagreeing=(d, ld))


def _per_row(
    joined: Any, where: Any, usable: dict[str, Any], per_arm: dict[str, Any], group: Any = None
) -> Any:
    """A subquery of each arm's per-row loss (NULL where the arm's row does not count), computed once per row.

    Aggregating over it, rather than repeating the loss expression inside every SUM, keeps a look to
    one evaluation of the (CASE-heavy) loss per row and arm (4x faster on SQLite at 20k pairs).
    """
    cols = [case((usable[arm], cast(per_arm[arm], Float)), else_=None).label(f"l_{arm}") for arm in ARMS]
    if group is not None:
        cols.append(group.label("segment"))
    # OFFSET 0 is an optimisation fence: PostgreSQL and SQLite (rendered LIMIT -1 OFFSET 0) then compute
    # the subquery once instead of flattening it and repeating the loss expression inside every SUM.
    return select(*cols).select_from(joined).where(where).offset(0).subquery()


def _loss_columns(inner: Any, *, paired: bool) -> list[Any]:
    l1, l2 = inner.c.l_champion, inner.c.l_challenger
    exprs = [l1, l2, *([l2 - l1] if paired else [])]
    cols: list[Any] = []
    for e in exprs:
        cols += [func.count(e), func.coalesce(func.sum(e), 0.0), func.coalesce(func.sum(e * e), 0.0)]
    return cols


def _from_row(r: Sequence[Any], i: int, paired: bool) -> LossSums:
    return LossSums(
        champion=_triple(r, i),
        challenger=_triple(r, i + 3),
        difference=_triple(r, i + 6) if paired else (0, 0.0, 0.0),
    )


def _cells_with_losses(
    conn: Any,
    joined: Any,
    where: Any,
    keys: list[Any],
    losses: dict[str, dict[str, Any]] | _Staged,
    arms: Sequence[str],
    totals: dict[str, list[list[float]]],
    present: dict[str, Any],
) -> list[tuple[tuple[Any, ...], int]]:
    """GROUP BY the confusion cell; alongside, sum each arm's per-row losses into ``totals`` (in place).

    ``totals[name]``: [champion, challenger, difference] as [count, sum, sum of squares]; the
    difference (challenger - champion) only when both arms are in ``arms`` (paired rows). ``present``:
    per arm, the condition under which its row has what the losses read (a score, or a vector).
    ``_Staged`` losses read their inputs in a first fenced subquery, the losses in a second.
    """
    source: Any = joined
    if isinstance(losses, _Staged):
        first = (
            select(
                *[k.label(f"k{i}") for i, k in enumerate(keys)],
                *[case((present[arm], 1), else_=0).label(f"present_{arm}") for arm in arms],
                *[e.label(name) for name, e in losses.inputs.items()],
            )
            .select_from(joined)
            .where(where)
            .offset(0)
            .subquery()
        )
        source, where = first, None
        keys = [first.c[f"k{i}"] for i in range(len(keys))]
        present = {arm: first.c[f"present_{arm}"] == 1 for arm in arms}
        losses = losses.build(first.c)
    loss_cols = [
        case((present[arm], cast(per_arm[arm], Float)), else_=None).label(f"{name}_{arm}")
        for name, per_arm in losses.items()
        for arm in arms
    ]
    query = select(*[k.label(f"k{i}") for i, k in enumerate(keys)], *loss_cols).select_from(source)
    if where is not None:
        query = query.where(where)
    inner = query.offset(0).subquery()  # a fence: each per-row loss is computed once (see _loss_sums_many)
    ks = [inner.c[f"k{i}"] for i in range(len(keys))]
    aggregates: list[Any] = [func.count()]
    slots: list[tuple[str, int]] = []
    for name in losses:
        parts: list[tuple[Any, int]] = [(inner.c[f"{name}_{arm}"], ARMS.index(arm)) for arm in arms]
        if len(arms) == 2:
            parts.append((inner.c[f"{name}_challenger"] - inner.c[f"{name}_champion"], 2))
        for e, slot in parts:
            aggregates += [
                func.count(e),
                func.coalesce(func.sum(e), 0.0),
                func.coalesce(func.sum(e * e), 0.0),
            ]
            slots.append((name, slot))
    out = []
    for r in conn.execute(select(*ks, *aggregates).group_by(*ks)):
        width = len(ks)
        out.append((tuple(r[:width]), int(r[width])))
        for j, (name, slot) in enumerate(slots):
            total = totals[name][slot]
            total[0] += int(r[width + 1 + 3 * j] or 0)
            total[1] += float(r[width + 2 + 3 * j] or 0.0)
            total[2] += float(r[width + 3 + 3 * j] or 0.0)
    return out


def _loss_sums(
    conn: Any, joined: Any, where: Any, usable: dict[str, Any], per_arm: dict[str, Any], *, paired: bool
) -> LossSums:
    return _loss_sums_many(conn, joined, where, usable, {"loss": per_arm}, paired=paired)["loss"]


def _loss_sums_many(
    conn: Any,
    joined: Any,
    where: Any,
    usable: dict[str, Any],
    losses: dict[str, dict[str, Any]],
    *,
    paired: bool,
) -> dict[str, LossSums]:
    """Sums of several per-row losses over the same rows in one scan."""
    cols = [
        case((usable[arm], cast(per_arm[arm], Float)), else_=None).label(f"{name}_{arm}")
        for name, per_arm in losses.items()
        for arm in ARMS
    ]
    inner = select(*cols).select_from(joined).where(where).offset(0).subquery()
    aggregates: list[Any] = []
    for name in losses:
        l1, l2 = inner.c[f"{name}_champion"], inner.c[f"{name}_challenger"]
        for e in (l1, l2, *([l2 - l1] if paired else [])):
            aggregates += [
                func.count(e),
                func.coalesce(func.sum(e), 0.0),
                func.coalesce(func.sum(e * e), 0.0),
            ]
    r = conn.execute(select(*aggregates)).one()
    width = 9 if paired else 6
    return {name: _from_row(r, width * i, paired) for i, name in enumerate(losses)}


def _segment_losses(
    conn: Any,
    joined: Any,
    where: Any,
    usable: dict[str, Any],
    per_arm: dict[str, Any],
    expr: Any,
    paired: bool,
    max_values: int,
) -> dict[str, LossSums]:
    inner = _per_row(joined, where, usable, per_arm, group=expr)
    rows = conn.execute(
        select(inner.c.segment, *_loss_columns(inner, paired=paired)).group_by(inner.c.segment)
    ).all()
    found = {str(r[0]): _from_row(r, 1, paired) for r in rows if r[0] is not None}
    ranked = sorted(found, key=lambda v: -(found[v].champion[0] + found[v].challenger[0]))
    return {v: found[v] for v in ranked[:max_values]}


def _top_segments(
    cells: list[tuple[tuple[str, ...], int]], max_values: int
) -> dict[str, dict[tuple[str, ...], int]]:
    """Split (segment, *cell) counts into the ``max_values`` largest segments; the rest pool as (other)."""
    by: dict[str, dict[tuple[str, ...], int]] = {}
    for key, n in cells:
        if key[0] == "None":
            continue
        found = by.setdefault(key[0], {})
        found[key[1:]] = found.get(key[1:], 0) + n
    ranked = sorted(by, key=lambda v: -sum(by[v].values()))
    kept = {v: by[v] for v in ranked[:max_values]}
    if len(ranked) > max_values:
        pooled: dict[tuple[str, ...], int] = {}
        for v in ranked[max_values:]:
            for cell, n in by[v].items():
                pooled[cell] = pooled.get(cell, 0) + n
        kept[OTHER] = pooled
    return kept


@dataclass(frozen=True)
class _Staged:
    """Per-row losses read from ``inputs`` computed once per row behind their own fence.

    ``build(columns)`` returns name -> arm -> loss expression over the first stage's columns (each
    input by its name). Used for the multi-class scores: every p_k is one JSON read per row and arm,
    however many times the losses use it.
    """

    names: tuple[str, ...]
    inputs: dict[str, Any]
    build: Callable[[Any], dict[str, dict[str, Any]]]


def _multiclass_losses(classes: Sequence[str]) -> _Staged:
    """Per-row multi-class log loss and Brier score per arm, from the JSON probability vectors.

    p_k: the arm's probability of class k (a class missing from its vector counts 0); p_y: that of the
    true class. Log loss -ln(clip(p_y, eps, 1 - eps)) (``sklearn.metrics.log_loss``, which clips the
    same way); Brier sum_k (p_k - 1[y = k])^2 (``brier_score_loss`` for multi-class targets, which
    averages this sum over rows; the original definition of Brier 1950). Each class is read with a
    constant JSON key, so both dialects use their JSON operator, once per row (``_Staged``).
    """
    names = {k: f"p{i}" for i, k in enumerate(classes)}
    inputs: dict[str, Any] = {"label": L.label_class}
    for arm in ARMS:
        column = P[f"{arm}_proba"]
        inputs |= {f"{arm}_{names[k]}": func.coalesce(column[k].as_float(), 0.0) for k in classes}

    def build(c: Any) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"log_loss": {}, "brier": {}}
        hits = {k: case((c["label"] == k, 1.0), else_=0.0) for k in classes}
        for arm in ARMS:
            p = {k: c[f"{arm}_{names[k]}"] for k in classes}
            p_true = case(*((c["label"] == k, p[k]) for k in classes), else_=0.0)
            clipped = case((p_true < EPS, EPS), (p_true > 1.0 - EPS, 1.0 - EPS), else_=p_true)
            out["log_loss"][arm] = -func.ln(clipped)
            out["brier"][arm] = sum(((p[k] - hits[k]) * (p[k] - hits[k]) for k in classes), literal(0.0))
        return out

    return _Staged(("log_loss", "brier"), inputs, build)


def _auc_vectors(
    conn: Any,
    joined: Any,
    matured: Any,
    scored: dict[str, Any],
    classes: Sequence[str],
    horizon: int,
    cohort: Cohort,
) -> tuple[int, list[str], list[list[float]], list[list[float]], list[str]]:
    """The first ``horizon`` labelled rows with probability vectors, by arrival (the multi-class twin of
    ``_auc_rows``): labels and each arm's vector in ``classes`` order, or none before the horizon."""

    def vector(value: Any) -> list[float]:
        found = value if isinstance(value, dict) else {}
        return [float(found.get(k) or 0.0) for k in classes]

    return _horizon_sample(conn, joined, matured, scored, horizon, cohort, "proba", str, vector)


def _auc_rows(
    conn: Any, joined: Any, matured: Any, scored: dict[str, Any], positive: str, horizon: int, cohort: Cohort
) -> tuple[int, list[bool], list[float], list[float], list[bool]]:
    """The first ``horizon`` scored labelled rows by arrival (the fixed-horizon AUC sample), or none yet."""
    return _horizon_sample(
        conn, joined, matured, scored, horizon, cohort, "score", lambda label: label == positive, float
    )


def _horizon_sample(
    conn: Any,
    joined: Any,
    matured: Any,
    scored: dict[str, Any],
    horizon: int,
    cohort: Cohort,
    column: str,
    label: Callable[[Any], _L],
    value: Callable[[Any], _V],
) -> tuple[int, list[_L], list[_V], list[_V], list[_L]]:
    """The first ``horizon`` labelled rows by arrival with each arm's ``<arm>_<column>``, or none yet.

    Returns (rows available, labels, champion values, challenger values, challenger labels): paired,
    both arms' values of the same rows (the challenger's labels empty); unpaired, each arm's own first
    ``horizon`` rows where it served. Rows are read only once the horizon is reached.
    """
    order = (P.received_at, P.id)

    def count(where: Any) -> int:
        return int(conn.execute(select(func.count()).select_from(joined).where(matured, where)).scalar() or 0)

    if cohort == "paired":
        both = and_(scored["champion"], scored["challenger"])
        available = count(both)
        if available < horizon:
            return available, [], [], [], []
        rows = conn.execute(
            select(L.label_class, P[f"champion_{column}"], P[f"challenger_{column}"])
            .select_from(joined).where(matured, both).order_by(*order).limit(horizon)
        ).all()  # fmt: skip
        return (
            available,
            [label(r[0]) for r in rows],
            [value(r[1]) for r in rows],
            [value(r[2]) for r in rows],
            [],
        )
    served = {arm: and_(scored[arm], P.served_arm == arm) for arm in ARMS}
    available = min(count(cond) for cond in served.values())
    if available < horizon:
        return available, [], [], [], []
    per = {
        arm: conn.execute(
            select(L.label_class, P[f"{arm}_{column}"]).select_from(joined).where(matured, cond)
            .order_by(*order).limit(horizon)
        ).all()
        for arm, cond in served.items()
    }  # fmt: skip
    return (
        available,
        [label(r[0]) for r in per["champion"]],
        [value(r[1]) for r in per["champion"]],
        [value(r[1]) for r in per["challenger"]],
        [label(r[0]) for r in per["challenger"]],
    )
