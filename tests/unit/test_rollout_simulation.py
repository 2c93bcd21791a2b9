"""The whole-rollout simulator, reduced: a few dozen rollouts per row through the real judge and machine.

Each row fails only when its error count is above alpha by a clear statistical margin (one-sided binomial
test at 0.001), so the test is stable while still catching a broken decision rule (a rule that promotes
a harmful challenger or rolls back an equal one in most rollouts fails by far).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from controller.core.machine import RolloutState
from controller.core.policy import Policy

BENCH = Path(__file__).resolve().parents[2] / "bench" / "rollout_simulation.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rollout_simulation", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rollout_simulation"] = module
    spec.loader.exec_module(module)
    return module


sim = _load()
ALPHA = Policy().alpha
ROWS = {r.name: r for r in sim.ROWS}


@pytest.mark.parametrize(
    ("row", "rollouts"),
    [
        ("aa-paired-100-even", 40),
        ("aa-paired-1-even", 30),
        ("labels-1h-worse5", 40),
        ("labels-1d-worse5", 15),
        ("labels-outcome-order-matured", 20),
        ("latency-3x-low-traffic", 30),
        ("errors-at-margin", 10),
        ("labels-outcome-order", 5),  # held by the label-delay rule, never promoted
        ("rare-class-never-positive", 20),
        ("segment-harm-10pct", 20),
        ("revenue-per-visit-worse", 10),
        ("revenue-per-visit-equal", 5),
        ("aa-rare-class-2pct", 20),  # the class-aware default gate on a 2% class, equal arms
        ("aa-rare-class-2pct-unpaired", 10),  # the same on served rows (unpaired canary steps)
        ("regression-rare-errors-bounded", 20),
    ],
)
def test_simulated_rollouts_stay_within_alpha(row: str, rollouts: int) -> None:
    result = sim.run_row(ROWS[row], rollouts, seed=3)
    assert result.rollouts == rollouts
    assert not sim.exceeds(result.bad, rollouts, ALPHA), (
        f"{row}: {result.bad} of {rollouts} wrong, {result.ends}"
    )


def test_the_rare_class_rows_differ_only_where_they_say() -> None:
    # A/A: per class, the challenger is right as often as the champion (better == worse in every group)
    aa = ROWS["aa-rare-class-2pct"]
    assert aa.groups is not None and all(g[4] == g[5] for g in aa.groups)
    assert ROWS["aa-rare-class-2pct-unpaired"].groups == aa.groups
    # never positive: the challenger is right on none of the positives (recall 0.57 - worse = 0), and as
    # accurate overall as the issue says (0.9856 -> 0.98), inside the 1-point accuracy margin
    bad = ROWS["rare-class-never-positive"]
    assert bad.groups is not None
    positive = next(g for g in bad.groups if g[2] == 1)
    assert positive[3] - positive[4] + positive[5] == 0.0
    assert bad.accuracy == pytest.approx(0.9856, abs=1e-4)
    assert bad.accuracy - bad.worse + bad.better == pytest.approx(0.98, abs=1e-4)
    assert aa.accuracy == pytest.approx(bad.accuracy)  # the same champion


def test_the_bound_check_flags_a_rule_that_is_clearly_wrong() -> None:
    # 6 of 40 at alpha 0.05: P(X >= 6) = 0.048 -> not flagged; 9 of 40: P = 0.0014 -> not; 11 of 40 -> flagged
    assert not sim.exceeds(6, 40, 0.05)
    assert sim.exceeds(11, 40, 0.05)


def test_a_five_point_worse_challenger_with_slow_labels_is_never_promoted_on_agreement() -> None:
    # the audit's finding: 8% disagreement passed agreement >= 0.9 and promoted without a label
    result = sim.run_row(ROWS["labels-1d-worse5"], 10, seed=5)
    assert result.ends.get("promoted", 0) == 0


def test_the_cautious_canary_of_the_policy_docs_never_promotes_a_worse_challenger_without_labels() -> None:
    row = ROWS["cautious-canary-worse5"]
    assert row.policy["watch"]["enabled"] and row.policy["label_maturity_s"] == 86400
    result = sim.run_row(row, 8, seed=9)
    assert result.ends.get("promoted", 0) == 0, result.ends


def test_unpaired_canary_with_uneven_keys_is_not_rolled_back_on_per_key_clusters() -> None:
    # the simulator feeds per-routing-key cluster sums as storage does; with them the judge's variance
    # is cluster-robust and an equal challenger on ~10 Zipf keys is not rolled back (60% were, on
    # per-request variance). The first 90 minutes of each rollout, where those false rollbacks happened.
    row = replace(ROWS["aa-canary-100-uneven"], horizon_s=5400.0)
    result = sim.run_row(row, 4, seed=3)
    assert result.ends.get("rolled_back", 0) == 0, result.ends


def test_the_simulated_canary_step_carries_per_key_cluster_sums_like_storage() -> None:
    row = ROWS["aa-canary-100-uneven"]
    s = sim.Simulator(row, np.random.default_rng(0))
    s.key_share = np.full(200, 1 / 200)
    s.key_u = np.linspace(0.0, 1.0, 200, endpoint=False)  # keys 0-9 on a 5% challenger
    s.key_acc = np.full(200, 0.85)
    step = s._new_step(replace_state(weight=5.0, policy=s.policy))
    s._traffic(step, 0.0, 600.0)
    agg = s._served_aggregates(step, step.served[-1], step.served[-1], step.served[-1], 600.0, 600.0)
    keys = step.keys[-1]
    for arm, rows in (("champion", keys[10:]), ("challenger", keys[:10])):
        errors, correct = agg.clusters[f"errors.{arm}"], agg.clusters[f"correct.{arm}"]
        assert errors.clusters == int((rows[:, 0] > 0).sum())
        assert errors.rows == rows[:, 0].sum() == getattr(agg, arm).n
        assert errors.mm == (rows[:, 0] ** 2).sum() and errors.ma == (rows[:, 0] * rows[:, 1]).sum()
        labelled = rows[:, 2] + rows[:, 3]
        assert correct.rows == labelled.sum() == getattr(agg, arm).labelled
        assert correct.ma == (labelled * rows[:, 2]).sum() and correct.aa == (rows[:, 2] ** 2).sum()


def replace_state(*, weight: float, policy: Policy) -> RolloutState:
    return RolloutState("progressing", 1, weight, 1.0, sim.T0, policy)


def test_outcome_dependent_labels_hold_the_final_promotion_before_any_label_is_late() -> None:
    # label_maturity_s covers the fast labels, so no delay seen exceeds it for a day; the labelled share
    # of disagreeing pairs gives the bias away (99% promoted without that check)
    result = sim.run_row(ROWS["labels-outcome-order-1h-maturity"], 5, seed=3)
    assert result.ends.get("promoted", 0) == 0, result.ends


def test_the_rare_errors_row_states_its_error_bound_to_the_judge() -> None:
    # the row's largest error is ~14 + 5.5 (17.8 in 4 million draws): the stated bound 20 holds
    row = ROWS["regression-rare-errors-bounded"]
    s = sim.Simulator(row, np.random.default_rng(0))
    assert s.judge_policy("shadow", True).regression_error_bound == 20.0
    assert (
        sim.Simulator(ROWS["regression-rare-errors"], np.random.default_rng(0))
        .judge_policy("shadow", True)
        .regression_error_bound
        is None
    )
