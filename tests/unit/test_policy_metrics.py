"""The policy's metrics, outcome and segments sections map onto controller.core.metrics gates."""

from __future__ import annotations

import pytest

from controller.core.policy import Policy, PolicyError


def gates(policy: Policy, *args: object, **kw: object) -> dict[str, tuple[str, float]]:
    judge_policy = policy.to_judge_policy(*args, **kw)  # type: ignore[arg-type]
    assert judge_policy.quality is not None
    return {g.gate: (g.role, g.margin) for g in judge_policy.quality.gates}


def test_the_default_classification_policy_requires_balanced_accuracy_once_labels_exist() -> None:
    labelled = gates(Policy(), "classification", "shadow", final=True, classes=("0", "1"))
    assert labelled["balanced_accuracy"] == ("required", 0.05)
    assert {"recall[0]", "recall[1]", "precision[1]", "macro_f1", "log_loss", "brier"} <= set(labelled)
    assert "roc_auc" not in labelled and "outcome" not in labelled
    unlabelled = gates(Policy(), "classification", "shadow", final=False, classes=("0", "1"))
    assert unlabelled["balanced_accuracy"][0] == "informational"  # agreement stands in, as for accuracy


def test_regression_gets_rmse_and_pinball_and_the_outcome_gate_when_asked() -> None:
    p = Policy.parse({"metrics": {"pinball": {"role": "guardrail", "margin": 0.5, "quantile": 0.9}},
                      "outcome": {"role": "required", "direction": "decrease", "margin": 0.1}})  # fmt: skip
    g = gates(p, "regression", "canary")
    assert g["pinball[0.9]"] == ("guardrail", 0.5) and g["rmse"][0] == "informational"
    assert g["outcome"] == ("required", 0.1)
    assert "balanced_accuracy" not in g


def test_a_required_outcome_gate_cannot_block_a_shadow_step_that_never_measures_it() -> None:
    p = Policy.parse({"outcome": {"role": "required", "ratio": True}})  # shadow, then canary steps
    assert gates(p, "classification", "shadow")["outcome"][0] == "informational"
    assert gates(p, "classification", "canary")["outcome"][0] == "required"


def test_an_outcome_gate_without_a_canary_step_is_refused() -> None:
    with pytest.raises(PolicyError, match="outcome: the business-outcome gate counts canary-served requests"):
        Policy.parse({"mode": "shadow", "outcome": {"role": "guardrail"}})


def test_segments_test_the_required_metrics_with_the_policy_role() -> None:
    p = Policy.parse({"segments": {"columns": [{"column": "plan"}, {"column": "age", "edges": [30, 60]}],
                                   "role": "hold"}})  # fmt: skip
    seg = p.to_judge_policy("classification", "shadow", final=True).quality.segments  # type: ignore[union-attr]
    assert seg is not None and seg.role == "hold"
    assert [m.metric for m in seg.metrics] == ["accuracy", "balanced_accuracy"]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"metrics": {"balanced_accuracy": {"margin": 1.5}}}, "metrics.balanced_accuracy.margin"),
        ({"metrics": {"kappa": {"role": "required", "margin": 0.1}}}, "metrics.kappa: unknown field"),
        ({"outcome": {"direction": "up"}}, "outcome.direction"),
        ({"segments": {"columns": [{"column": "age", "edges": [60, 30]}]}}, "strictly increasing"),
        ({"metrics": {"pinball": {"quantile": 1.0}}}, "metrics.pinball.quantile"),
    ],
)
def test_malformed_metric_sections_are_refused_naming_the_field(policy: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("[", r"\[")):
        Policy.parse(policy)
