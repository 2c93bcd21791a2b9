"""Online versus offline: does each arm reproduce its research quality, and have the inputs drifted?

Pure: numbers in, frozen results out; no database, web or clock. The controller loop and the report
call these on SQL aggregates (``storage.repro_queries``) and the version's registered offline metrics
and input profile.

Online versus offline (``compare_online_offline``)
--------------------------------------------------
Classification compares online accuracy (k correct of n labelled rows the arm scored) with the
registered holdout accuracy; regression compares the online mean absolute error with the holdout MAE.
The question is one of non-inferiority with the policy's tolerance ``margin``:

* accuracy: d = online - offline; "worse" when the interval's upper end is below -margin (online is
  proven worse than offline by more than the margin), "reproduced" when its lower end is at or above
  -margin (proven not worse than that). The interval is Newcombe's hybrid score interval (built from
  the Wilson intervals of both proportions) when the holdout size is registered, so the holdout's own
  sampling error counts; else the Wilson interval of the online accuracy, offline taken as exact.
* MAE: r = online MAE - offline MAE against the limit margin * offline MAE (a relative tolerance);
  the interval is Welch's t interval, with the holdout's variance of |error| taken from its RMSE and
  MAE (var|e| = RMSE^2 - MAE^2) when both and the holdout size are registered.
* otherwise "not-enough-labels", with ``labels_needed``: how many more labels would decide it if the
  observed difference held (normal approximation; None when no number of online labels can, because
  the holdout is too small for the margin or the difference sits exactly on the margin).
* "no-baseline": the version has no registered offline metric for this task.

Null hypothesis of the "worse" decision: online quality is within the margin of offline. The
intervals are fixed-n intervals at level ``confidence`` recomputed at each look; looking often
inflates the false-alarm rate, hence the default confidence of 0.99 and the burn-in ``min_labels``.

Input drift (``input_drift``)
-----------------------------
Per registered feature, between the input profile captured at registration (holdout or sample) and
a bounded sample of live raw inputs: the change in missing rate (with Newcombe's interval), the
share of numeric values outside the profiled [min, max], categories never seen in the profile, and
the population stability index over the profile's bins (quantile bins for numbers; categories plus
"other" for categories) with its noise floor from ``controller.core.stats.psi_from_counts``. A feature has
"drifted" when its PSI exceeds both the noise threshold and ``psi_threshold`` (default 0.1), or its
missing rate moved by more than ``missing_tolerance`` (the whole interval beyond it), or more than
``share_tolerance`` of its values are out of range or unseen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from controller.core import stats
from controller.core.judge import Judgement, Outcome, Verdict

ReproOutcome = Literal["reproduced", "worse", "not-enough-labels", "no-baseline"]

__all__ = [
    "CONTROLLED",
    "ArmOnline",
    "FeatureDrift",
    "InputDrift",
    "Reproduction",
    "compare_online_offline",
    "compare_with_control",
    "gate",
    "input_drift",
    "report_section",
]

_OUTCOME = {
    "reproduced": Outcome.PASS,
    "worse": Outcome.FAIL,
    "not-enough-labels": Outcome.NO_DATA,
    "no-baseline": Outcome.NO_DATA,
}


@dataclass(frozen=True, kw_only=True)
class ArmOnline:
    """Labelled online results of one arm: the sufficient statistics, as SQL sums them.

    ``labelled``: rows with a label that this arm scored without error. Classification: ``correct``.
    Regression: ``abs_error_sum`` and ``abs_error_sq_sum`` (sums of |value - label| and its square).
    """

    arm: str
    version: str
    labelled: int
    correct: int = 0
    abs_error_sum: float = 0.0
    abs_error_sq_sum: float = 0.0

    def __post_init__(self) -> None:
        if self.labelled < 0 or not 0 <= self.correct <= max(self.labelled, 0):
            raise ValueError(f"need 0 <= correct <= labelled, got {self.correct} of {self.labelled}")


@dataclass(frozen=True)
class Reproduction:
    """One arm's online-versus-offline verdict.

    ``difference``: online - offline (accuracy points, or MAE units); ``interval``: its interval;
    ``limit``: the tolerated difference (-margin for accuracy, +margin * offline MAE for MAE);
    ``labels_needed``: more labels expected to decide, when not decided yet.
    """

    arm: str
    version: str
    metric: Literal["accuracy", "mae"]
    outcome: ReproOutcome
    offline: float | None
    online: float | None
    difference: float | None
    interval: stats.Interval | None
    margin: float
    limit: float | None
    labels: int
    labels_needed: int | None
    holdout_size: int | None
    reason: str

    def to_verdict(self, *, role: str = "guardrail") -> Verdict:
        """Express as a judge Verdict (reproduced = pass, worse = fail, otherwise no-data) for the loop."""
        nan = math.nan
        interval = self.interval
        bound = nan
        if interval is not None:
            # The bound that decided: towards harm when worse, else towards "not worse".
            harm_side_upper = self.metric == "accuracy"
            worse = self.outcome == "worse"
            bound = interval.upper if harm_side_upper == worse else interval.lower
        return Verdict(
            gate=f"reproducibility.{self.arm}",
            role=role,
            outcome=_OUTCOME[self.outcome],
            statistic=nan,
            bound=float(bound),
            effect=nan if self.difference is None else self.difference,
            margin=self.margin,
            n_champion=self.labels if self.arm in ("champion", CONTROLLED) else 0,
            n_challenger=self.labels if self.arm in ("challenger", CONTROLLED) else 0,
            reason=self.reason,
            interval=interval,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["interval"] = None if self.interval is None else [self.interval.lower, self.interval.upper]
        return _finite(data)


def compare_online_offline(
    task: str,
    offline_metrics: Mapping[str, Any],
    online: ArmOnline,
    *,
    accuracy_margin: float = 0.02,
    mae_margin: float = 0.10,
    confidence: float = 0.99,
    min_labels: int = 100,
) -> Reproduction:
    """Decide whether one arm's labelled online quality reproduces its registered offline quality.

    ``accuracy_margin``: tolerated absolute accuracy drop (0.02 = two points); ``mae_margin``:
    tolerated relative MAE increase (0.10 = 10%); ``min_labels``: labels before anything is decided.
    """
    if not 0.5 < confidence < 1.0:
        raise ValueError("confidence must lie in (0.5, 1)")
    holdout = offline_metrics.get("holdout_size")
    m = int(holdout) if isinstance(holdout, int | float) and holdout > 0 else None
    if task == "classification":
        return _accuracy(offline_metrics, online, m, accuracy_margin, confidence, min_labels)
    return _mae(offline_metrics, online, m, mae_margin, confidence, min_labels)


def _z(confidence: float) -> float:
    return float(sps.norm.ppf(0.5 + confidence / 2.0))


def _needed(n: int, variance_per_label: float, gap: float, offline_variance: float, z: float) -> int | None:
    """Labels still needed so that z * sqrt(v/n + v_off) <= |gap|; None if no n reaches it."""
    room = gap * gap - z * z * offline_variance
    if room <= 0 or variance_per_label <= 0:
        return None
    return max(int(math.ceil(z * z * variance_per_label / room)) - n, 1)


def _accuracy(
    offline_metrics: Mapping[str, Any],
    online: ArmOnline,
    m: int | None,
    margin: float,
    confidence: float,
    min_labels: int,
) -> Reproduction:
    base = offline_metrics.get("accuracy")
    n, k = online.labelled, online.correct
    common: dict[str, Any] = {
        "arm": online.arm,
        "version": online.version,
        "metric": "accuracy",
        "margin": margin,
        "limit": -margin,
        "labels": n,
        "holdout_size": m,
    }
    if not isinstance(base, int | float) or not 0.0 <= base <= 1.0:
        return Reproduction(
            outcome="no-baseline",
            offline=None,
            online=k / n if n else None,
            difference=None,
            interval=None,
            labels_needed=None,
            reason="no offline accuracy registered",
            **common,
        )
    p0 = float(base)
    z = _z(confidence)
    offline_var = p0 * (1 - p0) / m if m else 0.0
    if n == 0:
        needed = _needed(0, max(p0 * (1 - p0), 1e-4), margin, offline_var, z)
        return Reproduction(
            outcome="not-enough-labels",
            offline=p0,
            online=None,
            difference=None,
            interval=None,
            labels_needed=max(needed or 0, min_labels) if needed is not None else None,
            reason="no labelled rows yet",
            **common,
        )
    p = k / n
    d = p - p0
    if m:
        interval = stats.newcombe_interval(k, n, int(round(p0 * m)), m, confidence=confidence)
    else:
        w = stats.wilson_interval(k, n, confidence=confidence)
        interval = stats.Interval(float(w.lower) - p0, float(w.upper) - p0)
    lo, hi = float(interval.lower), float(interval.upper)
    shown = f"online accuracy {p:.4f} ({k}/{n}) vs offline {p0:.4f}" + (f" (holdout {m})" if m else "")
    ci = f"{confidence:.0%} interval of the difference [{lo:+.4f}, {hi:+.4f}]"
    if n < min_labels:
        needed = _needed(n, max(p * (1 - p), 1e-4), d + margin, offline_var, z)
        return Reproduction(
            outcome="not-enough-labels",
            offline=p0,
            online=p,
            difference=d,
            interval=interval,
            labels_needed=max(min_labels - n, needed or 0),
            reason=f"burn-in: {n} of {min_labels} labels; {shown}",
            **common,
        )
    if hi < -margin:
        return Reproduction(
            outcome="worse",
            offline=p0,
            online=p,
            difference=d,
            interval=interval,
            labels_needed=None,
            reason=f"{shown}: worse than offline by more than {margin:g} ({ci})",
            **common,
        )
    if lo >= -margin:
        return Reproduction(
            outcome="reproduced",
            offline=p0,
            online=p,
            difference=d,
            interval=interval,
            labels_needed=None,
            reason=(
                f"{shown}: BETTER than offline by more than {margin:g} ({ci}); flagged, not reproduced: "
                "check the offline metrics (leakage, another holdout) and the labels"
                if lo > margin
                else f"{shown}: reproduced within {margin:g} ({ci})"
            ),
            **common,
        )
    needed = _needed(n, max(p * (1 - p), 1e-4), d + margin, offline_var, z)
    why = (
        f"about {needed} more labels would decide it if the difference holds"
        if needed is not None
        else "no number of online labels decides it at this margin and holdout size"
    )
    return Reproduction(
        outcome="not-enough-labels",
        offline=p0,
        online=p,
        difference=d,
        interval=interval,
        labels_needed=needed,
        reason=f"{shown}: undecided ({ci}); {why}",
        **common,
    )


def _mae(
    offline_metrics: Mapping[str, Any],
    online: ArmOnline,
    m: int | None,
    margin: float,
    confidence: float,
    min_labels: int,
) -> Reproduction:
    base = offline_metrics.get("mae")
    n = online.labelled
    if not isinstance(base, int | float) or base < 0:
        return Reproduction(
            online.arm,
            online.version,
            "mae",
            "no-baseline",
            None,
            online.abs_error_sum / n if n else None,
            None,
            None,
            margin,
            None,
            n,
            None,
            m,
            "no offline MAE registered",
        )
    mae0 = float(base)
    limit = margin * mae0
    rmse = offline_metrics.get("rmse")
    offline_var = 0.0
    if m and isinstance(rmse, int | float) and rmse >= mae0:
        offline_var = (float(rmse) ** 2 - mae0**2) / m
    z = _z(confidence)
    common: dict[str, Any] = {
        "arm": online.arm,
        "version": online.version,
        "metric": "mae",
        "margin": margin,
        "limit": limit,
        "labels": n,
        "holdout_size": m,
    }
    if n == 0:
        guess = (float(rmse) ** 2 - mae0**2) if isinstance(rmse, int | float) and rmse >= mae0 else mae0**2
        needed = _needed(0, guess, limit, offline_var, z)
        return Reproduction(
            outcome="not-enough-labels",
            offline=mae0,
            online=None,
            difference=None,
            interval=None,
            labels_needed=max(needed or 0, min_labels) if needed is not None else None,
            reason="no labelled rows yet",
            **common,
        )
    mae = online.abs_error_sum / n
    var = max(online.abs_error_sq_sum / n - mae * mae, 0.0) * (n / (n - 1)) if n > 1 else math.inf
    d = mae - mae0
    se2 = var / n + offline_var
    if math.isfinite(se2):
        # Welch-Satterthwaite degrees of freedom; the holdout's side counts only when it is known.
        parts = [(var / n) ** 2 / max(n - 1, 1)] + (
            [offline_var**2 / (m - 1)] if m and m > 1 and offline_var else []
        )
        df = se2 * se2 / sum(parts) if sum(parts) > 0 else float(max(n - 1, 1))
        t = float(sps.t.ppf(0.5 + confidence / 2.0, df))
        half = t * math.sqrt(se2)
    else:
        half = math.inf
    interval = stats.Interval(d - half, d + half)
    shown = f"online MAE {mae:.4g} ({n} labels) vs offline {mae0:.4g}" + (f" (holdout {m})" if m else "")
    ci = f"{confidence:.0%} interval of the difference [{d - half:+.4g}, {d + half:+.4g}]"
    if n < min_labels:
        needed = _needed(n, var if math.isfinite(var) else mae0**2, limit - d, offline_var, z)
        return Reproduction(
            outcome="not-enough-labels",
            offline=mae0,
            online=mae,
            difference=d,
            interval=interval,
            labels_needed=max(min_labels - n, needed or 0),
            reason=f"burn-in: {n} of {min_labels} labels; {shown}",
            **common,
        )
    if d - half > limit:
        return Reproduction(
            outcome="worse",
            offline=mae0,
            online=mae,
            difference=d,
            interval=interval,
            labels_needed=None,
            reason=f"{shown}: worse than offline by more than {margin:.0%} ({ci})",
            **common,
        )
    if d + half <= limit:
        return Reproduction(
            outcome="reproduced",
            offline=mae0,
            online=mae,
            difference=d,
            interval=interval,
            labels_needed=None,
            reason=(
                f"{shown}: BETTER than offline by more than {margin:.0%} ({ci}); flagged, not reproduced: "
                "check the offline metrics (leakage, another holdout) and the labels"
                if d + half < -limit
                else f"{shown}: reproduced within {margin:.0%} ({ci})"
            ),
            **common,
        )
    needed = _needed(n, var, limit - d, offline_var, z)
    why = (
        f"about {needed} more labels would decide it if the difference holds"
        if needed is not None
        else "no number of online labels decides it at this margin and holdout size"
    )
    return Reproduction(
        outcome="not-enough-labels",
        offline=mae0,
        online=mae,
        difference=d,
        interval=interval,
        labels_needed=needed,
        reason=f"{shown}: undecided ({ci}); {why}",
        **common,
    )


def gate(
    judgement: Judgement,
    reproductions: Sequence[Reproduction],
    *,
    role: Literal["guardrail", "informational"] = "guardrail",
    on_worse: Literal["hold", "rollback"] = "hold",
) -> Judgement:
    """Add the arms' online-versus-offline verdicts to a step's judgement and let a worse challenger act.

    The challenger's verdict takes ``role``; the champion's is informational (it explains, it does not
    decide: a champion worse than its own offline metrics points at a data shift, not at the new
    pipeline). When the champion-controlled comparison (``compare_with_control``, arm
    ``CONTROLLED``) is among the reproductions with both baselines, it decides instead and both arms' own verdicts are
    informational, so a population shift that moves both arms alike holds nothing. A challenger proven
    worse holds the step (a "promote" becomes "continue") or, with ``on_worse="rollback"``, rolls back
    unless a veto already decided. Undecided arms change nothing.
    """
    controlled = any(r.arm == CONTROLLED and r.outcome != "no-baseline" for r in reproductions)
    deciding = CONTROLLED if controlled else "challenger"
    verdicts = [r.to_verdict(role=role if r.arm == deciding else "informational") for r in reproductions]
    worse = [r for r in reproductions if r.arm == deciding and r.outcome == "worse" and role == "guardrail"]
    decision, reason = judgement.decision, judgement.reason
    if worse and decision != "veto":
        why = f"challenger does not reproduce its offline quality: {worse[0].reason}"
        if on_worse == "rollback":
            decision, reason = "rollback", why
        elif decision == "promote":
            decision, reason = "continue", why + "; holding"
    outcome = Outcome.FAIL if worse else judgement.outcome
    return Judgement(decision, outcome, (*judgement.verdicts, *verdicts), reason, judgement.summary)


# ------------------------------------------------------------------------ online versus offline, controlled

CONTROLLED = "challenger-vs-champion"
"""``Reproduction.arm`` of the champion-controlled comparison (``compare_with_control``)."""


def _offline_accuracy(metrics: Mapping[str, Any]) -> tuple[float, int | None] | None:
    base = metrics.get("accuracy")
    if not isinstance(base, int | float) or not 0.0 <= base <= 1.0:
        return None
    h = metrics.get("holdout_size")
    return float(base), (int(h) if isinstance(h, int | float) and h > 0 else None)


def _offline_mae(metrics: Mapping[str, Any]) -> tuple[float, float] | None:
    """Return (offline MAE, variance of that MAE from the holdout: (RMSE^2 - MAE^2)/m, else 0)."""
    base = metrics.get("mae")
    if not isinstance(base, int | float) or base < 0:
        return None
    h, rmse = metrics.get("holdout_size"), metrics.get("rmse")
    var = 0.0
    if isinstance(h, int | float) and h > 0 and isinstance(rmse, int | float) and rmse >= base:
        var = (float(rmse) ** 2 - float(base) ** 2) / float(h)
    return float(base), var


def compare_with_control(
    task: str,
    champion_offline: Mapping[str, Any],
    challenger_offline: Mapping[str, Any],
    champion: ArmOnline,
    challenger: ArmOnline,
    *,
    accuracy_margin: float = 0.02,
    mae_margin: float = 0.10,
    alpha: float = 0.01,
    n_star: float = 5000.0,
    min_labels: int = 100,
) -> Reproduction:
    """Decide whether the challenger's online-minus-offline gap is worse than the champion's, always valid.

    The champion is the control: a population shift moves both arms' online quality, so the quantity
    judged is G = (challenger online - challenger offline) - (champion online - champion offline), the
    difference in differences. Accuracy: "worse" when G < -``accuracy_margin`` is proven, "reproduced"
    when G >= -margin is proven. MAE: G = challenger's MAE gap minus the champion's, against the limit
    ``mae_margin`` x the challenger's offline MAE (worse above it).

    Null hypothesis of "worse": G is within the margin. The online difference is bounded by a
    one-sided asymptotic confidence sequence at alpha/2 (``stats.confidence_sequence``, valid at every
    look), with the Farrington–Manning variance at the boundary for accuracy (unpaired: conservative
    when the arms scored the same requests) and Welch's variance for MAE; the offline difference by a
    fixed-n normal interval at alpha/2 from the holdout sizes (taken as exact without one). By the
    union bound the decision errs with probability at most alpha however often it is looked at.
    """
    n1, n2 = champion.labelled, challenger.labelled
    common: dict[str, Any] = {"arm": CONTROLLED, "version": f"{challenger.version} vs {champion.version}"}
    z_off = float(sps.norm.ppf(1.0 - alpha / 2.0))
    limit: float | None
    if task == "classification":
        b1, b2 = _offline_accuracy(champion_offline), _offline_accuracy(challenger_offline)
        metric: Literal["accuracy", "mae"] = "accuracy"
        margin, limit = accuracy_margin, -accuracy_margin
    else:
        m1, m2 = _offline_mae(champion_offline), _offline_mae(challenger_offline)
        metric, margin = "mae", mae_margin
        limit = None if m2 is None else mae_margin * m2[0]
    labels = min(n1, n2)
    base: dict[str, Any] = {
        "metric": metric,
        "margin": margin,
        "limit": limit,
        "labels": labels,
        "holdout_size": None,
    }
    missing = (b1 is None or b2 is None) if task == "classification" else (m1 is None or m2 is None)
    if missing:
        return Reproduction(
            outcome="no-baseline",
            offline=None,
            online=None,
            difference=None,
            interval=None,
            labels_needed=None,
            reason="both arms need a registered offline metric for the controlled comparison",
            **common,
            **base,
        )
    if labels < max(min_labels, 2):
        return Reproduction(
            outcome="not-enough-labels",
            offline=None,
            online=None,
            difference=None,
            interval=None,
            labels_needed=max(min_labels, 2) - labels,
            reason=f"burn-in: {labels} of {min_labels} labels in the smaller arm",
            **common,
            **base,
        )
    assert limit is not None
    if task == "classification":
        assert b1 is not None and b2 is not None
        (p1_off, h1), (p2_off, h2) = b1, b2
        off = p2_off - p1_off
        off_half = z_off * math.sqrt(
            (p1_off * (1 - p1_off) / h1 if h1 else 0.0) + (p2_off * (1 - p2_off) / h2 if h2 else 0.0)
        )
        on = challenger.correct / n2 - champion.correct / n1
        null_on = min(max(off + limit, -0.999), 0.999)  # online difference at the boundary G = -margin
        se = math.sqrt(
            stats.farrington_manning(champion.correct, n1, challenger.correct, n2, null=null_on).variance
        )
        offline_shown = f"offline {p2_off:.4f} vs {p1_off:.4f}"
        online_shown = f"online {challenger.correct / n2:.4f} vs {champion.correct / n1:.4f}"
    else:
        assert m1 is not None and m2 is not None and limit is not None
        (mae1_off, v1_off), (mae2_off, v2_off) = m1, m2
        off = mae2_off - mae1_off
        off_half = z_off * math.sqrt(v1_off + v2_off)
        mae1, mae2 = champion.abs_error_sum / n1, challenger.abs_error_sum / n2
        var1 = max(champion.abs_error_sq_sum / n1 - mae1 * mae1, 0.0) * n1 / (n1 - 1)
        var2 = max(challenger.abs_error_sq_sum / n2 - mae2 * mae2, 0.0) * n2 / (n2 - 1)
        on = mae2 - mae1
        se = math.sqrt(var1 / n1 + var2 / n2)
        offline_shown = f"offline MAE {mae2_off:.4g} vs {mae1_off:.4g}"
        online_shown = f"online MAE {mae2:.4g} vs {mae1:.4g}"
    cs_lo = stats.confidence_sequence(on, se, n1 + n2, alpha=alpha / 2.0, n_star=n_star, side="greater").lower
    cs_hi = stats.confidence_sequence(on, se, n1 + n2, alpha=alpha / 2.0, n_star=n_star, side="lesser").upper
    g = on - off
    interval = stats.Interval(cs_lo - (off + off_half), cs_hi - (off - off_half))
    shown = (
        f"challenger's gap minus the champion's {g:+.4g} ({online_shown}; {offline_shown}); "
        f"always-valid bounds [{interval.lower:+.4g}, {interval.upper:+.4g}]"
    )
    if task == "classification":
        worse, ok = interval.upper < limit, interval.lower >= limit
    else:
        worse, ok = interval.lower > limit, interval.upper <= limit
    outcome: ReproOutcome = "worse" if worse else "reproduced" if ok else "not-enough-labels"
    word = {"worse": "worse than the champion's gap by more than", "reproduced": "within"}.get(outcome)
    reason = f"{shown}: {word} the margin {limit:+.4g}" if word else f"{shown}: undecided"
    return Reproduction(
        outcome=outcome,
        offline=off,
        online=on,
        difference=g,
        interval=interval,
        labels_needed=None,
        reason=reason,
        **common,
        **base,
    )


# -------------------------------------------------------------------------------------------- drift


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one input feature between the registered profile and live inputs.

    ``status``: "stable", "drifted" or "no-data"; ``reasons`` says what moved. ``missing_interval``:
    interval of the missing-rate change (live - profile). ``psi_threshold``: the noise threshold of the
    PSI at these sample sizes (a PSI below it is sampling noise).
    """

    feature: str
    kind: str  # "numeric" | "categorical"
    status: Literal["stable", "drifted", "no-data"]
    live_rows: int
    missing_rate_profile: float | None
    missing_rate_live: float | None
    missing_interval: tuple[float, float] | None
    out_of_range_share: float | None
    unseen_share: float | None
    unseen_categories: tuple[str, ...]
    psi: float | None
    psi_noise_floor: float | None
    psi_threshold: float | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class InputDrift:
    """Per-feature drift of a sample of live inputs against the registered profile."""

    profile_rows: int
    live_rows: int
    features: tuple[FeatureDrift, ...]

    @property
    def drifted(self) -> tuple[str, ...]:
        return tuple(f.feature for f in self.features if f.status == "drifted")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["drifted"] = list(self.drifted)
        return _finite(data)


