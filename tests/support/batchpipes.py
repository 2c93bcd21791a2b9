"""A real churn classifier that shows how it is called: rows and dtypes of every call, one call at a time.

    version = batchpipes.register(store, tmp_path, tag="a", delay=0.03)   # joblib: trust_pickle
    batchpipes.calls("a")   # [(rows, {column: dtype}), ...] in call order

It delegates to the fitted churn LogisticRegression pipeline (mlpipes.classifier(seed=0)), so its
answers are that pipeline's. Each call sleeps ``delay`` seconds first (a pipeline's per-call
overhead, long enough for concurrent requests to overlap). A row whose region is "reject" makes
the call raise ValueError (the model refusing its input), "crash" a RuntimeError (a model failure).
The calls are recorded in this module, so a test in the same process reads them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import mlpipes
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from storage import Store
from storage.entities import PipelineVersion

_CALLS: dict[str, list[tuple[int, dict[str, str]]]] = {}
_LOCK = threading.Lock()


def calls(tag: str) -> list[tuple[int, dict[str, str]]]:
    """Return the calls the model tagged ``tag`` received, in order: (rows, column -> dtype)."""
    with _LOCK:
        return list(_CALLS.get(tag, []))


def reset(tag: str) -> None:
    with _LOCK:
        _CALLS.pop(tag, None)


class RecordingClassifier(ClassifierMixin, BaseEstimator):
    """Delegate to a fitted pipeline; record each call, sleep delay, refuse poisoned rows."""

    def __init__(self, model: Any = None, tag: str = "", delay: float = 0.03) -> None:
        self.model = model
        self.tag = tag
        self.delay = delay

    def fit(self, frame: Any, target: Any) -> RecordingClassifier:
        self.classes_ = np.asarray(self.model.classes_)
        return self

    def predict_proba(self, frame: Any) -> np.ndarray:
        with _LOCK:
            _CALLS.setdefault(self.tag, []).append(
                (len(frame), {str(k): str(v) for k, v in frame.dtypes.items()})
            )
        time.sleep(self.delay)
        region = frame["region"].astype(object)
        if (region == "reject").any():
            raise ValueError("region 'reject' is not a region")
        if (region == "crash").any():
            raise RuntimeError("the model crashed")
        return np.asarray(self.model.predict_proba(frame))

    def predict(self, frame: Any) -> np.ndarray:
        return np.asarray(self.classes_)[self.predict_proba(frame).argmax(axis=1)]


def register(
    store: Store,
    directory: str | Path,
    *,
    tag: str,
    name: str = "churn",
    version: str = "1",
    delay: float = 0.03,
) -> PipelineVersion:
    """Register the recording churn classifier (joblib; serve with trust_pickle in this process)."""
    from storage.artifacts import store_artifact
    from storage.entities import NewPipelineVersion

    frame, target = mlpipes.churn_frame(50)
    model = RecordingClassifier(mlpipes.classifier(seed=0), tag=tag, delay=delay).fit(frame, target)
    reset(tag)
    source = mlpipes.save(model, Path(directory) / "sources", f"{name}-{version}", fmt="joblib")
    stored, digest = store_artifact(source, Path(directory) / "artifacts")
    return store.pipelines.add(
        NewPipelineVersion(
            name=name,
            version=version,
            kind="artifact",
            task="classification",
            input_schema=mlpipes.input_schema(mlpipes.churn_frame(5)[0]),
            classes=tuple(np.asarray(model.classes_).tolist()),
            artifact_path=str(stored),
            artifact_format="joblib",
            sha256=digest,
            metadata={"fault": "recording"},
        )
    )
