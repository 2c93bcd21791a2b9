"""The JSON documents the admin API serves, built without Flask: `mlcanary rollout status` prints the same.

The CLI imports this module on its database path, so it imports no Flask, pandas, scikit-learn, SciPy
or NumPy: the live figures come from ``controller.loop.figures``, not the judge's measurement.
bench/cli_speed.py measures ``rollout status`` against a 0.6 s goal;
tests/controller/test_cli_startup.py keeps its imports so.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from controller.loop import figures
from controller.reports.verdict import verdict_event_actions, verdict_sentence
from storage import Store
from storage.entities import Analysis, Deployment, Event, PipelineVersion, Rollout

if TYPE_CHECKING:
    from storage.series import SeriesCache

PLOT_POINTS = 60  # time buckets of the dashboard's plots (its SeriesCache entries are built with these)


def version_json(v: PipelineVersion) -> dict[str, Any]:
    """Describe a pipeline version (never its golden set's rows: only their count)."""
    golden_rows = 0
    if v.golden_set:
        golden_rows = len((v.golden_set.get("outputs") or {}).get("prediction") or [])
    return {
        "id": v.id, "name": v.name, "version": v.version, "ref": v.ref, "kind": v.kind, "task": v.task,
        "input_schema": [{"name": c.name, "dtype": c.dtype} for c in v.input_schema],
        "classes": list(v.classes) if v.classes is not None else None, "sha256": v.sha256,
        "artifact_format": v.artifact_format, "upstream_url": v.upstream_url,
        "upstream_protocol": v.upstream_protocol, "upstream_config": v.upstream_config,
        "offline_metrics": v.offline_metrics,
        "golden_set_rows": golden_rows, "environment": v.environment, "metadata": v.metadata,
        "trusted_types": list(v.trusted_types), "created_at": v.created_at, "archived_at": v.archived_at,
    }  # fmt: skip


def rollout_json(r: Rollout, refs: Mapping[int, str]) -> dict[str, Any]:
    return {
        "id": r.id, "phase": r.phase, "active": r.active, "mode": r.mode, "step_index": r.step_index,
        "canary_weight": r.canary_weight, "shadow_rate": r.shadow_rate,
        "champion": refs.get(r.champion_id), "challenger": refs.get(r.challenger_id), "policy": r.policy,
        "version": r.version, "created_by": r.created_by, "created_at": r.created_at,
        "step_started_at": r.step_started_at, "ended_at": r.ended_at, "reason": r.reason,
    }  # fmt: skip


def event_json(e: Event) -> dict[str, Any]:
    return {
        "id": e.id, "at": e.at, "deployment_id": e.deployment_id, "rollout_id": e.rollout_id, "actor": e.actor,
        "action": e.action, "reason": e.reason, "message": e.message, "details": e.details,
    }  # fmt: skip


def analysis_json(a: Analysis) -> dict[str, Any]:
    return {
        "id": a.id, "step": a.step, "evaluated_at": a.evaluated_at, "outcome": a.outcome,
        "verdicts": a.verdicts, "metrics": a.metrics,
    }  # fmt: skip


def refs_of(s: Store, *ids: int) -> dict[int, str]:
    return {i: s.pipelines.get(i).ref for i in set(ids)}


def live_figures(s: Store, rollout: Rollout, *, cache: SeriesCache | None = None) -> dict[str, Any]:
    """Summarise the current step per arm: requests, errors, latency p50/p99 (storage's LiveFigures).

    Requests are the unit (a request's row 0 stands for it: a 10-row request that fails is one error).
    ``served`` counts the requests an arm answered; ``scored`` those it ran (served or shadow, answered
    or failed; a skipped shadow job did not run). Latency quantiles are read off the step's latency
    histogram exactly as the judge reads its p99. ``shadow``: the step's shadow sample — coverage,
    effective share, skips by reason, queue wait — as the controller's measurement computes it.

    ``cache``: the app's ``storage.series.SeriesCache`` (the dashboard's): the same figures from its
    kept sums plus the rows written since, instead of two scans of the whole step per poll.
    """
    if cache is not None:
        live, coverage = cache.step_figures(
            s.db, rollout.id, rollout.step_index, latency=figures.LATENCY, points=PLOT_POINTS
        )
    else:
        live = s.pairs.live_figures(rollout.id, rollout.step_index, latency=figures.LATENCY)
        coverage = s.pairs.coverage(rollout.id, rollout.step_index)
    arms: dict[str, Any] = {}
    for arm, f in (("champion", live.champion), ("challenger", live.challenger)):
        arms[arm] = {
            "served": f.served,
            "scored": f.scored,
            "errors": f.errors,
            "error_rate": f.errors / f.scored if f.scored else None,
            "latency_ms": {
                "p50": figures.latency_quantile(f.latency, 0.50),
                "p99": figures.latency_quantile(f.latency, 0.99),
                "n": sum(f.latency.values()),
            },
        }
    return {
        "rollout_id": live.rollout_id,
        "step": live.step,
        "requests": live.requests,
        "first_at": live.first_at,
        "last_at": live.last_at,
        "arms": arms,
        "shadow": figures.shadow_summary(coverage, requests=live.requests),
    }


def deployment_json(
    s: Store, d: Deployment, *, detail: bool, now: datetime, cache: SeriesCache | None = None
) -> dict[str, Any]:
    """Describe a deployment; with detail, its latest rollout's live figures and last verdicts.

    ``now`` dates the summary's ``state`` (how long ago the latest rollout ended); ``cache``: see
    ``live_figures`` (the admin API passes the app's; the CLI, which asks once, none).
    """
    rollout = s.rollouts.latest(d.id)
    refs = refs_of(s, d.champion_id, *((rollout.champion_id, rollout.challenger_id) if rollout else ()))
    active = rollout if rollout is not None and rollout.active else None
    body: dict[str, Any] = {
        "name": d.name,
        "champion": refs[d.champion_id],
        "challenger": refs[active.challenger_id] if active else None,
        "phase": active.phase if active else "stable",
        "mode": active.mode if active else None,
        "step_index": active.step_index if active else None,
        "weights": {
            "champion": 100.0 - active.canary_weight if active else 100.0,
            "challenger": active.canary_weight if active else 0.0,
            "shadow_rate": active.shadow_rate if active else 0.0,
        },
        "store_raw_inputs": d.store_raw_inputs,
        "batching": d.batching.to_json(),
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "archived_at": d.archived_at,
    }
    if not detail:
        body["rollout_id"] = active.id if active else None
        body["state"] = state_json(rollout, now=now)  # what happened last (colours)
        return body
    body["rollout"] = rollout_json(rollout, refs) if rollout else None
    if rollout is not None:
        # the words behind the reason code (an operator's --reason for manual_pause, the judge's text)
        said = s.events.latest(rollout_id=rollout.id, reason=rollout.reason) if rollout.reason else None
        body["rollout"]["reason_message"] = said.message if said else None
    body["live"] = live_figures(s, rollout, cache=cache) if rollout else None
    latest = s.analyses.latest(rollout.id) if rollout else None
    body["last_analysis"] = analysis_json(latest) if latest else None
    # the sentence that heads the report and `rollout status` (controller.reports.verdict)
    body["verdict"] = rollout_verdict(s, rollout, latest) if rollout else None
    return body


def rollout_verdict(s: Store, rollout: Rollout, analysis: Analysis | None) -> str:
    """The verdict sentence, from the one event it needs (not the rollout's whole event log)."""
    actions = verdict_event_actions(rollout)
    event = s.events.latest(rollout_id=rollout.id, actions=actions) if actions else None
    return verdict_sentence(rollout, analysis, events=[event] if event is not None else [])


def state_json(rollout: Rollout | None, *, now: datetime) -> dict[str, Any]:
    """Say what happened last: the active phase, or how the latest rollout ended and how long ago.

    ``tone``: ``live`` (a rollout is running), ``held`` (paused or pending), ``good`` (promoted),
    ``bad`` (rolled back or aborted), ``idle`` (no rollout ever). A deployment rolled back a second ago
    is ``bad``, not a green "stable".
    """
    if rollout is None:
        return {
            "phase": "stable",
            "tone": "idle",
            "active": False,
            "label": "stable",
            "since": None,
            "age_s": None,
        }
    since: datetime | None
    if rollout.active:
        tone = "held" if rollout.phase in ("paused", "pending") else "live"
        since = rollout.step_started_at
        label = rollout.phase
    else:
        tone = "good" if rollout.phase == "promoted" else "bad"
        since = rollout.ended_at
        label = rollout.phase.replace("_", " ")
    age = (now - since).total_seconds() if since is not None else None
    return {
        "phase": rollout.phase,
        "tone": tone,
        "active": rollout.active,
        "label": label,
        "since": since,
        "age_s": None if age is None else max(0.0, age),
    }
