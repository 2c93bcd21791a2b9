"""In-process backend: a registered scikit-learn pipeline, loaded once per process after its hash is checked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from router.backends.base import Predictions, check_length, probability_rows
from router.errors import BackendError, InputRejected, InvalidOutput, ModelUnavailable
from storage.artifacts import load_artifact
from storage.entities import PipelineVersion
from storage.errors import StorageError


class InProcessBackend:
    """Run a fitted pipeline on the raw input DataFrame.

    Classifiers are asked for predict_proba once: the class is the most probable one (what predict
    answers for probabilistic classifiers) and the score is the positive-class probability for two
    classes, else the top probability, with the whole vector (``Predictions.probabilities``).
    Classifiers without predict_proba give classes only.
    Regressors give their value.
    """

    def __init__(self, version: PipelineVersion, *, trust_pickle: bool = False) -> None:
        if version.artifact_path is None or version.sha256 is None:
            raise ModelUnavailable(f"{version.ref} has no artifact to load")
        self.version = version
        try:
            self.pipeline: Any = load_artifact(
                version.artifact_path,
                sha256=version.sha256,
                fmt=version.artifact_format or "skops",
                trust_pickle=trust_pickle,
                trusted=version.trusted_types,
            )
        except StorageError as exc:
            raise ModelUnavailable(str(exc)) from exc
        self._classify = version.task == "classification"
        self._proba = self._classify and hasattr(self.pipeline, "predict_proba")
        self._classes = np.asarray(getattr(self.pipeline, "classes_", version.classes or ()), dtype=object)
        self._classes = np.array([c.item() if hasattr(c, "item") else c for c in self._classes], dtype=object)

    def predict(self, frame: pd.DataFrame) -> Predictions:
        rows = len(frame)
        try:
            if self._proba:
                proba = np.asarray(self.pipeline.predict_proba(frame), dtype=np.float64)
                return check_length(self.version, self._from_proba(proba, rows), rows)
            raw = np.asarray(self.pipeline.predict(frame))
        except BackendError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise InputRejected(f"{self.version.ref} refused the input: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # a pipeline may raise anything; none of it may escape as is
            raise BackendError(f"{self.version.ref} failed: {type(exc).__name__}: {exc}") from exc
        if raw.ndim != 1:
            raise InvalidOutput(f"{self.version.ref} answered an array of shape {raw.shape} for {rows} rows")
        if self._classify:
            return check_length(self.version, Predictions(raw.tolist()), rows)
        try:
            values = raw.astype(np.float64).tolist()
        except (ValueError, TypeError) as exc:
            raise InvalidOutput(f"{self.version.ref} answered non-numeric values") from exc
        return check_length(self.version, Predictions(values), rows)

    def _from_proba(self, proba: np.ndarray, rows: int) -> Predictions:
        if proba.ndim != 2 or proba.shape[0] != rows or proba.shape[1] != len(self._classes):
            raise InvalidOutput(
                f"{self.version.ref} answered probabilities of shape {proba.shape} for {rows} rows "
                f"and {len(self._classes)} classes"
            )
        labels = self._classes[proba.argmax(axis=1)].tolist()
        scores = proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
        return Predictions(labels, scores.tolist(), probability_rows(self._classes, proba))

    def close(self) -> None:
        pass
