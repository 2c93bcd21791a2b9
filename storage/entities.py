"""Plain, frozen entities: the only shape in which stored data leaves storage."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from dataclasses import replace as cls_replace
from datetime import datetime
from typing import Any

from storage.errors import InvalidName

# One naming rule for deployments, pipelines and versions, whoever creates them (CLI, admin API, code):
# names appear in URLs, response headers, metric labels and file names, so ASCII letters, digits,
# '.', '_' and '-' only, starting with a letter or digit, at most 100 characters.
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NAME_RULE_TEXT = "1-100 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_name(what: str, value: object) -> str:
    """Return value if it is a valid name, else InvalidName saying what the rule is."""
    if not isinstance(value, str) or not NAME_RULE.fullmatch(value):
        shown = repr(value)[:60].encode("ascii", "backslashreplace").decode("ascii")
        raise InvalidName(f"bad {what} {shown}: use {NAME_RULE_TEXT}")
    return value


# What every database can store as a request id and as text (PostgreSQL refuses NUL and lone
# surrogates; request_id columns hold 128 characters). The edges (router, feedback) check these.
MAX_REQUEST_ID = 128
MAX_CLASS_TEXT = 200  # a class label as text (champion_class, label_class)
REQUEST_ID_RULE = re.compile(r"[\x20-\x7e]{1,128}")
_UNSTORABLE_TEXT = re.compile(r"[\x00\ud800-\udfff]")


def valid_request_id(value: object) -> bool:
    """Return whether value is a valid request id or routing key (1..128 printable ASCII)."""
    return isinstance(value, str) and REQUEST_ID_RULE.fullmatch(value) is not None


def storable_text(value: str) -> bool:
    """Return whether every database can store the string (no NUL, no lone surrogate)."""
    return "\x00" not in value and (value.isascii() or not _UNSTORABLE_TEXT.search(value))


ACTIVE_PHASES = ("pending", "shadowing", "progressing", "paused", "watching")
FINAL_PHASES = ("promoted", "rolled_back", "aborted")


@dataclass(frozen=True)
class Column:
    """One input column of a pipeline: its name and pandas-style kind."""

    name: str
    dtype: str  # "float", "int", "bool", "str", "category", "datetime" (pandas-style kind)


@dataclass(frozen=True)
class PipelineVersion:
    """A registered pipeline version: where its predictions come from, its schema, and the research
    evidence (offline metrics, golden set, profile, environment) registered with it.
    """

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
    trusted_types: tuple[str, ...] = ()  # exact names the operator trusted in the skops artifact
    upstream_config: dict[str, Any] | None = None  # encoding, outputs, timeout... (router.backends.encodings)
    archived_at: datetime | None = None  # archived: kept for its history, no new deployment or rollout

    @property
    def ref(self) -> str:
        """Return ``NAME:VERSION``, how operators name a version."""
        return f"{self.name}:{self.version}"

    @property
    def column_names(self) -> tuple[str, ...]:
        """Return the input columns' names in the registered order."""
        return tuple(c.name for c in self.input_schema)


