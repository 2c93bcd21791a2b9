"""SQLAlchemy 2.0 typed models. Rows never leave storage: each turns itself into an entity."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage import entities

JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only has 64-bit signed INTEGER as an auto-incrementing rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Store naive UTC, hand back aware UTC, on every database."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to storage; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class PipelineVersionRow(Base):
    __tablename__ = "pipeline_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_pipeline_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    task: Mapped[str] = mapped_column(String(20))
    input_schema: Mapped[list[Any]] = mapped_column(JSONType)
    classes: Mapped[list[Any] | None] = mapped_column(JSONType, nullable=True)
    artifact_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifact_format: Mapped[str | None] = mapped_column(String(20), nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    upstream_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    upstream_protocol: Mapped[str | None] = mapped_column(String(20), nullable=True)
    upstream_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    offline_metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    golden_set: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    environment: Mapped[dict[str, Any]] = mapped_column(JSONType)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    trusted_types: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def to_entity(self) -> entities.PipelineVersion:
        return entities.PipelineVersion(
            id=self.id,
            name=self.name,
            version=self.version,
            kind=self.kind,
            task=self.task,
            input_schema=tuple(entities.Column(c["name"], c["dtype"]) for c in self.input_schema),
            classes=None if self.classes is None else tuple(self.classes),
            artifact_path=self.artifact_path,
            artifact_format=self.artifact_format,
            sha256=self.sha256,
            upstream_url=self.upstream_url,
            upstream_protocol=self.upstream_protocol,
            upstream_config=self.upstream_config,
            offline_metrics=dict(self.offline_metrics or {}),
            golden_set=self.golden_set,
            profile=self.profile,
            environment=dict(self.environment or {}),
            metadata=dict(self.meta or {}),
            created_at=self.created_at,
            trusted_types=tuple(self.trusted_types or ()),
            archived_at=self.archived_at,
        )


class DeploymentRow(Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    champion_id: Mapped[int] = mapped_column(ForeignKey("pipeline_versions.id"))
    store_raw_inputs: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # adaptive batching settings (entities.BatchingConfig.to_json); NULL: the defaults
    batching: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def to_entity(self) -> entities.Deployment:
        return entities.Deployment(
            id=self.id,
            name=self.name,
            champion_id=self.champion_id,
            store_raw_inputs=self.store_raw_inputs,
            created_at=self.created_at,
            updated_at=self.updated_at,
            batching=entities.BatchingConfig.from_json(self.batching),
            archived_at=self.archived_at,
        )


class RolloutRow(Base):
    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_deployment_phase", "deployment_id", "phase"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    champion_id: Mapped[int] = mapped_column(ForeignKey("pipeline_versions.id"))
    challenger_id: Mapped[int] = mapped_column(ForeignKey("pipeline_versions.id"))
    mode: Mapped[str] = mapped_column(String(30))
    phase: Mapped[str] = mapped_column(String(20))
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    canary_weight: Mapped[float] = mapped_column(Float, default=0.0)
    shadow_rate: Mapped[float] = mapped_column(Float, default=0.0)
    policy: Mapped[dict[str, Any]] = mapped_column(JSONType)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    step_started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The secret key of the sticky split (hex); read by routers only, never part of the entity.
    split_salt: Mapped[str | None] = mapped_column(String(64), nullable=True)

    def to_entity(self) -> entities.Rollout:
        return entities.Rollout(
            id=self.id,
            deployment_id=self.deployment_id,
            champion_id=self.champion_id,
            challenger_id=self.challenger_id,
            mode=self.mode,
            phase=self.phase,
            step_index=self.step_index,
            canary_weight=self.canary_weight,
            shadow_rate=self.shadow_rate,
            policy=dict(self.policy or {}),
            version=self.version,
            created_by=self.created_by,
            created_at=self.created_at,
            step_started_at=self.step_started_at,
            ended_at=self.ended_at,
            reason=self.reason,
        )


class PairedOutputRow(Base):
    __tablename__ = "paired_outputs"
    __table_args__ = (
        # request ids are unique per deployment: two deployments may see the same client id
        UniqueConstraint("deployment_id", "request_id", "row_index", name="uq_paired_outputs_request"),
        Index("ix_paired_outputs_rollout_step_time", "rollout_id", "step", "received_at"),
        Index("ix_paired_outputs_deployment_time", "deployment_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))
    row_index: Mapped[int] = mapped_column(Integer, default=0)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"), nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    routing_key_hash: Mapped[int] = mapped_column(BigInteger)
    served_arm: Mapped[str] = mapped_column(String(12))
    champion_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    challenger_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    champion_output: Mapped[Any] = mapped_column(JSONType, nullable=True)
    challenger_output: Mapped[Any] = mapped_column(JSONType, nullable=True)
    champion_class: Mapped[str | None] = mapped_column(String(200), nullable=True)
    champion_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    champion_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    challenger_class: Mapped[str | None] = mapped_column(String(200), nullable=True)
    challenger_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    challenger_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    champion_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    challenger_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    champion_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    challenger_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    raw_input: Mapped[Any] = mapped_column(JSONType, nullable=True)
    champion_status: Mapped[str | None] = mapped_column(String(8), nullable=True)
    challenger_status: Mapped[str | None] = mapped_column(String(8), nullable=True)
    skip_reason: Mapped[str | None] = mapped_column(String(20), nullable=True)
    shadow_wait_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # > 2 classes: each arm's class probabilities keyed by the class as text (0011); NULL otherwise
    champion_proba: Mapped[dict[str, float] | None] = mapped_column(JSONType, nullable=True)
    challenger_proba: Mapped[dict[str, float] | None] = mapped_column(JSONType, nullable=True)

    def to_entity(self) -> entities.PairRecord:
        return entities.PairRecord(
            **{f: getattr(self, f) for f in PAIR_COLUMNS},
        )


PAIR_COLUMNS: tuple[str, ...] = tuple(f for f in entities.PairRecord.__dataclass_fields__)
PAIR_JSON_COLUMNS = frozenset(
    {"champion_output", "challenger_output", "raw_input", "champion_proba", "challenger_proba"}
)


class LabelRow(Base):
    """A label of one request row of one deployment; pending while no pair of that row is stored."""

    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_pending", "deployment_id", "pending", "received_at"),)

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    row_index: Mapped[int] = mapped_column(Integer, primary_key=True, default=0)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    label: Mapped[Any] = mapped_column(JSONType)
    label_class: Mapped[str | None] = mapped_column(String(200), nullable=True)
    label_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    outcome: Mapped[float | None] = mapped_column(Float, nullable=True)  # business outcome (0005)
    outcome_base: Mapped[float | None] = mapped_column(Float, nullable=True)  # its ratio denominator

    def to_entity(self) -> entities.Label:
        return entities.Label(
            request_id=self.request_id,
            row_index=self.row_index,
            deployment_id=self.deployment_id,
            label=self.label,
            label_class=self.label_class,
            label_value=self.label_value,
            received_at=self.received_at,
            outcome=self.outcome,
            outcome_base=self.outcome_base,
        )


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_rollout_at", "rollout_id", "at"),
        Index("ix_events_deployment_at", "deployment_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), nullable=True)
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"), nullable=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60))
    reason: Mapped[str] = mapped_column(String(120))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType)
    at: Mapped[datetime] = mapped_column(UTCDateTime())

    def to_entity(self) -> entities.Event:
        return entities.Event(
            id=self.id,
            deployment_id=self.deployment_id,
            rollout_id=self.rollout_id,
            actor=self.actor,
            action=self.action,
            reason=self.reason,
            message=self.message,
            details=dict(self.details or {}),
            at=self.at,
        )


class AnalysisRow(Base):
    __tablename__ = "analyses"
    __table_args__ = (Index("ix_analyses_rollout_at", "rollout_id", "evaluated_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"))
    step: Mapped[int] = mapped_column(Integer)
    evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(30))
    verdicts: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)

    def to_entity(self) -> entities.Analysis:
        return entities.Analysis(
            id=self.id,
            rollout_id=self.rollout_id,
            step=self.step,
            evaluated_at=self.evaluated_at,
            outcome=self.outcome,
            verdicts=list(self.verdicts or []),
            metrics=dict(self.metrics or {}),
        )


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def to_entity(self) -> entities.ApiToken:
        return entities.ApiToken(
            id=self.id, name=self.name, role=self.role, created_at=self.created_at, revoked_at=self.revoked_at
        )


class CursorRow(Base):
    """How far a named consumer of the event log (e.g. the webhook dispatcher) has got."""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
