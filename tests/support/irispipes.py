"""Real fitted 3-class pipelines on the iris flowers (sklearn.datasets), for multi-class tests.

    frame, species = irispipes.iris_frame(500, seed=1)   # jittered iris rows and their species
    model = irispipes.fit(LogisticRegression(max_iter=500))
    version = irispipes.register(store, tmp_path, version="1", model=model)
    flat = irispipes.Tempered(model, temperature=4.0)      # same classes, flatter probabilities

``Tempered`` divides the log-probabilities of a fitted classifier by a temperature and renormalises
(softmax): every row keeps its most probable class, so accuracy and every confusion metric are the
wrong model's equal, while its probabilities are miscalibrated (too unsure for a temperature above 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlpipes
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from storage import Store
from storage.artifacts import store_artifact
from storage.entities import NewPipelineVersion, PipelineVersion

COLUMNS = ("sepal_length", "sepal_width", "petal_length", "petal_width")
_IRIS = load_iris()
SPECIES = tuple(str(s) for s in _IRIS.target_names)


def iris_frame(n: int, *, seed: int, jitter: float = 0.25) -> tuple[pd.DataFrame, np.ndarray]:
    """Return n iris rows drawn with replacement, each measurement jittered by N(0, jitter), and species."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(_IRIS.data), n)
    values = _IRIS.data[rows] + rng.normal(0, jitter, (n, 4))
    species = np.asarray(SPECIES, dtype=object)[_IRIS.target[rows]]
    return pd.DataFrame(values.round(2), columns=list(COLUMNS)), species


def fit(model: Any, *, seed: int = 0) -> Pipeline:
    """Fit StandardScaler + model on 600 jittered iris rows."""
    frame, species = iris_frame(600, seed=seed)
    return make_pipeline(StandardScaler(), model).fit(frame, species)


class Tempered(ClassifierMixin, BaseEstimator):
    """A fitted classifier's probabilities at a temperature: softmax(log p / temperature)."""

    def __init__(self, model: Any = None, temperature: float = 1.0) -> None:
        self.model = model
        self.temperature = temperature

    def fit(self, frame: Any, y: Any = None) -> Tempered:
        self.classes_ = self.model.classes_
        return self

    def predict_proba(self, frame: Any) -> np.ndarray:
        logits = np.log(np.clip(self.model.predict_proba(frame), 1e-300, None)) / self.temperature
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    def predict(self, frame: Any) -> np.ndarray:
        return np.asarray(self.classes_[self.predict_proba(frame).argmax(axis=1)])


def register(
    store: Store,
    directory: str | Path,
    *,
    version: str,
    model: Any,
    name: str = "iris",
    holdout: bool = False,
) -> PipelineVersion:
    """Save a fitted iris pipeline (skops, or joblib for ``Tempered``) and register it.

    ``holdout``: register the offline metrics of 1,000 fresh jittered rows, as ``mlcanary pipelines
    register --holdout`` does (``controller.registry.offline_metrics``).
    """
    from controller.registry import offline_metrics

    fmt = "joblib" if isinstance(model, Tempered) else "skops"
    source = mlpipes.save(model, Path(directory) / "sources", f"{name}-{version}", fmt=fmt)
    stored, digest = store_artifact(source, Path(directory) / "artifacts")
    frame, _ = iris_frame(5, seed=0)
    return store.pipelines.add(
        NewPipelineVersion(
            name=name, version=version, kind="artifact", task="classification",
            input_schema=mlpipes.input_schema(frame), classes=tuple(str(c) for c in model.classes_),
            artifact_path=str(stored), artifact_format=fmt, sha256=digest,
            offline_metrics=offline_metrics(model, "classification", *iris_frame(1000, seed=77)) if holdout else {},
        )
    )  # fmt: skip
