"""The rollout plan as data: its stages, built once here, from a policy model or a stored policy.

    stages(mode, shadow, canary)          -> (Stage, ...)   what ``Policy.plan()`` returns
    stored_plan(rollout.policy, mode)     -> ((Stage, ...), alpha) or None

A rollout stores its whole policy (``Policy.to_dict()``: every field, validated when the rollout
started). ``stored_plan`` reads the plan and ``alpha`` straight off that document, without building
the policy's pydantic models: the verdict sentence of `mlcanary rollout status` needs only these, and
building the models was a fifth of that command's start-up (bench/cli_speed.py). A document that
lacks a field (None) is for ``Policy.parse`` to complete with its defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["Stage", "stages", "stored_plan"]


@dataclass(frozen=True)
class Stage:
    """One stage of the plan: "shadow" (weight 0) or "canary" at a challenger weight in percent."""

    kind: Literal["shadow", "canary"]
    weight: float
    shadow_rate: float
    min_samples: int
    min_duration_s: float
    max_duration_s: float


class ShadowStage(Protocol):
    """What the plan reads of the policy's ``shadow`` section (``controller.core.policy.Shadow``)."""

    @property
    def sample_rate(self) -> float: ...
    @property
    def min_pairs(self) -> int: ...
    @property
    def min_duration_s(self) -> float: ...
    @property
    def max_duration_s(self) -> float: ...


class CanarySteps(Protocol):
    """What the plan reads of the policy's ``canary`` section (``controller.core.policy.Canary``)."""

    @property
    def steps(self) -> Sequence[float]: ...
    @property
    def shadow_rate(self) -> float: ...
    @property
    def min_samples(self) -> int: ...
    @property
    def min_duration_s(self) -> float: ...
    @property
    def max_duration_s(self) -> float: ...


def stages(mode: str, shadow: ShadowStage, canary: CanarySteps) -> tuple[Stage, ...]:
    """Return the stages in order: shadow first (unless mode is canary), then canary weights < 100."""
    found: list[Stage] = []
    if mode in ("shadow", "shadow_then_canary"):
        s = shadow
        found.append(Stage("shadow", 0.0, s.sample_rate, s.min_pairs, s.min_duration_s, s.max_duration_s))
    if mode in ("canary", "shadow_then_canary"):
        c = canary
        for w in c.steps:
            if w < 100.0:
                found.append(
                    Stage("canary", w, c.shadow_rate, c.min_samples, c.min_duration_s, c.max_duration_s)
                )
    return tuple(found)


@dataclass(frozen=True)
class _Section:
    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def stored_plan(policy: Mapping[str, Any], mode: str) -> tuple[tuple[Stage, ...], float] | None:
    """Return (plan, alpha) of a stored complete policy under ``mode``; None if a field is missing."""
    try:
        shadow, canary, alpha = policy["shadow"], policy["canary"], float(policy["alpha"])
        if not isinstance(shadow, Mapping) or not isinstance(canary, Mapping):
            return None
        return stages(mode, _Section(shadow), _Section(canary)), alpha
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
