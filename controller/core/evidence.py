"""Evidence across the steps of one rollout, stratified by step. Pure.

Each step of a rollout splits traffic differently (shadow, then 5%, 25%, 50% canary, then the watch),
so pooling raw counts across steps would compare arms observed at different times in different
proportions. Stratifying keeps every comparison inside its step and then adds the steps up:

* paired statistics (discordant pairs, per-pair differences) are comparisons within one request, hence
  within one step: they are summed as they are;
* unpaired statistics (each arm's counts, sums and latency histograms) are scaled, step by step, to
  the smaller arm's size ``min(n_champion, n_challenger)`` before they are summed, so both arms carry
  the same weight in every step and no arm counts more observations than it has.

    combined = stratified([shadow_step, canary_5, canary_25], current=canary_25)

The combined metrics keep the current step's mode, configured weight and routing-key counts (the
sample-ratio check concerns the current split only) and its output histogram (drift is per step).
Latency is combined over canary steps only: in shadow steps and in the watch one arm scores in
micro-batches off the live path, so its latencies are not what a user waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from controller.core.judge import Histogram, Moments, PairedCounts, Proportion, StepMetrics

__all__ = ["stratified", "swap_arms"]


def _scale_proportion(p: Proportion, m: int) -> Proportion:
    if p.n == 0 or m >= p.n:
        return p
    return Proportion(n=m, count=min(m, round(p.count * m / p.n)))


def _scale_moments(x: Moments, m: int) -> Moments:
    if x.n == 0 or m >= x.n:
        return x
    f = m / x.n
    return Moments(n=m, total=x.total * f, total_sq=x.total_sq * f)


def _add_proportions(items: Sequence[Proportion]) -> Proportion:
    return Proportion(n=sum(p.n for p in items), count=sum(p.count for p in items))


def _add_moments(items: Sequence[Moments]) -> Moments:
    return Moments(
        n=sum(x.n for x in items),
        total=float(sum(x.total for x in items)),
        total_sq=float(sum(x.total_sq for x in items)),
    )


def _add_paired(items: Sequence[PairedCounts]) -> PairedCounts:
    return PairedCounts(
        n=sum(p.n for p in items), worse=sum(p.worse for p in items), better=sum(p.better for p in items)
    )


def _scaled_histogram(h: Histogram) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(h.champion, dtype=float)
    b = np.asarray(h.challenger, dtype=float)
    m = min(a.sum(), b.sum())
    if m <= 0:
        return np.zeros_like(a), np.zeros_like(b)
    return np.round(a * m / a.sum()), np.round(b * m / b.sum())


def stratified(strata: Sequence[StepMetrics], *, current: StepMetrics) -> StepMetrics:
    """Combine the metrics of every step so far (``current`` among them, last) into one StepMetrics."""
    if not strata:
        return current

    def paired(name: str) -> PairedCounts | None:
        if getattr(current, name) is None:
            return None
        return _add_paired([getattr(s, name) for s in strata if getattr(s, name) is not None])

    def unpaired(champion: str, challenger: str) -> tuple[Proportion | None, Proportion | None]:
        pairs = [(getattr(s, champion), getattr(s, challenger)) for s in strata]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if getattr(current, champion) is None or not pairs:
            return getattr(current, champion), getattr(current, challenger)
        a = [_scale_proportion(x, min(x.n, y.n)) for x, y in pairs]
        b = [_scale_proportion(y, min(x.n, y.n)) for x, y in pairs]
        return _add_proportions(a), _add_proportions(b)

    def unpaired_moments(champion: str, challenger: str) -> tuple[Moments | None, Moments | None]:
        cur_a, cur_b = getattr(current, champion), getattr(current, challenger)
        if cur_a is None:
            return cur_a, cur_b
        if cur_b is None:  # only the champion's baseline (paired regression): summed as it is
            return _add_moments(
                [getattr(s, champion) for s in strata if getattr(s, champion) is not None]
            ), None
        pairs = [(getattr(s, champion), getattr(s, challenger)) for s in strata]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        a = [_scale_moments(x, min(x.n, y.n)) for x, y in pairs]
        b = [_scale_moments(y, min(x.n, y.n)) for x, y in pairs]
        return _add_moments(a), _add_moments(b)

    champion, challenger = unpaired("champion", "challenger")
    champion_correct, challenger_correct = unpaired("champion_correct", "challenger_correct")
    champion_abs, challenger_abs = unpaired_moments("champion_abs_error", "challenger_abs_error")
    diff = current.abs_error_difference
    if diff is not None:
        diff = _add_moments([s.abs_error_difference for s in strata if s.abs_error_difference is not None])
    agreement = current.agreement
    if agreement is not None:
        agreement = _add_proportions([s.agreement for s in strata if s.agreement is not None])
    latency = current.latency
    if current.mode == "canary":
        hs = [s.latency for s in strata if s.mode == "canary" and s.latency is not None]
        if hs and all(h.edges == hs[0].edges for h in hs):
            scaled = [_scaled_histogram(h) for h in hs]
            champion_counts = np.sum([a for a, _ in scaled], axis=0)
            challenger_counts = np.sum([b for _, b in scaled], axis=0)
            latency = Histogram(
                edges=hs[0].edges,
                champion=tuple(int(x) for x in champion_counts),
                challenger=tuple(int(x) for x in challenger_counts),
            )
    assert champion is not None and challenger is not None
    return replace(
        current,
        champion=champion,
        challenger=challenger,
        paired_errors=paired("paired_errors"),
        agreement=agreement,
        paired_correct=paired("paired_correct"),
        champion_correct=champion_correct,
        challenger_correct=challenger_correct,
        abs_error_difference=diff,
        champion_abs_error=champion_abs,
        challenger_abs_error=challenger_abs,
        latency=latency,
    )


def swap_arms(m: StepMetrics) -> StepMetrics:
    """Exchange the arms (a watch records the new champion in the champion's columns)."""

    def flip(p: PairedCounts | None) -> PairedCounts | None:
        return None if p is None else PairedCounts(n=p.n, worse=p.better, better=p.worse)

    d = m.abs_error_difference
    return replace(
        m,
        champion=m.challenger,
        challenger=m.champion,
        paired_errors=flip(m.paired_errors),
        paired_correct=flip(m.paired_correct),
        champion_correct=m.challenger_correct,
        challenger_correct=m.champion_correct,
        abs_error_difference=None if d is None else Moments(n=d.n, total=-d.total, total_sq=d.total_sq),
        champion_abs_error=m.challenger_abs_error,
        challenger_abs_error=m.champion_abs_error,
        latency=None
        if m.latency is None
        else Histogram(edges=m.latency.edges, champion=m.latency.challenger, challenger=m.latency.champion),
        outputs=None
        if m.outputs is None
        else Histogram(edges=m.outputs.edges, champion=m.outputs.challenger, challenger=m.outputs.champion),
    )
