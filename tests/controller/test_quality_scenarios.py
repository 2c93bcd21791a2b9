"""Whole rollouts judged on class-aware metrics, segments and business outcomes (both databases).

The control loop runs with a fake clock on real storage; real fitted scikit-learn pipelines score
mlpipes.churn_frame rows and their records (classes, P(positive) scores, raw inputs) are written as
the router writes them; labels and outcomes arrive through store.labels.upsert_many as the feedback
endpoint stores them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlpipes
import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from controller.loop import actions
from controller.loop.control import evaluate_once
from controller.reports.build import build_report, render_html, render_markdown
from storage import Store
from storage.entities import PairRecord, Rollout

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
_ids = itertools.count()

Truth = Callable[[pd.DataFrame, np.random.Generator], np.ndarray]
Revenue = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def rare_truth(frame: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """About 2% positives: most customers with five or more support calls, plus a little noise."""
    calls = frame["support_calls"].to_numpy()
    return ((calls >= 5) & (rng.random(len(frame)) < 0.8)) | (rng.random(len(frame)) < 0.004)


def churn_truth(frame: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    logit = (
        -0.04 * frame["tenure_months"]
        + 0.03 * (frame["monthly_charges"] - 70)
        + 0.5 * frame["support_calls"]
        - 0.8 * frame["autopay"]
        + (frame["plan"] == "basic") * 0.7
    ).to_numpy(dtype=float)
    return rng.random(len(frame)) < 1 / (1 + np.exp(-logit))


def _fit(model: Any, truth: Truth, *, invert: Callable[[pd.DataFrame], np.ndarray] | None = None) -> Pipeline:
    frame, _ = mlpipes.churn_frame(6000, seed=99, missing=0.0)
    y = truth(frame, np.random.default_rng(98)).astype(int)
    if invert is not None:
        y = np.where(invert(frame), 1 - y, y)
    return Pipeline([("prepare", mlpipes._preprocessor()), ("model", model)]).fit(frame, y)


class World:
    """A deployment, two real pipelines, traffic with labels and outcomes on demand, a fake clock."""

    def __init__(self, store: Store, tmp_path: Path, champion: Any, challenger: Any, truth: Truth) -> None:
        self.store, self.now, self.truth = store, T0, truth
        self.models = {"champion": champion, "challenger": challenger}
        v1 = mlpipes.register(store, tmp_path, version="1", model=champion)
        mlpipes.register(store, tmp_path, version="2", model=challenger)
        self.deployment = mlpipes.deploy(store, "churn", v1)
        self.seed = 1000

    def start(self, policy: dict[str, Any]) -> Rollout:
        return actions.start_rollout(
            self.store, "churn", "churn:2", actor="alice", policy=policy, now=self.now
        )

    def rollout(self) -> Rollout:
        latest = self.store.rollouts.latest(self.deployment.id)
        assert latest is not None
        return latest

    def traffic(
        self, n: int, *, label: bool = True, revenue: Revenue | None = None, visits: bool = False
    ) -> None:
        r = self.rollout()
        self.seed += 1
        frame, _ = mlpipes.churn_frame(n, seed=self.seed, missing=0.0)
        rng = np.random.default_rng(self.seed)
        truth = self.truth(frame, rng)
        preds = {arm: np.asarray(m.predict(frame)) for arm, m in self.models.items()}
        scores = {arm: m.predict_proba(frame)[:, 1] for arm, m in self.models.items()}
        canary = r.phase == "progressing"
        served = (
            np.where(rng.random(n) < r.canary_weight / 100.0, "challenger", "champion") if canary else None
        )
        # in the watch the router serves the new champion (the rollout's challenger) in the champion
        # columns and scores the previous champion in the challenger columns
        watching = r.phase == "watching"
        column = {"champion": "challenger", "challenger": "champion"} if watching else {}
        raw = frame.to_dict("records")
        records, feedback = [], []
        for i in range(n):
            number = next(_ids)
            rid = f"q-{number}"
            out: dict[str, Any] = {}
            for arm in ("champion", "challenger"):
                col = column.get(arm, arm)
                out[f"{col}_latency_ms"] = float(rng.lognormal(1.0, 0.3))
                out[f"{col}_class"] = str(int(preds[arm][i]))
                out[f"{col}_score"] = float(scores[arm][i])
            arm = "champion" if served is None else str(served[i])
            records.append(
                PairRecord(
                    request_id=rid, row_index=0, deployment_id=r.deployment_id, rollout_id=r.id,
                    step=r.step_index, received_at=self.now, routing_key_hash=number, served_arm=arm,
                    champion_version_id=r.challenger_id if watching else r.champion_id,
                    challenger_version_id=r.champion_id if watching else r.challenger_id,
                    raw_input={k: (v.item() if hasattr(v, "item") else v) for k, v in raw[i].items()}, **out,
                )
            )  # fmt: skip
            value = base = None
            if revenue is not None:
                value = float(revenue(preds[arm][i : i + 1], truth[i : i + 1], rng)[0])
                if visits:  # 1-3 visits, each earning as the request did: revenue per visit is what differs
                    base = float(rng.integers(1, 4))
                    value *= base
            feedback.append((rid, 0, int(truth[i]) if label else None, value, base))
        self.store.pairs.insert_many(records)
        self.store.labels.upsert_many(r.deployment_id, feedback, now=self.now)

    def run(self, *, per_tick: int, seconds: float, max_ticks: int, **traffic: Any) -> Rollout:
        for _ in range(max_ticks):
            r = self.rollout()
            if not r.active:
                return r
            if r.phase != "pending":
                self.traffic(per_tick, **traffic)
            self.now += timedelta(seconds=seconds)
            evaluate_once(self.store, now=self.now)
        return self.rollout()

    def last_verdicts(self) -> dict[str, dict[str, Any]]:
        return {
            v["gate"]: v for v in self.store.events.list(rollout_id=self.rollout().id)[-1].details["verdicts"]
        }


def test_a_challenger_that_never_predicts_the_rare_class_is_rolled_back_not_promoted(
    store: Store, tmp_path: Path
) -> None:
    champion = _fit(DecisionTreeClassifier(max_depth=3, random_state=0), rare_truth)
    challenger = _fit(DummyClassifier(strategy="most_frequent"), rare_truth)
    world = World(store, tmp_path, champion, challenger, rare_truth)
    world.start({"mode": "shadow", "shadow": {"min_pairs": 500}})
    final = world.run(per_tick=4000, seconds=60, max_ticks=8)
    assert final.phase == "rolled_back"
    verdicts = world.last_verdicts()
    assert verdicts["balanced_accuracy"]["outcome"] == "fail"
    assert verdicts["accuracy"]["outcome"] != "fail", "accuracy alone would not have caught it"
    assert verdicts["recall[1]"]["effect"] < -0.3  # the challenger finds none of the positives


def test_a_promoted_challenger_worse_on_balanced_accuracy_in_the_watch_restores_the_previous_champion(
    store: Store, tmp_path: Path
) -> None:
    champion = _fit(DecisionTreeClassifier(max_depth=3, random_state=0), rare_truth)
    challenger = _fit(DummyClassifier(strategy="most_frequent"), rare_truth)
    world = World(store, tmp_path, champion, challenger, rare_truth)
    world.start({"mode": "shadow", "watch": {"enabled": True, "min_labelled_pairs": 500}})
    world.run(per_tick=1, seconds=60, max_ticks=1)
    # an operator promotes before any label (labels are slow): the watch begins, the challenger answers
    # every request and the previous champion scores in shadow
    actions.act(store, "churn", "promote", actor="alice", now=world.now)
    r = world.rollout()
    assert r.phase == "watching"
    assert store.deployments.get("churn").champion_id == r.challenger_id
    final = world.run(per_tick=4000, seconds=60, max_ticks=8)
    assert (final.phase, final.reason) == ("rolled_back", "watch_harm")
    assert store.deployments.get("churn").champion_id == final.champion_id
    verdicts = world.last_verdicts()
    assert verdicts["balanced_accuracy"]["outcome"] == "fail"
    assert verdicts["accuracy"]["outcome"] != "fail", "accuracy alone would not have caught it"
    # the arms are the rollout's: the challenger (the never-positive model) finds none of the positives
    assert verdicts["recall[1]"]["effect"] < -0.3


def test_a_challenger_harming_one_segment_is_rolled_back_naming_the_segment(
    store: Store, tmp_path: Path
) -> None:
    young = lambda frame: (frame["age"] < 30).to_numpy()  # noqa: E731  about 10% of customers
    tree = {"max_depth": 6, "min_samples_leaf": 30, "random_state": 0}
    champion = _fit(DecisionTreeClassifier(**tree), churn_truth)
    challenger = _fit(DecisionTreeClassifier(**tree), churn_truth, invert=young)
    world = World(store, tmp_path, champion, challenger, churn_truth)
    world.start(
        {
            "mode": "shadow",
            "shadow": {"min_pairs": 10_000},  # enough for the young segment's test to have power
            "gates": {"accuracy": {"margin": 0.08}, "agreement": {"role": "informational"}},
            "metrics": {"balanced_accuracy": {"margin": 0.08}},
            "segments": {
                "columns": [{"column": "age", "edges": [30, 60, 85]}, {"column": "plan"}],
                "min_samples": 150,
            },
        }
    )
    final = world.run(per_tick=2500, seconds=60, max_ticks=8)
    assert final.phase == "rolled_back"
    verdicts = world.last_verdicts()
    deciding = sorted(
        g for g, v in verdicts.items() if v["outcome"] == "fail" and v["role"] != "informational"
    )
    assert deciding and all(g.startswith("segment[age=<30]") for g in deciding)
    assert verdicts["accuracy"]["outcome"] != "fail"
    assert "age=<30" in world.store.events.list(rollout_id=final.id)[-1].message

    report = build_report(store, "churn")
    rows = {(s["segment"], s["metric"]): s for s in report["quality"]["segments"]}
    assert rows[("age=<30", "accuracy")]["verdict"] == "fail"
    assert rows[("plan=pro", "accuracy")]["verdict"] in ("pass", "inconclusive")
    assert rows[("age=>=85", "accuracy")]["verdict"] == "too small"  # listed, not hidden
    balanced = next(m for m in report["quality"]["metrics"] if m["gate"] == "balanced_accuracy")
    assert balanced["difference"] == pytest.approx(
        balanced["challenger"]["value"] - balanced["champion"]["value"]
    )
    assert {"champion", "challenger"} == set(report["quality"]["reliability"])
    page = render_html(report)
    assert "Reliability per arm" in page and "segment[age=&lt;30].accuracy" in page
    assert "| age=<30 | accuracy | fail |" in render_markdown(report)


def _revenue(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A retention offer: 8 earned when the model is right about a customer, noise around it."""
    return np.where(prediction.astype(bool) == truth, 8.0, 0.0) + rng.normal(0.0, 1.0, truth.size)


