"""Build, save and register small real scikit-learn pipelines for tests (and a few faulty ones).

The problem is a synthetic churn table: numeric and categorical columns, some values missing.

    frame, target = mlpipes.churn_frame(200)              # raw inputs (pandas) and labels
    version = mlpipes.register(store, tmp_path, name="churn", version="1")   # classifier
    version = mlpipes.register(store, tmp_path, version="2", kind="regression")
    version = mlpipes.register(store, tmp_path, version="3", fault="raises")  # or "sleeps", "garbage"
    mlpipes.register_upstream(store, name="remote", version="1", url=..., protocol="v2", like=version)
    deployment = mlpipes.deploy(store, "churn", champion)          # a deployment serving champion
    mlpipes.start_rollout(store, deployment, challenger, mode="shadow", canary_weight=0, shadow_rate=1)

Every pipeline trains in well under a second. Faulty pipelines are real scikit-learn pipelines ending
in a small estimator defined here whose predict raises, sleeps past a timeout, or answers with the
wrong number of rows. skops refuses types outside scikit-learn, so those are saved with joblib: serve
them with `RouterSettings(trust_pickle=True)` in a process that can import this module.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from storage import Store
from storage.artifacts import store_artifact
from storage.entities import Column, Deployment, NewPipelineVersion, PipelineVersion, Rollout

NUMERIC = ("age", "tenure_months", "monthly_charges")
CATEGORICAL = ("plan", "region")
INTEGER = ("support_calls",)
BOOLEAN = ("autopay",)
COLUMNS = NUMERIC + INTEGER + BOOLEAN + CATEGORICAL

_DTYPE_NAMES = {"f": "float", "i": "int", "u": "int", "b": "bool", "O": "str"}


def churn_frame(n: int = 300, *, seed: int = 0, missing: float = 0.05) -> tuple[pd.DataFrame, pd.Series]:
    """Return n raw input rows and their churn labels (0/1); numeric and categorical values go missing."""
    rng = np.random.default_rng(seed)
    age = rng.normal(45, 12, n).round(0)
    tenure = rng.integers(1, 72, n).astype(float)
    charges = rng.normal(70, 20, n).round(2)
    calls = rng.poisson(1.5, n).astype("int64")
    autopay = rng.random(n) < 0.6
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], n)
    logit = -0.04 * tenure + 0.03 * (charges - 70) + 0.5 * calls - 0.8 * autopay + (plan == "basic") * 0.7
    target = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64"), name="churn")
    frame = pd.DataFrame(
        {
            "age": age,
            "tenure_months": tenure,
            "monthly_charges": charges,
            "support_calls": calls,
            "autopay": autopay,
            "plan": plan.tolist(),
            "region": region.tolist(),
        }
    )
    if missing > 0:  # missing values are NaN in every column, as pandas.read_csv gives them
        for name in ("age", "monthly_charges", *CATEGORICAL):
            frame.loc[rng.random(n) < missing, name] = np.nan
    return frame, target


def input_schema(frame: pd.DataFrame) -> tuple[Column, ...]:
    """Describe a frame's columns with storage's dtype names ("float", "int", "bool", "str")."""
    return tuple(
        Column(str(name), _DTYPE_NAMES.get(dtype.kind, "str")) for name, dtype in frame.dtypes.items()
    )


def _preprocessor() -> ColumnTransformer:
    numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    categorical = make_pipeline(
        SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
    )
    return ColumnTransformer(
        [
            ("numeric", numeric, list(NUMERIC + INTEGER + BOOLEAN)),
            ("categorical", categorical, list(CATEGORICAL)),
        ]
    )


def classifier(*, seed: int = 0, c: float = 1.0) -> Pipeline:
    """Fit a ColumnTransformer + LogisticRegression churn classifier."""
    frame, target = churn_frame(400, seed=seed)
    model = Pipeline([("prepare", _preprocessor()), ("model", LogisticRegression(C=c, max_iter=500))])
    return model.fit(frame, target)


def regressor(*, seed: int = 0, boosted: bool = False) -> Pipeline:
    """Fit a regressor predicting monthly charges' sibling: tenure-weighted spend (Ridge or GradientBoosting)."""
    frame, target = churn_frame(400, seed=seed)
    value = frame["tenure_months"] * 1.5 + target * 10.0
    estimator: Any = GradientBoostingRegressor(n_estimators=30, max_depth=2) if boosted else Ridge(alpha=1.0)
    model = Pipeline([("prepare", _preprocessor()), ("model", estimator)])
    return model.fit(frame, value)


