"""Faulty pipelines mlpipes lacks: one that leaks memory on every call, one that starts cold.

    version = faults.register_leaky(store, tmp_path, version="9", leak_mb=2, limit_mb=48)
    version = faults.register_cold(store, tmp_path, version="3", load_s=2.0, first_call_s=1.0)

The leaky final estimator keeps ``leak_mb`` of fresh memory per predict call (held by the estimator,
so it is freed with the backend) and, once ``limit_mb`` are held, raises MemoryError as an allocator
under a memory limit would. The cold one is a real fitted classifier (the churn LogisticRegression)
whose loading takes ``load_s`` seconds and whose first call in each process ``first_call_s`` more,
as a big model's lazy initialisation would; afterwards it answers exactly like the champion.
Saved with joblib: serve them with trust_pickle in a process that can import this module
(tests/support on PYTHONPATH).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlpipes
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline

from storage import Store
from storage.entities import PipelineVersion


class LeakyClassifier(ClassifierMixin, BaseEstimator):
    """Answer like a coin, keep leak_mb per call, raise MemoryError beyond limit_mb."""

    def __init__(self, leak_mb: float = 2.0, limit_mb: float = 48.0) -> None:
        self.leak_mb = leak_mb
        self.limit_mb = limit_mb

    def fit(self, frame: Any, target: Any) -> LeakyClassifier:
        self.classes_ = np.unique(np.asarray(target))
        return self

    def predict_proba(self, frame: Any) -> np.ndarray:
        held: list[np.ndarray] = self.__dict__.setdefault("_held", [])
        if len(held) * self.leak_mb >= self.limit_mb:
            raise MemoryError("cannot allocate: the leak reached its limit")
        held.append(np.ones(int(self.leak_mb * 1024 * 1024 / 8)))  # touched pages, really resident
        return np.tile([0.5, 0.5], (len(frame), 1))

    def predict(self, frame: Any) -> np.ndarray:
        proba = self.predict_proba(frame)
        return np.asarray(self.classes_)[proba.argmax(axis=1)]


class ColdClassifier(ClassifierMixin, BaseEstimator):
    """Delegate to a fitted pipeline; sleep load_s when unpickled and first_call_s on the first call."""

    def __init__(self, model: Any = None, load_s: float = 2.0, first_call_s: float = 1.0) -> None:
        self.model = model
        self.load_s = load_s
        self.first_call_s = first_call_s

    def fit(self, frame: Any, target: Any) -> ColdClassifier:
        self.classes_ = np.asarray(self.model.classes_)
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        time.sleep(float(state.get("load_s", 0.0)))  # a slow load
        self.__dict__.update(state)
        self.__dict__["_cold"] = True

    def predict_proba(self, frame: Any) -> np.ndarray:
        if self.__dict__.pop("_cold", False):
            time.sleep(self.first_call_s)  # the first call pays the lazy initialisation
        return np.asarray(self.model.predict_proba(frame))

    def predict(self, frame: Any) -> np.ndarray:
        return np.asarray(self.classes_)[self.predict_proba(frame).argmax(axis=1)]


def register_cold(
    store: Store,
    directory: str | Path,
    *,
    name: str = "churn",
    version: str = "3",
    load_s: float = 2.0,
    first_call_s: float = 1.0,
) -> PipelineVersion:
    """Register the churn classifier (mlpipes.classifier(seed=0)) wrapped to start cold (joblib)."""
    frame, target = mlpipes.churn_frame(50)
    model = ColdClassifier(mlpipes.classifier(seed=0), load_s=load_s, first_call_s=first_call_s).fit(
        frame, target
    )
    return _register_joblib(store, directory, model, name=name, version=version, fault="cold")


def register_leaky(
    store: Store,
    directory: str | Path,
    *,
    name: str = "churn",
    version: str = "9",
    leak_mb: float = 2.0,
    limit_mb: float = 48.0,
) -> PipelineVersion:
    """Fit a churn pipeline ending in LeakyClassifier and register it (joblib)."""
    frame, target = mlpipes.churn_frame(50)
    model = Pipeline(
        [("prepare", mlpipes._preprocessor()), ("model", LeakyClassifier(leak_mb=leak_mb, limit_mb=limit_mb))]
    ).fit(frame, target)
    return _register_joblib(store, directory, model, name=name, version=version, fault="leaks")


def _register_joblib(
    store: Store, directory: str | Path, model: Any, *, name: str, version: str, fault: str
) -> PipelineVersion:
    from storage.artifacts import store_artifact
    from storage.entities import NewPipelineVersion

    source = mlpipes.save(model, Path(directory) / "sources", f"{name}-{version}", fmt="joblib")
    stored, digest = store_artifact(source, Path(directory) / "artifacts")
    frame, _ = mlpipes.churn_frame(5)
    return store.pipelines.add(
        NewPipelineVersion(
            name=name,
            version=version,
            kind="artifact",
            task="classification",
            input_schema=mlpipes.input_schema(frame),
            classes=tuple(np.asarray(model.classes_).tolist()),
            artifact_path=str(stored),
            artifact_format="joblib",
            sha256=digest,
            metadata={"fault": fault},
        )
    )
