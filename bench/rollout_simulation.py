"""Whole-rollout simulation: the real policy, measurement mapping, judge and state machine over time.

Run (heavy: nice it):

    nice -n 10 .venv/bin/python bench/rollout_simulation.py --rollouts 1000 --seed 11 \
        --out bench/results/rollout_simulation.md
    .venv/bin/python bench/rollout_simulation.py --rows aa-paired-100-even --rollouts 50   # one row

Each rollout walks the default policy (unless its row changes it) from ``pending`` to an end: a look
every ``look_s`` simulated seconds draws the traffic of the interval (requests, failures, routing keys,
paired and served outcomes, latencies, labels with their delay), builds ``storage.analytics``-shaped
aggregates for every step so far, and calls what the controller calls: ``measure.metrics_from_aggregates``
/ ``measure.canary_metrics``, ``evidence.stratified``, ``Policy.to_judge_policy``, ``judge()`` and
``machine.decide()``. Only the data generation is vectorised (counts drawn per interval from
multinomial and binomial laws; per-request draws for regression errors); every decision is the real
code's. A rollout ends promoted, rolled back, or paused (a step or the watch ran out of budget).

Rows: an equal challenger (A/A: same accuracy, some disagreement) must not be rolled back (false
rollback <= alpha); a harmful one must not be promoted (false promotion <= alpha). The report gives,
per row, the share of each end with a 95% Clopper-Pearson interval, and the median labelled pairs and
time to the correct decision next to the fixed-n sample size of the same non-inferiority test.
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.core.evidence import stratified  # noqa: E402
from controller.core.judge import (  # noqa: E402
    JudgePolicy,
    Proportion,
    StepMetrics,
    hold_for_label_delays,
    hold_for_outcome_dependent_labels,
    judge,
)
from controller.core.machine import FINAL, RolloutState, decide  # noqa: E402
from controller.core.metrics import QualityStats  # noqa: E402
from controller.core.policy import Policy  # noqa: E402
from controller.loop.measure import LATENCY, canary_metrics, metrics_from_aggregates  # noqa: E402
from controller.loop.quality import stats_from_aggregates  # noqa: E402
from storage.analytics import ArmAggregates, ClusterAggregate, StepAggregates  # noqa: E402
from storage.quality import QualityAggregates  # noqa: E402

T0 = datetime(2026, 12, 1, tzinfo=UTC)
_EDGES = np.concatenate([[0.0], LATENCY.start_ms * LATENCY.growth ** np.arange(LATENCY.count - 1), [np.inf]])


@dataclass(frozen=True)
class Scenario:
    """One row: the truth, the traffic and the policy overrides.

    ``worse`` / ``better``: per request, P(champion right and challenger wrong) / the opposite; the
    accuracy difference is ``better - worse`` and the disagreement ``worse + better`` (binary classes).
    ``slow_label_delay_s``: labels of requests the challenger gets wrong arrive after this delay instead
    of ``label_delay_s`` (outcome-dependent order). ``catastrophic``: (rate, size) of rare huge
    regression errors of the challenger. ``key_spread``: standard deviation of the per-key accuracy.
    ``groups`` (classification): (share, segment, label, accuracy, worse, better) per group of requests,
    for the class-aware and segment gates (default: labels 0 and 1 in halves, the row's figures in
    both); ``accuracy``, ``worse`` and ``better`` are then the groups' weighted means (``grouped``).
    ``revenue``: value per visit of the champion's and the challenger's served requests (canary), each
    request 1 + Poisson(1) visits and a gamma revenue with that mean per visit (the outcome gate).
    """

    name: str
    truth: Literal["equal", "harmful"]
    description: str
    task: Literal["classification", "regression"] = "classification"
    policy: dict[str, Any] = field(default_factory=dict)
    rate: float = 100.0
    keys: Literal["even", "uneven"] = "even"
    look_s: float = 300.0
    accuracy: float = 0.85
    worse: float = 0.025
    better: float = 0.025
    champion_errors: float = 0.001
    challenger_errors: float = 0.001
    latency_ratio: float = 1.0
    label_delay_s: float = 0.0
    slow_label_delay_s: float | None = None
    catastrophic: tuple[float, float] | None = None
    regression_noise: float = 0.2
    key_spread: float = 0.08
    horizon_s: float = 6 * 86400.0
    groups: tuple[tuple[float, str, int, float, float, float], ...] | None = None
    revenue: tuple[float, float] | None = None


Group = tuple[float, str, int, float, float, float]


def grouped(name: str, truth: Literal["equal", "harmful"], description: str, groups: Sequence[Group],
            **kw: Any) -> Scenario:  # fmt: skip
    """A row whose requests fall in ``groups``; the overall accuracy, worse and better are their means."""
    share = np.array([g[0] for g in groups])
    acc, worse, better = (float(share @ np.array([g[i] for g in groups])) for i in (3, 4, 5))
    return Scenario(name, truth, description, accuracy=acc, worse=worse, better=better, groups=tuple(groups),
                    **kw)  # fmt: skip


UNPAIRED = {"canary": {"paired": False}}


def _cautious_canary() -> dict[str, Any]:
    """The "cautious canary" example of docs/policy.md, read from the document itself."""
    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "policy.md").read_text()
    section = text[text.index("### 3. A cautious canary") :]
    block = section[
        section.index("```yaml") + len("```yaml") : section.index("```", section.index("```yaml") + 7)
    ]
    data: dict[str, Any] = yaml.safe_load(block)
    return data


CAUTIOUS = _cautious_canary()
ROWS: tuple[Scenario, ...] = (
    Scenario("aa-paired-1-even", "equal", "A/A, canary steps paired, 1 req/s, one key per request",
             rate=1.0, look_s=1800.0),
    Scenario("aa-paired-100-even", "equal", "A/A, canary steps paired, 100 req/s, one key per request",
             look_s=60.0),
    Scenario("aa-paired-100-uneven", "equal", "A/A, canary steps paired, 100 req/s, 200 Zipf keys",
             keys="uneven", look_s=60.0),
    Scenario("aa-canary-1-even", "equal", "A/A, canary steps unpaired, 1 req/s, one key per request",
             policy=UNPAIRED, rate=1.0, look_s=1800.0),
    Scenario("aa-canary-100-even", "equal", "A/A, canary steps unpaired, 100 req/s, one key per request",
             policy=UNPAIRED, look_s=60.0),
    Scenario("aa-canary-100-uneven", "equal", "A/A, canary steps unpaired, 100 req/s, 200 Zipf keys",
             policy=UNPAIRED, keys="uneven", look_s=60.0),
    Scenario("labels-1h-worse5", "harmful", "5 points less accurate, 8% disagreement, labels after 1 h",
             rate=10.0, worse=0.065, better=0.015, label_delay_s=3600.0, look_s=600.0),
    Scenario("labels-1d-worse5", "harmful", "5 points less accurate, 8% disagreement, labels after 1 day",
             rate=10.0, worse=0.065, better=0.015, label_delay_s=86400.0, look_s=1800.0),
    Scenario("labels-1d-worse5-watch", "harmful", "as above, with the post-promotion watch",
             policy={"watch": {"enabled": True}}, rate=10.0, worse=0.065, better=0.015,
             label_delay_s=86400.0, look_s=1800.0),
    Scenario("cautious-canary-worse5", "harmful",
             "docs/policy.md example 3 (watch on, labels mature in a day), 5 points worse, 8% disagreement",
             policy=CAUTIOUS, rate=10.0, worse=0.065, better=0.015, label_delay_s=86400.0, look_s=1800.0,
             horizon_s=12 * 86400.0),
    Scenario("labels-outcome-order", "harmful",
             "5 points less accurate; labels of its wrong answers after 1 day, others after 1 h",
             rate=10.0, worse=0.065, better=0.015, label_delay_s=3600.0, slow_label_delay_s=86400.0,
             look_s=1800.0),
    Scenario("labels-outcome-order-matured", "harmful",
             "as above, with label_maturity_s 1 day", policy={"label_maturity_s": 86400.0},
             rate=10.0, worse=0.065, better=0.015, label_delay_s=3600.0, slow_label_delay_s=86400.0,
             look_s=1800.0),
    Scenario("regression-catastrophic", "harmful",
             "regression, MAE +5.5% (margin 5%) from rare huge errors (0.05%, 56 x the MAE)",
             task="regression", rate=2.0, look_s=1800.0, catastrophic=(0.0005, 56.2)),
    Scenario("errors-at-margin", "harmful",
             "error rate 0.1% vs 1.1% (exactly the 1-point margin), rare errors",
             rate=10.0, challenger_errors=0.011, look_s=600.0, worse=0.0, better=0.0),
    Scenario("latency-3x-low-traffic", "harmful", "challenger 3x slower at every quantile, 1 req/s",
             rate=1.0, latency_ratio=3.0, look_s=1800.0, worse=0.0, better=0.0),
    # issue 15: a challenger that never predicts the 2% positive class (champion: recall 0.57, accuracy
    # 0.9856; challenger 0.98: inside the 1-point accuracy margin, recall 0)
    grouped("rare-class-never-positive", "harmful",
            "2% positive class; the challenger never predicts it (accuracy 0.9856 -> 0.98, recall 0.57 -> 0)",
            [(0.02, "all", 1, 0.57, 0.57, 0.0), (0.98, "all", 0, 0.994122, 0.0, 0.005878)], look_s=60.0),
    # 10 points worse on a 10% segment, 0.3 points better overall
    grouped("segment-harm-10pct", "harmful",
            "10 points worse on a 10% segment (column `segment` in the policy), 0.3 points better overall",
            [(0.05, "a", 0, 0.85, 0.125, 0.025), (0.05, "a", 1, 0.85, 0.125, 0.025),
             (0.45, "b", 0, 0.85, 0.02, 0.0344), (0.45, "b", 1, 0.85, 0.02, 0.0344)],
            policy={"segments": {"columns": [{"column": "segment"}]}}, look_s=60.0),
    Scenario("revenue-per-visit-worse", "harmful",
             "revenue per visit 10% lower (outcome gate required, ratio per visit, margin 0), same accuracy",
             policy={"outcome": {"role": "required", "ratio": True}}, look_s=60.0, revenue=(1.0, 0.9)),
    Scenario("revenue-per-visit-equal", "equal",
             "revenue per visit equal (outcome gate required, ratio per visit, margin 0), same accuracy",
             policy={"outcome": {"role": "required", "ratio": True, "margin": 0.02}}, look_s=60.0,
             revenue=(1.0, 1.0)),
    # new rows go last: a row's seed is the run's seed plus its index here
    Scenario("labels-outcome-order-1h-maturity", "harmful",
             "as labels-outcome-order, label_maturity_s 1 h (no delay seen exceeds it for a day)",
             policy={"label_maturity_s": 3600.0}, rate=10.0, worse=0.065, better=0.015, label_delay_s=3600.0,
             slow_label_delay_s=86400.0, look_s=1800.0),
    # issue 15: the A/A twin of rare-class-never-positive for the class-aware default gate (required
    # balanced accuracy): both arms have recall 0.57 on the 2% positive class and 0.994 on the other, and
    # disagree on 10% of positives and 0.6% of negatives, each arm right on half of the disagreements
    grouped("aa-rare-class-2pct", "equal",
            "A/A on a 2% positive class (both: recall 0.57 and 0.994; 10% of positives, 0.6% of negatives "
            "disagree): the class-aware default gate must not roll it back",
            [(0.02, "all", 1, 0.57, 0.05, 0.05), (0.98, "all", 0, 0.994122, 0.003, 0.003)], look_s=60.0),
    grouped("aa-rare-class-2pct-unpaired", "equal",
            "as aa-rare-class-2pct, canary steps unpaired: the class-aware gate on the served rows",
            [(0.02, "all", 1, 0.57, 0.05, 0.05), (0.98, "all", 0, 0.994122, 0.003, 0.003)], policy=UNPAIRED,
            look_s=60.0),
    # issue 14: rare large errors at 0.2% (17.5 x the MAE) put the MAE 5.5% above the champion's (margin 5%)
    Scenario("regression-rare-errors", "harmful",
             "regression, MAE +5.5% (margin 5%) from errors 17.5 x the MAE in 0.2% of requests, no error bound",
             task="regression", rate=0.5, look_s=600.0, catastrophic=(0.002, 14.0)),
    Scenario("regression-rare-errors-bounded", "harmful",
             "as above, with gates.regression_error_bound 20 (no error of either arm exceeds it)",
             policy={"gates": {"regression_error_bound": 20.0}}, task="regression", rate=0.5, look_s=600.0,
             catastrophic=(0.002, 14.0)),
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Traffic of one step, accumulated per interval
# --------------------------------------------------------------------------------------------------

# paired vector: n, worse (challenger failed alone), better, both failed, RR, CR, HR, WW (both ok rows:
# both right, champion right only, challenger right only, both wrong); regression adds
# m, s1, ss1, s2, ss2, sd, ssd over labelled both-ok rows
# served vector: n1, f1, n2, f2, right1, wrong1, right2, wrong2 (regression: m1, s1, ss1, m2, s2, ss2)
FAST_PAIRED = (4, 6)  # challenger right: RR, HR
SLOW_PAIRED = (5, 7)  # challenger wrong: CR, WW
FAST_SERVED = (4, 5, 6)  # champion-served outcomes, challenger right
SLOW_SERVED = (7,)  # challenger served and wrong


class StepData:
    """Cumulative per-interval sums of one step's traffic, with the time each interval was received."""

    def __init__(self, kind: str, weight: float, n_keys: int, width_paired: int, width_served: int) -> None:
        self.kind = kind
        self.weight = weight
        self.times: list[float] = [-math.inf]
        self.paired = [np.zeros(width_paired)]
        self.served = [np.zeros(width_served)]
        self.latency = [np.zeros(LATENCY.count, dtype=np.int64), np.zeros(LATENCY.count, dtype=np.int64)]
        self.seen = [np.zeros(n_keys, dtype=bool), np.zeros(n_keys, dtype=bool)]
        self.units = [0, 0]
        # uneven keys: per routing key, cumulative requests, failed, right and wrong answers of the arm
        # that serves it (canary steps; the split is sticky per key), for the per-key cluster sums
        self.keys = [np.zeros((n_keys, 4))]
        self.on_chal = np.zeros(n_keys, dtype=bool)
        self.cache: tuple[tuple[int, int, int], StepMetrics, StepAggregates] | None = None

    def add(self, t: float, paired: np.ndarray, served: np.ndarray, keys: np.ndarray | None = None) -> None:
        self.times.append(t)
        self.paired.append(self.paired[-1] + paired)
        self.served.append(self.served[-1] + served)
        self.keys.append(self.keys[-1] + keys if keys is not None else self.keys[-1])

    def at(self, cutoff: float, which: str) -> np.ndarray:
        rows = {"paired": self.paired, "served": self.served, "keys": self.keys}[which]
        return rows[bisect.bisect_right(self.times, cutoff) - 1]


