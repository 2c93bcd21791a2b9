"""Backends: where a pipeline version's predictions come from. One protocol, one module per kind.

    Backend (Protocol)
    ├── inprocess.InProcessBackend   a registered scikit-learn artifact, loaded and hash-checked
    ├── upstream.UpstreamBackend     a remote model server speaking V2 or MLflow, over pooled HTTP
    │                                (encodings.py: its request encodings and output reading)
    └── MissingBackend               a version that could not be loaded; every call says why

Every backend answers `predict(frame)` for a DataFrame in the registered column order with
Predictions of exactly one entry per row, or raises a router.errors.BackendError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from router.errors import BackendError, InvalidOutput, ModelUnavailable
from router.settings import RouterSettings
from storage.entities import PipelineVersion


@dataclass(frozen=True)
class Predictions:
    """One answer per row: the class label (classification) or value (regression), and scores.

    score: for classifiers, the probability of the positive (second) class when there are two
    classes, else the highest class probability; None when the model gives no probabilities.
    """

    outputs: list[Any]
    scores: list[float] | None = None

    def __len__(self) -> int:
        return len(self.outputs)

    def slice(self, start: int, stop: int) -> Predictions:
        """Return the predictions of rows start..stop-1 (a request's share of a micro-batch)."""
        scores = None if self.scores is None else self.scores[start:stop]
        return Predictions(self.outputs[start:stop], scores)


class Backend(Protocol):
    """Scores DataFrames for one pipeline version."""

    version: PipelineVersion

    def predict(self, frame: pd.DataFrame) -> Predictions:
        """Score every row; raise a BackendError (never anything else) when that is impossible."""
        ...

    def close(self) -> None:
        """Release connections or other resources; the backend is not used afterwards."""
        ...


class MissingBackend:
    """Stands for a version that could not be loaded: every call raises ModelUnavailable."""

    def __init__(self, version: PipelineVersion, reason: str) -> None:
        self.version = version
        self.reason = reason

    def predict(self, frame: pd.DataFrame) -> Predictions:
        raise ModelUnavailable(f"{self.version.ref} is not available: {self.reason}")

    def close(self) -> None:
        pass


def create_backend(version: PipelineVersion, settings: RouterSettings) -> Backend:
    """Build (and load) the backend for a version; a version that cannot load becomes a MissingBackend."""
    try:
        if version.kind == "http":
            from router.backends.upstream import UpstreamBackend

            return UpstreamBackend(
                version, timeout_s=settings.upstream_timeout_s, pool_size=settings.upstream_pool_size
            )
        from router.backends.inprocess import InProcessBackend

        return InProcessBackend(version, trust_pickle=settings.trust_pickle)
    except BackendError as exc:
        return MissingBackend(version, exc.message)


def check_length(version: PipelineVersion, predictions: Predictions, rows: int) -> Predictions:
    """Refuse predictions that do not have exactly one answer (and score) per row."""
    if len(predictions.outputs) != rows or (
        predictions.scores is not None and len(predictions.scores) != rows
    ):
        raise InvalidOutput(f"{version.ref} answered {len(predictions.outputs)} predictions for {rows} rows")
    return predictions


def plain(value: Any) -> Any:
    """Turn a numpy scalar into the Python scalar JSON can write; NaN stays a float."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value
