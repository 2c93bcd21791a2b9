"""The rollout policy: safe defaults, validation naming the field, YAML/JSON input, mapping onto the judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.core.plan import stored_plan
from controller.core.policy import Policy, PolicyError


def test_defaults_alone_are_a_safe_policy() -> None:
    p = Policy()
    assert p.mode == "shadow_then_canary"
    assert p.shadow.min_pairs == 500
    assert p.canary.steps == (5.0, 25.0, 50.0, 100.0)
    assert p.on_inconclusive == "pause"
    assert [(s.kind, s.weight) for s in p.plan()] == [
        ("shadow", 0.0),
        ("canary", 5.0),
        ("canary", 25.0),
        ("canary", 50.0),
    ]
    shadow = p.to_judge_policy("classification", "shadow")
    assert shadow.error_rate.role == "required" and shadow.accuracy.role == "required"
    # agreement stands in for accuracy on earlier steps, and below its minimum it only holds
    assert shadow.agreement_stands_in and shadow.agreement.on_fail == "hold"
    assert shadow.agreement.role == "guardrail" and shadow.agreement.allow_no_data
    assert not shadow.final and p.to_judge_policy("classification", "canary", final=True).final
    assert shadow.latency_p99.role == "informational"  # shadow latencies are batch work, not user waits
    assert p.to_judge_policy("classification", "canary").latency_p99.role == "guardrail"
    regression = p.to_judge_policy("regression", "canary")
    assert regression.regression.role == "required"
    assert not regression.agreement.enabled and not regression.accuracy.enabled


def test_a_required_accuracy_without_a_required_agreement_waits_for_labels() -> None:
    p = Policy.parse({"gates": {"agreement": {"role": "informational", "margin": 0.9}}})
    j = p.to_judge_policy("classification", "shadow")
    assert j.accuracy.role == "required" and not j.agreement_stands_in


def test_plans_follow_the_mode() -> None:
    assert [s.kind for s in Policy.parse({"mode": "shadow"}).plan()] == ["shadow"]
    canary = Policy.parse({"mode": "canary", "canary": {"steps": [10, 50]}})
    assert [(s.kind, s.weight) for s in canary.plan()] == [("canary", 10.0), ("canary", 50.0)]
    assert [s.kind for s in Policy.parse({"canary": {"steps": [100]}}).plan()] == ["shadow"]


@pytest.mark.parametrize(
    "given",
    [
        {},
        {
            "mode": "shadow",
            "alpha": 0.01,
            "shadow": {"sample_rate": 0.25, "min_pairs": 80, "min_duration_s": 5},
        },
        {"mode": "canary", "canary": {"steps": [1, 10, 50, 100], "min_samples": 40, "shadow_rate": 0.5}},
        {"canary": {"steps": [100]}, "alpha": 0.2},
    ],
)
@pytest.mark.parametrize("mode", ["shadow", "canary", "shadow_then_canary"])
def test_a_stored_policy_gives_the_plan_and_alpha_its_model_gives(given: dict[str, Any], mode: str) -> None:
    # the verdict sentence (`rollout status`) reads a rollout's stored policy without pydantic
    stored = Policy.parse(given).to_dict()  # what a rollout stores
    try:
        model = Policy.parse(stored, mode=mode)
    except PolicyError:  # no rollout starts with it (canary mode, no weight below 100): nothing to walk
        assert stored_plan(stored, mode) == ((), stored["alpha"])
        return
    assert stored_plan(stored, mode) == (model.plan(), model.alpha)
    incomplete = {k: v for k, v in stored.items() if k != "canary"}
    assert stored_plan(incomplete, mode) is None  # left to Policy.parse and its defaults
    assert stored_plan({**stored, "shadow": "x"}, mode) is None


def test_gate_settings_and_burn_in_reach_the_judge() -> None:
    p = Policy.parse(
        {
            "alpha": 0.01,
            "burn_in": 300,
            "slo": {"error_rate": 0.05, "latency_p99_ms": 250},
            "gates": {
                "error_rate": {"role": "guardrail", "margin": 0.02, "min_samples": 50},
                "drift": {"role": "off", "margin": 0.3},
            },
        }
    )
    j = p.to_judge_policy("classification", "canary")
    # the default error budget gives 80% of alpha to harm, 10% to the three veto slots
    assert j.alpha == pytest.approx(0.008) and j.veto_alpha == pytest.approx(0.001 / 3)
    assert j.srm_alpha == pytest.approx(0.001 / 3)
    assert (j.error_rate.role, j.error_rate.margin, j.error_rate.min_samples) == ("guardrail", 0.02, 50)
    assert j.agreement.min_samples == 300 and j.slo_min_samples == 300
    assert (j.error_rate_slo, j.latency_p99_slo_ms) == (0.05, 250)
    assert not j.drift.enabled
    assert j.regression_error_bound is None
    bounded = Policy.parse({"gates": {"regression_error_bound": 250}})
    assert bounded.to_judge_policy("regression", "shadow").regression_error_bound == 250.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"colour": "blue"}, "colour: unknown field"),
        ({"shadow": {"min_pair": 10}}, "shadow.min_pair: unknown field"),
        ({"mode": "yolo"}, "mode:"),
        ({"canary": {"steps": []}}, "canary.steps: give at least one step"),
        ({"canary": {"steps": [5, 25, 25]}}, "canary.steps: weights must be strictly increasing"),
        ({"canary": {"steps": [50, 25]}}, "canary.steps: weights must be strictly increasing"),
        ({"canary": {"steps": [0, 25]}}, r"canary.steps: every weight must lie in \(0, 100\]"),
        ({"canary": {"steps": [5, 120]}}, r"canary.steps: every weight must lie in \(0, 100\]"),
        ({"mode": "canary", "canary": {"steps": [100]}}, "canary.steps: canary mode needs"),
        ({"shadow": {"sample_rate": 0}}, "shadow.sample_rate"),
        ({"shadow": {"min_pairs": 0}}, "shadow.min_pairs"),
        (
            {"canary": {"min_duration_s": 600, "max_duration_s": 60}},
            "canary: max_duration_s must be at least",
        ),
        ({"alpha": 0.7}, "alpha"),
        (
            {"gates": {"error_rate": {"role": "required", "margin": -0.01}}},
            "gates.error_rate.margin: must lie in",
        ),
        (
            {"gates": {"accuracy": {"role": "required", "margin": -0.02}}},
            "gates.accuracy.margin: must lie in",
        ),
        (
            {"gates": {"latency_p99": {"role": "guardrail", "margin": 0.8}}},
            "gates.latency_p99.margin: is a ratio",
        ),
        ({"gates": {"agreement": {"role": "required", "margin": 1.5}}}, "gates.agreement.margin"),
        ({"gates": {"agreement": {"role": "boss", "margin": 0.9}}}, "gates.agreement.role"),
        ({"gates": {"regression": "strict"}}, "gates.regression"),
        ({"on_inconclusive": "shrug"}, "on_inconclusive"),
        ({"slo": {"error_rate": 1.5}}, "slo.error_rate"),
        ({"label_maturity_s": -1}, "label_maturity_s"),
        ({"gates": {"regression_error_bound": 0}}, "gates.regression_error_bound"),
    ],
)
def test_invalid_policies_are_refused_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.parse(data)


def test_policies_come_from_yaml_or_json_text_or_files(tmp_path: Path) -> None:
    text = "mode: canary\ncanary:\n  steps: [10, 50, 100]\non_inconclusive: rollback\n"
    assert Policy.parse(text).canary.steps == (10.0, 50.0, 100.0)
    assert Policy.parse('{"mode": "shadow"}').mode == "shadow"
    (tmp_path / "p.yaml").write_text(text)
    (tmp_path / "p.json").write_text('{"shadow": {"min_pairs": 42}}')
    assert Policy.parse(tmp_path / "p.yaml").on_inconclusive == "rollback"
    assert Policy.parse(str(tmp_path / "p.json")).shadow.min_pairs == 42
    with pytest.raises(PolicyError, match="not valid YAML: line 2, column 1"):
        Policy.parse("mode: [unclosed\n")
    with pytest.raises(PolicyError, match="a mapping"):
        Policy.parse("- 1\n- 2\n")


def test_a_stored_policy_round_trips_and_overrides_apply() -> None:
    p = Policy.parse({"canary": {"steps": [1, 5]}}, mode="canary")
    again = Policy.parse(p.to_dict())
    assert again == p and again.mode == "canary"
    assert Policy.parse(p, mode="shadow").mode == "shadow"


def test_a_gate_given_in_part_keeps_its_other_defaults() -> None:
    p = Policy.parse({"gates": {"accuracy": {"role": "guardrail"}, "latency_p99": {"margin": 1.5}}})
    assert (p.gates.accuracy.role, p.gates.accuracy.margin) == ("guardrail", 0.01)
    assert (p.gates.latency_p99.role, p.gates.latency_p99.margin, p.gates.latency_p99.min_samples) == (
        "guardrail", 1.5, 1000,
    )  # fmt: skip
    with pytest.raises(PolicyError, match="gates.accuracy.margin"):
        Policy.parse({"gates": {"accuracy": {"margin": -0.1}}})
    with pytest.raises(PolicyError, match="gates.accuracy"):
        Policy.parse({"gates": {"accuracy": {"rol": "guardrail"}}})
