"""A look gives the same figures as before the look was made cheaper (issue 13, branch ``look``).

Seeded rollouts (shadow, canary with and without ``canary.paired``, the watch; classification with two
and three classes, regression; multi-row requests, failures, skipped shadow jobs, labels before and
after the maturity cutoff, outcomes, segments) are looked at with ``assess`` and read directly with
``step_aggregates`` / ``quality_aggregates`` / ``labelled_metrics``; everything they return is compared
with what the code before the change returned on the same data (``data/look_identity_<dialect>.json``,
written by commit ef3c9ed, before the change, with ``MLCANARY_WRITE_LOOK_GOLDEN=1``; a change that
means to change a look's figures rewrites them the same way and says why).

Counts, classes, verdicts and decisions must be equal. Floating-point sums may only differ by the order
in which the database added them up: relative 1e-12. (At the time of writing every figure is equal
bit for bit on SQLite; on PostgreSQL the regression cluster sums ``aa`` / ``ab`` differ in the last bit,
its hash aggregate visiting the clusters of the merged GROUP BY in another order.)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields, is_dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.core.policy import Policy
from controller.loop.assess import assess
from controller.loop.figures import LATENCY
from storage import Store, repro_queries
from storage.analytics import step_aggregates
from storage.entities import Column, NewPipelineVersion, PairRecord
from storage.quality import SegmentColumn, quality_aggregates

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=2)
DATA = Path(__file__).parent / "data"
WRITE = os.environ.get("MLCANARY_WRITE_LOOK_GOLDEN") == "1"
REL = 1e-12

SCENARIOS: dict[str, dict[str, Any]] = {
    "shadow-binary": {
        "task": "classification",
        "classes": (0, 1),
        "policy": {
            "mode": "shadow",
            "label_maturity_s": 600,
            "metrics": {"roc_auc": {"role": "informational", "horizon": 40}},
            "segments": {"columns": [{"column": "c"}]},
        },
        "steps": 1,
        "step_index": 0,
        "phase": "shadowing",
    },
    "shadow-multiclass": {
        "task": "classification",
        "classes": (0, 1, 2),
        "policy": {
            "mode": "shadow",
            "metrics": {"roc_auc": {"role": "informational", "horizon": 40}},
            "segments": {"columns": [{"column": "x", "edges": [0.3, 0.6]}]},
        },
        "steps": 1,
        "step_index": 0,
        "phase": "shadowing",
    },
    "canary-regression": {
        "task": "regression",
        "classes": None,
        "policy": {
            "mode": "shadow_then_canary",
            "label_maturity_s": 600,
            "outcome": {"role": "informational", "ratio": True},
            "metrics": {"pinball": {"role": "informational", "quantile": 0.9}},
            "segments": {"columns": [{"column": "c"}]},
        },
        "steps": 3,
        "step_index": 2,
        "phase": "progressing",
        "canary_weight": 25.0,
    },
    "canary-unpaired-binary": {
        "task": "classification",
        "classes": (0, 1),
        "policy": {
            "mode": "shadow_then_canary",
            "canary": {"paired": False},
            "outcome": {"role": "informational"},
            "metrics": {"roc_auc": {"role": "informational", "horizon": 30}},
        },
        "steps": 2,
        "step_index": 1,
        "phase": "progressing",
        "canary_weight": 5.0,
    },
    "watch-binary": {
        "task": "classification",
        "classes": (0, 1),
        "policy": {"mode": "shadow", "watch": {"enabled": True}, "reproducibility": {"role": "off"}},
        "steps": 2,
        "step_index": 1,
        "phase": "watching",
    },
    "shadow-regression-repro-off": {
        "task": "regression",
        "classes": None,
        "policy": {"mode": "shadow", "reproducibility": {"role": "off"}, "label_maturity_s": 60},
        "steps": 1,
        "step_index": 0,
        "phase": "shadowing",
    },
}


def _fill(store: Store, scenario: dict[str, Any], seed: int) -> Any:
    task, classes = scenario["task"], scenario["classes"]
    offline = {"accuracy": 0.8} if task == "classification" else {"mae": 2.5}
    versions = [
        store.pipelines.add(
            NewPipelineVersion(
                name="m",
                version=v,
                kind="artifact",
                task=task,
                input_schema=(Column("x", "float"), Column("c", "str")),
                classes=classes,
                offline_metrics=offline,
            )
        )
        for v in ("1", "2")
    ]
    deployment = store.deployments.create("m", versions[0].id)
    rollout = store.rollouts.create(
        deployment_id=deployment.id,
        challenger_id=versions[1].id,
        mode=scenario["policy"]["mode"],
        policy=scenario["policy"],
        created_by="tests",
        phase="shadowing",
    )
    rng = np.random.default_rng(seed)
    k = len(classes) if classes else 0
    records: list[PairRecord] = []
    labels: list[tuple[Any, ...]] = []
    request = 0
    for step in range(scenario["steps"]):
        canary = scenario["phase"] == "progressing" and step > 0
        for _ in range(260):
            request += 1
            rid = f"req-{seed}-{request:05d}"
            rows = int(rng.choice([1, 1, 1, 2, 4]))
            key = int(rng.integers(0, 60))
            served = "challenger" if canary and rng.random() < 0.3 else "champion"
            shadowed = not canary or rng.random() < 0.6
            status = {"champion": "ok", "challenger": "ok"}
            skip = None
            for arm in ("champion", "challenger"):
                if rng.random() < (0.04 if arm == "champion" else 0.07):
                    status[arm] = "error"
            other = "challenger" if served == "champion" else "champion"
            if not shadowed:
                status[other] = None  # type: ignore[assignment]
            elif rng.random() < 0.08:
                status[other] = "skipped"
                skip = str(rng.choice(["queue_full", "deadline", "shed"]))
            at = T0 + timedelta(seconds=float(rng.uniform(0, 6000)))
            lat = {arm: float(rng.lognormal(1.0 + 0.2 * (arm == "challenger"), 0.6)) for arm in status}
            wait = float(rng.exponential(3.0)) if status[other] in ("ok", "error") else None
            for row in range(rows):
                y = int(rng.integers(0, k)) if k else float(rng.normal(50, 10))
                out: dict[str, Any] = {}
                for arm in ("champion", "challenger"):
                    ok = status[arm] == "ok"
                    if task == "classification":
                        p = rng.dirichlet(np.ones(k))
                        if rng.random() < 0.7:
                            p = 0.5 * p + 0.5 * np.eye(k)[y]
                        out[f"{arm}_class"] = str(int(np.argmax(p))) if ok else None
                        out[f"{arm}_score"] = float(p[1]) if ok and k == 2 else None
                        out[f"{arm}_proba"] = (
                            {str(c): float(p[c]) for c in range(k)} if ok and k > 2 else None
                        )
                    else:
                        noise = 3.0 if arm == "champion" else 3.4
                        out[f"{arm}_value"] = float(y + rng.normal(0.2, noise)) if ok else None
                    ran = status[arm] in ("ok", "error")
                    out[f"{arm}_latency_ms"] = lat[arm] if ran else None
                    out[f"{arm}_error"] = "boom" if status[arm] == "error" else None
                records.append(
                    PairRecord(
                        request_id=rid,
                        row_index=row,
                        deployment_id=deployment.id,
                        rollout_id=rollout.id,
                        step=step,
                        received_at=at,
                        routing_key_hash=key,
                        served_arm=served,
                        champion_version_id=versions[0].id,
                        challenger_version_id=versions[1].id,
                        champion_status=status["champion"] or "",
                        challenger_status=status["challenger"] or "",
                        skip_reason=skip,
                        shadow_wait_ms=wait,
                        raw_input={"x": float(rng.random()), "c": str(rng.choice(["a", "b", "c"]))},
                        **out,
                    )
                )
                if rng.random() < 0.75:
                    outcome = float(rng.normal(1.0, 0.3)) if rng.random() < 0.8 else None
                    base = float(rng.uniform(1, 3)) if outcome is not None and rng.random() < 0.7 else None
                    labels.append((rid, row, y, outcome, base))
    # None statuses ("not asked") are stored as NULL; "" above only keeps PairRecord from deriving one
    records = [
        replace(
            r,
            champion_status=r.champion_status or None,
            challenger_status=r.challenger_status or None,
        )
        for r in records
    ]
    store.pairs.insert_many(records)
    store.labels.upsert_many(deployment.id, labels, now=T0 + timedelta(hours=1))
    return replace(
        rollout,
        step_index=scenario["step_index"],
        phase=scenario["phase"],
        canary_weight=scenario.get("canary_weight", 0.0),
        step_started_at=T0,
    )


def _plain(value: Any) -> Any:
    """JSON-able data of what a look returns: dataclasses as dicts, dict keys as text, floats kept."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {
            repr(k) if not isinstance(k, str) else k: _plain(v) for k, v in sorted(value.items(), key=repr)
        }
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _look(store: Store, scenario: dict[str, Any], rollout: Any) -> dict[str, Any]:
    """Everything a look reads and returns, as plain data."""
    a = assess(store, rollout, now=NOW)
    out: dict[str, Any] = {
        "decision": _plain(a.decision),
        "analysis": _plain(a.analysis()),
        "metrics": _plain(a.measurement.metrics if a.measurement else None),
        "aggregates": _plain(a.measurement.aggregates if a.measurement else None),
    }
    task = scenario["task"]
    names = tuple(str(c) for c in scenario["classes"] or ())
    cutoff = NOW - timedelta(seconds=900)
    for step in range(scenario["steps"]):
        for cohort in ("paired", "served"):
            for cluster_by in (None, "routing_key"):
                for label_cutoff in (cutoff, None):
                    key = f"step_aggregates/{step}/{cohort}/{cluster_by}/{label_cutoff is not None}"
                    out[key] = _plain(
                        step_aggregates(
                            store.db, rollout_id=rollout.id, step=step, cohort=cohort, task=task,
                            label_cutoff=label_cutoff, latency=LATENCY, cluster_by=cluster_by,
                        )
                    )  # fmt: skip
            out[f"quality_aggregates/{step}/{cohort}"] = _plain(
                quality_aggregates(
                    store.db, rollout_id=rollout.id, step=step, cohort=cohort, task=task, label_cutoff=cutoff,
                    positive=names[1] if len(names) == 2 else None, classes=names, quantiles=(0.5, 0.9),
                    auc_horizon=25, segments=(SegmentColumn("c"), SegmentColumn("x", (0.5,))), outcome=True,
                )
            )  # fmt: skip
    out["labelled_metrics"] = _plain(
        repro_queries.labelled_metrics(store.db, rollout.id, received_before=cutoff)
    )
    return out