def input_drift(
    profile: Mapping[str, Any] | None,
    rows: Sequence[Mapping[str, Any]],
    *,
    psi_threshold: float = 0.1,
    missing_tolerance: float = 0.02,
    share_tolerance: float = 0.01,
    confidence: float = 0.99,
    min_rows: int = 30,
    max_unseen: int = 10,
) -> InputDrift:
    """Compare live raw input rows (column → value dicts) with the registered input profile, per feature.

    Missing values are None or NaN (what stored raw inputs hold). Features in the profile but absent
    from every live row count as entirely missing.
    """
    columns = (profile or {}).get("columns") or {}
    profile_rows = int((profile or {}).get("rows") or 0)
    results = []
    for name, entry in columns.items():
        values = [r.get(name) for r in rows]
        results.append(
            _feature(
                str(name),
                entry,
                values,
                profile_rows,
                psi_threshold=psi_threshold,
                missing_tolerance=missing_tolerance,
                share_tolerance=share_tolerance,
                confidence=confidence,
                min_rows=min_rows,
                max_unseen=max_unseen,
            )
        )
    return InputDrift(profile_rows, len(rows), tuple(results))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _feature(
    name: str,
    entry: Mapping[str, Any],
    values: list[Any],
    profile_rows: int,
    *,
    psi_threshold: float,
    missing_tolerance: float,
    share_tolerance: float,
    confidence: float,
    min_rows: int,
    max_unseen: int,
) -> FeatureDrift:
    kind = str(entry.get("kind", "numeric"))
    n = len(values)
    base_missing = entry.get("missing_rate")
    empty = FeatureDrift(
        name,
        kind,
        "no-data",
        n,
        base_missing,
        None,
        None,
        None,
        None,
        (),
        None,
        None,
        None,
        (f"{n} live rows, fewer than {min_rows}",),
    )
    if n < min_rows:
        return empty
    present = [v for v in values if not _missing(v)]
    live_missing = 1.0 - len(present) / n
    missing_interval: tuple[float, float] | None = None
    reasons: list[str] = []
    if isinstance(base_missing, int | float):
        # Newcombe's interval of the change (live - profile): both samples' noise counts.
        if profile_rows > 0:
            ref_missing = int(round(float(base_missing) * profile_rows))
            w = stats.newcombe_interval(n - len(present), n, ref_missing, profile_rows, confidence=confidence)
        else:
            live_w = stats.wilson_interval(n - len(present), n, confidence=confidence)
            w = stats.Interval(float(live_w.lower) - base_missing, float(live_w.upper) - base_missing)
        missing_interval = (float(w.lower), float(w.upper))
        # Proven to have moved by more than the tolerance (as the gates prove harm beyond a margin).
        if missing_interval[0] > missing_tolerance or missing_interval[1] < -missing_tolerance:
            reasons.append(f"missing rate {base_missing:.1%} -> {live_missing:.1%}")
    out_of_range = unseen_share = None
    unseen: tuple[str, ...] = ()
    psi_value = floor = threshold = None
    expected_n = max(profile_rows * (1.0 - float(base_missing or 0.0)), 0.0)
    if kind == "numeric" and entry.get("edges"):
        numbers = np.array([_number(v) for v in present], dtype=float)
        numbers = numbers[~np.isnan(numbers)]
        lo, hi = float(entry["min"]), float(entry["max"])
        if numbers.size:
            out_of_range = float(np.mean((numbers < lo) | (numbers > hi)))
            if out_of_range > share_tolerance:
                reasons.append(f"{out_of_range:.1%} of values outside the profiled range [{lo:g}, {hi:g}]")
            edges = np.asarray(entry["edges"], dtype=float)
            if edges.size >= 2 and expected_n > 0:
                expected = np.asarray(entry["shares"], dtype=float) * expected_n
                actual = stats.histogram_counts(numbers, edges)
                result = stats.psi_from_counts(expected, actual)
                psi_value, floor, threshold = result.psi, result.noise_floor, result.threshold
    elif kind == "categorical":
        shares = {str(k): float(v) for k, v in (entry.get("shares") or {}).items()}
        texts = [_category(v) for v in present]
        if texts:
            seen = [t for t in texts if t in shares]
            unseen_counts: dict[str, int] = {}
            for t in texts:
                if t not in shares:
                    unseen_counts[t] = unseen_counts.get(t, 0) + 1
            unseen_share = 1.0 - len(seen) / len(texts)
            unseen = tuple(sorted(unseen_counts, key=lambda c: -unseen_counts[c])[:max_unseen])
            truncated = sum(shares.values()) < 0.999  # the profile kept only the most frequent categories
            if unseen_share > share_tolerance and not truncated:
                reasons.append(
                    f"{unseen_share:.1%} of values are categories never seen in research: "
                    + ", ".join(unseen)
                )
            if expected_n > 0 and shares:
                cats = list(shares)
                expected = (
                    np.array([shares[c] for c in cats] + [max(1.0 - sum(shares.values()), 0.0)]) * expected_n
                )
                counts = {c: 0 for c in cats}
                other = 0
                for t in texts:
                    if t in counts:
                        counts[t] += 1
                    else:
                        other += 1
                actual = np.array([counts[c] for c in cats] + [other], dtype=float)
                result = stats.psi_from_counts(expected, actual)
                psi_value, floor, threshold = result.psi, result.noise_floor, result.threshold
    if psi_value is not None and threshold is not None and psi_value > max(threshold, psi_threshold):
        reasons.append(f"PSI {psi_value:.3f} above {max(threshold, psi_threshold):.3f}")
    return FeatureDrift(
        feature=name,
        kind=kind,
        status="drifted" if reasons else "stable",
        live_rows=n,
        missing_rate_profile=None if base_missing is None else float(base_missing),
        missing_rate_live=live_missing,
        missing_interval=missing_interval,
        out_of_range_share=out_of_range,
        unseen_share=unseen_share,
        unseen_categories=unseen,
        psi=psi_value,
        psi_noise_floor=floor,
        psi_threshold=threshold,
        reasons=tuple(reasons),
    )


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _category(value: Any) -> str:
    """Spell a live value as the profile does (pandas' astype(str)): True, 3, 2.5, plain text."""
    return str(value)


