"""Words that match the numbers (issue 19): the text of a verdict never contradicts its own figures."""

from __future__ import annotations

import re

import pytest

from controller.core import judge
from controller.core.policy import Policy, PolicyError
from controller.core.reproducibility import ArmOnline, compare_online_offline


def test_online_far_better_than_offline_is_flagged_not_called_reproduced() -> None:
    # the figures: online 4,950 of 5,000 right (0.99) against an offline 0.888 on 2,000 rows
    online = ArmOnline(arm="challenger", version="churn:2", labelled=5000, correct=4950)
    r = compare_online_offline("classification", {"accuracy": 0.888, "holdout_size": 2000}, online)
    assert r.difference == pytest.approx(4950 / 5000 - 0.888)
    assert "reproduced within" not in r.reason
    assert "BETTER than offline" in r.reason and "flagged" in r.reason
    same = compare_online_offline(
        "classification", {"accuracy": 0.888, "holdout_size": 2000},
        ArmOnline(arm="challenger", version="churn:2", labelled=5000, correct=4440), accuracy_margin=0.05,
    )  # fmt: skip
    assert "reproduced within" in same.reason  # 0.888 online: reproduction, said so


def _bounds(reason: str) -> tuple[float, float, str, float]:
    found = re.search(r"bounds (\S+?)\.\.(\S+) (include|lie past) (\S+)", reason)
    assert found, reason
    return float(found[1]), float(found[2]), found[3], float(found[4])


@pytest.mark.parametrize("harm", [0.0, 0.019, 0.5])
def test_inconclusive_bounds_say_include_only_when_they_include_the_limit(harm: float) -> None:
    draft = judge._harm_gate(
        "accuracy", judge.GateSpec(role="required", margin=0.02), judge.JudgePolicy(),
        harm=harm, se=0.02, n_cs=400, limit=0.02, n1=400, n2=400, describe="accuracy",
    )  # fmt: skip
    reason = draft.verdict.reason
    if not reason.startswith("inconclusive"):
        return  # passed: no bounds sentence
    low, high, word, limit = _bounds(reason)
    assert (word == "include") == (low <= limit <= high), reason


def test_canary_steps_that_look_like_fractions_are_refused_naming_the_unit() -> None:
    with pytest.raises(PolicyError, match=r"canary\.steps: .*percent of traffic.*write \[5, 25\]"):
        Policy.parse({"canary": {"steps": [0.05, 0.25]}})
    assert Policy.parse({"canary": {"steps": [0.5, 5, 100]}}).canary.steps == (0.5, 5.0, 100.0)
    assert Policy.parse({"canary": {"shadow_rate": 0.25}}).canary.shadow_rate == 0.25  # a fraction


def test_every_policy_field_names_its_unit_in_the_generated_docs() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    assert "weights in **percent** of traffic" in text and "**fraction** (0..1, not percent)" in text


def test_unknown_policy_fields_suggest_the_nearest_name_and_yaml_errors_give_the_line() -> None:
    with pytest.raises(PolicyError, match=r"canary\.step: unknown field; did you mean steps\?"):
        Policy.parse({"canary": {"step": [5, 50]}})
    with pytest.raises(PolicyError, match=r"gates\.accuracy\.rol: unknown field; did you mean role\?"):
        Policy.parse({"gates": {"accuracy": {"rol": "guardrail"}}})
    with pytest.raises(PolicyError, match=r"line 4, column 6: expected ',' or '\]'"):
        Policy.parse("mode: canary\ncanary:\n  steps: [5, 50\nalpha: 0.05\n")


def test_the_latency_floor_in_ms_reaches_the_judge_and_is_documented() -> None:
    policy = Policy.parse({"gates": {"latency_floor_ms": 50}})
    assert policy.to_judge_policy("classification", "canary").latency_floor_ms == 50.0
    with pytest.raises(PolicyError, match="latency_floor_ms"):
        Policy.parse({"gates": {"latency_floor_ms": -1}})
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    assert (
        "`gates.latency_floor_ms`" in text
        and "ratio of the challenger's p99 latency to the champion's |" not in text
    )
