"""The verdict sentence: one line a person can act on, for every phase of a rollout.

    sentence = verdict_sentence(rollout, latest_analysis, events=rollout_events)
    # "Rolled back at 12:04 UTC: accuracy 3.1 points worse than the champion (at least 1.9 worse,
    #  95% always-valid), beyond the 1-point margin, after 1,400 labelled pairs."

It heads the comparison report, ``mlcanary rollout status`` and the admin API's deployment document
(field ``verdict``), so all three say the same thing. Every number comes from the analysis the control
loop stored (the verdicts the judge returned and the decision the state machine took); nothing here
re-decides. Pure: entities in, a string out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from controller.core.plan import Stage, stored_plan
from storage.entities import Analysis, Event, Rollout

__all__ = ["VERDICT_EVENTS", "gate_phrase", "stage_name", "verdict_event_actions", "verdict_sentence"]

ACTOR = "controller"  # controller.loop.control.ACTOR: who signs the loop's own decisions

# The one event each phase's sentence reads (who rolled back, aborted, promoted, paused; when the watch began)
VERDICT_EVENTS = {
    "rolled_back": "rollout.rollback",
    "aborted": "rollout.abort",
    "promoted": "rollout.promote",
    "watching": "rollout.watch",
    "paused": "rollout.pause",
}


def verdict_event_actions(rollout: Rollout) -> tuple[str, ...]:
    """Return the event actions ``verdict_sentence`` reads for this rollout's phase (its latest one is enough)."""
    action = VERDICT_EVENTS.get(rollout.phase)
    return (action,) if action else ()


def _num(value: float, digits: int = 1) -> str:
    """A number for a sentence: thousands separated, trailing zeros dropped ("1", "1.5", "1,400")."""
    text = f"{value:,.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _count(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) and math.isfinite(value) else "?"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _interval(v: Mapping[str, Any]) -> tuple[float, float] | None:
    interval = v.get("interval")
    if isinstance(interval, Mapping):
        lo, hi = _finite(interval.get("lower")), _finite(interval.get("upper"))
    elif isinstance(interval, list | tuple) and len(interval) == 2:
        lo, hi = _finite(interval[0]), _finite(interval[1])
    else:
        return None
    return None if lo is None or hi is None else (lo, hi)


def _level(alpha: float) -> str:
    return f"{_num(100 * (1 - alpha), 1)}% always-valid"


def _when(at: datetime | None, since: datetime | None = None) -> str:
    """Clock time in UTC; the date too when it differs from ``since``'s (a rollout spanning days)."""
    if at is None:
        return "an unknown time"
    at_utc = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    text = at_utc.strftime("%H:%M UTC")
    if since is not None:
        since_utc = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
        if since_utc.date() != at_utc.date():
            text = at_utc.strftime("%Y-%m-%d %H:%M UTC")
    return text


def stage_name(stage: Stage) -> str:
    """Name a plan stage as people say it: "shadow" or "canary 25%"."""
    return "shadow" if stage.kind == "shadow" else f"canary {_num(stage.weight, 2)}%"


