"""The operators' actions on a rollout: the one list the state machine, the API, the CLI and OpenAPI use.

A module of its own, importing nothing, so that the command line can build its commands from the list
without importing the statistics (SciPy) behind the state machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

RolloutAction = Literal["promote", "rollback", "pause", "resume", "abort"]
ROLLOUT_ACTIONS: tuple[RolloutAction, ...] = get_args(RolloutAction)
ACTION_HELP: Mapping[RolloutAction, str] = {
    "promote": "Move the active rollout to its next step (the last step promotes), or fully with full.",
    "rollback": "Roll the active rollout back: the champion answers everything again.",
    "pause": "Pause the active rollout: the split stays, the controller stops advancing it.",
    "resume": "Resume a paused rollout at its current step.",
    "abort": "Abort the rollout without a verdict: traffic returns to the champion.",
}

__all__ = ["ACTION_HELP", "ROLLOUT_ACTIONS", "RolloutAction"]
