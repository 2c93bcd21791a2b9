"""Time series of one rollout for the dashboard: requests per arm, errors, latency and shadow coverage.

The rollout's time span is cut into at most ``points`` buckets of equal width (whole seconds, at
least one), so a two-minute rollout gets a dot every few seconds and a week-long one every few hours.
Each bucket is aggregated in SQL, never row by row, with the definitions of ``storage.analytics``:
requests are the unit (a request's row 0 stands for it), an arm "ran" when it answered or failed,
a shadow job is "sampled" when the other arm was to score it and "scored" when its call ran;
skipped jobs (never started) are coverage lost, not errors. Latency histograms use the caller's
buckets (the judge's), so a p99 read off them is computed as the judge computes its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Integer, case, cast, func, or_, select

from storage import analytics
from storage.analytics import ARMS, FIRST_ROW, SHADOW_STATUS, Coverage, LatencyBuckets, ran
from storage.database import Database
from storage.entities import Analysis, ArmLiveFigures, Event, LiveFigures
from storage.models import AnalysisRow, EventRow, PairedOutputRow

P = PairedOutputRow.__table__.c

__all__ = [
    "ArmPoint",
    "RolloutSeries",
    "SeriesCache",
    "SeriesPoint",
    "analysis_sample",
    "bucket_width",
    "recent_events",
    "rollout_series",
]


@dataclass(frozen=True)
class ArmPoint:
    """One arm in one time bucket: requests it answered (``served``), ran and failed; its latencies."""

    served: int = 0
    ran: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesPoint:
    """One time bucket [start, start + width) of a rollout, per step (a bucket never mixes steps)."""

    start: datetime
    step: int | None
    requests: int
    champion: ArmPoint
    challenger: ArmPoint
    sampled: int  # requests whose other arm was to score in shadow
    scored: int  # of those, the jobs that ran (answered or failed)
    skipped: int  # of those, the jobs that never started scoring


@dataclass(frozen=True)
class RolloutSeries:
    """A rollout's buckets in time order; ``width_s`` their width, ``first``/``last`` the rows' span."""

    rollout_id: int
    width_s: int
    first: datetime | None
    last: datetime | None
    points: tuple[SeriesPoint, ...] = ()


def _epoch(db: Database, column: Any) -> Any:
    if db.dialect == "sqlite":
        return cast(func.strftime("%s", column), Integer)
    return cast(func.floor(func.extract("epoch", column)), Integer)


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def bucket_width(first: datetime, last: datetime, points: int) -> int:
    """Return the whole seconds per bucket that cut [first, last] into at most ``points`` buckets."""
    span = max(0.0, (last - first).total_seconds())
    return max(1, math.ceil((span + 1.0) / points))


_Counts = dict[
    tuple[int, int | None], list[int]
]  # (bucket, step) -> requests, per arm (served, ran, errors), shadow
_Histograms = dict[
    tuple[str, int, int | None], dict[int, int]
]  # (arm, bucket, step) -> latency bucket -> rows


@dataclass
class _StepExtras:
    """What the status document needs of a step beyond its buckets' counts (all of it additive)."""

    first: datetime | None = None
    last: datetime | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # skip reason -> requests
    wait_n: int = 0
    wait_sum: float = 0.0
    wait_max: float | None = None

    def add(self, other: _StepExtras) -> None:
        if other.first is not None and (self.first is None or other.first < self.first):
            self.first = other.first
        if other.last is not None and (self.last is None or other.last > self.last):
            self.last = other.last
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        self.wait_n += other.wait_n
        self.wait_sum += other.wait_sum
        if other.wait_max is not None and (self.wait_max is None or other.wait_max > self.wait_max):
            self.wait_max = other.wait_max