def gate_phrase(v: Mapping[str, Any], *, alpha: float = 0.05) -> str:
    """Describe one stored verdict (``controller.loop.assess.verdict_dict``) in words, with its numbers.

    Accuracy, error rate, agreement and the regression (MAE) and latency gates get a sentence in their
    own unit: the observed effect, the always-valid bound on the side that matters, the margin and n.
    Other gates (vetoes, drift, class-aware metrics) are named with the judge's own reason.
    """
    gate = str(v.get("gate", "?"))
    outcome = str(v.get("outcome", "unknown"))
    effect, margin = _finite(v.get("effect")), _finite(v.get("margin"))
    bounds = _interval(v)
    n = v.get("n_challenger")
    level = _level(alpha)
    if outcome == "no-data" or effect is None or margin is None:
        reason = str(v.get("reason", "")) or "no data yet"
        return f"{gate} has no verdict yet ({reason})"
    failed = outcome == "fail"
    within = "beyond" if failed else ("within" if outcome == "pass" else "not yet shown within")
    if gate in ("accuracy", "error_rate"):
        # accuracy: effect and bounds are challenger - champion (higher is better), margin a fraction;
        # error rate: challenger - champion (lower is better)
        better_up = gate == "accuracy"
        good = effect >= 0 if better_up else effect <= 0
        size = _num(abs(effect) * 100)
        name = "accuracy" if better_up else "error rate"
        word = ("better" if good else "worse") if better_up else ("lower" if good else "higher")
        than = "the champion" if better_up else "the champion's"
        text = f"{name} {size} points {word} than {than}"
        if effect == 0:
            text = f"{name} equal to {than}"
        if bounds:
            # the side that decides: fail -> the bound nearest to zero harm; else the worst plausible
            worst = bounds[0] if better_up else bounds[1]
            best_harm = bounds[1] if better_up else bounds[0]
            edge = best_harm if failed else worst
            bad = edge < 0 if better_up else edge > 0
            bad_word = ("worse" if better_up else "higher") if bad else ("better" if better_up else "lower")
            lead = "at least" if failed else "at worst"
            text += f" ({lead} {_num(abs(edge) * 100)} {bad_word}, {level})"
        text += f", {within} the {_num(margin * 100)}-point margin"
        unit = "labelled pairs" if better_up else "requests"
        return text + f", after {_count(n)} {unit}"
    if gate == "regression":
        word = "higher" if effect > 0 else "lower"
        text = f"MAE {_num(abs(effect) * 100)}% {word} than the champion's"
        if bounds:
            edge = bounds[0] if failed else bounds[1]
            lead = "at least" if failed else "at worst"
            text += f" ({lead} {_num(abs(edge) * 100)}% {'higher' if edge > 0 else 'lower'}, {level})"
        return text + f", {within} the {_num(margin * 100)}% margin, after {_count(n)} labelled pairs"
    if gate in ("agreement", "agreement_proxy"):
        text = f"the arms agree on {_num(effect * 100)}% of predictions"
        if bounds:
            edge = bounds[1] if failed else bounds[0]
            lead = "at most" if failed else "at least"
            text += f" ({lead} {_num(edge * 100)}%, {level})"
        return text + f", {within} the {_num(margin * 100)}% minimum, after {_count(n)} pairs"
    if gate == "latency_p99":
        text = f"p99 latency {_num(effect, 2)}× the champion's"
        if bounds:
            edge = bounds[0] if failed else bounds[1]
            lead = "at least" if failed else "at worst"
            text += f" ({lead} {_num(edge, 2)}×, {level})"
        return text + f", {within} the {_num(margin, 2)}× limit, after {_count(n)} requests"
    reason = str(v.get("reason", ""))
    return f"{gate} {outcome}" + (f": {reason}" if reason else "")


def _alpha(analysis: Analysis | None, policy_alpha: float | None) -> float:
    if analysis is not None:
        budget = analysis.metrics.get("error_budget") if isinstance(analysis.metrics, Mapping) else None
        alpha = _finite((budget or {}).get("alpha")) if isinstance(budget, Mapping) else None
        if alpha is not None:
            return alpha
    return policy_alpha if policy_alpha is not None else 0.05


def _plan(rollout: Rollout) -> tuple[tuple[Stage, ...], float | None]:
    """The rollout's plan and alpha: read off its stored policy (no pydantic), else parsed with defaults."""
    stored = stored_plan(rollout.policy, rollout.mode)
    if stored is not None:
        return stored
    from controller.core.policy import Policy, PolicyError  # a stored policy that lacks a field

    try:
        policy = Policy.parse(rollout.policy, mode=rollout.mode)
    except PolicyError:
        return (), None
    return policy.plan(), policy.alpha


def _last(events: Sequence[Event], *actions: str) -> Event | None:
    found = [e for e in events if e.action in actions]
    return found[-1] if found else None


def _by(event: Event | None) -> str:
    if event is None or event.actor == ACTOR:
        return ""
    return f" by {event.actor}"


