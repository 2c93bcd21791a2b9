"""Plain, frozen entities: the only shape in which stored data leaves storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ACTIVE_PHASES = ("pending", "shadowing", "progressing", "paused")
FINAL_PHASES = ("promoted", "rolled_back", "aborted")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # "float", "int", "bool", "str", "category", "datetime" (pandas-style kind)


@dataclass(frozen=True)
class PipelineVersion:
    id: int
    name: str
    version: str
    kind: str  # "artifact" | "http"
    task: str  # "classification" | "regression"
    input_schema: tuple[Column, ...]
    classes: tuple[Any, ...] | None
    artifact_path: str | None
    artifact_format: str | None  # "skops" | "joblib"
    sha256: str | None
    upstream_url: str | None
    upstream_protocol: str | None  # "v2" | "mlflow"
    offline_metrics: dict[str, Any]
    golden_set: dict[str, Any] | None
    profile: dict[str, Any] | None
    environment: dict[str, Any]
    metadata: dict[str, Any]
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.input_schema)


@dataclass(frozen=True)
class NewPipelineVersion:
    name: str
    version: str
    kind: str
    task: str
    input_schema: tuple[Column, ...]
    classes: tuple[Any, ...] | None = None
    artifact_path: str | None = None
    artifact_format: str | None = None
    sha256: str | None = None
    upstream_url: str | None = None
    upstream_protocol: str | None = None
    offline_metrics: dict[str, Any] = field(default_factory=dict)
    golden_set: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    id: int
    name: str
    champion_id: int
    store_raw_inputs: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Rollout:
    id: int
    deployment_id: int
    champion_id: int
    challenger_id: int
    mode: str  # "shadow" | "canary" | "shadow_then_canary"
    phase: str
    step_index: int
    canary_weight: float  # percent of traffic answered by the challenger, 0..100
    shadow_rate: float  # share of requests scored by the other arm in shadow, 0..1
    policy: dict[str, Any]
    version: int
    created_by: str
    created_at: datetime
    step_started_at: datetime
    ended_at: datetime | None
    reason: str | None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES


@dataclass(frozen=True)
class RoutingEntry:
    """What a router needs to route one deployment, read from storage in one query."""

    deployment: str
    deployment_id: int
    champion: PipelineVersion
    challenger: PipelineVersion | None
    mode: str | None
    canary_weight: float
    shadow_rate: float
    rollout_id: int | None
    step: int | None
    store_raw_inputs: bool


@dataclass(frozen=True)
class PairRecord:
    """One request row's paired output, as the router's recorder writes it."""

    request_id: str
    row_index: int
    deployment_id: int
    rollout_id: int | None
    step: int | None
    received_at: datetime
    routing_key_hash: int
    served_arm: str  # "champion" | "challenger"
    champion_version_id: int | None
    challenger_version_id: int | None
    champion_output: Any = None
    challenger_output: Any = None
    champion_class: str | None = None
    champion_score: float | None = None
    champion_value: float | None = None
    challenger_class: str | None = None
    challenger_score: float | None = None
    challenger_value: float | None = None
    champion_latency_ms: float | None = None
    challenger_latency_ms: float | None = None
    champion_error: str | None = None
    challenger_error: str | None = None
    raw_input: Any = None


@dataclass(frozen=True)
class Label:
    request_id: str
    row_index: int
    deployment_id: int
    label: Any
    label_class: str | None
    label_value: float | None
    received_at: datetime
    outcome: float | None = None  # business outcome of the request row (revenue, a conversion, a cost)
    outcome_base: float | None = None  # denominator of a ratio outcome (e.g. visits)


@dataclass(frozen=True)
class NewEvent:
    actor: str
    action: str
    reason: str
    message: str
    deployment_id: int | None = None
    rollout_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    id: int
    deployment_id: int | None
    rollout_id: int | None
    actor: str
    action: str
    reason: str
    message: str
    details: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class Analysis:
    id: int
    rollout_id: int
    step: int
    evaluated_at: datetime
    outcome: str
    verdicts: list[dict[str, Any]]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ApiToken:
    id: int
    name: str
    role: str  # "viewer" | "operator"
    created_at: datetime
    revoked_at: datetime | None
