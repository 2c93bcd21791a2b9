"""What every backend shares: the Backend protocol, its Predictions, and the checks on an answer.

A module of its own so that each backend module imports it without importing the package that
chooses between them (no import cycle between router.backends and its implementations).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from router.errors import InvalidOutput, ModelUnavailable
from router.inputs import Batch
from storage.entities import PipelineVersion


@dataclass(frozen=True)
class Predictions:
    """One answer per row: the class label (classification) or value (regression), and scores.

    score: for classifiers, the probability of the positive (second) class when there are two
    classes, else the highest class probability; None when the model gives no probabilities.
    probabilities: for classifiers of more than two classes, each row's whole probability vector
    keyed by the class as text (the proper scores and the multi-class AUC need P(true class)); None
    for two classes (the score says it all) and when the model gives no probabilities.
    """

    outputs: list[Any]
    scores: list[float] | None = None
    probabilities: list[dict[str, float]] | None = None

    def __len__(self) -> int:
        return len(self.outputs)

    def slice(self, start: int, stop: int) -> Predictions:
        """Return the predictions of rows start..stop-1 (a request's share of a micro-batch)."""
        scores = None if self.scores is None else self.scores[start:stop]
        probabilities = None if self.probabilities is None else self.probabilities[start:stop]
        return Predictions(self.outputs[start:stop], scores, probabilities)


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


def predict_batch(backend: Backend, batch: Batch) -> Predictions:
    """Score one validated request: from its converted columns when the backend reads them, else its frame.

    An HTTP upstream (`predict_columns`) re-encodes the request as JSON, so the request's DataFrame
    is never built for it; an in-process pipeline needs the frame.
    """
    read = getattr(backend, "predict_columns", None)
    if read is not None and batch.columns:
        predictions: Predictions = read(batch.columns)
        return predictions
    return backend.predict(batch.frame)


def predict_parts(
    backend: Backend, parts: Sequence[Mapping[str, Any]], frame: Callable[[], pd.DataFrame]
) -> Predictions:
    """Score several requests' rows in one call (a shadow micro-batch): a lone request from its columns.

    frame: builds the frame of the same rows. Several requests are always scored from it: joining
    their arrays promotes dtypes the way pandas does (an int column meets a missing value), and
    that frame is built once for the whole batch.
    """
    read = getattr(backend, "predict_columns", None)
    if read is not None and len(parts) == 1:
        predictions: Predictions = read(parts[0])
        return predictions
    return backend.predict(frame())


def check_length(version: PipelineVersion, predictions: Predictions, rows: int) -> Predictions:
    """Refuse predictions that do not have exactly one answer (and score) per row."""
    if (
        len(predictions.outputs) != rows
        or (predictions.scores is not None and len(predictions.scores) != rows)
        or (predictions.probabilities is not None and len(predictions.probabilities) != rows)
    ):
        raise InvalidOutput(f"{version.ref} answered {len(predictions.outputs)} predictions for {rows} rows")
    return predictions


def probability_rows(
    classes: Sequence[Any] | npt.NDArray[Any], proba: npt.NDArray[np.float64]
) -> list[dict[str, float]] | None:
    """Return each row's class probabilities keyed by the class as text, for more than two classes.

    None for two classes or fewer: the stored score (P(second class)) already holds the vector.
    """
    if proba.ndim != 2 or proba.shape[1] <= 2 or proba.shape[1] != len(classes):
        return None
    names = [str(c) for c in classes]
    return [dict(zip(names, row, strict=True)) for row in proba.tolist()]


def plain(value: Any) -> Any:
    """Turn a numpy scalar into the Python scalar JSON can write; NaN stays a float."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value