def _compare(new: Any, old: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = [f"{path}: keys {sorted(set(new) ^ set(old))}"] if set(new) != set(old) else []
        for k in old:
            if k in new:
                diffs += _compare(new[k], old[k], f"{path}/{k}")
        return diffs
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: length {len(new)} != {len(old)}"]
        return [
            d for i, (n, o) in enumerate(zip(new, old, strict=True)) for d in _compare(n, o, f"{path}[{i}]")
        ]
    if isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
        if old == new or math.isclose(new, old, rel_tol=REL, abs_tol=1e-300):
            return []
        return [f"{path}: {new!r} != {old!r}"]
    if type(new) is not type(old) or new != old:
        return [f"{path}: {new!r} != {old!r}"]
    return []


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_look_gives_the_same_figures_as_before(store: Store, name: str) -> None:
    scenario = SCENARIOS[name]
    rollout = _fill(store, scenario, seed=sorted(SCENARIOS).index(name) + 7)
    Policy.parse(scenario["policy"])  # the scenario's policy is valid
    found = json.loads(json.dumps(_look(store, scenario, rollout)))
    dialect = store.db.engine.dialect.name
    path = DATA / f"look_identity_{dialect}.json"
    golden = json.loads(path.read_text()) if path.exists() else {}
    if WRITE:
        golden[name] = found
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    assert name in golden, f"no golden figures for {name} in {path}"
    diffs = _compare(found, golden[name])
    assert not diffs, "\n".join(diffs[:40])


@pytest.mark.parametrize("name", ["shadow-binary", "shadow-multiclass", "shadow-regression-repro-off"])
def test_figures_of_gates_that_are_off_are_not_computed_and_the_look_is_the_same(
    store: Store, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Log loss, Brier (classification) and RMSE (regression) off: their sums are skipped, and the
    analysis, the judgement and the decision are those of a look that computed them."""
    scenario = dict(SCENARIOS[name])
    metrics = {"log_loss": {"role": "off"}, "brier": {"role": "off"}, "rmse": {"role": "off"}}
    scenario["policy"] = {
        **scenario["policy"],
        "metrics": {**scenario["policy"].get("metrics", {}), **metrics},
    }
    rollout = _fill(store, scenario, seed=3)
    skipped = assess(store, rollout, now=NOW)
    quality = skipped.measurement.metrics.quality if skipped.measurement else None
    assert quality is not None
    assert quality.log_loss is None and quality.brier is None and quality.squared_error is None

    from controller.loop import quality as loop_quality

    everything = loop_quality.quality_aggregates

    def computing_everything(*args: Any, **kwargs: Any) -> Any:
        return everything(*args, **{**kwargs, "proper_scores": True, "squared": True})

    monkeypatch.setattr(loop_quality, "quality_aggregates", computing_everything)
    computed = assess(store, rollout, now=NOW)
    assert _plain(skipped.analysis()) == _plain(computed.analysis())
    assert _plain(skipped.decision) == _plain(computed.decision)