def _operator_reason(event: Event | None) -> str:
    if event is None:
        return ""
    why = event.details.get("operator_reason") if isinstance(event.details, Mapping) else None
    return str(why) if why else ""


def _deciding(analysis: Analysis, outcome: str) -> list[Mapping[str, Any]]:
    """The verdicts that decided: vetoes first, then required and guardrail gates, with this outcome."""
    order = {"veto": 0, "required": 1, "guardrail": 2}
    found = [
        v
        for v in analysis.verdicts
        if isinstance(v, Mapping) and v.get("outcome") == outcome and v.get("role") in order
    ]
    return sorted(found, key=lambda v: order[str(v.get("role"))])


def _undecided(analysis: Analysis) -> list[Mapping[str, Any]]:
    """Required gates not yet passing (what a step waits for), the accuracy gate first."""
    found = [
        v
        for v in analysis.verdicts
        if isinstance(v, Mapping) and v.get("role") == "required" and v.get("outcome") != "pass"
    ]
    proxy = next((v for v in analysis.verdicts if v.get("gate") == "agreement_proxy"), None)
    if proxy is not None and proxy.get("outcome") == "pass":
        found = [v for v in found if v.get("gate") != "accuracy"]
    return sorted(found, key=lambda v: v.get("gate") not in ("accuracy", "regression"))


def _passed(analysis: Analysis) -> list[Mapping[str, Any]]:
    return [
        v
        for v in analysis.verdicts
        if isinstance(v, Mapping) and v.get("role") == "required" and v.get("outcome") == "pass"
    ]


def _controller(analysis: Analysis | None) -> Mapping[str, Any]:
    if analysis is None or not isinstance(analysis.metrics, Mapping):
        return {}
    c = analysis.metrics.get("controller")
    return c if isinstance(c, Mapping) else {}


def _step_text(rollout: Rollout, plan: Sequence[Stage]) -> str:
    """ "Canary step 3 of 4 (25% of traffic to the challenger); next: canary 50%"."""
    k = rollout.step_index
    if not 0 <= k < len(plan):
        return f"Step {k + 1}"
    stage = plan[k]
    if stage.kind == "shadow":
        text = f"Shadow step {k + 1} of {len(plan)} (the champion answers, the challenger scores in shadow)"
    else:
        text = f"Canary step {k + 1} of {len(plan)} ({_num(stage.weight, 2)}% of traffic to the challenger)"
    nxt = stage_name(plan[k + 1]) if k + 1 < len(plan) else "promotion"
    return f"{text}; next: {nxt}"


def _waiting(rollout: Rollout, analysis: Analysis | None, plan: Sequence[Stage], alpha: float) -> str:
    """What a running step is doing now, from the latest look at this step."""
    if analysis is None or analysis.step != rollout.step_index:
        return "no evaluation of this step yet"
    c = _controller(analysis)
    reason, message = str(c.get("reason", "")), str(c.get("message", ""))
    samples = analysis.metrics.get("samples") if isinstance(analysis.metrics, Mapping) else None
    stage = plan[rollout.step_index] if 0 <= rollout.step_index < len(plan) else None
    progress = ""
    if stage is not None and isinstance(samples, int | float):
        progress = f"{_count(samples)} of {_count(stage.min_samples)} samples"
    said = str(analysis.metrics.get("judgement", "")) if isinstance(analysis.metrics, Mapping) else ""
    if said.startswith("hold: "):  # a final promotion held for the labels (delay, outcome-dependent)
        return said.split("; ")[0]
    held = _deciding(analysis, "fail")
    if held:  # a hold gate (agreement) proven below its minimum: labels decide
        return "holding for labels: " + gate_phrase(held[0], alpha=alpha)
    if reason == "collecting":
        return f"collecting: {progress or message}"
    if reason == "min_duration":
        return f"waiting out the step's minimum duration ({message})"
    if reason.startswith("watch_"):
        return message
    pending = _undecided(analysis)
    if pending:
        text = "holding, not yet decided: " + gate_phrase(pending[0], alpha=alpha)
        return text + (f"; {progress}" if progress else "")
    if reason:
        return message or reason
    return "evaluating"