REVENUE_POLICY = {
    "mode": "canary",
    "canary": {"steps": [50, 100], "min_samples": 500, "min_duration_s": 0},
    "gates": {"accuracy": {"role": "informational"}, "agreement": {"role": "informational"}},
    "metrics": {"balanced_accuracy": {"role": "informational"}},
    "outcome": {"role": "required", "direction": "increase", "margin": 0.05},
}


@pytest.mark.parametrize(
    ("champion_c", "challenger_c", "phase", "ratio"),
    [(0.001, 1.0, "promoted", False), (1.0, 0.001, "rolled_back", False), (0.001, 1.0, "promoted", True)],
)
def test_a_revenue_gate_promotes_a_challenger_that_earns_more_and_rolls_back_one_that_earns_less(
    store: Store, tmp_path: Path, champion_c: float, challenger_c: float, phase: str, ratio: bool
) -> None:
    """Outcomes only, no labels; with ``ratio`` the gate compares revenue per visit (visits as outcome_base)."""
    from sklearn.linear_model import LogisticRegression

    champion = _fit(LogisticRegression(C=champion_c, max_iter=500), churn_truth)
    challenger = _fit(LogisticRegression(C=challenger_c, max_iter=500), churn_truth)
    world = World(store, tmp_path, champion, challenger, churn_truth)
    world.start({**REVENUE_POLICY, "outcome": {**REVENUE_POLICY["outcome"], "ratio": ratio}})  # type: ignore[dict-item]
    final = world.run(per_tick=3000, seconds=60, max_ticks=10, label=False, revenue=_revenue, visits=ratio)
    assert final.phase == phase
    outcome = world.last_verdicts()["outcome"]
    assert outcome["outcome"] == ("pass" if phase == "promoted" else "fail")
    assert ("per unit of its base" in outcome["reason"]) == ratio
