"""The rollout policy: what a rollout may do, validated on input, with defaults that are safe alone.

    policy = Policy.parse({"canary": {"steps": [5, 50, 100]}})    # dict, YAML/JSON text or a file
    judge_policy = policy.to_judge_policy("classification", "shadow", final=False)
    plan = policy.plan()                                           # the stages the rollout walks through

Every field is documented in its model's docstring (docs are generated from them). Unknown keys and
impossible values raise ``PolicyError`` naming the field's path, e.g. ``canary.steps: ...``.

The plan is data: ``mode`` and the step weights give a list of ``Stage`` (a shadow stage, then one
canary stage per weight below 100). Passing the last stage promotes the challenger to 100%: a weight
of 100 in ``canary.steps`` means "promote", it is never held as a step of its own (at 100% the
champion would answer nothing and could not be compared with).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.core.plan import Stage, stages

if TYPE_CHECKING:  # imported where the judge's thresholds are built: the verdict sentence needs no NumPy
    from controller.core import metrics as quality
    from controller.core.judge import GateSpec, JudgePolicy

RolloutMode = Literal["shadow", "canary", "shadow_then_canary"]
Task = Literal["classification", "regression"]
GateRole = Literal["required", "guardrail", "informational", "off"]

__all__ = [
    "Gate",
    "Gates",
    "Metric",
    "Metrics",
    "BusinessOutcome",
    "Segment",
    "Segments",
    "Policy",
    "PolicyError",
    "Reproducibility",
    "Shadow",
    "Canary",
    "ErrorBudget",
    "Slo",
    "Watch",
    "Stage",
    "RolloutMode",
]


class PolicyError(ValueError):
    """A policy is malformed; the message names the field path and what is wrong with it."""

    status = 422  # how the admin API answers it (controller.http.errors)
    code = "invalid_policy"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Shadow(_Model):
    """The shadow stage: the champion answers and the challenger scores the same requests off the live path.

    ``sample_rate``: **fraction** of requests (0 < rate <= 1, not percent) the challenger scores in shadow.
    ``min_pairs``: paired requests (both arms ran; a count) needed before the stage may be decided.
    ``min_duration_s``: seconds the stage lasts at least, even when the data decide earlier.
    ``max_duration_s``: seconds after which an undecided stage stops waiting (see ``on_inconclusive``).
    """

    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    min_pairs: int = Field(default=500, ge=1)
    min_duration_s: float = Field(default=0.0, ge=0.0)
    max_duration_s: float = Field(default=24 * 3600.0, gt=0.0)

    @model_validator(mode="after")
    def _durations(self) -> Shadow:
        if self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be at least min_duration_s")
        return self


class Canary(_Model):
    """The canary stages: a sticky share of traffic is answered by the challenger, step by step.

    ``paired``: when the other arm also scores (``shadow_rate`` > 0), judge canary steps on the pairs
    (both arms answered the same request: far fewer requests needed); false keeps the unpaired
    comparison of the requests each arm served, for products where the served answer changes the
    label. Latency and the sample-ratio check always use the served requests.
    ``steps``: challenger weights in **percent** of traffic (5 = 5%, not 0.05), strictly increasing,
    each in (0, 100]. A final 100 is allowed and means "promote" (passing the last step below 100
    promotes anyway). Steps that are all <= 1 look like fractions and are refused.
    ``shadow_rate``: **fraction** (0..1, not percent) of canary requests on which the other arm also
    scores in shadow, which gives the agreement gate its pairs; 0 saves the compute.
    ``min_samples``: requests (a count) in the step needed before it may be decided.
    ``min_duration_s`` / ``max_duration_s``: least and most seconds spent in each step.
    """

    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    shadow_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    paired: bool = True
    min_samples: int = Field(default=500, ge=1)
    min_duration_s: float = Field(default=60.0, ge=0.0)
    max_duration_s: float = Field(default=24 * 3600.0, gt=0.0)

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if not steps:
            raise ValueError("give at least one step")
        for w in steps:
            if not 0.0 < w <= 100.0:
                raise ValueError(f"every weight must lie in (0, 100], got {w:g}")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"weights must be strictly increasing, got {list(steps)}")
        if all(w <= 1.0 for w in steps):
            percent = [float(f"{100 * w:.6g}") for w in steps]
            raise ValueError(
                f"weights are percent of traffic (5 means 5%), got {[float(f'{w:g}') for w in steps]}, "
                f"which look like fractions; write {[f'{p:g}' for p in percent]}".replace("'", "")
            )
        return steps

    @model_validator(mode="after")
    def _durations(self) -> Canary:
        if self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be at least min_duration_s")
        return self


class Gate(_Model):
    """One statistical gate.

    ``role``: ``required`` (must prove non-inferiority to promote; proven harm rolls back),
    ``guardrail`` (proven harm rolls back), ``informational`` (reported only) or ``off``.
    ``margin``: the tolerated difference, in the gate's unit (see ``Gates``: a fraction, a ratio or a PSI).
    ``min_samples``: the gate's burn-in (observations, a count); ``None`` takes the policy's ``burn_in``.
    ``on_fail``: what proven failure of a required or guardrail gate does: ``rollback`` (harm; the
    default) or ``hold`` (the step cannot pass, nothing rolls back; agreement's default).
    ``allow_no_data``: a guardrail (or a hold gate) without data does not block promotion; by default
    it does (an unmeasured guardrail is no evidence of safety).
    """

    role: GateRole
    margin: float
    min_samples: int | None = Field(default=None, ge=1)
    on_fail: Literal["rollback", "hold"] = "rollback"
    allow_no_data: bool = False


class Gates(_Model):
    """The gates and their margins.

    ``error_rate``: absolute increase of the error rate tolerated, a fraction (0 <= margin < 1; 0.01 =
    one percentage point).
    ``latency_p99``: tolerated ratio (unitless, >= 1; 1.2 = 20% slower) of the challenger's p99 latency
    to the champion's, both estimated from the served requests' histograms: harm is proven when the
    share of challenger requests slower than ``margin`` x a bound of the champion's p99 (and slower than
    ``latency_floor_ms``) is proven above 1%; non-inferiority when the challenger's p99 is proven at or
    below ``margin`` x the champion's, or below the floor.
    ``latency_floor_ms``: milliseconds (>= 0); a challenger p99 at or below it never counts as latency
    harm, however it compares with the champion's (0, the default: no floor).
    ``regression_error_bound``: label units (> 0); an assumption you state: no absolute error of either
    model exceeds it (e.g. the width of the label's range). With it, the regression gate's mean test
    uses the variance of the least favourable null (the sample with just enough mass moved to the bound
    to make the challenger exactly as bad as the margin allows), so rare large errors that have not
    shown yet cannot make it pass. ``null`` (the default): no bound assumed, the observed variance
    (valid only asymptotically when rare huge errors are possible).
    ``agreement``: minimum fraction of identical predictions (0 < margin <= 1; 0.9 = 90%),
    classification only.
    ``accuracy``: absolute accuracy drop tolerated once labels arrive, a fraction (0 <= margin < 1;
    0.01 = one percentage point).
    ``regression``: relative increase of the mean absolute error tolerated once labels arrive, a
    fraction of the champion's MAE (>= 0; 0.05 = 5% worse).
    ``drift``: PSI (population stability index, unitless) of the output distributions above which
    outputs have drifted (> 0).
    ``coverage``: minimum fraction (0..1) of the shadow sample the router actually scored (0 < margin <= 1); it
    never rolls back (skipped requests are the router's doing): ``informational`` reports it,
    ``required`` holds promotion until the share is proven above the margin.
    ``agreement_until_labelled``: classification, when agreement and accuracy are both required: on a
    step that is not the final promotion, agreement proven at least ``max(agreement.margin, 1 -
    accuracy.margin)`` satisfies accuracy (accuracy can drop by at most the disagreement rate); the
    final promotion always needs accuracy itself to pass. Agreement is then a hold gate: proven below
    its margin, the step holds until labels decide (``on_fail: rollback`` makes it roll back). Off,
    agreement keeps its role and must pass on its own when required.
    """

    error_rate: Gate = Gate(role="required", margin=0.01)
    latency_p99: Gate = Gate(role="guardrail", margin=1.2, min_samples=1000)
    agreement: Gate = Gate(role="required", margin=0.9, on_fail="hold")
    accuracy: Gate = Gate(role="required", margin=0.01)
    regression: Gate = Gate(role="required", margin=0.05)
    drift: Gate = Gate(role="informational", margin=0.2)
    coverage: Gate = Gate(role="informational", margin=0.5)
    agreement_until_labelled: bool = True
    latency_floor_ms: float = Field(default=0.0, ge=0.0)
    regression_error_bound: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_defaults(cls, data: Any) -> Any:
        """Let a gate be given in part (``accuracy: {role: guardrail}``): the rest keeps its default."""
        if not isinstance(data, Mapping):
            return data
        filled = dict(data)
        for name, given in data.items():
            field = cls.model_fields.get(name)
            if isinstance(given, Mapping) and field is not None and isinstance(field.default, Gate):
                filled[name] = {**field.default.model_dump(), **given}
        return filled

    @model_validator(mode="after")
    def _margins(self) -> Gates:
        checks = {
            "error_rate": (0.0 <= self.error_rate.margin < 1.0, "must lie in [0, 1)"),
            "latency_p99": (self.latency_p99.margin >= 1.0, "is a ratio and must be >= 1"),
            "agreement": (0.0 < self.agreement.margin <= 1.0, "must lie in (0, 1]"),
            "accuracy": (0.0 <= self.accuracy.margin < 1.0, "must lie in [0, 1)"),
            "regression": (self.regression.margin >= 0.0, "must be >= 0"),
            "drift": (self.drift.margin > 0.0, "must be > 0"),
            "coverage": (0.0 < self.coverage.margin <= 1.0, "must lie in (0, 1]"),
        }
        for name, (ok, rule) in checks.items():
            if not ok:
                margin = getattr(self, name).margin
                raise PolicyError(f"gates.{name}.margin: {rule}, got {margin:g}")
        return self


class Watch(_Model):
    """The post-promotion watch, for labels that arrive after the last canary step.

    ``enabled``: after the last step passes, the challenger becomes the champion and answers every
    request while the previous champion keeps scoring in shadow (phase ``watching``); the rollout ends
    ``promoted`` once every required labelled gate passes on the whole rollout's evidence, and proven
    harm restores the previous champion (``rolled_back``). Off (the default), the last step itself must
    pass the required labelled gates before promotion.
    ``sample_rate``: fraction (0 < x <= 1, not percent) of requests the previous champion scores in shadow.
    ``min_duration_s``: seconds the watch lasts at least (the bake period).
    ``min_labelled_pairs``: labelled pairs (a count) of the watch itself needed before it may end.
    ``max_duration_s``: seconds after which an undecided watch follows ``on_inconclusive``: ``rollback``
    restores the previous champion, ``pause`` leaves it watching for an operator to promote or roll back.
    """

    enabled: bool = False
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    min_duration_s: float = Field(default=3600.0, ge=0.0)
    min_labelled_pairs: int = Field(default=500, ge=0)
    max_duration_s: float = Field(default=7 * 24 * 3600.0, gt=0.0)

    @model_validator(mode="after")
    def _durations(self) -> Watch:
        if self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be at least min_duration_s")
        return self


class ErrorBudget(_Model):
    """How the policy's one ``alpha`` is split; the three shares add up to 1.

    Each share is a fraction of ``alpha`` (0..1).
    ``harm``: the harm family (every required and guardrail gate that can roll back, Holm-adjusted,
    and the non-inferiority bounds that promote). ``vetoes``: the vetoes, split evenly over three fixed
    slots (sample-ratio mismatch, error-rate SLO, latency SLO) whether or not they are configured.
    ``reproducibility``: the online-versus-offline gate, split evenly over the two arms.
    """

    harm: float = Field(default=0.8, gt=0.0, le=1.0)
    vetoes: float = Field(default=0.1, gt=0.0, lt=1.0)
    reproducibility: float = Field(default=0.1, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _sum(self) -> ErrorBudget:
        total = self.harm + self.vetoes + self.reproducibility
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"harm + vetoes + reproducibility must add up to 1, got {total:g}")
        return self


class Slo(_Model):
    """Hard service levels of the challenger: a proven breach vetoes the rollout (rolls back at once).

    ``error_rate``: ceiling of the challenger's error rate, a fraction (0 < x < 1; 0.02 = 2%), or null.
    ``latency_p99_ms``: ceiling of its p99 latency in milliseconds (> 0), or null for none.
    ``min_samples``: requests (a count) before an SLO may veto; ``None`` takes the policy's ``burn_in``.
    """

    error_rate: float | None = Field(default=None, gt=0.0, lt=1.0)
    latency_p99_ms: float | None = Field(default=None, gt=0.0)
    min_samples: int | None = Field(default=None, ge=1)


class Reproducibility(_Model):
    """Does production reproduce research? The parity gate before traffic, online versus offline during it.

    ``parity_rtol`` / ``parity_atol``: tolerance of the parity gate on scores and regression values
    (|served - research| <= rtol * |research| + atol); classes must match exactly. Any mismatch blocks
    the rollout from starting.
    ``role``: the challenger's online-versus-offline gate: ``guardrail`` (proven worse than its
    offline metrics by more than the margin → ``on_worse``), ``informational`` (reported only) or ``off``.
    ``accuracy_margin``: tolerated drop of online accuracy below the offline accuracy, a fraction
    (0 <= x < 1; 0.02 = two percentage points).
    ``mae_margin``: tolerated relative increase of the online MAE over the offline MAE, a fraction
    (>= 0; 0.1 = 10% worse).
    ``confidence``: level of the online-versus-offline intervals (0.5 < x < 1); null (the default)
    takes it from the error budget: 1 - alpha * error_budget.reproducibility / 2.
    ``min_labels``: labelled rows (a count) an arm needs before it is compared with offline.
    ``on_worse``: ``hold`` (never promote while worse; the step's budget then decides) or ``rollback``.
    """

    parity_rtol: float = Field(default=1e-9, ge=0.0)
    parity_atol: float = Field(default=1e-12, ge=0.0)
    role: Literal["guardrail", "informational", "off"] = "guardrail"
    accuracy_margin: float = Field(default=0.02, ge=0.0, lt=1.0)
    mae_margin: float = Field(default=0.10, ge=0.0)
    confidence: float | None = Field(default=None, gt=0.5, lt=1.0)
    min_labels: int = Field(default=200, ge=1)
    on_worse: Literal["hold", "rollback"] = "hold"


class Metric(_Model):
    """One quality gate of ``metrics`` (controller.core.metrics): a role, a margin in the metric's unit.

    ``role``: as ``Gate.role``. ``margin``: tolerated harm (a drop for scores where more is better,
    a rise for losses). ``min_samples``: labelled rows before the gate decides (``None``: ``burn_in``).
    """

    role: GateRole
    margin: float = Field(ge=0.0)
    min_samples: int | None = Field(default=None, ge=1)


class PerClassMetric(Metric):
    """Per-class recall or precision: one gate per class in ``classes`` (empty: every class the pipeline has)."""

    classes: tuple[str, ...] = ()


class QuantileMetric(Metric):
    """Pinball (quantile) loss of a regression at ``quantile`` (0 < q < 1)."""

    quantile: float = Field(default=0.5, gt=0.0, lt=1.0)


class AucMetric(Metric):
    """ROC AUC (binary; macro one-vs-rest for more classes), tested once at a fixed ``horizon`` of labelled
    rows (see docs/statistics.md)."""

    horizon: int = Field(default=2000, ge=20)


class Metrics(_Model):
    """Quality gates besides accuracy and MAE, once labels arrive. Margins are in each metric's unit.

    Classification: ``balanced_accuracy`` (mean per-class recall; required by default, so a challenger
    that drops a rare class cannot be promoted; it stands in with ``gates.accuracy`` while the step is
    unlabelled), ``macro_f1``, ``recall`` and ``precision`` (per class), ``log_loss`` and ``brier``
    (need probabilities; more than two classes read the stored vectors), ``roc_auc`` (fixed horizon). Regression: ``rmse``
    (absolute RMSE increase tolerated, target units) and ``pinball`` (absolute increase of the
    quantile loss). Drops are absolute (0.05 = five points of balanced accuracy).
    """

    balanced_accuracy: Metric = Metric(role="required", margin=0.05)
    macro_f1: Metric = Metric(role="informational", margin=0.05)
    recall: PerClassMetric = PerClassMetric(role="informational", margin=0.1)
    precision: PerClassMetric = PerClassMetric(role="informational", margin=0.1)
    log_loss: Metric = Metric(role="informational", margin=0.05)
    brier: Metric = Metric(role="informational", margin=0.01)
    roc_auc: AucMetric = AucMetric(role="off", margin=0.02)
    rmse: Metric = Metric(role="informational", margin=0.0)
    pinball: QuantileMetric = QuantileMetric(role="off", margin=0.0)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_defaults(cls, data: Any) -> Any:
        """Let a metric be given in part (``macro_f1: {role: required}``): the rest keeps its default."""
        if not isinstance(data, Mapping):
            return data
        filled = dict(data)
        for name, given in data.items():
            field = cls.model_fields.get(name)
            if isinstance(given, Mapping) and field is not None and isinstance(field.default, Metric):
                filled[name] = {**field.default.model_dump(), **given}
        return filled

    @model_validator(mode="after")
    def _margins(self) -> Metrics:
        for name in ("balanced_accuracy", "macro_f1", "recall", "precision", "roc_auc"):
            if getattr(self, name).margin >= 1.0:
                raise PolicyError(
                    f"metrics.{name}.margin: must lie in [0, 1), got {getattr(self, name).margin:g}"
                )
        return self


class BusinessOutcome(_Model):
    """A business outcome per request (revenue, a 0/1 conversion, a cost) sent with the feedback.

    ``role``: as ``Gate.role`` (``off`` by default). ``direction``: ``increase`` (more is better) or
    ``decrease`` (a cost). ``margin``: tolerated loss of the mean outcome per served request, in its
    own unit (e.g. 0.05 = five cents of revenue per request). Only canary-served requests count: in
    shadow the challenger's answer never reached the user, so the outcome is the champion's doing.
    ``min_samples``: served requests with an outcome each arm needs (``None``: ``burn_in``).
    ``ratio``: compare sum(outcome) / sum(outcome_base) per arm instead of the mean (e.g. revenue per
    visit, the visits sent as ``outcome_base``); rows without a base are left out, and the margin is
    in the ratio's unit.
    """

    role: GateRole = "off"
    direction: Literal["increase", "decrease"] = "increase"
    margin: float = Field(default=0.0, ge=0.0)
    min_samples: int | None = Field(default=None, ge=2)
    ratio: bool = False


class Segment(_Model):
    """A segment column of the raw inputs: its values (``edges`` null) or numeric buckets.

    ``edges``: increasing cut points; the buckets are (-inf, e0), [e0, e1), ..., [ek, inf).
    """

    column: str = Field(min_length=1, max_length=200)
    edges: tuple[float, ...] | None = None

    @field_validator("edges")
    @classmethod
    def _edges(cls, edges: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if edges is not None and (not edges or any(b <= a for a, b in zip(edges, edges[1:], strict=False))):
            raise ValueError("edges must be a non-empty, strictly increasing list")
        return edges


class Segments(_Model):
    """Segments that cannot hide harm: every required quality metric is also tested per segment.

    ``columns``: the segment columns (raw-input columns; the deployment must store raw inputs).
    ``role``: ``guardrail`` (a harm proven in one segment rolls back) or ``hold`` (it blocks
    promotion; the step's budget then decides). ``min_samples``: labelled rows a segment needs per arm
    before it is judged; smaller segments are reported as too small. ``max_values``: the most
    frequent values per column that get a segment each. Segment tests join the Holm family of the gates.
    """

    columns: tuple[Segment, ...] = ()
    role: Literal["guardrail", "hold"] = "guardrail"
    min_samples: int = Field(default=200, ge=1)
    max_values: int = Field(default=20, ge=1, le=200)


class Policy(_Model):
    """How one rollout proceeds. ``Policy()`` alone is a safe policy.

    ``mode``: ``shadow`` (compare in shadow, then promote), ``canary`` (percentage steps only) or
    ``shadow_then_canary`` (the default).
    ``shadow`` / ``canary``: the stages (see ``Shadow`` and ``Canary``).
    ``gates``: margins and roles of the statistical gates (see ``Gates``).
    ``alpha``: the rollout's whole error budget, a probability (0 < alpha < 0.5), split by
    ``error_budget``.
    ``error_budget``: shares of ``alpha`` for harm, vetoes and reproducibility (see ``ErrorBudget``).
    ``srm_alpha``: level of the sample-ratio-mismatch veto in canary steps (0 < x < 0.5); null (the
    default) takes it from the error budget: alpha * error_budget.vetoes / 3.
    ``n_star``: sample size (observations) at which the confidence sequences are tightest (> 0).
    ``burn_in``: observations (a count) a gate needs before it may decide, unless the gate sets its own.
    ``label_maturity_s``: seconds a request must be old before its label counts: younger requests
    are left out of the accuracy and regression gates (labels still arriving would bias them).
    ``on_inconclusive``: what to do when a step's ``max_duration_s`` runs out undecided: ``pause``
    (hold the current split for a human) or ``rollback``.
    ``slo``: hard service levels (see ``Slo``).
    ``reproducibility``: the parity gate and the online-versus-offline gate (see ``Reproducibility``).
    ``watch``: the post-promotion watch (see ``Watch``).
    ``metrics``: class-aware quality gates, proper scores, RMSE and pinball loss (see ``Metrics``).
    ``outcome``: the business-outcome gate (see ``Outcome``). ``segments``: per-segment harm tests
    (see ``Segments``).
    """

    mode: RolloutMode = "shadow_then_canary"
    shadow: Shadow = Shadow()
    canary: Canary = Canary()
    gates: Gates = Gates()
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    error_budget: ErrorBudget = ErrorBudget()
    srm_alpha: float | None = Field(default=None, gt=0.0, lt=0.5)
    n_star: float = Field(default=5000.0, gt=0.0)
    burn_in: int = Field(default=200, ge=1)
    label_maturity_s: float = Field(default=0.0, ge=0.0)
    on_inconclusive: Literal["pause", "rollback"] = "pause"
    slo: Slo = Slo()
    reproducibility: Reproducibility = Reproducibility()
    watch: Watch = Watch()
    metrics: Metrics = Metrics()
    outcome: BusinessOutcome = BusinessOutcome()
    segments: Segments = Segments()

    @model_validator(mode="after")
    def _plan(self) -> Policy:
        if self.mode == "canary" and not any(w < 100.0 for w in self.canary.steps):
            raise PolicyError("canary.steps: canary mode needs at least one weight below 100")
        if self.outcome.role != "off" and not any(s.kind == "canary" for s in self.plan()):
            raise PolicyError(
                "outcome: the business-outcome gate counts canary-served requests only; a plan without a "
                "canary step (mode shadow) could never measure it"
            )
        return self

    # ------------------------------------------------------------------------------------ input
    @classmethod
    def parse(cls, source: Policy | Mapping[str, Any] | str | Path | None = None, **overrides: Any) -> Policy:
        """Build a policy from a mapping, YAML or JSON text, or a .yaml/.yml/.json file; None = defaults.

        ``overrides`` are top-level fields applied on top (e.g. ``mode="canary"``). Raises PolicyError.
        """
        if isinstance(source, Policy):
            data: dict[str, Any] = source.to_dict()
        elif source is None:
            data = {}
        elif isinstance(source, Mapping):
            data = dict(source)
        else:
            data = _load_text(source)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise PolicyError(_describe(error)) from error

    def to_dict(self) -> dict[str, Any]:
        """Return the complete policy as plain JSON-able data (what a rollout stores)."""
        return self.model_dump(mode="json")

    # ----------------------------------------------------------------------------------- output
    def plan(self) -> tuple[Stage, ...]:
        """Return the stages in order: shadow first (unless mode is canary), then canary weights < 100."""
        return stages(self.mode, self.shadow, self.canary)

    def budget(self) -> dict[str, float]:
        """Return the error budget as levels: harm family, each veto, SRM, each arm's reproducibility."""
        b = self.error_budget
        veto = self.alpha * b.vetoes / 3.0
        repro = self.alpha * b.reproducibility / 2.0
        return {
            "alpha": self.alpha,
            "harm": self.alpha * b.harm,
            "veto": veto,
            "srm": self.srm_alpha if self.srm_alpha is not None else veto,
            "reproducibility": 1.0 - self.reproducibility.confidence
            if self.reproducibility.confidence is not None
            else repro,
        }

    def final_stage(self, step_index: int) -> bool:
        """Whether passing this step (or the watch, past the plan) promotes the challenger for good."""
        last = len(self.plan()) - 1
        return step_index > last if self.watch.enabled else step_index >= last

    def to_judge_policy(
        self,
        task: Task,
        mode: Literal["shadow", "canary"],
        *,
        final: bool = False,
        classes: tuple[str, ...] = (),
    ) -> JudgePolicy:
        """Map this policy onto the judge's thresholds for one step.

        ``mode``: how the step's data are compared (shadow or canary). ``final``: passing this step
        promotes for good (see ``final_stage``): required labelled gates must then pass themselves.
        ``classes``: the pipeline's classes (per-class recall and precision gates, the positive class).
        """
        from controller.core.judge import GateSpec, JudgePolicy

        g = self.gates

        def spec(gate: Gate, *, role: GateRole | None = None, allow_no_data: bool | None = None) -> GateSpec:
            role = role or gate.role
            return GateSpec(
                role="informational" if role == "off" else role,
                margin=gate.margin,
                min_samples=gate.min_samples or self.burn_in,
                enabled=role != "off",
                on_fail=gate.on_fail,
                allow_no_data=gate.allow_no_data if allow_no_data is None else allow_no_data,
            )

        stands_in = (
            task == "classification"
            and g.agreement_until_labelled
            and g.agreement.role == g.accuracy.role == "required"
        )
        budget = self.budget()
        return JudgePolicy(
            alpha=budget["harm"],
            veto_alpha=budget["veto"],
            final=final,
            agreement_stands_in=stands_in,
            n_star=self.n_star,
            srm_alpha=budget["srm"],
            error_rate_slo=self.slo.error_rate,
            # In a shadow stage the challenger scores in micro-batches off the live path: its latencies
            # measure batch work, not what a user would wait. Latency is reported there and decides
            # (gate and SLO) only in canary steps, where the challenger answers inline.
            latency_p99_slo_ms=None if mode == "shadow" else self.slo.latency_p99_ms,
            latency_floor_ms=g.latency_floor_ms,
            regression_error_bound=g.regression_error_bound,
            slo_min_samples=self.slo.min_samples or self.burn_in,
            error_rate=spec(g.error_rate),
            latency_p99=spec(
                g.latency_p99,
                role="informational" if mode == "shadow" and g.latency_p99.role != "off" else None,
            ),
            # Standing in, agreement is a hold gate whose lack of data blocks nothing (accuracy decides).
            agreement=spec(g.agreement, role="guardrail", allow_no_data=True)
            if stands_in
            else spec(g.agreement)
            if task == "classification"
            else spec(g.agreement, role="off"),
            accuracy=spec(g.accuracy) if task == "classification" else spec(g.accuracy, role="off"),
            regression=spec(g.regression) if task == "regression" else spec(g.regression, role="off"),
            drift=spec(g.drift),
            # Coverage is the shadow sample's: it decides (as a required gate) only in shadow steps.
            coverage=spec(
                g.coverage,
                role="informational"
                if g.coverage.role == "guardrail" or (mode == "canary" and g.coverage.role != "off")
                else None,
            ),
            quality=self.quality_policy(task, mode, standing_in=stands_in and not final, classes=classes),
        )

    def quality_policy(
        self,
        task: Task,
        mode: Literal["shadow", "canary"],
        *,
        standing_in: bool = False,
        classes: tuple[str, ...] = (),
    ) -> quality.QualityPolicy:
        """Map ``metrics``, ``outcome`` and ``segments`` onto ``controller.core.metrics`` gates.

        ``standing_in``: agreement stands in for accuracy (unlabelled step), so a required
        class-aware metric is informational too.
        """
        from controller.core import metrics as quality

        m = self.metrics
        gates: list[quality.MetricSpec] = []

        def add(name: str, metric: Metric, **extra: Any) -> None:
            role = metric.role
            if role == "off":
                return
            if standing_in and role == "required" and name in quality.CLASS_METRICS:
                role = "informational"
            gates.append(
                quality.MetricSpec(
                    metric=name,
                    role=role,
                    margin=metric.margin,
                    min_samples=metric.min_samples or self.burn_in,
                    **extra,
                )
            )

        if task == "classification":
            add("balanced_accuracy", m.balanced_accuracy)
            add("macro_f1", m.macro_f1)
            for name, per_class in (("recall", m.recall), ("precision", m.precision)):
                for cls in per_class.classes or classes:
                    add(name, per_class, cls=str(cls))
            add("log_loss", m.log_loss)
            add("brier", m.brier)
            add("roc_auc", m.roc_auc, horizon=m.roc_auc.horizon)
        else:
            add("rmse", m.rmse)
            add("pinball", m.pinball, quantile=m.pinball.quantile)
        o = self.outcome
        if o.role != "off":
            # only canary-served requests have outcomes: in a shadow step (and the watch) the gate reports
            # no-data as information, it cannot block a step that can never measure it
            gates.append(
                quality.MetricSpec(
                    metric="outcome", role=o.role if mode == "canary" else "informational", margin=o.margin, min_samples=o.min_samples or self.burn_in,
                    direction=o.direction, ratio=o.ratio,
                )
            )  # fmt: skip
        segments = None
        if self.segments.columns:
            g = self.gates
            required: list[quality.MetricSpec] = []
            if task == "classification":
                if g.accuracy.role == "required":
                    required.append(quality.MetricSpec(metric="accuracy", margin=g.accuracy.margin))
                required += [s for s in gates if s.role == "required" and s.metric in quality.CLASS_METRICS]
            elif g.regression.role == "required":
                required.append(quality.MetricSpec(metric="mae", margin=g.regression.margin))
            segments = quality.SegmentPolicy(
                role=self.segments.role, min_samples=self.segments.min_samples, metrics=tuple(required)
            )
        return quality.QualityPolicy(gates=tuple(gates), segments=segments)


def _load_text(source: str | Path) -> dict[str, Any]:
    text: str
    path = Path(source) if isinstance(source, Path) or "\n" not in str(source) else None
    if path is not None and path.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            text = path.read_text()
        except OSError as error:
            raise PolicyError(f"cannot read policy file {path}: {error}") from error
    else:
        text = str(source)
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise PolicyError(
            f"policy is not valid JSON: line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    except yaml.YAMLError as error:
        raise PolicyError(f"policy is not valid YAML: {yaml_error_text(error)}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyError(f"a policy is a mapping of fields, got {type(data).__name__}")
    return data


def yaml_error_text(error: Exception) -> str:
    """``line 3, column 5: mapping values are not allowed here`` (PyYAML's mark is 0-based)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model at ``loc``'s parent (for "did you mean")."""
    model: Any = Policy
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _describe(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        path = ".".join(str(p) for p in e["loc"]) or "policy"
        message = e["msg"]
        ctx_error = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_error, PolicyError):
            parts.append(str(ctx_error))
            continue
        if e["type"] == "extra_forbidden":
            known = _known_fields(tuple(e["loc"]))
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            message = (
                f"unknown field; did you mean {close[0]}?"
                if close
                else f"unknown field; known: {', '.join(known)}"
            )
        message = message.removeprefix("Value error, ")
        parts.append(f"{path}: {message}")
    return "; ".join(parts)