@dataclass
class _Sums:
    """Additive sums of some rows of a rollout in buckets of ``width`` seconds from ``origin``."""

    origin: int
    width: int
    counts: _Counts = field(default_factory=dict)
    histograms: _Histograms = field(default_factory=dict)
    first: datetime | None = None
    last: datetime | None = None
    steps: dict[int | None, _StepExtras] = field(default_factory=dict)  # per step, whatever the bucket

    def add(self, other: _Sums) -> None:
        for key, values in other.counts.items():
            mine = self.counts.setdefault(key, [0] * len(values))
            for i, v in enumerate(values):
                mine[i] += v
        for arm_key, histogram in other.histograms.items():
            mine_h = self.histograms.setdefault(arm_key, {})
            for lb, n in histogram.items():
                mine_h[lb] = mine_h.get(lb, 0) + n
        for at in (other.first, other.last):
            if at is not None:
                self.first = at if self.first is None or at < self.first else self.first
                self.last = at if self.last is None or at > self.last else self.last
        for step, extras in other.steps.items():
            self.steps.setdefault(step, _StepExtras()).add(extras)

    def coarsened(self, factor: int) -> _Sums:
        """The same sums in buckets ``factor`` times wider (same origin)."""
        out = _Sums(self.origin, self.width * factor, first=self.first, last=self.last)
        for step, extras in self.steps.items():
            out.steps.setdefault(step, _StepExtras()).add(extras)
        for (b, step), values in self.counts.items():
            out.add(_Sums(self.origin, out.width, counts={(b // factor, step): values}))
        for (arm, b, step), histogram in self.histograms.items():
            out.add(_Sums(self.origin, out.width, histograms={(arm, b // factor, step): histogram}))
        return out


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def _span(conn: Any, rollout_id: int, after_id: int = 0) -> tuple[datetime | None, datetime | None]:
    first, last = conn.execute(
        select(func.min(P.received_at), func.max(P.received_at)).where(
            P.rollout_id == rollout_id, P.id > after_id
        )
    ).one()
    return _aware(first), _aware(last)


def _sums(
    db: Database,
    conn: Any,
    rollout_id: int,
    *,
    origin: int,
    width: int,
    latency: LatencyBuckets,
    after_id: int = 0,
    upto_id: int | None = None,
) -> _Sums:
    """Aggregate the rollout's rows with ``after_id < id <= upto_id`` in SQL, per bucket, step and arm."""
    rows = [P.rollout_id == rollout_id, FIRST_ROW]
    if after_id:
        # the newest rows: SQLite reads them by id range (``rollout_id + 0`` keeps it off the rollout
        # index, where it would visit every row of the rollout to find them; report_queries does the same)
        if db.dialect == "sqlite":
            rows[0] = (P.rollout_id + 0) == rollout_id
        rows.append(P.id > after_id)
    if upto_id is not None:
        rows.append(P.id <= upto_id)
    bucket = cast(func.floor((_epoch(db, P.received_at) - origin) / float(width)), Integer).label("b")
    columns: list[Any] = [func.count()]
    for arm in ARMS:
        columns += [_count(P.served_arm == arm), _count(ran(arm)), _count(P[f"{arm}_status"] == "error")]
    scored = SHADOW_STATUS.in_(("ok", "error"))
    columns += [
        _count(SHADOW_STATUS.is_not(None)),
        _count(scored),
        _count(SHADOW_STATUS == "skipped"),
        func.min(P.received_at),
        func.max(P.received_at),
        # the step's shadow queue waits, as storage.analytics.coverage counts them
        func.count(P.shadow_wait_ms),
        func.coalesce(func.sum(case((scored, P.shadow_wait_ms), else_=None)), 0.0),
        func.max(case((scored, P.shadow_wait_ms), else_=None)),
    ]
    out = _Sums(origin, width)
    # grouped by skip reason too (NULL for every row but the few skipped ones): skips by reason per step
    query = (
        select(bucket, P.step, P.skip_reason, *columns).where(*rows).group_by(bucket, P.step, P.skip_reason)
    )
    for row in conn.execute(query):
        counts = [int(x or 0) for x in row[3:13]]
        first, last = _aware(row[13]), _aware(row[14])
        extras = _StepExtras(first, last, wait_n=int(row[15] or 0), wait_sum=float(row[16] or 0.0))
        extras.wait_max = None if row[17] is None else float(row[17])
        if counts[9]:
            extras.skipped[str(row[2])] = counts[9]
        out.add(
            _Sums(origin, width, counts={(int(row[0]), row[1]): counts}, first=first, last=last,
                  steps={row[1]: extras})
        )  # fmt: skip
    for arm in ARMS:
        ms = P[f"{arm}_latency_ms"]
        raw = 1 + func.floor(func.ln(ms / latency.start_ms) / func.ln(latency.growth))
        lat = case((ms < latency.start_ms, 0), (raw > latency.count - 1, latency.count - 1), else_=raw)
        query = (
            select(bucket, P.step, lat.label("l"), func.count())
            .where(*rows, ran(arm), ms.is_not(None))
            .group_by(bucket, P.step, lat)
        )
        for b, step, lb, n in conn.execute(query):
            out.histograms.setdefault((arm, int(b), step), {})[int(lb)] = int(n)
    return out


def _series(rollout_id: int, sums: _Sums, first: datetime, last: datetime) -> RolloutSeries:
    out = []
    for (b, step), v in sorted(
        sums.counts.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])
    ):
        arms = {
            arm: ArmPoint(
                served=v[1 + 3 * i],
                ran=v[2 + 3 * i],
                errors=v[3 + 3 * i],
                latency=dict(sums.histograms.get((arm, b, step), {})),
            )
            for i, arm in enumerate(ARMS)
        }
        out.append(
            SeriesPoint(
                start=datetime.fromtimestamp(sums.origin + b * sums.width, UTC),
                step=step,
                requests=v[0],
                champion=arms["champion"],
                challenger=arms["challenger"],
                sampled=v[7],
                scored=v[8],
                skipped=v[9],
            )
        )
    return RolloutSeries(rollout_id, sums.width, first, last, tuple(out))


def rollout_series(
    db: Database, rollout_id: int, *, latency: LatencyBuckets, points: int = 60
) -> RolloutSeries:
    """Aggregate a rollout's requests into at most ``points`` equal time buckets, per step and arm."""
    if points < 1:
        raise ValueError("points must be at least 1")
    with db.session(write=False) as session:
        conn = session.connection()
        first, last = _span(conn, rollout_id)
        if first is None or last is None:
            return RolloutSeries(rollout_id, 1, None, None)
        width = bucket_width(first, last, points)
        sums = _sums(db, conn, rollout_id, origin=int(first.timestamp()), width=width, latency=latency)
    return _series(rollout_id, sums, first, last)


@dataclass
class _Entry:
    sums: _Sums  # rows with id <= settled_id
    settled_id: int
    built: float
    seen: list[tuple[float, int]] = field(default_factory=list)  # (when, newest row id then)


class SeriesCache:
    """Keep each rollout's bucket sums between polls, so a dashboard poll aggregates only new rows.

        cache = SeriesCache()
        cache.rollout_series(db, rollout_id, latency=LATENCY, points=60)   # same answer as rollout_series

    Rows are only ever added to a rollout (no update touches a stored pair), and every figure of a
    bucket is a sum, so the sums of rows up to a row id plus those of the newer rows are the whole.
    Rows with an id above the newest one seen ``settle_s`` ago are aggregated afresh at every poll (a
    writer's transaction may still commit rows with lower ids than one already visible); older ones are
    added to the kept sums once. The buckets are kept ``width`` seconds wide with ``width`` at most a
    quarter of the display's, and shown merged by a whole factor, so a display bucket is at most 25%
    wider than ``rollout_series``'s. An entry is rebuilt from scratch after ``max_age_s`` (retention
    may delete rows) or when a row older than the rollout's first arrives (a replayed spool).
    """

    def __init__(
        self,
        *,
        settle_s: float = 30.0,
        max_age_s: float = 600.0,
        rollouts: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle_s = settle_s
        self.max_age_s = max_age_s
        self.rollouts = rollouts
        self.clock = clock
        self._entries: OrderedDict[tuple[int, int, LatencyBuckets], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def rollout_series(
        self, db: Database, rollout_id: int, *, latency: LatencyBuckets, points: int = 60
    ) -> RolloutSeries:
        """Return ``storage.series.rollout_series``'s buckets from the kept sums and the new rows.

        Polls are served one at a time (an entry's sums are updated in place); a cached poll is short.
        """
        if points < 1:
            raise ValueError("points must be at least 1")
        with self._lock:
            found = self._poll(db, rollout_id, latency=latency, points=points)
            if found is None:
                return RolloutSeries(rollout_id, 1, None, None)
            if found == "moved":
                return rollout_series(db, rollout_id, latency=latency, points=points)
            key, entry, whole = found
            assert whole.first is not None and whole.last is not None
            first, last = whole.first, whole.last
            wanted = bucket_width(first, last, points)
            factor = -(-wanted // whole.width)
            if factor >= 16:  # keep at most ~16 kept buckets per display bucket
                coarser = wanted // (4 * entry.sums.width)
                entry.sums = entry.sums.coarsened(coarser)
                whole, factor = whole.coarsened(coarser), -(-wanted // (entry.sums.width))
            return _series(rollout_id, whole.coarsened(factor) if factor > 1 else whole, first, last)

    def step_figures(
        self, db: Database, rollout_id: int, step: int, *, latency: LatencyBuckets, points: int = 60
    ) -> tuple[LiveFigures, Coverage]:
        """Return one step's live figures and shadow coverage from the same kept sums and new rows.

        The same figures as ``storage.analytics.live_figures`` and ``coverage`` (requests are the
        unit, the judge's latency buckets), which it falls back to when the sums cannot be kept.
        ``points`` only matters when this poll builds the entry (the dashboard's, PLOT_POINTS).
        """
        with self._lock:
            found = self._poll(db, rollout_id, latency=latency, points=points)
            if found is not None and found != "moved":
                return _step_figures(rollout_id, step, found[2])
        return (
            analytics.live_figures(db, rollout_id=rollout_id, step=step, latency=latency),
            analytics.coverage(db, rollout_id=rollout_id, step=step),
        )

    def _poll(
        self, db: Database, rollout_id: int, *, latency: LatencyBuckets, points: int
    ) -> tuple[tuple[int, int, LatencyBuckets], _Entry, _Sums] | Literal["moved"] | None:
        """Bring the rollout's entry up to date; return (key, entry, its sums plus the newest rows'),
        None when the rollout has no rows, or "moved" when the entry had to be dropped."""
        key = (id(db), rollout_id, latency)
        now = self.clock()
        with db.session(write=False) as session:
            conn = session.connection()
            top = int(conn.execute(select(func.coalesce(func.max(P.id), 0))).scalar_one())
            entry = self._entries.get(key)
            if entry is not None and now - entry.built > self.max_age_s:
                entry = None
            if entry is not None:
                ready = max((i for t, i in entry.seen if now - t >= self.settle_s), default=entry.settled_id)
                if ready > entry.settled_id:
                    entry.sums.add(
                        _sums(db, conn, rollout_id, origin=entry.sums.origin, width=entry.sums.width,
                              latency=latency, after_id=entry.settled_id, upto_id=ready)
                    )  # fmt: skip
                    entry.settled_id = ready
                    entry.seen = [(t, i) for t, i in entry.seen if i > ready]
            else:
                first, last = _span(conn, rollout_id)
                if first is None or last is None:
                    return None
                width = max(1, bucket_width(first, last, points) // 4)
                sums = _sums(
                    db,
                    conn,
                    rollout_id,
                    origin=int(first.timestamp()),
                    width=width,
                    latency=latency,
                    upto_id=top,
                )
                entry = _Entry(sums, top, now)
            entry.seen.append((now, top))
            tail = _sums(db, conn, rollout_id, origin=entry.sums.origin, width=entry.sums.width, latency=latency,
                         after_id=entry.settled_id)  # fmt: skip
        if entry.sums.first is None or (tail.first is not None and tail.first < entry.sums.first):
            self._entries.pop(key, None)
            return "moved"  # the origin moved
        whole = _Sums(entry.sums.origin, entry.sums.width)
        whole.add(entry.sums)
        whole.add(tail)
        if whole.first is None or whole.last is None:
            return None
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.rollouts:
            self._entries.popitem(last=False)
        return key, entry, whole


def _step_figures(rollout_id: int, step: int, sums: _Sums) -> tuple[LiveFigures, Coverage]:
    """Add up one step's buckets: ``analytics.live_figures`` and ``analytics.coverage``'s figures."""
    totals = [0] * 10
    latency: dict[str, dict[int, int]] = {arm: {} for arm in ARMS}
    for (b, s), values in sums.counts.items():
        if s == step:
            totals = [t + v for t, v in zip(totals, values, strict=True)]
            for arm in ARMS:
                for lb, n in sums.histograms.get((arm, b, s), {}).items():
                    latency[arm][lb] = latency[arm].get(lb, 0) + n
    extras = sums.steps.get(step, _StepExtras())
    arms = {
        arm: ArmLiveFigures(
            served=totals[1 + 3 * i], scored=totals[2 + 3 * i], errors=totals[3 + 3 * i], latency=latency[arm]
        )
        for i, arm in enumerate(ARMS)
    }
    figures = LiveFigures(
        rollout_id=rollout_id, step=step, requests=totals[0], first_at=extras.first, last_at=extras.last,
        champion=arms["champion"], challenger=arms["challenger"],
    )  # fmt: skip
    coverage = Coverage(
        sampled=totals[7], scored=totals[8], skipped=dict(extras.skipped), wait_n=extras.wait_n,
        wait_sum_ms=extras.wait_sum, wait_max_ms=extras.wait_max,
    )  # fmt: skip
    return figures, coverage


def analysis_sample(db: Database, rollout_id: int, *, points: int = 120) -> list[Analysis]:
    """Return at most about ``points`` of a rollout's analyses, evenly spread by id, oldest first.

    The control loop stores one analysis per look (every second or so), so a long rollout has tens
    of thousands; a plot needs a few hundred. The first and the latest are always included.
    """
    if points < 2:
        raise ValueError("points must be at least 2")
    A = AnalysisRow.__table__.c
    with db.session(write=False) as session:
        n, lo, hi = session.execute(
            select(func.count(), func.min(A.id), func.max(A.id)).where(A.rollout_id == rollout_id)
        ).one()
        if not n:
            return []
        stride = max(1, math.ceil((hi - lo + 1) / (points - 1)))
        query = (
            select(AnalysisRow)
            .where(A.rollout_id == rollout_id, or_((A.id - lo) % stride == 0, A.id == hi))
            .order_by(A.id)
        )
        return [r.to_entity() for r in session.scalars(query)]


def recent_events(db: Database, deployment_id: int, *, limit: int = 50) -> list[Event]:
    """Return a deployment's latest ``limit`` events, newest first (the dashboard's timeline)."""
    with db.session(write=False) as session:
        query = (
            select(EventRow)
            .where(EventRow.deployment_id == deployment_id)
            .order_by(EventRow.id.desc())
            .limit(limit)
        )
        return [r.to_entity() for r in session.scalars(query)]
