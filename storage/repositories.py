"""Repositories: the only way in and out of the database. Each call is one transaction and returns entities."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import operator
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from sqlalchemy import JSON, String, Table, any_, bindparam, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from storage import analytics, entities
from storage.analytics import LatencyBuckets
from storage.database import Database
from storage.errors import AlreadyExists, ConcurrentUpdate, InUse, InvalidState, NotFound
from storage.models import (
    PAIR_COLUMNS,
    PAIR_JSON_COLUMNS,
    AnalysisRow,
    ApiTokenRow,
    CursorRow,
    DeploymentRow,
    EventRow,
    LabelRow,
    PairedOutputRow,
    PipelineVersionRow,
    RolloutRow,
)


def utcnow() -> datetime:
    """Return the current time in UTC (storage's default when a caller passes no ``now``)."""
    return datetime.now(UTC)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, datetimes: whatever a pipeline hands back must still be storable.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _json_safe(value: Any) -> Any:
    """Round-trip through JSON with NaN/Infinity as null, so PostgreSQL's jsonb accepts it."""
    if value is None or isinstance(value, str | int):  # bool is an int; the common label values, as they are
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return json.loads(json.dumps(value, default=_json_default), parse_constant=lambda _c: None)


def _add_event(session: Session, new: entities.NewEvent, at: datetime) -> EventRow:
    row = EventRow(
        deployment_id=new.deployment_id,
        rollout_id=new.rollout_id,
        actor=new.actor,
        action=new.action,
        reason=new.reason,
        message=new.message,
        details=_json_safe(new.details) or {},
        at=at,
    )
    session.add(row)
    return row


# A label row as callers give it: (request_id, row_index, label[, outcome[, outcome_base]]).
LabelItem = (
    tuple[str, int, Any]
    | tuple[str, int, Any, float | None]
    | tuple[str, int, Any, float | None, float | None]
)


class PipelineRepository:
    """Registered pipeline versions (artifacts or HTTP upstreams); a version never changes once stored."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self, new: entities.NewPipelineVersion, *, event: entities.NewEvent | None = None
    ) -> entities.PipelineVersion:
        """Store a new pipeline version; AlreadyExists if name+version is taken, InvalidName if bad."""
        entities.check_name("pipeline name", new.name)
        entities.check_name("version", new.version)
        now = utcnow()
        with self.db.session() as s:
            if (
                s.scalar(select(PipelineVersionRow.id).filter_by(name=new.name, version=new.version))
                is not None
            ):
                raise AlreadyExists(f"pipeline {new.name}:{new.version} is already registered")
            fields = asdict(new)
            fields["input_schema"] = [{"name": c.name, "dtype": c.dtype} for c in new.input_schema]
            fields["classes"] = None if new.classes is None else _json_safe(list(new.classes))
            for key in ("offline_metrics", "golden_set", "profile", "environment", "upstream_config"):
                fields[key] = _json_safe(fields[key])
            fields["meta"] = _json_safe(fields.pop("metadata")) or {}
            fields["trusted_types"] = list(new.trusted_types) or None
            row = PipelineVersionRow(**fields, created_at=now)
            s.add(row)
            s.flush()
            if event is not None:
                _add_event(s, replace(event, details={**event.details, "pipeline_version_id": row.id}), now)
            return row.to_entity()

    def get(self, version_id: int) -> entities.PipelineVersion:
        """Return the version with this id; NotFound if there is none."""
        with self.db.session(write=False) as s:
            row = s.get(PipelineVersionRow, version_id)
            if row is None:
                raise NotFound(f"no pipeline version with id {version_id}")
            return row.to_entity()

    def get_by_ref(self, ref: str) -> entities.PipelineVersion:
        """Find a version by "name:version" (or by its numeric id)."""
        name, sep, version = ref.partition(":")
        with self.db.session(write=False) as s:
            if not sep:
                if ref.isdigit():
                    row = s.get(PipelineVersionRow, int(ref))
                    if row is not None:
                        return row.to_entity()
                raise NotFound(f"no pipeline version {ref!r}; refer to one as NAME:VERSION")
            row = s.scalar(select(PipelineVersionRow).filter_by(name=name, version=version))
            if row is None:
                raise NotFound(f"no pipeline version {ref!r}")
            return row.to_entity()

    def list(self, *, name: str | None = None, archived: bool = False) -> list[entities.PipelineVersion]:
        """Return the versions (of one ``name`` if given), by name then id; archived ones only if asked."""
        with self.db.session(write=False) as s:
            query = select(PipelineVersionRow).order_by(PipelineVersionRow.name, PipelineVersionRow.id)
            if name is not None:
                query = query.filter_by(name=name)
            if not archived:
                query = query.where(PipelineVersionRow.archived_at.is_(None))
            return [r.to_entity() for r in s.scalars(query)]

    def archive(
        self, version_id: int, *, event: entities.NewEvent, now: datetime | None = None
    ) -> entities.PipelineVersion:
        """Archive a version: kept with its history, but no new deployment or rollout may use it.

        InUse while it is a live deployment's champion or an arm of an active rollout. An archived
        version is returned as it is (no second event). NotFound if there is no such version.
        """
        now = now or utcnow()
        with self.db.session() as s:
            row = s.get(PipelineVersionRow, version_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no pipeline version with id {version_id}")
            if row.archived_at is not None:
                return row.to_entity()
            ref = f"{row.name}:{row.version}"
            serving = s.scalar(
                select(DeploymentRow.name).where(
                    DeploymentRow.champion_id == version_id, DeploymentRow.archived_at.is_(None)
                )
            )
            if serving is not None:
                raise InUse(
                    f"{ref} is the champion of deployment {serving!r}; promote another version "
                    f"or archive the deployment first"
                )
            _refuse_active_rollout(s, version_id, ref)
            row.archived_at = now
            _add_event(s, replace(event, details={**event.details, "pipeline_version_id": row.id}), now)
            s.flush()
            return row.to_entity()

    def restore(
        self, version_id: int, *, event: entities.NewEvent, now: datetime | None = None
    ) -> entities.PipelineVersion:
        """Undo ``archive``: the version may be deployed and rolled out again."""
        now = now or utcnow()
        with self.db.session() as s:
            row = s.get(PipelineVersionRow, version_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no pipeline version with id {version_id}")
            if row.archived_at is None:
                return row.to_entity()
            row.archived_at = None
            _add_event(s, replace(event, details={**event.details, "pipeline_version_id": row.id}), now)
            s.flush()
            return row.to_entity()

    def delete(
        self, version_id: int, *, event: entities.NewEvent, now: datetime | None = None
    ) -> entities.PipelineVersion:
        """Delete a version that no deployment or rollout ever used (a mistaken registration).

        InUse if a deployment or any rollout (active or ended: their history needs it) refers to it;
        archive it instead. Returns the deleted version; its artifact file is the caller's to remove.
        """
        now = now or utcnow()
        with self.db.session() as s:
            row = s.get(PipelineVersionRow, version_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no pipeline version with id {version_id}")
            ref = f"{row.name}:{row.version}"
            _refuse_active_rollout(s, version_id, ref)
            deployment = s.scalar(select(DeploymentRow.name).where(DeploymentRow.champion_id == version_id))
            if deployment is not None:
                raise InUse(f"{ref} is the champion of deployment {deployment!r}; it cannot be deleted")
            rollout = s.scalar(
                select(RolloutRow.id).where(
                    (RolloutRow.champion_id == version_id) | (RolloutRow.challenger_id == version_id)
                )
            )
            if rollout is not None:
                raise InUse(
                    f"{ref} took part in rollout {rollout}, whose history needs it; archive it instead"
                )
            deleted = row.to_entity()
            s.delete(row)
            _add_event(
                s,
                replace(event, details={**event.details, "pipeline_version_id": version_id, "ref": ref}),
                now,
            )
            s.flush()
            return deleted

    def artifact_shared(self, path: str) -> bool:
        """Return whether a stored version still uses this artifact file (content-addressed: shared)."""
        with self.db.session(write=False) as s:
            return s.scalar(select(PipelineVersionRow.id).filter_by(artifact_path=path).limit(1)) is not None


def _refuse_active_rollout(s: Session, version_id: int, ref: str) -> None:
    """Raise InUse if the version is an arm of an active rollout."""
    active = s.execute(
        select(RolloutRow.id, DeploymentRow.name)
        .join(DeploymentRow, DeploymentRow.id == RolloutRow.deployment_id)
        .where(
            (RolloutRow.champion_id == version_id) | (RolloutRow.challenger_id == version_id),
            RolloutRow.phase.in_(entities.ACTIVE_PHASES),
        )
        .limit(1)
    ).first()
    if active is not None:
        raise InUse(
            f"{ref} is in active rollout {active[0]} of deployment {active[1]!r}; "
            "finish, roll back or abort it first"
        )


class DeploymentRepository:
    """Deployments: a name clients call and the champion version that answers it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        name: str,
        champion_id: int,
        *,
        store_raw_inputs: bool = True,
        batching: entities.BatchingConfig | None = None,
        event: entities.NewEvent | None = None,
    ) -> entities.Deployment:
        """Create a deployment served by ``champion_id`` (and its ``event``, in the same transaction).

        NotFound if the version does not exist; AlreadyExists if the name is taken.
        """
        entities.check_name("deployment name", name)
        now = utcnow()
        with self.db.session() as s:
            champion = s.get(PipelineVersionRow, champion_id)
            if champion is None:
                raise NotFound(f"no pipeline version with id {champion_id}")
            if champion.archived_at is not None:
                raise InvalidState(
                    f"pipeline version {champion.name}:{champion.version} is archived; "
                    "restore it to deploy it (mlcanary pipelines restore)"
                )
            if s.scalar(select(DeploymentRow.id).filter_by(name=name)) is not None:
                raise AlreadyExists(f"deployment {name!r} exists already")
            row = DeploymentRow(
                name=name,
                champion_id=champion_id,
                store_raw_inputs=store_raw_inputs,
                batching=None if batching is None else batching.to_json(),
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            if event is not None:
                _add_event(s, replace(event, deployment_id=row.id), now)
            return row.to_entity()

    def get(self, name: str) -> entities.Deployment:
        """Return the deployment of this name; NotFound if there is none."""
        with self.db.session(write=False) as s:
            row = s.scalar(select(DeploymentRow).filter_by(name=name))
            if row is None:
                raise NotFound(f"no deployment {name!r}")
            return row.to_entity()

    def get_by_id(self, deployment_id: int) -> entities.Deployment:
        """Return the deployment with this id; NotFound if there is none."""
        with self.db.session(write=False) as s:
            row = s.get(DeploymentRow, deployment_id)
            if row is None:
                raise NotFound(f"no deployment with id {deployment_id}")
            return row.to_entity()

    def list(self, *, archived: bool = False) -> list[entities.Deployment]:
        """Return the deployments, by name; archived ones only if asked."""
        with self.db.session(write=False) as s:
            query = select(DeploymentRow).order_by(DeploymentRow.name)
            if not archived:
                query = query.where(DeploymentRow.archived_at.is_(None))
            return [r.to_entity() for r in s.scalars(query)]

    def archive(
        self, name: str, *, event: entities.NewEvent, now: datetime | None = None
    ) -> entities.Deployment:
        """Archive a deployment: no longer routed (clients get deployment_not_found), no new rollout;
        its rollouts, pairs, labels and events stay. InUse while it has an active rollout.
        An archived deployment is returned as it is (no second event).
        """
        now = now or utcnow()
        with self.db.session() as s:
            row = _deployment_for_update(s, name)
            if row.archived_at is not None:
                return row.to_entity()
            _refuse_active_rollout_of(s, row)
            row.archived_at = now
            row.updated_at = now
            _add_event(s, replace(event, deployment_id=row.id), now)
            s.flush()
            return row.to_entity()

    def restore(
        self, name: str, *, event: entities.NewEvent, now: datetime | None = None
    ) -> entities.Deployment:
        """Undo ``archive``: routed again (its champion must not be archived meanwhile)."""
        now = now or utcnow()
        with self.db.session() as s:
            row = _deployment_for_update(s, name)
            if row.archived_at is None:
                return row.to_entity()
            champion = s.get(PipelineVersionRow, row.champion_id)
            if champion is not None and champion.archived_at is not None:
                raise InvalidState(
                    f"deployment {name!r}'s champion {champion.name}:{champion.version} is archived; "
                    "restore it first"
                )
            row.archived_at = None
            row.updated_at = now
            _add_event(s, replace(event, deployment_id=row.id), now)
            s.flush()
            return row.to_entity()

    def delete(self, name: str, *, event: entities.NewEvent, now: datetime | None = None) -> dict[str, int]:
        """Delete a deployment with its rollouts, analyses, paired outputs and labels, in one transaction.

        The events stay: each keeps its message, and its deployment's name and rollout id move into
        its details (the rows they pointed to are gone); ``event`` is written with the counts deleted.
        InUse while the deployment has an active rollout. Returns the counts.
        """
        now = now or utcnow()
        with self.db.session() as s:
            row = _deployment_for_update(s, name)
            _refuse_active_rollout_of(s, row)
            rollout_ids = list(s.scalars(select(RolloutRow.id).filter_by(deployment_id=row.id)))
            for kept in s.scalars(select(EventRow).where(EventRow.deployment_id == row.id)):
                kept.details = {**(kept.details or {}), "deployment": name, "rollout_id": kept.rollout_id}
                kept.deployment_id, kept.rollout_id = None, None
            s.flush()
            counts = {
                "analyses": _count_deleted(
                    s, delete(AnalysisRow).where(AnalysisRow.rollout_id.in_(rollout_ids))
                )
                if rollout_ids
                else 0,
                "paired_outputs": _count_deleted(s, delete(PairedOutputRow).filter_by(deployment_id=row.id)),
                "labels": _count_deleted(s, delete(LabelRow).filter_by(deployment_id=row.id)),
                "rollouts": _count_deleted(s, delete(RolloutRow).filter_by(deployment_id=row.id)),
            }
            deployment_id = row.id
            s.delete(row)
            s.flush()
            details = {**event.details, "deployment": name, "deployment_id": deployment_id, "deleted": counts}
            _add_event(s, replace(event, deployment_id=None, details=details), now)
            s.flush()
            return counts

    def update(
        self,
        name: str,
        *,
        store_raw_inputs: bool | None = None,
        batching: entities.BatchingConfig | None = None,
        event: entities.NewEvent | None = None,
    ) -> entities.Deployment:
        """Change a deployment's settings (None leaves one as it is) and write ``event`` with the change.

        NotFound if there is no deployment of that name.
        """
        now = utcnow()
        with self.db.session() as s:
            row = s.scalar(select(DeploymentRow).filter_by(name=name))
            if row is None:
                raise NotFound(f"no deployment {name!r}")
            if store_raw_inputs is not None:
                row.store_raw_inputs = store_raw_inputs
            if batching is not None:
                row.batching = batching.to_json()
            row.updated_at = now
            if event is not None:
                _add_event(s, replace(event, deployment_id=row.id), now)
            s.flush()
            return row.to_entity()


def _deployment_for_update(s: Session, name: str) -> DeploymentRow:
    row = s.scalar(select(DeploymentRow).filter_by(name=name).with_for_update())
    if row is None:
        raise NotFound(f"no deployment {name!r}")
    return row


def _refuse_active_rollout_of(s: Session, deployment: DeploymentRow) -> None:
    active = s.scalar(
        select(RolloutRow.id).where(
            RolloutRow.deployment_id == deployment.id, RolloutRow.phase.in_(entities.ACTIVE_PHASES)
        )
    )
    if active is not None:
        raise InUse(
            f"deployment {deployment.name!r} has active rollout {active}; finish, roll back or abort it first"
        )


def _count_deleted(s: Session, statement: Any) -> int:
    return int(cast(Any, s.execute(statement)).rowcount or 0)


class RolloutRepository:
    """Rollouts of a challenger on a deployment; updates use optimistic concurrency on ``version``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        *,
        deployment_id: int,
        challenger_id: int,
        mode: str,
        policy: dict[str, Any],
        created_by: str,
        phase: str = "pending",
        canary_weight: float = 0.0,
        shadow_rate: float = 0.0,
        event: entities.NewEvent | None = None,
        now: datetime | None = None,
    ) -> entities.Rollout:
        """Start a rollout against the deployment's current champion; one active rollout per deployment."""
        now = now or utcnow()
        with self.db.session() as s:
            deployment = s.get(DeploymentRow, deployment_id, with_for_update=True)
            if deployment is None:
                raise NotFound(f"no deployment with id {deployment_id}")
            challenger = s.get(PipelineVersionRow, challenger_id)
            if challenger is None:
                raise NotFound(f"no pipeline version with id {challenger_id}")
            if deployment.archived_at is not None:
                raise InvalidState(f"deployment {deployment.name!r} is archived; restore it first")
            if challenger.archived_at is not None:
                raise InvalidState(
                    f"pipeline version {challenger.name}:{challenger.version} is archived; restore it first"
                )
            if challenger_id == deployment.champion_id:
                raise InvalidState("the challenger is already the champion of this deployment")
            active = s.scalar(
                select(RolloutRow.id).where(
                    RolloutRow.deployment_id == deployment_id, RolloutRow.phase.in_(entities.ACTIVE_PHASES)
                )
            )
            if active is not None:
                raise InvalidState(
                    f"deployment {deployment.name!r} already has active rollout {active}; "
                    "finish, roll back or abort it first"
                )
            row = RolloutRow(
                deployment_id=deployment_id,
                champion_id=deployment.champion_id,
                challenger_id=challenger_id,
                mode=mode,
                phase=phase,
                step_index=0,
                canary_weight=canary_weight,
                shadow_rate=shadow_rate,
                policy=_json_safe(policy) or {},
                version=1,
                created_by=created_by,
                created_at=now,
                step_started_at=now,
                split_salt=secrets.token_hex(16),
            )
            s.add(row)
            deployment.updated_at = now
            s.flush()
            if event is not None:
                _add_event(s, replace(event, deployment_id=deployment_id, rollout_id=row.id), now)
            return row.to_entity()

    def get(self, rollout_id: int) -> entities.Rollout:
        """Return the rollout with this id; NotFound if there is none."""
        with self.db.session(write=False) as s:
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout with id {rollout_id}")
            return row.to_entity()

    def list(self, *, deployment_id: int | None = None, active_only: bool = False) -> list[entities.Rollout]:
        """Return rollouts, oldest first: of one deployment, and only the active ones if asked."""
        with self.db.session(write=False) as s:
            query = select(RolloutRow).order_by(RolloutRow.id)
            if deployment_id is not None:
                query = query.filter_by(deployment_id=deployment_id)
            if active_only:
                query = query.where(RolloutRow.phase.in_(entities.ACTIVE_PHASES))
            return [r.to_entity() for r in s.scalars(query)]

    def latest(self, deployment_id: int) -> entities.Rollout | None:
        """Return the deployment's most recent rollout (active or ended), or None."""
        with self.db.session(write=False) as s:
            row = s.scalar(
                select(RolloutRow)
                .filter_by(deployment_id=deployment_id)
                .order_by(RolloutRow.id.desc())
                .limit(1)
            )
            return None if row is None else row.to_entity()

    def update(
        self,
        rollout_id: int,
        *,
        expected_version: int,
        events: Sequence[entities.NewEvent] = (),
        promote_challenger: bool = False,
        analysis: entities.NewAnalysis | None = None,
        restore_champion: bool = False,
        now: datetime | None = None,
        **changes: Any,
    ) -> entities.Rollout:
        """Apply changes if the stored version is still expected_version; write events in the same transaction.

        ConcurrentUpdate if another writer got there first: at most one of two racing writers wins.
        With promote_challenger, the deployment's champion becomes the rollout's challenger atomically;
        with restore_champion (a watch reverted), it becomes the rollout's champion again.
        With ``analysis`` (the look that caused the change), it is stored in the same transaction too,
        and every event's details start with its ``analysis_id``.
        """
        allowed = {
            "phase", "step_index", "canary_weight", "shadow_rate", "policy", "step_started_at", "ended_at", "reason",
        }  # fmt: skip
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot change rollout fields {sorted(unknown)}")
        now = now or utcnow()
        with self.db.session() as s:
            result = s.execute(
                update(RolloutRow)
                .where(RolloutRow.id == rollout_id, RolloutRow.version == expected_version)
                .values(**changes, version=RolloutRow.version + 1)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                current = s.get(RolloutRow, rollout_id)
                if current is None:
                    raise NotFound(f"no rollout with id {rollout_id}")
                raise ConcurrentUpdate(
                    f"rollout {rollout_id} is at version {current.version}, not {expected_version}; reload and retry"
                )
            row = s.get(RolloutRow, rollout_id, populate_existing=True)
            assert row is not None
            deployment = s.get(DeploymentRow, row.deployment_id)
            assert deployment is not None
            if promote_challenger:
                deployment.champion_id = row.challenger_id
            if restore_champion:
                deployment.champion_id = row.champion_id
            deployment.updated_at = now
            if analysis is not None:
                analysis_row = AnalysisRow(
                    rollout_id=rollout_id,
                    step=analysis.step,
                    evaluated_at=now,
                    outcome=analysis.outcome,
                    verdicts=_json_safe(analysis.verdicts) or [],
                    metrics=_json_safe(analysis.metrics) or {},
                )
                s.add(analysis_row)
                s.flush()
                events = [replace(e, details={"analysis_id": analysis_row.id, **e.details}) for e in events]
            for new in events:
                _add_event(s, replace(new, deployment_id=row.deployment_id, rollout_id=rollout_id), now)
            s.flush()
            return row.to_entity()


# The phases of a rollout whose challenger is routed (a pending rollout's is not yet).
ROUTED_PHASES = ("shadowing", "progressing", "paused", "watching")


# Built once: composing the statement costs more than running it (SQLite, a few deployments).
_STAMP = (
    select(
        DeploymentRow.id,
        DeploymentRow.name,
        DeploymentRow.champion_id,
        DeploymentRow.store_raw_inputs,
        DeploymentRow.batching,
        DeploymentRow.updated_at,
        RolloutRow.id,
        RolloutRow.phase,
        RolloutRow.version,
    )
    .outerjoin(
        RolloutRow,
        (RolloutRow.deployment_id == DeploymentRow.id) & RolloutRow.phase.in_(ROUTED_PHASES),
    )
    .where(DeploymentRow.archived_at.is_(None))
    .order_by(DeploymentRow.id, RolloutRow.id)
)


class RoutingRepository:
    """What the data plane reads to route: every deployment with its active rollout, in one go."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def stamp(self) -> tuple[tuple[Any, ...], ...]:
        """Return what the routing table depends on, in one cheap query: equal stamps, equal tables.

        One row per routed deployment with every column of it the table reads (its ``updated_at``
        too, which every change of a deployment or of its rollouts sets) and its routed rollout's id,
        phase and ``version`` (the optimistic counter every rollout update bumps). Pipeline versions
        are not read: a routed version cannot change (archive, restore and delete refuse one in use).
        A router reads this every refresh interval and the whole table (the versions' JSON, through
        the ORM) only when it differs from the stamp of its last load.
        """
        with self.db.connection(write=False) as conn:
            rows = conn.execute(_STAMP)
            return tuple(tuple(row) for row in rows)

    def load_table(self) -> dict[str, entities.RoutingEntry]:
        """Read every deployment's routing in one transaction (a few small queries, not one per request)."""
        with self.db.session(write=False) as s:
            deployments = list(s.scalars(select(DeploymentRow).where(DeploymentRow.archived_at.is_(None))))
            rollouts = {
                r.deployment_id: r
                for r in s.scalars(select(RolloutRow).where(RolloutRow.phase.in_(ROUTED_PHASES)))
            }
            # A watch: the deployment's champion is already the rollout's challenger; the previous
            # champion (the rollout's champion) is routed as the shadow arm.
            shadowed = {
                r.deployment_id: r.champion_id if r.phase == "watching" else r.challenger_id
                for r in rollouts.values()
            }
            wanted = {d.champion_id for d in deployments} | set(shadowed.values())
            versions = {
                v.id: v.to_entity()
                for v in s.scalars(select(PipelineVersionRow).where(PipelineVersionRow.id.in_(wanted)))
            }
            table: dict[str, entities.RoutingEntry] = {}
            for d in deployments:
                r = rollouts.get(d.id)
                repro = (r.policy or {}).get("reproducibility") or {} if r is not None else {}
                table[d.name] = entities.RoutingEntry(
                    deployment=d.name,
                    deployment_id=d.id,
                    champion=versions[d.champion_id],
                    challenger=None if r is None else versions[shadowed[d.id]],
                    mode=None if r is None else "shadow" if r.phase == "watching" else r.mode,
                    canary_weight=0.0 if r is None or r.phase == "watching" else r.canary_weight,
                    shadow_rate=0.0 if r is None else r.shadow_rate,
                    rollout_id=None if r is None else r.id,
                    step=None if r is None else r.step_index,
                    store_raw_inputs=d.store_raw_inputs,
                    parity_rtol=repro.get("parity_rtol"),
                    parity_atol=repro.get("parity_atol"),
                    split_salt=None if r is None else r.split_salt,
                    batching=entities.BatchingConfig.from_json(d.batching),
                )
            return table


class PairRepository:
    """Paired outputs. The bulk path is what the router's recorder uses; it is idempotent per request row."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def insert_many(self, records: Sequence[entities.PairRecord]) -> int:
        """Store records in one transaction; rows whose (deployment_id, request_id, row_index) exist are skipped.

        PostgreSQL: COPY (the fastest path); if a duplicate is met (a spool replay), fall back to a
        multi-row INSERT ... ON CONFLICT DO NOTHING. SQLite: executemany of INSERT OR IGNORE.
        Returns the number of rows actually inserted.
        """
        if not records:
            return 0
        sqlite = self.db.dialect == "sqlite"
        rows = [_pair_tuple(r, sqlite=sqlite) for r in records]
        if not sqlite:
            return self._insert_postgres(rows)
        return self._insert_sqlite(rows)

    def _insert_sqlite(self, rows: list[tuple[Any, ...]]) -> int:
        sql = (
            f"INSERT OR IGNORE INTO paired_outputs ({', '.join(PAIR_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in PAIR_COLUMNS)})"
        )
        with self.db.connection() as conn:
            cursor = conn.connection.driver_connection.cursor()
            cursor.executemany(sql, rows)
            return int(cursor.rowcount)  # executemany sums the rows each statement changed

    def _insert_postgres(self, rows: list[tuple[Any, ...]]) -> int:
        columns = ", ".join(PAIR_COLUMNS)
        try:
            with self.db.connection() as conn:
                cursor = conn.connection.driver_connection.cursor()
                with cursor.copy(f"COPY paired_outputs ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                return len(rows)
        except AlreadyExists:
            pass  # some rows were stored before (a spool replay): take the slower, idempotent path
        placeholders = ", ".join("%s" for _ in PAIR_COLUMNS)
        with self.db.connection() as conn:
            cursor = conn.connection.driver_connection.cursor()
            inserted = 0
            for chunk_start in range(0, len(rows), 500):
                chunk = rows[chunk_start : chunk_start + 500]
                values = ", ".join(f"({placeholders})" for _ in chunk)
                cursor.execute(
                    f"INSERT INTO paired_outputs ({columns}) VALUES {values} "
                    "ON CONFLICT (deployment_id, request_id, row_index) DO NOTHING",
                    [v for row in chunk for v in row],
                )
                inserted += cursor.rowcount
            return inserted

    def live_figures(self, rollout_id: int, step: int, *, latency: LatencyBuckets) -> entities.LiveFigures:
        """Return a rollout step's live figures (requests, per arm served/ran/failed and latency histogram)."""
        return analytics.live_figures(self.db, rollout_id=rollout_id, step=step, latency=latency)

    def coverage(self, rollout_id: int, step: int | None = None) -> analytics.Coverage:
        """Count a rollout's (or one step's) shadow jobs by fate (scored, skipped by reason), in requests."""
        return analytics.coverage(self.db, rollout_id=rollout_id, step=step)

    def count(self, *, deployment_id: int | None = None, rollout_id: int | None = None) -> int:
        """Count paired outputs, of one deployment or rollout if given."""
        with self.db.session(write=False) as s:
            query = select(func.count()).select_from(PairedOutputRow)
            if deployment_id is not None:
                query = query.where(PairedOutputRow.deployment_id == deployment_id)
            if rollout_id is not None:
                query = query.where(PairedOutputRow.rollout_id == rollout_id)
            return int(s.scalar(query) or 0)

    def list(self, *, rollout_id: int | None = None, limit: int = 1000) -> list[entities.PairRecord]:
        """Return up to ``limit`` paired outputs in insertion order (of one rollout if given)."""
        with self.db.session(write=False) as s:
            query = select(PairedOutputRow).order_by(PairedOutputRow.id).limit(limit)
            if rollout_id is not None:
                query = query.where(PairedOutputRow.rollout_id == rollout_id)
            return [r.to_entity() for r in s.scalars(query)]

    def existing_request_ids(self, request_ids: Iterable[str]) -> set[str]:
        """Return those of ``request_ids`` that have at least one paired output."""
        ids = list(set(request_ids))
        found: set[str] = set()
        with self.db.session(write=False) as s:
            for start in range(0, len(ids), 500):
                found.update(
                    s.scalars(
                        select(PairedOutputRow.request_id).where(
                            PairedOutputRow.request_id.in_(ids[start : start + 500])
                        )
                    )
                )
        return found

    def prune(self, *, before: datetime, batch_size: int = 5000) -> int:
        """Delete paired outputs received before a time, in short batches so writers never wait long."""
        total = 0
        while True:
            with self.db.session() as s:
                ids = list(
                    s.scalars(
                        select(PairedOutputRow.id)
                        .where(PairedOutputRow.received_at < before)
                        .limit(batch_size)
                    )
                )
                if not ids:
                    return total
                s.execute(delete(PairedOutputRow).where(PairedOutputRow.id.in_(ids)))
                total += len(ids)


_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_pair_values = operator.attrgetter(*PAIR_COLUMNS)
_JSON_INDEXES = tuple(i for i, name in enumerate(PAIR_COLUMNS) if name in PAIR_JSON_COLUMNS)
_FLOAT_INDEXES = tuple(
    i for i, name in enumerate(PAIR_COLUMNS) if name.endswith(("_score", "_value", "_latency_ms", "_wait_ms"))
)
_RECEIVED_AT = PAIR_COLUMNS.index("received_at")


def _json_text(value: Any) -> str | None:
    """Serialise for a JSON column; NaN and infinities become null (jsonb refuses them)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value, default=_json_default, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(_json_safe(value))


def _pair_tuple(record: entities.PairRecord, *, sqlite: bool) -> tuple[Any, ...]:
    """Turn a record into the driver's row, in PAIR_COLUMNS order (hot path of the recorder)."""
    values = list(_pair_values(record))
    for i in _JSON_INDEXES:
        if values[i] is not None:
            values[i] = _json_text(values[i])
    if not sqlite:  # SQLite stores a NaN double as NULL by itself; PostgreSQL would keep NaN
        for i in _FLOAT_INDEXES:
            value = values[i]
            if value is not None and (value != value or value in (math.inf, -math.inf)):
                values[i] = None
    received = values[_RECEIVED_AT].astimezone(UTC).replace(tzinfo=None)
    # SQLite: the text form SQLAlchemy's DateTime reads back; PostgreSQL: a timestamp.
    values[_RECEIVED_AT] = received.isoformat(" ", "microseconds") if sqlite else received
    return tuple(values)


class LabelRepository:
    """Ground-truth labels, keyed by (request_id, row_index); the last label of a row wins."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def upsert_many(
        self,
        deployment_id: int,
        labels: Sequence[LabelItem],
        *,
        now: datetime | None = None,
    ) -> tuple[int, list[str]]:
        """Store label tuples (see ``store``) with no bound on pending labels.

        Returns (labels stored, request ids with no paired output in this deployment yet).
        """
        result = self.store(deployment_id, labels, now=now)
        return result.stored, list(result.unknown)

    def store(
        self,
        deployment_id: int,
        labels: Sequence[LabelItem],
        *,
        now: datetime | None = None,
        pending_limit: int | None = None,
        pending_window: timedelta | None = None,
    ) -> entities.LabelsStored:
        """Store (request_id, row_index, label[, outcome[, outcome_base]]) tuples; the last one for a row wins.

        ``label`` None (with an outcome) keeps the row's stored label; ``outcome`` / ``outcome_base``
        None or absent keep the stored ones, so a label and an outcome may arrive separately.
        A label may arrive before its request's pair is written (the recorder writes in batches, after
        the shadow arm): a label of a row with no pair in this deployment yet is kept as pending and
        joins its pair when it lands. Pending labels are bounded: those older than pending_window with
        still no pair are deleted, and at most pending_limit are kept per deployment; labels of unknown
        rows beyond it are not stored (reported in `dropped`). Request ids are per deployment: another
        deployment's pair of the same id is never joined.
        """
        now = now or utcnow()
        # One entry per row, in first-seen order: the last label, outcome and base given (None: not given).
        merged: dict[tuple[str, int], list[Any]] = {}
        for t in labels:
            rid, idx, value, outcome, base = cast(
                tuple[str, int, Any, float | None, float | None], (*t, *(None,) * (5 - len(t)))
            )
            entry = merged.setdefault((rid, idx), [None, None, None])
            for k, given in enumerate((value, outcome, base)):
                if given is not None:
                    entry[k] = given
        ids = list({rid for rid, _ in merged})
        table = cast(Table, LabelRow.__table__)
        with self.db.session() as s:
            known: set[tuple[str, int]] = set()
            for chunk in self._id_chunks(ids):
                query = select(PairedOutputRow.request_id, PairedOutputRow.row_index).where(
                    PairedOutputRow.deployment_id == deployment_id, chunk(PairedOutputRow.request_id)
                )
                known.update((rid, idx) for rid, idx in s.execute(query))
            unknown = sorted({rid for rid, idx in merged if (rid, idx) not in known})
            room = None
            if pending_limit is not None or pending_window is not None:
                room = self._settle_pending(s, deployment_id, now, pending_limit, pending_window)
            existing: set[tuple[str, int]] = set()  # read after settling: expired pending labels are gone
            for chunk in self._id_chunks(ids):
                query = select(LabelRow.request_id, LabelRow.row_index).where(
                    LabelRow.deployment_id == deployment_id, chunk(LabelRow.request_id)
                )
                existing.update((rid, idx) for rid, idx in s.execute(query))
            stored: set[tuple[str, int]] = set()
            dropped: set[str] = set()
            inserts: list[dict[str, Any]] = []
            updates: dict[tuple[bool, bool, bool], list[dict[str, Any]]] = {}
            for (rid, idx), (value, outcome, base) in merged.items():
                pending = (rid, idx) not in known
                if pending and (rid, idx) not in existing and room is not None:
                    if room <= 0:
                        dropped.add(rid)
                        continue
                    room -= 1
                stored.add((rid, idx))
                label_class, label_value = _label_columns(value)
                row = {"k_request_id": rid, "k_row_index": idx, "received_at": now, "pending": pending}
                if (rid, idx) not in existing:
                    inserts.append({
                        "request_id": rid, "row_index": idx, "deployment_id": deployment_id,
                        "label": JSON.NULL if value is None else _json_safe(value), "label_class": label_class,
                        "label_value": label_value, "received_at": now, "pending": pending,
                        "outcome": outcome, "outcome_base": base,
                    })  # fmt: skip
                    continue
                if value is not None:
                    row.update(label=_json_safe(value), label_class=label_class, label_value=label_value)
                if outcome is not None:
                    row["outcome"] = outcome
                if base is not None:
                    row["outcome_base"] = base
                shape = (value is not None, outcome is not None, base is not None)
                updates.setdefault(shape, []).append(row)
            if inserts:
                s.execute(table.insert(), inserts)
            key = (
                (table.c.deployment_id == deployment_id)
                & (table.c.request_id == bindparam("k_request_id"))
                & (table.c.row_index == bindparam("k_row_index"))
            )
            for rows in updates.values():  # one executemany per set of columns given; SET from the rows' keys
                s.connection().execute(update(table).where(key), rows)
            return entities.LabelsStored(
                stored=len(stored), unknown=tuple(unknown), dropped=tuple(sorted(dropped))
            )

    def _id_chunks(self, ids: Sequence[str]) -> Iterator[Callable[[Any], ColumnElement[bool]]]:
        """Yield conditions "column is one of these request ids" covering ``ids``: on PostgreSQL one
        array parameter for them all (``= ANY``), elsewhere IN lists of 500 (SQLite's parameter limit)."""
        if self.db.dialect == "postgresql":
            if ids:
                array = bindparam("ids", list(ids), type_=ARRAY(String))
                yield lambda column: column == any_(array)
            return
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            yield lambda column, part=part: column.in_(part)  # type: ignore[misc]

    def _settle_pending(
        self,
        s: Session,
        deployment_id: int,
        now: datetime,
        limit: int | None,
        window: timedelta | None,
    ) -> int | None:
        """Mark pending labels whose pair has landed as joined, expire old ones; return the room left."""
        has_pair = (
            select(PairedOutputRow.id)
            .where(
                PairedOutputRow.deployment_id == LabelRow.deployment_id,
                PairedOutputRow.request_id == LabelRow.request_id,
                PairedOutputRow.row_index == LabelRow.row_index,
            )
            .exists()
        )
        mine = (LabelRow.deployment_id == deployment_id) & LabelRow.pending.is_(True)
        s.execute(update(LabelRow).where(mine, has_pair).values(pending=False))
        if window is not None:
            s.execute(delete(LabelRow).where(mine, LabelRow.received_at < now - window, ~has_pair))
        if limit is None:
            return None
        count = int(s.scalar(select(func.count()).select_from(LabelRow).where(mine)) or 0)
        return max(0, limit - count)

    def count(self, *, deployment_id: int | None = None) -> int:
        """Count labels, of one deployment if given."""
        with self.db.session(write=False) as s:
            query = select(func.count()).select_from(LabelRow)
            if deployment_id is not None:
                query = query.where(LabelRow.deployment_id == deployment_id)
            return int(s.scalar(query) or 0)

    def get(self, request_id: str, row_index: int = 0, *, deployment_id: int | None = None) -> entities.Label:
        """Return the label of a request row (of one deployment, or of the first that has one); NotFound if none."""
        with self.db.session(write=False) as s:
            query = select(LabelRow).where(LabelRow.request_id == request_id, LabelRow.row_index == row_index)
            if deployment_id is not None:
                query = query.where(LabelRow.deployment_id == deployment_id)
            row = s.scalars(query.order_by(LabelRow.deployment_id).limit(1)).first()
            if row is None:
                raise NotFound(f"no label for request {request_id!r} row {row_index}")
            return row.to_entity()

    def prune(self, *, before: datetime, batch_size: int = 5000) -> int:
        """Delete labels received before a time, in short batches so writers never wait long."""
        total = 0
        while True:
            with self.db.session() as s:
                oldest = (
                    select(LabelRow.request_id, LabelRow.row_index, LabelRow.deployment_id)
                    .where(LabelRow.received_at < before)
                    .limit(batch_size)
                )
                key = tuple_(LabelRow.request_id, LabelRow.row_index, LabelRow.deployment_id)
                deleted = s.execute(delete(LabelRow).where(key.in_(oldest))).rowcount  # type: ignore[attr-defined]
            if not deleted:
                return total
            total += deleted


def _label_columns(value: Any) -> tuple[str | None, float | None]:
    if isinstance(value, bool):
        return str(value), float(value)
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            return None, None
        text = str(int(number)) if number.is_integer() else repr(number)
        return text, number
    if isinstance(value, str):
        try:
            return value, float(value)
        except ValueError:
            return value, None
    return None, None


class EventRepository:
    """The audit log: append-only events, read in id order (webhooks follow it by cursor)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, new: entities.NewEvent, *, now: datetime | None = None) -> entities.Event:
        """Append an event (at ``now``, default the current time) and return it with its id."""
        with self.db.session() as s:
            row = _add_event(s, new, now or utcnow())
            s.flush()
            return row.to_entity()

    def list(
        self,
        *,
        deployment_id: int | None = None,
        rollout_id: int | None = None,
        after_id: int = 0,
        limit: int = 200,
    ) -> list[entities.Event]:
        """Return up to ``limit`` events with an id above ``after_id``, oldest first, optionally of one
        deployment or rollout.
        """
        with self.db.session(write=False) as s:
            query = select(EventRow).where(EventRow.id > after_id).order_by(EventRow.id).limit(limit)
            if deployment_id is not None:
                query = query.where(EventRow.deployment_id == deployment_id)
            if rollout_id is not None:
                query = query.where(EventRow.rollout_id == rollout_id)
            return [r.to_entity() for r in s.scalars(query)]

    def latest(
        self, *, rollout_id: int, actions: Sequence[str] = (), reason: str | None = None
    ) -> entities.Event | None:
        """Return a rollout's newest event with one of ``actions`` (any when empty) and ``reason`` (when given)."""
        with self.db.session(write=False) as s:
            query = select(EventRow).where(EventRow.rollout_id == rollout_id)
            if actions:
                query = query.where(EventRow.action.in_(actions))
            if reason is not None:
                query = query.where(EventRow.reason == reason)
            row = s.scalars(query.order_by(EventRow.id.desc()).limit(1)).first()
            return row.to_entity() if row is not None else None

    def last_id(self) -> int:
        """Return the id of the newest event (0 if there is none)."""
        with self.db.session() as s:
            return int(s.scalar(select(func.max(EventRow.id))) or 0)


class AnalysisRepository:
    """Analyses: what the controller measured and judged at one look at a rollout step."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        *,
        rollout_id: int,
        step: int,
        outcome: str,
        verdicts: list[dict[str, Any]],
        metrics: dict[str, Any],
        now: datetime | None = None,
    ) -> entities.Analysis:
        """Store one look's analysis of a rollout step: its outcome, verdicts and metrics."""
        with self.db.session() as s:
            row = AnalysisRow(
                rollout_id=rollout_id,
                step=step,
                evaluated_at=now or utcnow(),
                outcome=outcome,
                verdicts=_json_safe(verdicts) or [],
                metrics=_json_safe(metrics) or {},
            )
            s.add(row)
            s.flush()
            return row.to_entity()

    def list(self, rollout_id: int, *, limit: int = 10_000) -> list[entities.Analysis]:
        """Return a rollout's analyses, oldest first (at most ``limit``)."""
        with self.db.session(write=False) as s:
            query = (
                select(AnalysisRow)
                .filter_by(rollout_id=rollout_id)
                .order_by(AnalysisRow.evaluated_at)
                .limit(limit)
            )
            return [r.to_entity() for r in s.scalars(query)]

    def latest(self, rollout_id: int) -> entities.Analysis | None:
        """Return a rollout's most recent analysis, or None."""
        with self.db.session(write=False) as s:
            row = s.scalar(
                select(AnalysisRow).filter_by(rollout_id=rollout_id).order_by(AnalysisRow.id.desc()).limit(1)
            )
            return None if row is None else row.to_entity()


ROLES = ("viewer", "operator", "labeller")


def hash_token(token: str) -> str:
    """Return the hex SHA-256 of a token: what storage keeps and compares instead of the secret."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenRepository:
    """Bearer tokens: only their SHA-256 is stored; the plain token is shown once, at creation."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, name: str, role: str, *, event: entities.NewEvent | None = None
    ) -> tuple[str, entities.ApiToken]:
        """Mint an admin token of ``role``; return the secret (shown once, never stored) and its entity.

        Only its SHA-256 is stored. AlreadyExists if a token of this name exists (even revoked);
        ValueError for an unknown role.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        token = "mlc_" + secrets.token_urlsafe(32)
        now = utcnow()
        with self.db.session() as s:
            if s.scalar(select(ApiTokenRow.id).filter_by(name=name)) is not None:
                raise AlreadyExists(f"a token named {name!r} exists already")
            row = ApiTokenRow(name=name, role=role, token_hash=hash_token(token), created_at=now)
            s.add(row)
            if event is not None:
                _add_event(s, event, now)
            s.flush()
            return token, row.to_entity()

    def verify(self, token: str) -> entities.ApiToken | None:
        """Return the live token matching this secret, or None. Compared in constant time."""
        digest = hash_token(token)
        with self.db.session(write=False) as s:
            row = s.scalar(select(ApiTokenRow).filter_by(token_hash=digest))
            if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None:
                return None
            return row.to_entity()

    def revoke(self, name: str, *, event: entities.NewEvent | None = None) -> entities.ApiToken:
        """Revoke the named token (again is harmless) and write ``event``; NotFound if there is no such token."""
        now = utcnow()
        with self.db.session() as s:
            row = s.scalar(select(ApiTokenRow).filter_by(name=name))
            if row is None:
                raise NotFound(f"no token named {name!r}")
            if row.revoked_at is None:
                row.revoked_at = now
            if event is not None:
                _add_event(s, event, now)
            s.flush()
            return row.to_entity()

    def list(self) -> list[entities.ApiToken]:
        """Return every token (revoked ones included), oldest first; never a secret."""
        with self.db.session(write=False) as s:
            return [r.to_entity() for r in s.scalars(select(ApiTokenRow).order_by(ApiTokenRow.id))]


class CursorRepository:
    """Named positions in the event log, so a consumer resumes where it stopped after a restart."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, name: str) -> int | None:
        """Return the named cursor's position (an event id), or None if it was never set."""
        with self.db.session(write=False) as s:
            row = s.get(CursorRow, name)
            return None if row is None else int(row.position)

    def set(self, name: str, position: int, *, expected: int | None = None) -> bool:
        """Move the cursor to position; with expected, only if it is still there (False if it moved)."""
        now = utcnow()
        with self.db.session() as s:
            row = s.get(CursorRow, name, with_for_update=True)
            if row is None:
                if expected is not None:
                    return False
                s.add(CursorRow(name=name, position=position, updated_at=now))
                return True
            if expected is not None and row.position != expected:
                return False
            row.position, row.updated_at = position, now
            return True


class Store:
    """Every repository over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.pipelines = PipelineRepository(db)
        self.deployments = DeploymentRepository(db)
        self.rollouts = RolloutRepository(db)
        self.routing = RoutingRepository(db)
        self.pairs = PairRepository(db)
        self.labels = LabelRepository(db)
        self.events = EventRepository(db)
        self.analyses = AnalysisRepository(db)
        self.tokens = TokenRepository(db)
        self.cursors = CursorRepository(db)
