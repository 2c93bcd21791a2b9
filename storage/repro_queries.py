"""SQL for reproducibility: labelled online metrics per arm of a rollout, and bounded raw-input samples.

Online metrics are aggregates computed in the database (counts and sums over ``paired_outputs``
joined to ``labels``); raw inputs are read only as a bounded sample (newest first) or in bounded
pages by id, never all rows at once. SQLAlchemy Core; SQLite and PostgreSQL.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, bindparam, case, func, or_, select

from storage.database import Database
from storage.models import LabelRow, PairedOutputRow

P = PairedOutputRow.__table__.c
L = LabelRow.__table__.c

ARMS = ("champion", "challenger")
MAX_SAMPLE = 100_000

__all__ = [
    "ArmLabelled",
    "RawInput",
    "labelled_metrics",
    "raw_input_count",
    "raw_input_page",
    "raw_input_sample",
]


@dataclass(frozen=True)
class ArmLabelled:
    """One arm's labelled results: rows it scored without error that have a label, and their sums.

    ``correct``: rows whose predicted class equals the label's class (classification).
    ``abs_error_sum`` / ``abs_error_sq_sum``: sums of |value - label| and its square (regression).
    """

    arm: str
    version_id: int | None
    labelled: int
    correct: int
    abs_error_sum: float
    abs_error_sq_sum: float


@dataclass(frozen=True)
class RawInput:
    """One stored request row's raw input (column → value), with its identity."""

    id: int
    request_id: str
    row_index: int
    received_at: datetime
    raw_input: dict[str, Any]


@functools.lru_cache(maxsize=2)
def _labelled_query(bounded: bool) -> Any:
    """The statement of ``labelled_metrics``, built once (``bounded``: with ``received_before``)."""
    columns: list[Any] = []
    scored_any = []
    for arm in ARMS:
        cls, value, error, version = (
            P[f"{arm}_class"],
            P[f"{arm}_value"],
            P[f"{arm}_error"],
            P[f"{arm}_version_id"],
        )
        scored = and_(error.is_(None), (cls.isnot(None)) | (value.isnot(None)))
        scored_any.append(scored)
        abs_err = func.abs(value - L.label_value)
        regression_row = and_(scored, value.isnot(None), L.label_value.isnot(None))
        columns += [
            func.count(case((scored, 1))),
            func.coalesce(func.sum(case((and_(scored, cls == L.label_class), 1), else_=0)), 0),
            func.coalesce(func.sum(case((regression_row, abs_err), else_=0.0)), 0.0),
            func.coalesce(func.sum(case((regression_row, abs_err * abs_err), else_=0.0)), 0.0),
            func.max(case((scored, version))),
        ]
    query = (
        select(*columns)
        .select_from(
            PairedOutputRow.__table__.join(
                LabelRow.__table__,
                and_(
                    L.request_id == P.request_id,
                    L.row_index == P.row_index,
                    L.deployment_id == P.deployment_id,
                ),
            )
        )
        .where(P.rollout_id == bindparam("rollout_id", type_=Integer), or_(*scored_any))
    )
    if bounded:
        query = query.where(P.received_at < bindparam("received_before", type_=P.received_at.type))
    return query


def labelled_metrics(
    db: Database, rollout_id: int, *, received_before: datetime | None = None
) -> dict[str, ArmLabelled]:
    """Sum each arm's labelled outcomes over a rollout's paired outputs, both arms in one scan of the join.

    ``received_before``: count only requests received before this time (label maturity); aware UTC.
    """
    params: dict[str, Any] = {"rollout_id": rollout_id}
    if received_before is not None:
        params["received_before"] = received_before
    with db.session(write=False) as s:
        row = s.execute(_labelled_query(received_before is not None), params).one()
    result: dict[str, ArmLabelled] = {}
    for i, arm in enumerate(ARMS):
        n, correct, abs_sum, sq_sum, version_id = row[5 * i : 5 * i + 5]
        result[arm] = ArmLabelled(
            arm=arm,
            version_id=None if version_id is None else int(version_id),
            labelled=int(n or 0),
            correct=int(correct or 0),
            abs_error_sum=float(abs_sum or 0.0),
            abs_error_sq_sum=float(sq_sum or 0.0),
        )
    return result


def raw_input_sample(
    db: Database,
    deployment_id: int,
    *,
    rollout_id: int | None = None,
    since: datetime | None = None,
    limit: int = 5000,
) -> list[dict[str, Any]]:
    """Return the raw inputs of the newest stored request rows of a deployment (at most ``limit``)."""
    limit = max(0, min(int(limit), MAX_SAMPLE))
    with db.session(write=False) as s:
        query = (
            select(P.raw_input)
            .where(P.deployment_id == deployment_id, P.raw_input.isnot(None))
            .order_by(P.id.desc())
            .limit(limit)
        )
        if rollout_id is not None:
            query = query.where(P.rollout_id == rollout_id)
        if since is not None:
            query = query.where(P.received_at >= since)
        return [r for r in s.scalars(query) if isinstance(r, dict)]


def raw_input_page(
    db: Database,
    deployment_id: int,
    *,
    after_id: int = 0,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[RawInput]:
    """Return the next page of stored raw inputs of a deployment by ascending id (keyset pagination)."""
    limit = max(0, min(int(limit), MAX_SAMPLE))
    with db.session(write=False) as s:
        query = (
            select(P.id, P.request_id, P.row_index, P.received_at, P.raw_input)
            .where(P.deployment_id == deployment_id, P.raw_input.isnot(None), P.id > after_id)
            .order_by(P.id)
            .limit(limit)
        )
        if since is not None:
            query = query.where(P.received_at >= since)
        return [
            RawInput(int(row_id), str(rid), int(idx), at, raw)
            for row_id, rid, idx, at, raw in s.execute(query)
            if isinstance(raw, dict)
        ]


def raw_input_count(db: Database, deployment_id: int, *, since: datetime | None = None) -> int:
    """Count a deployment's stored request rows that kept their raw input."""
    with db.session(write=False) as s:
        query = select(func.count()).where(P.deployment_id == deployment_id, P.raw_input.isnot(None))
        if since is not None:
            query = query.where(P.received_at >= since)
        return int(s.scalar(query) or 0)
