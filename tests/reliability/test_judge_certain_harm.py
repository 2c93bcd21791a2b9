"""Regression: a challenger failing every request is proven harmful (its harm p-value is negligible)."""

from __future__ import annotations

from controller.core.judge import JudgePolicy, PairedCounts, Proportion, StepMetrics, judge


def test_a_challenger_failing_every_request_is_rolled_back() -> None:
    n = 400
    metrics = StepMetrics(
        mode="shadow",
        champion=Proportion(n=n, count=0),
        challenger=Proportion(n=n, count=n),
        paired_errors=PairedCounts(n=n, worse=n, better=0),
    )
    judgement = judge(metrics, JudgePolicy())
    assert judgement.decision == "rollback", judgement.reason
    (error_rate,) = [v for v in judgement.verdicts if v.gate == "error_rate"]
    # under the null (no difference) Tango's variance is 1/n: z = 20, p ~ 4e-30 (the Wald variance gave 0)
    assert (
        error_rate.outcome.label == "fail" and error_rate.p_value is not None and error_rate.p_value < 1e-20
    )