def report_section(
    parity_reports: Sequence[Mapping[str, Any]],
    reproductions: Sequence[Reproduction],
    drift: InputDrift | None,
    *,
    drift_against: str | None = None,
) -> dict[str, Any]:
    """Assemble the report's "reproducibility" section: parity, environment, online vs offline, input drift.

    ``parity_reports``: the stored parity reports of the rollout's challenger in time order (from the
    creation event and any router's "parity_failed" event); a failure anywhere makes the status "fail".
    ``drift_against``: the version whose registered profile the live inputs were compared with.
    """
    failed = [p for p in parity_reports if p.get("checked") and not p.get("passed")]
    checked = [p for p in parity_reports if p.get("checked")]
    parity = failed[-1] if failed else (checked[-1] if checked else None)
    status = "fail" if failed else ("pass" if checked else "not_checked")
    parts = [
        str(parity["message"])
        if parity is not None
        else "parity not yet checked: the challenger has no golden set, or the rollout was started without the gate"
    ]
    worse = [r for r in reproductions if r.outcome == "worse"]
    parts += [f"{r.arm} {r.version}: {r.reason}" for r in worse]
    if drift is not None and drift.drifted:
        parts.append(
            "input drift in "
            + ", ".join(drift.drifted)
            + " (a metric gap may come from the data rather than the pipeline)"
        )
    env = [] if parity is None else list(parity.get("environment_differences") or [])
    return _finite(
        {
            "status": status,
            "message": "; ".join(parts),
            "parity": None
            if parity is None
            else {
                k: parity.get(k)
                for k in (
                    "version",
                    "checked",
                    "passed",
                    "rows_checked",
                    "mismatched_rows",
                    "mismatches",
                    "decoding_summary",
                    "notes",
                    "error",
                    "rtol",
                )
            },
            "environment": {
                "research": None if parity is None else parity.get("research_environment"),
                "serving": None if parity is None else parity.get("serving_environment"),
                "differences": env,
            },
            "online_vs_offline": [r.to_dict() for r in reproductions],
            "input_drift": None if drift is None else {**drift.to_dict(), "against": drift_against},
        }
    )


def _finite(value: Any) -> Any:
    """Replace NaN and infinities by None, recursively (JSON and PostgreSQL's jsonb refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if hasattr(value, "item"):
        return _finite(value.item())
    return value