class Simulator:
    def __init__(self, sc: Scenario, rng: np.random.Generator) -> None:
        self.sc = sc
        self.rng = rng
        self.policy = Policy.parse(sc.policy)
        self.plan = self.policy.plan()
        self.regression = sc.task == "regression"
        self.n_keys = 200 if sc.keys == "uneven" else 0
        self._judge_policies: dict[tuple[str, bool], JudgePolicy] = {}
        lat1 = self._latency_probs(1.0)
        self.latency_probs = (lat1, self._latency_probs(sc.latency_ratio))
        # groups of requests (classification): label, segment and the four paired cells' shares in each
        groups = sc.groups or (
            (0.5, "all", 0, sc.accuracy, sc.worse, sc.better),
            (0.5, "all", 1, sc.accuracy, sc.worse, sc.better),
        )
        self.n_groups = 0 if self.regression else len(groups)
        share = np.array([g[0] for g in groups])
        acc, worse, better = (np.array([g[i] for g in groups]) for i in (3, 4, 5))
        self.group_label = [g[2] for g in groups]
        self.group_segment = [g[1] for g in groups]
        # P(group | cell) for RR, CR, HR, WW; P(group | champion right / wrong, challenger right / wrong)
        cells = share[:, None] * np.stack([acc - worse, worse, better, 1.0 - acc - better], axis=1)
        arms = share[:, None] * np.stack(
            [acc, 1.0 - acc, acc + better - worse, 1.0 - acc - better + worse], axis=1
        )
        self.given_cell = (cells / np.maximum(cells.sum(axis=0), 1e-300)).T
        self.given_arm = (arms / np.maximum(arms.sum(axis=0), 1e-300)).T
        self.classes = () if self.regression else ("0", "1")

    def _latency_probs(self, scale: float) -> np.ndarray:
        cdf = sps.lognorm.cdf(_EDGES, s=0.5, scale=20.0 * scale)
        p = np.diff(cdf)
        return p / p.sum()

    def judge_policy(self, mode: str, final: bool) -> JudgePolicy:
        key = (mode, final)
        if key not in self._judge_policies:
            self._judge_policies[key] = self.policy.to_judge_policy(
                self.sc.task,
                mode,
                final=final,
                classes=self.classes,  # type: ignore[arg-type]
            )
        return self._judge_policies[key]

    # ---------------------------------------------------------------------------- one rollout
    def run(self) -> dict[str, Any]:
        sc, rng = self.sc, self.rng
        if self.n_keys:
            share = 1.0 / np.arange(1, self.n_keys + 1) ** 1.1
            self.key_share = share / share.sum()
            self.key_u = rng.random(self.n_keys)
            self.key_acc = np.clip(sc.accuracy + rng.normal(0.0, sc.key_spread, self.n_keys), 0.3, 0.99)
        state = RolloutState("pending", 0, 0.0, 0.0, T0, self.policy)
        d = decide(state, None, T0)
        state = self._apply(state, d, T0)
        steps = [self._new_step(state)]
        t = 0.0
        labelled_at_end = 0
        first_decided: int | None = None
        cause = ""
        while t < sc.horizon_s:
            t += sc.look_s
            now = T0 + timedelta(seconds=t)
            self._traffic(steps[-1], t - sc.look_s, t)
            metrics, samples, labelled_pairs = self._measure(steps, state, t)
            final = self.policy.final_stage(state.step_index)
            j = judge(metrics, self.judge_policy(metrics.mode, final))
            if final and j.decision == "promote":  # as controller.loop.assess: labels later than the maturity
                j = hold_for_label_delays(
                    j, final=True, label_delay_s=self._label_delay(t, labelled_pairs),
                    maturity_s=self.policy.label_maturity_s,
                )  # fmt: skip
            if final and j.decision == "promote" and not self.regression:  # and labels by agreement
                jp = self.judge_policy(metrics.mode, final)
                agreeing, disagreeing = self._label_coverage(steps, t)
                j = hold_for_outcome_dependent_labels(
                    j, final=True, agreeing=agreeing, disagreeing=disagreeing, alpha=jp.alpha, n_star=jp.n_star
                )  # fmt: skip
            state = RolloutState(
                state.phase, state.step_index, state.canary_weight, state.shadow_rate,
                state.step_started_at, self.policy, samples,
            )  # fmt: skip
            d = decide(state, j, now)
            labelled_at_end = labelled_pairs
            if first_decided is None:
                quality = [
                    v for v in j.verdicts if v.gate in ("accuracy", "regression") and v.role == "required"
                ]
                wanted = "pass" if sc.truth == "equal" else "fail"
                if quality and quality[0].outcome.label == wanted:
                    first_decided = labelled_pairs
            if d.action == "rollback":
                cause = ",".join(sorted({v.gate for v in j.verdicts if v.outcome.label == "fail"
                                         and v.role in ("required", "guardrail", "veto")})) or d.reason  # fmt: skip
            if d.transition:
                state = self._apply(state, d, now)
                if state.phase in FINAL or state.phase == "paused":
                    break
                if d.new_step:
                    steps.append(self._new_step(state))
        end = state.phase if state.phase in FINAL or state.phase == "paused" else "undecided"
        return {
            "end": end, "seconds": t, "labelled": labelled_at_end, "steps": len(steps),
            "first": first_decided, "cause": cause,
        }  # fmt: skip

    def _apply(self, state: RolloutState, d: Any, now: datetime) -> RolloutState:
        started = now if d.new_step else state.step_started_at
        return RolloutState(d.phase, d.step_index, d.canary_weight, d.shadow_rate, started, self.policy)

    def _new_step(self, state: RolloutState) -> StepData:
        kind = "watch" if state.step_index >= len(self.plan) else self.plan[state.step_index].kind
        wp = 15 if self.regression else 8 + 4 * self.n_groups
        ws = 10 if self.regression else 8 + 4 * self.n_groups + 12
        step = StepData(kind, state.canary_weight / 100.0, self.n_keys, wp, ws)
        if self.n_keys and kind == "canary":
            step.on_chal = self.key_u < step.weight
        return step

    def _label_delay(self, t: float, labelled: int) -> float | None:
        """The longest delay between a request and its label seen by ``t`` (``storage.quality.label_delay``)."""
        if not labelled:
            return None
        seen = [d for d in (self.sc.label_delay_s, self.sc.slow_label_delay_s) if d is not None and d <= t]
        return max(seen) if seen else None

    def _label_coverage(self, steps: Sequence[StepData], t: float) -> tuple[Proportion, Proportion]:
        """Pairs old enough for their labels, agreeing and disagreeing, and those labelled
        (``storage.quality.label_coverage``): RR and WW agree, CR and HR disagree; the challenger's
        wrong answers (CR, WW) are labelled at the slow cutoff."""
        sc = self.sc
        maturity = self.policy.label_maturity_s
        fast = t - max(maturity, sc.label_delay_s)
        slow = t - max(
            maturity, sc.slow_label_delay_s if sc.slow_label_delay_s is not None else sc.label_delay_s
        )
        a = la = d = ld = 0
        for step in steps:
            old, f, s = step.at(t - maturity, "paired"), step.at(fast, "paired"), step.at(slow, "paired")
            a += int(old[4] + old[7])
            d += int(old[5] + old[6])
            la += int(f[4] + s[7])
            ld += int(s[5] + f[6])
        return Proportion(n=a, count=la), Proportion(n=d, count=ld)

    # ---------------------------------------------------------------------------- data generation
    def _traffic(self, step: StepData, t0: float, t1: float) -> None:
        sc, rng = self.sc, self.rng
        dt = t1 - t0
        mid = 0.5 * (t0 + t1)
        canary = step.kind == "canary"
        paired_canary = canary and self.policy.canary.paired and self.policy.canary.shadow_rate > 0
        if self.n_keys:
            per_key = rng.poisson(sc.rate * dt * self.key_share)
            on_chal = self.key_u < step.weight if canary else np.zeros(self.n_keys, dtype=bool)
            n2 = int(per_key[on_chal].sum())
            n1 = int(per_key.sum()) - n2
            for arm, mask in ((0, ~on_chal), (1, on_chal)):
                step.seen[arm] |= mask & (per_key > 0)
                step.units[arm] = int(step.seen[arm].sum())
        else:
            n = int(rng.poisson(sc.rate * dt))
            n2 = int(rng.binomial(n, step.weight)) if canary else 0
            n1 = n - n2
            step.units[0] += n1
            step.units[1] += n2
            per_key = None
        paired = np.zeros(len(step.paired[0]))
        served = np.zeros(len(step.served[0]))
        n = n1 + n2
        if not canary or paired_canary:
            paired = self._paired(n, per_key)
        keys = None
        if canary:
            served, keys = self._served(n1, n2, per_key, on_chal if self.n_keys else None)
            for arm, k in ((0, n1), (1, n2)):
                if k:
                    step.latency[arm] += rng.multinomial(k, self.latency_probs[arm])
        step.add(mid, paired, served, keys)

    def _accuracy_cells(self, ok: int, per_key: np.ndarray | None, n: int) -> np.ndarray:
        """Split ``ok`` both-ok requests into RR, CR, HR, WW."""
        sc, rng = self.sc, self.rng
        if per_key is None or ok == 0:
            p = np.array([sc.accuracy - sc.worse, sc.worse, sc.better, 1.0 - sc.accuracy - sc.better])
            return rng.multinomial(ok, p)
        # keys: each key's accuracy differs; thin each key's requests to the both-ok share
        k_ok = rng.binomial(per_key, ok / max(n, 1))
        acc = self.key_acc
        p = np.stack([acc - sc.worse, np.full_like(acc, sc.worse), np.full_like(acc, sc.better),
                      1.0 - acc - sc.better], axis=1)  # fmt: skip
        p = np.clip(p, 0.0, None)
        p /= p.sum(axis=1, keepdims=True)
        # a multinomial per key, vectorised as conditional binomials
        left = k_ok.astype(np.int64)
        rest = np.ones(len(left))
        cells = np.zeros(4)
        for i in range(3):
            q = np.clip(np.divide(p[:, i], rest, out=np.zeros_like(rest), where=rest > 0), 0.0, 1.0)
            x = rng.binomial(left, q)
            cells[i] = x.sum()
            left = left - x
            rest = rest - p[:, i]
        cells[3] = left.sum()
        return cells

    def _paired(self, n: int, per_key: np.ndarray | None) -> np.ndarray:
        sc, rng = self.sc, self.rng
        e1, e2 = sc.champion_errors, sc.challenger_errors
        cells = rng.multinomial(n, [(1 - e1) * (1 - e2), (1 - e1) * e2, e1 * (1 - e2), e1 * e2])
        ok, worse, better, both = (int(x) for x in cells)
        if not self.regression:
            acc = self._accuracy_cells(ok, per_key, n)
            split = [rng.multinomial(int(c), self.given_cell[i]) for i, c in enumerate(acc)]
            return np.concatenate([[n, worse, better, both], acc, *split])
        a1, a2, sq1, sq2, sd, ssd = self._regression_errors(ok)
        return np.array([n, worse, better, both, 0, 0, 0, 0, ok, a1, sq1, a2, sq2, sd, ssd], dtype=float)

    def _regression_errors(self, m: int) -> tuple[float, ...]:
        sc, rng = self.sc, self.rng
        z = rng.standard_normal(m)
        e1 = np.abs(z)
        e2 = np.abs(z + rng.normal(0.0, sc.regression_noise, m))
        if sc.catastrophic is not None:
            rate, size = sc.catastrophic
            e2 = e2 + size * (rng.random(m) < rate)
        d = e2 - e1
        return float(e1.sum()), float(e2.sum()), float(e1 @ e1), float(e2 @ e2), float(d.sum()), float(d @ d)

    def _served(
        self, n1: int, n2: int, per_key: np.ndarray | None, on_chal: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The served vector of one interval, and per routing key (uneven keys) requests, failed, right, wrong."""
        sc, rng = self.sc, self.rng
        keys = None
        if per_key is None or on_chal is None or self.regression:
            f1 = int(rng.binomial(n1, sc.champion_errors))
            f2 = int(rng.binomial(n2, sc.challenger_errors))
        else:  # failures, then right answers, drawn per key: the key's arm and the key's own accuracy
            f_k = rng.binomial(per_key, np.where(on_chal, sc.challenger_errors, sc.champion_errors))
            ok_k = per_key - f_k
            acc_k = np.where(on_chal, np.clip(self.key_acc + sc.better - sc.worse, 0, 1), self.key_acc)
            r_k = rng.binomial(ok_k, acc_k)
            keys = np.stack([per_key, f_k, r_k, ok_k - r_k], axis=1).astype(float)
            f1, f2 = int(f_k[~on_chal].sum()), int(f_k[on_chal].sum())
        ok1, ok2 = n1 - f1, n2 - f2
        if self.regression:
            a1 = self._regression_errors(ok1)  # champion-served: the champion's errors
            a2 = self._regression_errors(ok2)  # challenger-served: the challenger's errors
            return np.array([n1, f1, n2, f2, ok1, a1[0], a1[2], ok2, a2[1], a2[3]], dtype=float), None
        if keys is None:
            r1 = int(rng.binomial(ok1, sc.accuracy))
            r2 = int(rng.binomial(ok2, sc.accuracy + sc.better - sc.worse))
        else:
            assert on_chal is not None
            r1, r2 = int(keys[~on_chal, 2].sum()), int(keys[on_chal, 2].sum())
        totals = (r1, ok1 - r1, r2, ok2 - r2)
        split = [rng.multinomial(int(c), self.given_arm[i]) for i, c in enumerate(totals)]
        return np.concatenate([[n1, f1, n2, f2, *totals], *split, self._revenue(n1, n2)]), keys

    def _revenue(self, n1: int, n2: int) -> np.ndarray:
        """Per arm: n, sum x, sum x^2, sum v, sum v^2, sum x v of revenue x over visits v (served requests)."""
        out = np.zeros(12)
        if self.sc.revenue is None:
            return out
        for arm, (n, value) in enumerate(((n1, self.sc.revenue[0]), (n2, self.sc.revenue[1]))):
            if n == 0:
                continue
            v = 1.0 + self.rng.poisson(1.0, n)
            x = self.rng.gamma(2.0, value * v / 2.0)
            out[6 * arm : 6 * arm + 6] = (n, x.sum(), x @ x, v.sum(), v @ v, x @ v)
        return out

    # ---------------------------------------------------------------------------- measurement
    def _measure(
        self, steps: Sequence[StepData], state: RolloutState, t: float
    ) -> tuple[StepMetrics, int, int]:
        sc = self.sc
        # a request's label counts once it has arrived and the request is older than the label maturity
        maturity = self.policy.label_maturity_s
        fast = t - max(maturity, sc.label_delay_s)
        slow = t - max(
            maturity, sc.slow_label_delay_s if sc.slow_label_delay_s is not None else sc.label_delay_s
        )
        strata = []
        agg: StepAggregates | None = None
        for step in steps:
            key = (
                len(step.times),
                bisect.bisect_right(step.times, fast),
                bisect.bisect_right(step.times, slow),
            )
            if step.cache is not None and step.cache[0] == key:  # nothing new in this step: same metrics
                strata.append(step.cache[1])
                agg = step.cache[2]
                continue
            paired_now = step.paired[-1]
            p_fast, p_slow = step.at(fast, "paired"), step.at(slow, "paired")
            paired = self._paired_aggregates(paired_now, p_fast, p_slow)
            if step.kind == "canary":
                served = self._served_aggregates(
                    step, step.served[-1], step.at(fast, "served"), step.at(slow, "served"), fast, slow
                )
                use_pairs = self.policy.canary.paired and self.policy.canary.shadow_rate > 0
                m = canary_metrics(served, paired if use_pairs else None, task=sc.task,
                                   challenger_weight=step.weight)  # fmt: skip
                agg = served
            else:
                m = metrics_from_aggregates(paired, task=sc.task)
                agg = paired
            step.cache = (key, m, agg)
            strata.append(m)
        assert agg is not None
        metrics = stratified(strata, current=strata[-1])
        cur = steps[-1]
        if not self.regression:  # the current step's class-aware, segment and outcome gates
            metrics = replace(metrics, quality=self._quality(cur, fast, slow))
        if cur.kind == "watch":
            samples = agg.labelled_pairs if not self.regression else agg.diff_n
        elif cur.kind == "canary":
            samples = agg.champion.n + agg.challenger.n
        else:
            samples = agg.pairs
        return metrics, int(samples), _labelled(metrics)

    def _quality(self, step: StepData, fast_t: float, slow_t: float) -> QualityStats:
        """The step's ``storage.quality``-shaped aggregates, through the controller's own mapping."""
        g = self.n_groups
        # cohorts as controller.loop.quality: pairs unless an unpaired canary step; outcomes served
        served_cohort = step.kind == "canary" and not (
            self.policy.canary.paired and self.policy.canary.shadow_rate > 0
        )
        which = "served" if served_cohort else "paired"
        fast, slow = step.at(fast_t, which), step.at(slow_t, which)
        column = self.policy.segments.columns[0].column if self.policy.segments.columns else None
        cells: dict[str, dict[tuple[str, ...], int]] = {}
        for i in range(4):
            # paired: RR, CR, HR, WW (challenger wrong: slow labels); served: champion right, wrong,
            # challenger right, wrong (the last slow)
            source = slow if (i in (1, 3) and not served_cohort) or (i == 3 and served_cohort) else fast
            for k in range(g):
                count = int(source[8 + i * g + k])
                if not count:
                    continue
                y = self.group_label[k]
                if served_cohort:
                    arm = "champion" if i < 2 else "challenger"
                    cell: tuple[str, ...] = (arm, str(y), str(y if i % 2 == 0 else 1 - y))
                else:
                    a = y if i in (0, 1) else 1 - y
                    b = y if i in (0, 2) else 1 - y
                    cell = (str(y), str(a), str(b))
                for seg in ("", self.group_segment[k]) if column else ("",):
                    found = cells.setdefault(seg, {})
                    found[cell] = found.get(cell, 0) + count
        overall = cells.pop("", {})
        outcome: dict[str, tuple[int, float, float]] = {}
        ratio: dict[str, tuple[Any, ...]] = {}
        canary = step.kind == "canary"
        if canary and self.policy.outcome.role != "off":
            r = step.at(fast_t, "served")[8 + 4 * g : 8 + 4 * g + 12]
            for arm, o in (("champion", 0), ("challenger", 6)):
                outcome[arm] = (int(r[o]), float(r[o + 1]), float(r[o + 2]))
                ratio[arm] = (int(r[o]), float(r[o + 1]), float(r[o + 3]), float(r[o + 2]), float(r[o + 4]),
                              float(r[o + 5]))  # fmt: skip
        aggregates = QualityAggregates(
            "served" if served_cohort else "paired",
            paired_cells={} if served_cohort else overall,
            served_cells=overall if served_cohort else {},
            outcome=outcome,
            outcome_ratio=ratio,
            segments={column: cells} if column else {},
        )
        return stats_from_aggregates(
            aggregates, task="classification", classes=self.classes, mode="canary" if canary else "shadow"
        )

    def _paired_aggregates(self, now: np.ndarray, fast: np.ndarray, slow: np.ndarray) -> StepAggregates:
        n, worse, better, both = (int(x) for x in now[:4])
        if self.regression:
            m = int(fast[8])
            c = ArmAggregates(
                n=n, failed=better + both, labelled=m, abs_error_sum=fast[9], abs_error_sumsq=fast[10]
            )
            h = ArmAggregates(
                n=n, failed=worse + both, labelled=m, abs_error_sum=fast[11], abs_error_sumsq=fast[12]
            )
            return StepAggregates("paired", c, h, pairs=n, worse=worse, better=better,
                                  diff_n=m, diff_sum=float(fast[13]), diff_sumsq=float(fast[14]))  # fmt: skip
        rr, hr = int(fast[4]), int(fast[6])
        cr, ww = int(slow[5]), int(slow[7])
        lab = rr + cr + hr + ww
        c = ArmAggregates(n=n, failed=better + both, labelled=lab, correct=rr + cr)
        h = ArmAggregates(n=n, failed=worse + both, labelled=lab, correct=rr + hr)
        compared = int(now[4:8].sum())
        return StepAggregates(
            "paired", c, h, pairs=n, worse=worse, better=better, compared=compared,
            agreed=int(now[4] + now[7]), labelled_pairs=lab, labelled_worse=cr, labelled_better=hr,
        )  # fmt: skip

    def _served_aggregates(
        self,
        step: StepData,
        now: np.ndarray,
        fast: np.ndarray,
        slow: np.ndarray,
        fast_t: float,
        slow_t: float,
    ) -> StepAggregates:
        n1, f1, n2, f2 = (int(x) for x in now[:4])
        lat = [{i: int(c) for i, c in enumerate(h) if c} for h in step.latency]
        if self.regression:
            c = ArmAggregates(
                n=n1,
                failed=f1,
                units=step.units[0],
                labelled=int(fast[4]),
                abs_error_sum=float(fast[5]),
                abs_error_sumsq=float(fast[6]),
                latency=lat[0],
            )
            h = ArmAggregates(
                n=n2,
                failed=f2,
                units=step.units[1],
                labelled=int(fast[7]),
                abs_error_sum=float(fast[8]),
                abs_error_sumsq=float(fast[9]),
                latency=lat[1],
            )
            return StepAggregates("served", c, h)  # fmt: skip
        r1, w1, r2 = int(fast[4]), int(fast[5]), int(fast[6])
        w2 = int(slow[7])
        c = ArmAggregates(n=n1, failed=f1, units=step.units[0], labelled=r1 + w1, correct=r1, latency=lat[0])
        h = ArmAggregates(n=n2, failed=f2, units=step.units[1], labelled=r2 + w2, correct=r2, latency=lat[1])
        return StepAggregates("served", c, h, clusters=self._key_clusters(step, fast_t, slow_t))

    def _key_clusters(self, step: StepData, fast_t: float, slow_t: float) -> dict[str, ClusterAggregate]:
        """Per-routing-key cluster sums of a canary step, as ``storage.analytics.step_aggregates`` builds them.

        ``errors.<arm>``: rows = the key's requests, a = its failures; ``correct.<arm>``: rows = the key's
        labelled answers, a = the right ones (a challenger's wrong answers labelled at the slow cutoff).
        One-key-per-request rows (even keys) have no per-key sums, as each key is its own cluster there.
        """
        if not self.n_keys:
            return {}
        now, fast, slow = step.keys[-1], step.at(fast_t, "keys"), step.at(slow_t, "keys")
        on_chal = step.on_chal
        out: dict[str, ClusterAggregate] = {}
        for arm, mask in (("champion", ~on_chal), ("challenger", on_chal)):
            wrong = (slow if arm == "challenger" else fast)[mask, 3]
            for name, m, a in (
                (f"errors.{arm}", now[mask, 0], now[mask, 1]),
                (f"correct.{arm}", fast[mask, 2] + wrong, fast[mask, 2]),
            ):
                out[name] = ClusterAggregate(
                    clusters=int((m > 0).sum()), rows=float(m.sum()), mm=float(m @ m), ma=float(m @ a),
                    aa=float(a @ a),
                )  # fmt: skip
        return out


def _labelled(m: StepMetrics) -> int:
    """Labelled observations behind the quality gate: pairs, or both arms' labelled rows (unpaired)."""
    if m.paired_correct is not None:
        return m.paired_correct.n
    if m.abs_error_difference is not None:
        return m.abs_error_difference.n
    if m.champion_correct is not None and m.challenger_correct is not None:
        return m.champion_correct.n + m.challenger_correct.n
    if m.champion_abs_error is not None and m.challenger_abs_error is not None:
        return m.champion_abs_error.n + m.challenger_abs_error.n
    return 0


# --------------------------------------------------------------------------------------------------
# Rows, bounds and the report
# --------------------------------------------------------------------------------------------------


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = 1.0 - level
    lo = 0.0 if k == 0 else float(sps.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def fixed_n(sc: Scenario, alpha: float, power: float = 0.8) -> float:
    """Labelled pairs a fixed-n paired z test needs for the row's correct decision, at 80% power.

    Equal challenger: non-inferiority of accuracy at the 1-point margin (or MAE at 5%); harmful one:
    harm beyond the margin. NaN where the truth sits on the margin (no fixed n decides it) or the
    row's harm is not in accuracy or MAE.
    """
    z = float(sps.norm.ppf(1 - alpha) + sps.norm.ppf(power))
    if sc.task == "regression":
        rng = np.random.default_rng(0)
        zz = rng.standard_normal(1_000_000)
        e1 = np.abs(zz)
        e2 = np.abs(zz + rng.normal(0.0, sc.regression_noise, zz.size))
        if sc.catastrophic is not None:
            e2 = e2 + sc.catastrophic[1] * (rng.random(zz.size) < sc.catastrophic[0])
        d = e2 - 1.05 * e1  # the direct test of |e2| - (1 + m)|e1|
        gap = abs(float(d.mean()))
        return float(z**2 * d.var() / gap**2) if gap > 1e-4 else math.nan
    disc = sc.worse + sc.better
    gap = abs(0.01 - (sc.worse - sc.better))
    if disc == 0 or gap < 1e-9:
        return math.nan
    return float(z**2 * disc / gap**2)


@dataclass
class RowResult:
    scenario: Scenario
    ends: dict[str, int]
    rollouts: int
    seconds: list[float]
    labelled: list[int]
    first: list[int]
    causes: dict[str, int]
    wall_s: float

    @property
    def bad(self) -> int:
        """False rollbacks of an equal challenger, or false promotions of a harmful one."""
        return (
            self.ends.get("rolled_back", 0)
            if self.scenario.truth == "equal"
            else self.ends.get("promoted", 0)
        )

    @property
    def correct(self) -> str:
        return "promoted" if self.scenario.truth == "equal" else "rolled_back"


def run_row(sc: Scenario, rollouts: int, seed: int, budget_s: float | None = None) -> RowResult:
    rng = np.random.default_rng(seed)
    sim = Simulator(sc, rng)
    ends: dict[str, int] = {}
    seconds: list[float] = []
    labelled: list[int] = []
    first: list[int] = []
    causes: dict[str, int] = {}
    start = time.perf_counter()
    correct = "promoted" if sc.truth == "equal" else "rolled_back"
    done = 0
    for _ in range(rollouts):
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
        done += 1
        r = sim.run()
        ends[r["end"]] = ends.get(r["end"], 0) + 1
        if r["end"] == correct:
            seconds.append(r["seconds"])
            labelled.append(r["labelled"])
        if r["first"] is not None:
            first.append(r["first"])
        if r["cause"]:
            causes[r["cause"]] = causes.get(r["cause"], 0) + 1
    return RowResult(sc, ends, done, seconds, labelled, first, causes, time.perf_counter() - start)


def exceeds(bad: int, n: int, alpha: float, p_value: float = 0.001) -> bool:
    """True when ``bad`` of ``n`` is above ``alpha`` by a clear statistical margin (binomial test)."""
    return bool(sps.binom.sf(bad - 1, n, alpha) < p_value)


def table(results: Sequence[RowResult], alpha: float) -> str:
    head = (
        "| row | truth | rollouts | promoted | rolled back | paused / undecided | error (bound <= alpha) "
        "| 95% CI | rollbacks caused by | labelled at the correct end (median) | time to it (median) "
        "| labelled when the quality gate first decided right (median) | fixed-n (paired z test, 80% power) |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in results:
        sc, n = r.scenario, r.rollouts
        lo, hi = clopper_pearson(r.bad, n)
        what = "false rollback" if sc.truth == "equal" else "false promotion"
        other = r.ends.get("paused", 0) + r.ends.get("undecided", 0) + r.ends.get("aborted", 0)
        med_l = f"{np.median(r.labelled):,.0f}" if r.labelled else "-"
        med_t = f"{np.median(r.seconds) / 3600:.1f} h" if r.seconds else "-"
        fn = fixed_n(sc, Policy().budget()["harm"])
        fn_s = "-" if not math.isfinite(fn) else f"{fn:,.0f}"
        verdict = "**exceeds**" if exceeds(r.bad, n, alpha) else ("above" if r.bad / n > alpha else "ok")
        causes = ", ".join(f"{k} {v}" for k, v in sorted(r.causes.items(), key=lambda kv: -kv[1])) or "-"
        med_f = f"{np.median(r.first):,.0f}" if r.first else "-"
        lines.append(
            f"| `{sc.name}` | {sc.truth} | {n} | {r.ends.get('promoted', 0)} | {r.ends.get('rolled_back', 0)} "
            f"| {other} | {what} {r.bad / n:.1%} ({verdict}) | {lo:.1%}–{hi:.1%} | {causes} | {med_l} | {med_t} "
            f"| {med_f} | {fn_s} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rollouts", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--rows", nargs="*", default=None, help="row names (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock seconds per row at most")
    ap.add_argument("--jobs", type=int, default=1, help="rows run in this many processes at once")
    args = ap.parse_args(argv)
    alpha = Policy().alpha
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows]
    unknown = set(args.rows or ()) - {r.name for r in ROWS}
    if unknown:
        ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
    # each row keeps its own seed (seed + its index in ROWS), so a row's figures do not depend on which
    # other rows run, nor on --jobs
    seeds = {r.name: args.seed + i for i, r in enumerate(ROWS)}
    done: dict[str, RowResult] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_row, sc, args.rollouts, seeds[sc.name], args.budget_s): sc for sc in rows}
        for future in as_completed(futures):
            res = future.result()
            done[res.scenario.name] = res
            print(
                f"{res.scenario.name}: {res.rollouts} rollouts {res.ends} in {res.wall_s:.0f} s", flush=True
            )
    results = [done[sc.name] for sc in rows]
    text = table(results, alpha)
    print(text)
    if args.out is not None:
        descr = "\n".join(f"- `{r.scenario.name}`: {r.scenario.description}" for r in results)
        args.out.write_text(
            "# Whole-rollout simulation\n\n"
            f"`nice -n 10 .venv/bin/python bench/rollout_simulation.py --rollouts {args.rollouts} "
            f"--seed {args.seed} --out {args.out}"
            + (f" --budget-s {args.budget_s:g}" if args.budget_s else "")
            + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
            + (f" --rows {' '.join(args.rows)}" if args.rows else "")
            + f"`\n\nalpha = {alpha} (the policy's whole error budget).\n\n"
            f"{descr}\n\n{text}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