class FaultyClassifier(ClassifierMixin, BaseEstimator):
    """A classifier whose predictions fail on purpose: fault is "raises", "sleeps" or "garbage"."""

    def __init__(self, fault: str = "raises", delay: float = 2.0) -> None:
        self.fault = fault
        self.delay = delay

    def fit(self, frame: Any, target: Any) -> FaultyClassifier:
        self.classes_ = np.unique(np.asarray(target))
        return self

    def predict_proba(self, frame: Any) -> np.ndarray:
        if self.fault == "raises":
            raise RuntimeError("this pipeline always fails")
        if self.fault == "sleeps":
            time.sleep(self.delay)
        if self.fault == "garbage":
            return np.zeros((len(frame) + 3, 7))
        return np.tile([0.5, 0.5], (len(frame), 1))

    def predict(self, frame: Any) -> np.ndarray:
        proba = self.predict_proba(frame)
        return np.asarray(self.classes_)[proba.argmax(axis=1) % len(self.classes_)]


def faulty(fault: str, *, delay: float = 2.0) -> Pipeline:
    """Fit a pipeline that fails at predict time: "raises", "sleeps" (delay seconds) or "garbage"."""
    frame, target = churn_frame(50)
    model = Pipeline([("prepare", _preprocessor()), ("model", FaultyClassifier(fault=fault, delay=delay))])
    return model.fit(frame, target)


def save(model: Any, directory: str | Path, name: str, *, fmt: str = "skops") -> Path:
    """Save a fitted pipeline with skops (or joblib); return the file's path."""
    path = Path(directory) / f"{name}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "skops":
        import skops.io as sio

        sio.dump(model, path)
    else:
        import joblib

        joblib.dump(model, path)
    return path


def register(
    store: Store,
    directory: str | Path,
    *,
    name: str = "churn",
    version: str = "1",
    kind: str = "classification",
    fault: str | None = None,
    delay: float = 2.0,
    seed: int = 0,
    model: Any = None,
) -> PipelineVersion:
    """Fit (or take) a pipeline, save it with skops under directory and register it in the store.

    kind: "classification" (LogisticRegression), "regression" (Ridge) or "boosted" (GradientBoosting
    regression). fault: None, "raises", "sleeps" or "garbage" (a classifier that misbehaves).
    """
    if model is None:
        if fault is not None:
            model = faulty(fault, delay=delay)
        elif kind == "classification":
            model = classifier(seed=seed)
        else:
            model = regressor(seed=seed, boosted=kind == "boosted")
    task = "classification" if hasattr(model, "classes_") else "regression"
    fmt = "joblib" if fault is not None else "skops"
    source = save(model, Path(directory) / "sources", f"{name}-{version}", fmt=fmt)
    stored, digest = store_artifact(source, Path(directory) / "artifacts")
    frame, _ = churn_frame(5)
    classes = tuple(np.asarray(model.classes_).tolist()) if task == "classification" else None
    return store.pipelines.add(
        NewPipelineVersion(
            name=name,
            version=version,
            kind="artifact",
            task=task,
            input_schema=input_schema(frame),
            classes=classes,
            artifact_path=str(stored),
            artifact_format=fmt,
            sha256=digest,
            metadata={"fault": fault} if fault else {},
        )
    )


def register_upstream(
    store: Store, *, name: str, version: str, url: str, protocol: str, like: PipelineVersion
) -> PipelineVersion:
    """Register an HTTP upstream version with the same task, schema and classes as another version."""
    return store.pipelines.add(
        NewPipelineVersion(
            name=name,
            version=version,
            kind="http",
            task=like.task,
            input_schema=like.input_schema,
            classes=like.classes,
            upstream_url=url,
            upstream_protocol=protocol,
        )
    )


def deploy(
    store: Store, name: str, champion: PipelineVersion, *, store_raw_inputs: bool = True
) -> Deployment:
    """Create a deployment whose champion is the given version."""
    return store.deployments.create(name, champion.id, store_raw_inputs=store_raw_inputs)


def start_rollout(
    store: Store,
    deployment: Deployment,
    challenger: PipelineVersion,
    *,
    mode: str = "shadow",
    canary_weight: float = 0.0,
    shadow_rate: float = 1.0,
) -> Rollout:
    """Start an active rollout (phase "shadowing" or "progressing") that routers pick up at once."""
    phase = "shadowing" if mode == "shadow" else "progressing"
    return store.rollouts.create(
        deployment_id=deployment.id,
        challenger_id=challenger.id,
        mode=mode,
        policy={},
        created_by="tests",
        phase=phase,
        canary_weight=canary_weight,
        shadow_rate=shadow_rate,
    )
