"""Policy loading, error messages, the error budget and the final stage, against pinned values.

Written against the mutants of controller/core/policy.py that survived `make mutation`
(bench/results/mutation.md): each test names a behaviour an operator relies on (the message of a bad
policy file, the levels the budget hands to each test, which step promotes for good).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.core.policy import Policy, PolicyError


def _error(source: object) -> str:
    with pytest.raises(PolicyError) as caught:
        Policy.parse(source)  # type: ignore[arg-type]
    return str(caught.value)


def test_the_error_budget_hands_each_test_its_level() -> None:
    # default: alpha 0.05 split 0.8 harm, 0.1 vetoes (three of them), 0.1 reproducibility (two arms)
    assert Policy.parse(None).budget() == pytest.approx(
        {"alpha": 0.05, "harm": 0.04, "veto": 0.005 / 3, "srm": 0.005 / 3, "reproducibility": 0.0025}
    )
    given = Policy.parse({"srm_alpha": 0.002, "reproducibility": {"confidence": 0.99}}).budget()
    assert given == pytest.approx(
        {"alpha": 0.05, "harm": 0.04, "veto": 0.005 / 3, "srm": 0.002, "reproducibility": 0.01}
    )


@pytest.mark.parametrize(("watch", "final"), [(False, [False, True, True]), (True, [False, False, True])])
def test_the_last_step_promotes_for_good_unless_a_watch_follows(watch: bool, final: list[bool]) -> None:
    policy = Policy.parse({"mode": "canary", "canary": {"steps": [10, 50]}, "watch": {"enabled": watch}})
    assert [policy.final_stage(i) for i in range(3)] == final


def test_a_shadow_stage_scores_its_sample_rate() -> None:
    (stage,) = Policy.parse({"mode": "shadow", "shadow": {"sample_rate": 0.3}}).plan()
    assert (stage.kind, stage.weight, stage.shadow_rate) == ("shadow", 0.0, 0.3)


def test_to_dict_is_plain_json_and_parses_back_to_the_same_policy() -> None:
    policy = Policy.parse({"mode": "canary", "canary": {"steps": [10, 50]}})
    data = policy.to_dict()
    assert data == json.loads(json.dumps(data))  # lists, not tuples: what the API and the database store
    assert data["canary"]["steps"] == [10.0, 50.0]
    assert Policy.parse(data) == policy


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".YML", ".json"])
def test_a_policy_file_is_read_by_its_suffix(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"policy{suffix}"
    path.write_text('{"mode": "canary"}' if suffix == ".json" else "mode: canary\n")
    assert Policy.parse(path).mode == "canary"
    assert Policy.parse(str(path)).mode == "canary"


def test_text_with_a_newline_is_never_taken_for_a_file_name() -> None:
    assert Policy.parse("mode: canary\n# copied from policy.json").mode == "canary"


def test_bad_policy_sources_get_one_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    assert _error(missing).startswith(f"cannot read policy file {missing}: ")
    # the position is the parser's own (json.JSONDecodeError, yaml's problem_mark), shown 1-based
    assert _error('{"mode": }') == "policy is not valid JSON: line 1, column 10: Expecting value"
    assert _error('  {"mode": }') == "policy is not valid JSON: line 1, column 12: Expecting value"
    assert _error("mode: [") == (
        "policy is not valid YAML: line 1, column 8: expected the node content, but found '<stream end>'"
    )
    assert _error("mode: canary\nfoo: : :") == (
        "policy is not valid YAML: line 2, column 6: mapping values are not allowed here"
    )
    assert _error("- 1\n- 2") == "a policy is a mapping of fields, got list"


def test_validation_messages_name_every_field_with_its_path() -> None:
    # an unknown field lists the known ones at its level (issue 19), here the gates'
    assert _error({"mode": "x", "gates": {"bogus": 1}}).startswith(
        "mode: Input should be 'shadow', 'canary' or 'shadow_then_canary'; gates.bogus: unknown field; "
        "known: error_rate, latency_p99, agreement, accuracy,"
    )
    # a rule of the policy's own (a PolicyError inside validation) is shown as written, then the rest
    assert _error({"gates": {"latency_p99": {"margin": 0.5}}, "bogus": 1}).startswith(
        "gates.latency_p99.margin: is a ratio and must be >= 1, got 0.5; bogus: unknown field; "
        "known: mode, shadow, canary, gates,"
    )


# --- how a policy maps onto the judge's gates, per mode and task -------------------------------------


def _judge_policy(gates: dict[str, object], mode: str, task: str = "classification", **extra: object):  # type: ignore[no-untyped-def]
    return Policy.parse({"gates": gates, **extra}).to_judge_policy(task, mode)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("role", "mode", "expected"),
    [
        ("guardrail", "shadow", ("informational", True)),  # shadow latencies are batch work: reported only
        ("guardrail", "canary", ("guardrail", True)),
        ("off", "shadow", ("informational", False)),
    ],
)
def test_latency_decides_only_in_canary_steps(role: str, mode: str, expected: tuple[str, bool]) -> None:
    spec = _judge_policy({"latency_p99": {"role": role, "margin": 1.5}}, mode).latency_p99
    assert (spec.role, spec.enabled, spec.margin) == (*expected, 1.5)


def test_the_latency_slo_vetoes_only_in_canary_steps() -> None:
    assert _judge_policy({}, "shadow", slo={"latency_p99_ms": 200}).latency_p99_slo_ms is None
    assert _judge_policy({}, "canary", slo={"latency_p99_ms": 200}).latency_p99_slo_ms == 200


@pytest.mark.parametrize(
    ("role", "mode", "expected"),
    [
        ("required", "shadow", ("required", True)),  # the shadow sample's coverage decides in shadow steps
        ("required", "canary", ("informational", True)),
        ("guardrail", "shadow", ("informational", True)),
        ("off", "canary", ("informational", False)),
        ("off", "shadow", ("informational", False)),
    ],
)
def test_coverage_decides_only_as_a_required_gate_of_shadow_steps(
    role: str, mode: str, expected: tuple[str, bool]
) -> None:
    spec = _judge_policy({"coverage": {"role": role, "margin": 0.5}}, mode).coverage
    assert (spec.role, spec.enabled) == expected


def test_class_gates_are_off_for_regression_and_the_regression_gate_off_for_classification() -> None:
    regression = _judge_policy({}, "shadow", task="regression")
    assert (regression.agreement.enabled, regression.accuracy.enabled, regression.regression.enabled) == (
        False,
        False,
        True,
    )
    classification = _judge_policy({}, "shadow")
    assert (classification.accuracy.enabled, classification.regression.enabled) == (True, False)
    # by default agreement stands in for accuracy until labels come: a hold gate that needs no data
    agreement = classification.agreement
    assert (agreement.role, agreement.enabled, agreement.on_fail, agreement.allow_no_data) == (
        "guardrail",
        True,
        "hold",
        True,
    )


def test_quality_gates_outcome_and_segments_carry_the_policy_settings() -> None:
    from controller.core.metrics import MetricSpec

    policy = Policy.parse(
        {
            "burn_in": 77,
            "metrics": {"roc_auc": {"role": "required", "horizon": 3600}},
            "outcome": {"role": "guardrail", "margin": 0.1, "direction": "decrease", "ratio": True},
            "segments": {"columns": [{"column": "plan"}], "min_samples": 40, "role": "guardrail"},
        }
    )
    q = policy.quality_policy("classification", "shadow")
    by_metric = {g.metric: g for g in q.gates}
    assert by_metric["balanced_accuracy"].role == "required"  # not standing in: a required metric decides
    assert by_metric["roc_auc"] == MetricSpec(
        metric="roc_auc", role="required", margin=0.02, min_samples=77, horizon=3600
    )
    # outcomes are measured on canary-served requests only: in a shadow step the gate only reports
    assert by_metric["outcome"] == MetricSpec(
        metric="outcome", role="informational", margin=0.1, min_samples=77, direction="decrease", ratio=True
    )
    canary = {g.metric: g for g in policy.quality_policy("classification", "canary").gates}
    assert canary["outcome"] == MetricSpec(
        metric="outcome", role="guardrail", margin=0.1, min_samples=77, direction="decrease", ratio=True
    )
    assert q.segments is not None
    assert (q.segments.role, q.segments.min_samples) == ("guardrail", 40)
    assert [(s.metric, s.margin) for s in q.segments.metrics] == [
        ("accuracy", 0.01),
        ("balanced_accuracy", 0.05),
    ]
    regression = Policy.parse(
        {
            "gates": {"regression": {"role": "required", "margin": 0.07}},
            "segments": {"columns": [{"column": "plan"}]},
        }
    ).quality_policy("regression", "canary")
    assert regression.segments is not None
    assert [(s.metric, s.margin) for s in regression.segments.metrics] == [("mae", 0.07)]
    assert Policy.parse(None).quality_policy("classification", "shadow").segments is None


def test_agreement_keeps_its_own_role_when_it_does_not_stand_in_and_n_star_is_passed_on() -> None:
    judged = _judge_policy({"agreement": {"role": "informational", "margin": 0.8}}, "shadow", n_star=1234)
    assert (judged.agreement.role, judged.agreement.enabled, judged.agreement.margin) == (
        "informational",
        True,
        0.8,
    )
    assert not judged.agreement_stands_in
    assert judged.n_star == 1234