def verdict_sentence(
    rollout: Rollout,
    analysis: Analysis | None,
    *,
    events: Sequence[Event] = (),
) -> str:
    """Return the one sentence that says what happened to a rollout, or what it is doing, and why.

    ``analysis``: the rollout's latest stored analysis (None when the controller has not looked yet);
    ``events``: the rollout's events, oldest first (for who paused, rolled back or aborted, and when);
    only the latest of ``verdict_event_actions(rollout)`` is read, so callers need fetch no more.
    """
    plan, policy_alpha = _plan(rollout)
    alpha = _alpha(analysis, policy_alpha)
    since = rollout.created_at
    phase = rollout.phase
    if phase == "pending":
        first = stage_name(plan[0]) if plan else "its first step"
        return f"Pending: waiting for the controller to start the rollout ({first} first)."
    if phase == "rolled_back":
        event = _last(events, VERDICT_EVENTS["rolled_back"])
        at = _when(rollout.ended_at or (event.at if event else None), since)
        why = _operator_reason(event)
        if event is not None and event.actor != ACTOR:
            return f"Rolled back at {at}{_by(event)}" + (f": {why}." if why else " (manual).")
        head = f"Rolled back at {at}"
        if rollout.reason == "watch_harm" or (event and event.reason == "watch_harm"):
            head += " during the post-promotion watch (the previous champion is restored)"
        if analysis is not None:
            failing = _deciding(analysis, "fail")
            if failing:
                return f"{head}: {gate_phrase(failing[0], alpha=alpha)}."
        if rollout.reason in ("step_budget_exhausted", "watch_budget_exhausted"):
            detail = event.message if event is not None else "the step ran out of time undecided"
            return f"{head}: the step ran out of time undecided ({detail})."
        return f"{head}: {event.message if event is not None else rollout.reason or 'no reason recorded'}."
    if phase == "aborted":
        event = _last(events, VERDICT_EVENTS["aborted"])
        why = _operator_reason(event)
        return (
            f"Aborted at {_when(rollout.ended_at, since)}{_by(event)}"
            + (f": {why}" if why else " without a verdict")
            + "; all traffic is back on the champion."
        )
    if phase == "promoted":
        event = _last(events, VERDICT_EVENTS["promoted"])
        at = _when(rollout.ended_at, since)
        if event is not None and event.actor != ACTOR:
            why = _operator_reason(event)
            return f"Promoted at {at}{_by(event)}" + (f": {why}." if why else " (manual).")
        head = f"Promoted at {at}"
        if rollout.reason == "watch_passed":
            head += ", after the post-promotion watch"
        if analysis is not None:
            passed = _passed(analysis)
            if passed:
                best = sorted(passed, key=lambda v: v.get("gate") not in ("accuracy", "regression"))
                return f"{head}: {gate_phrase(best[0], alpha=alpha)}."
        return f"{head}: every required gate non-inferior."
    if phase == "watching":
        event = _last(events, VERDICT_EVENTS["watching"])
        head = (
            f"Watching since {_when(event.at if event else rollout.step_started_at, since)}: the challenger "
            "answers every request, the previous champion scores in shadow"
        )
        if analysis is None or analysis.step != rollout.step_index:
            return head + "; no evaluation of the watch yet."
        return f"{head}; {_waiting(rollout, analysis, plan, alpha)}."
    if phase == "paused":
        event = _last(events, VERDICT_EVENTS["paused"])
        at = _when(event.at if event else rollout.step_started_at, since)
        if event is not None and event.actor != ACTOR:
            why = _operator_reason(event)
            head = f"Paused at {at}{_by(event)}" + (f": {why}" if why else "")
        else:
            detail = event.message if event is not None else "the step ran out of time undecided"
            head = f"Paused at {at} for an operator: {detail}"
        return f"{head}. {_step_text(rollout, plan)} (resume, promote or roll back)."
    # shadowing / progressing
    return f"{_step_text(rollout, plan)}. Since {_when(rollout.step_started_at, since)}: " + (
        _waiting(rollout, analysis, plan, alpha) + "."
    )