@dataclass(frozen=True)
class NewPipelineVersion:
    """A pipeline version to register: a PipelineVersion without its id and creation time."""

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
    upstream_config: dict[str, Any] | None = None
    offline_metrics: dict[str, Any] = field(default_factory=dict)
    golden_set: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    trusted_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchingConfig:
    """How a deployment's router processes batch live requests (adaptive batching).

    enabled: gather concurrent requests for the same version (and the same input columns and
        types) into one scoring call; off: each request is scored alone, as before batching.
    max_batch_delay_ms: the longest the request leading a batch waits for company, and only while
        other requests of its deployment are in flight in its process outside a batch (being read,
        or being answered: their clients' next requests) or were answered on a kept-alive
        connection within that delay (the client's next request on its way); alone, it never waits.
    max_batch_rows: the most rows scored in one call (a request larger than it is scored alone).
    """

    enabled: bool = True
    max_batch_delay_ms: float = 2.0
    max_batch_rows: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError("batching enabled must be true or false")
        delay = self.max_batch_delay_ms
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 1000:
            raise ValueError(f"max_batch_delay_ms must be a number of milliseconds in 0..1000, got {delay!r}")
        rows = self.max_batch_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= 100_000:
            raise ValueError(f"max_batch_rows must be an integer in 1..100000, got {rows!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "max_batch_delay_ms": self.max_batch_delay_ms,
            "max_batch_rows": self.max_batch_rows,
        }

    @classmethod
    def from_json(cls, value: object) -> BatchingConfig:
        """Build from a stored or sent object (missing keys take the defaults); ValueError if malformed."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError("batching must be an object with enabled, max_batch_delay_ms, max_batch_rows")
        unknown = sorted(set(value) - {"enabled", "max_batch_delay_ms", "max_batch_rows"})
        if unknown:
            raise ValueError(f"unknown batching setting(s): {', '.join(map(str, unknown))}")
        return cls(**value)

    def replace(self, **changes: Any) -> BatchingConfig:
        """Return a copy with the given settings changed (None leaves one as it is)."""
        return cls_replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Deployment:
    """A name clients call, the champion version that answers it, whether raw inputs are kept, and how
    its live requests are batched."""

    id: int
    name: str
    champion_id: int
    store_raw_inputs: bool
    created_at: datetime
    updated_at: datetime
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    archived_at: datetime | None = None  # archived: not routed, no new rollout; kept with its history


@dataclass(frozen=True)
class Rollout:
    """A challenger's rollout on a deployment: phase, step, split, the complete policy, and ``version``
    (bumped at each update, for optimistic concurrency).
    """

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
        """Return whether the rollout has not ended (pending, shadowing, progressing or paused)."""
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
    parity_rtol: float | None = None  # the rollout policy's parity tolerance (None: no rollout)
    parity_atol: float | None = None
    split_salt: str | None = field(default=None, repr=False)  # the rollout's secret split key (hex)
    batching: BatchingConfig = field(default_factory=BatchingConfig)


OK = "ok"
ERROR = "error"
SKIPPED = "skipped"
ARM_STATUSES = (OK, ERROR, SKIPPED)
# Why a shadow job never started scoring (a skip: coverage lost, never the arm's error).
SKIP_REASONS = (
    "queue_full",  # the process's shadow queue was full
    "budget",  # the deployment's share of the shadow queue was full (per-deployment budget)
    "expired",  # the shadow timeout passed while the job waited in the queue
    "shutdown",  # the router shut down before scoring it
    "shed",  # load shedding: the router lowered the shadow share while its queue was too long
    "starved",  # the host gave its call no CPU: within the timeout by its own time, far past it by the wall
)


@dataclass(frozen=True)
class PairRecord:
    """One request row's paired output, as the router's recorder writes it.

    ``champion_status`` / ``challenger_status``: what happened to each arm on this request — "ok"
    (it answered), "error" (it raised, answered garbage, or its own scoring exceeded the timeout:
    the arm's fault), "skipped" (a shadow job that never started scoring: ``skip_reason`` says
    why, see SKIP_REASONS), or None (the arm was not asked). Left None, a status is derived from
    the record (an error → "error", a latency → "ok"), so older writers stay valid.
    ``shadow_wait_ms``: how long the shadow job waited in the router's queue before its call
    started (the router's health, never counted in the arm's latency).
    """

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
    champion_status: str | None = None
    challenger_status: str | None = None
    skip_reason: str | None = None
    shadow_wait_ms: float | None = None
    champion_proba: dict[str, float] | None = None
    challenger_proba: dict[str, float] | None = None

    def __post_init__(self) -> None:
        for arm in ("champion", "challenger"):
            if getattr(self, f"{arm}_status") is None:
                object.__setattr__(self, f"{arm}_status", arm_status(self, arm))


def arm_status(record: PairRecord, arm: str) -> str | None:
    """Derive an arm's status from what a record holds (for records written without one).

    As before statuses existed: an arm ran when it has a latency or an error, and failed on an error.
    """
    if getattr(record, f"{arm}_error") is not None:
        return ERROR
    return OK if getattr(record, f"{arm}_latency_ms") is not None else None


@dataclass(frozen=True)
class LabelsStored:
    """What became of a batch of labels: how many were stored, which request ids have no pair yet
    (their labels kept pending) and which of those were not kept because the pending window is full."""

    stored: int
    unknown: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Label:
    """The ground-truth label of one request row, and when it arrived."""

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
    """An event to write: who did what and why (``reason`` machine-readable, ``message`` for people)."""

    actor: str
    action: str
    reason: str
    message: str
    deployment_id: int | None = None
    rollout_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """A stored audit event, with its id (the order of the log) and time."""

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
    """What one look of the controller measured and judged at a rollout step."""

    id: int
    rollout_id: int
    step: int
    evaluated_at: datetime
    outcome: str
    verdicts: list[dict[str, Any]]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ApiToken:
    """An admin token's name, role and lifetime; never its secret."""

    id: int
    name: str
    role: str  # "viewer" | "operator"
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class ArmLiveFigures:
    """One arm's figures over a rollout step so far, as the dashboard shows them.

    ``served``: rows this arm answered; ``scored``: rows it ran (answered or shadowed: a latency or an
    error, as storage.analytics defines it); ``errors``: rows it failed; ``latency``: its latency
    histogram (bucket index -> count, the buckets the caller passed, as the judge's).
    """

    served: int
    scored: int
    errors: int
    latency: dict[int, int]


@dataclass(frozen=True)
class LiveFigures:
    """A rollout step's live figures: requests, first and last arrival, and each arm's figures."""

    rollout_id: int
    step: int
    requests: int
    first_at: datetime | None
    last_at: datetime | None
    champion: ArmLiveFigures
    challenger: ArmLiveFigures


@dataclass(frozen=True)
class NewAnalysis:
    """An analysis to store with a rollout's update (``RolloutRepository.update(analysis=...)``)."""

    step: int
    outcome: str
    verdicts: list[dict[str, Any]]
    metrics: dict[str, Any]
