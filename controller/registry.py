"""Register pipeline versions: artifact checks, input schema, offline metrics, golden set, environment."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from storage import Store
from storage.artifacts import (
    ArtifactError,
    detect_format,
    environment_fingerprint,
    load_artifact,
    store_artifact,
)
from storage.entities import Column, NewEvent, NewPipelineVersion, PipelineVersion

TASKS = ("classification", "regression")
PROTOCOLS = ("v2", "mlflow")
GOLDEN_SET_MAX_ROWS = 10_000
_ENCODERS = ("OneHotEncoder", "OrdinalEncoder", "TargetEncoder")


class RegistrationError(ValueError):
    """A pipeline version cannot be registered as given; nothing was written."""

    status = 400  # how the admin API answers it (controller.http.errors)
    code = "invalid_registration"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, Parquet or JSON-records file into a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise RegistrationError(f"file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".json", ".jsonl"):
            return pd.read_json(path, orient="records", lines=suffix == ".jsonl")
    except Exception as error:  # pandas raises many types for malformed files
        raise RegistrationError(f"cannot read {path.name}: {error}") from error
    raise RegistrationError(f"cannot read {path.name}: use .csv, .parquet or .json")


def dtype_name(series: pd.Series) -> str:
    """Map a pandas dtype to the schema's small vocabulary: float, int, bool, str."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_numeric_dtype(series):
        return "float"
    return "str"


def schema_from_frame(frame: pd.DataFrame) -> tuple[Column, ...]:
    return tuple(Column(str(name), dtype_name(frame[name])) for name in frame.columns)


def schema_from_estimator(estimator: Any) -> tuple[Column, ...] | None:
    """Infer the input schema of a fitted pipeline: its feature names, and str for encoded columns."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return None
    categorical: set[str] = set()
    for step in _walk(estimator):
        transformers = getattr(step, "transformers_", None)
        if not transformers:
            continue
        for _name, transformer, columns in transformers:
            encoded = any(type(t).__name__ in _ENCODERS for t in _walk(transformer))
            if encoded and isinstance(columns, list | tuple | np.ndarray):
                categorical.update(str(c) for c in columns)
    return tuple(Column(str(n), "str" if str(n) in categorical else "float") for n in names)


def _walk(estimator: Any) -> list[Any]:
    found = [estimator]
    for attr in ("steps",):
        for _name, step in getattr(estimator, attr, []) or []:
            found.extend(_walk(step))
    for _name, transformer, _cols in getattr(estimator, "transformers_", []) or []:
        if not isinstance(transformer, str):
            found.extend(_walk(transformer))
    return found


def check_estimator(estimator: Any, task: str) -> tuple[Any, ...] | None:
    """Refuse objects that are not fitted estimators of the given task; return the classes if any."""
    from sklearn.base import is_classifier, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not hasattr(estimator, "predict"):
        raise RegistrationError(
            f"the artifact holds a {type(estimator).__name__}, not an estimator with predict()"
        )
    try:
        check_is_fitted(estimator)
    except NotFittedError as error:
        raise RegistrationError(f"the {type(estimator).__name__} in the artifact is not fitted") from error
    except TypeError as error:
        raise RegistrationError(
            f"the artifact holds a {type(estimator).__name__}, not an estimator"
        ) from error
    if task == "classification":
        if not is_classifier(estimator):
            raise RegistrationError(
                f"task is classification but {type(estimator).__name__} is not a classifier"
            )
        return tuple(_plain(c) for c in estimator.classes_)
    if task == "regression" and is_classifier(estimator) and not is_regressor(estimator):
        raise RegistrationError(f"task is regression but {type(estimator).__name__} is a classifier")
    return None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of a frame's values and column names, to tell later which holdout a metric came from."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(json.dumps([str(c) for c in frame.columns]).encode())
    return digest.hexdigest()


def offline_metrics(estimator: Any, task: str, features: pd.DataFrame, target: pd.Series) -> dict[str, Any]:
    """Score a holdout set with every metric the gates use, so online-versus-offline covers each one.

    Classification: accuracy, balanced accuracy, macro-F1, per-class recall and precision (keyed by the
    class as text), F1 (binary) and, with ``predict_proba``, log loss, Brier score (binary: of the second
    class; multi-class: the mean over rows of the summed squared differences, sklearn's definition) and
    ROC AUC (multi-class: one-vs-rest, macro). Regression: MAE, RMSE and the pinball loss at 0.1, 0.5, 0.9.
    """
    from sklearn import metrics

    predicted = estimator.predict(features)
    result: dict[str, Any] = {
        "holdout_size": int(len(features)),
        "holdout_fingerprint": frame_fingerprint(features),
    }
    if task == "classification":
        result["accuracy"] = float(metrics.accuracy_score(target, predicted))
        classes = list(estimator.classes_)
        result["balanced_accuracy"] = float(metrics.balanced_accuracy_score(target, predicted))
        result["macro_f1"] = float(metrics.f1_score(target, predicted, average="macro", zero_division=0))
        recall = metrics.recall_score(target, predicted, labels=classes, average=None, zero_division=0)
        precision = metrics.precision_score(target, predicted, labels=classes, average=None, zero_division=0)
        result["recall"] = {str(c): float(v) for c, v in zip(classes, recall, strict=True)}
        result["precision"] = {str(c): float(v) for c, v in zip(classes, precision, strict=True)}
        proba = estimator.predict_proba(features) if hasattr(estimator, "predict_proba") else None
        if len(classes) == 2:
            result["f1"] = float(metrics.f1_score(target, predicted, pos_label=classes[1]))
            if proba is not None:
                result["roc_auc"] = float(metrics.roc_auc_score(target, proba[:, 1]))
                result["brier"] = float(metrics.brier_score_loss(target, proba[:, 1], pos_label=classes[1]))
        else:
            result["f1_macro"] = result["macro_f1"]
            if proba is not None and len(set(target)) == len(classes):
                result["roc_auc"] = float(
                    metrics.roc_auc_score(target, proba, multi_class="ovr", average="macro", labels=classes)
                )
            if proba is not None:
                result["brier"] = float(metrics.brier_score_loss(target, proba, labels=classes))
        if proba is not None:
            result["log_loss"] = float(metrics.log_loss(target, proba, labels=classes))
    else:
        truth = np.asarray(target, dtype=float)
        errors = np.asarray(predicted, dtype=float) - truth
        result["mae"] = float(np.mean(np.abs(errors)))
        result["rmse"] = float(np.sqrt(np.mean(errors**2)))
        result["pinball"] = {
            f"{q:g}": float(metrics.mean_pinball_loss(truth, predicted, alpha=q)) for q in (0.1, 0.5, 0.9)
        }
    return result


def input_profile(frame: pd.DataFrame, *, bins: int = 10) -> dict[str, Any]:
    """Summarise inputs per column (missing rate, range and quantile bins, or category shares) for drift checks."""
    columns: dict[str, Any] = {}
    for name in frame.columns:
        series = frame[name]
        entry: dict[str, Any] = {"missing_rate": float(series.isna().mean())}
        if dtype_name(series) in ("float", "int"):
            values = series.dropna().astype(float)
            if len(values):
                edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
                counts, _ = np.histogram(values, bins=edges)
                entry.update(
                    kind="numeric",
                    min=float(values.min()),
                    max=float(values.max()),
                    edges=edges.tolist(),
                    shares=(counts / counts.sum()).tolist(),
                )
            else:
                entry.update(kind="numeric")
        else:
            shares = series.dropna().astype(str).value_counts(normalize=True)
            entry.update(kind="categorical", shares={str(k): float(v) for k, v in shares.head(50).items()})
        columns[str(name)] = entry
    return {"rows": int(len(frame)), "columns": columns}


def golden_set_from_frame(estimator: Any, task: str, frame: pd.DataFrame) -> dict[str, Any]:
    """Record raw inputs with the outputs the research environment produces for them."""
    if len(frame) > GOLDEN_SET_MAX_ROWS:
        raise RegistrationError(f"golden set has {len(frame)} rows; keep it at most {GOLDEN_SET_MAX_ROWS}")
    outputs: dict[str, Any] = {"prediction": [_plain(v) for v in estimator.predict(frame)]}
    if task == "classification" and hasattr(estimator, "predict_proba"):
        outputs["proba"] = estimator.predict_proba(frame).tolist()
    return {"inputs": json.loads(frame.to_json(orient="split", index=False)), "outputs": outputs}


def register_artifact(
    store: Store,
    *,
    name: str,
    version: str,
    artifact: str | Path,
    task: str,
    artifact_dir: str | Path,
    trust_pickle: bool = False,
    trusted_types: tuple[str, ...] | list[str] = (),
    sample: pd.DataFrame | None = None,
    schema: tuple[Column, ...] | None = None,
    holdout: pd.DataFrame | None = None,
    target: str | None = None,
    golden: pd.DataFrame | None = None,
    golden_set: dict[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    actor: str = "cli",
) -> PipelineVersion:
    """Check and register a fitted pipeline artifact; nothing is written unless every check passes.

    The input schema comes from, in order: `schema`, the `sample` frame, the holdout's feature
    columns, or the fitted pipeline's feature names. With a holdout and its target column the offline
    metrics and the input profile are computed here; `metrics` adds or overrides figures measured
    elsewhere. The golden set is given as raw input rows (`golden`, whose outputs are computed now by
    this environment) or as a ready dict with the research environment's own outputs (`golden_set`).
    `trusted_types` are exact names (e.g. `mymodule.add_ratios`) the skops artifact may hold beyond
    the built-in list; each must import here, and they are stored with the version so that every
    router trusts exactly them.
    """
    if task not in TASKS:
        raise RegistrationError(f"unknown task {task!r}; choose classification or regression")
    _check_name(name, version)
    artifact = Path(artifact)
    if not artifact.is_file():
        raise RegistrationError(f"artifact file not found: {artifact}")
    fmt = detect_format(artifact)
    if fmt == "joblib" and not trust_pickle:
        raise RegistrationError(
            f"{artifact.name} is a pickle/joblib file, which can run arbitrary code when loaded; "
            "save it with skops, or pass --trust-pickle if you trust its origin"
        )
    try:
        from storage.artifacts import check_trusted_names, sha256_of

        trusted = check_trusted_names(tuple(trusted_types))
        if trusted and fmt != "skops":
            raise RegistrationError("--trust applies to skops artifacts only")
        estimator = load_artifact(
            artifact, sha256=sha256_of(artifact), fmt=fmt, trust_pickle=trust_pickle, trusted=trusted
        )
    except ArtifactError as error:
        raise RegistrationError(str(error)) from error
    classes = check_estimator(estimator, task)

    features = None
    if holdout is not None:
        if target is None or target not in holdout.columns:
            raise RegistrationError(f"holdout has no target column {target!r}; name it with --target")
        features = holdout.drop(columns=[target])
    resolved = (
        schema
        or (schema_from_frame(sample) if sample is not None else None)
        or (schema_from_frame(features) if features is not None else None)
        or schema_from_estimator(estimator)
    )
    if not resolved:
        raise RegistrationError("cannot tell the input schema: give a sample file (--sample) or --schema")
    _check_schema_matches(estimator, resolved)

    measured: dict[str, Any] = {}
    profile = None
    if features is not None and holdout is not None and target is not None:
        try:
            measured = offline_metrics(estimator, task, features[[c.name for c in resolved]], holdout[target])
        except Exception as error:  # the pipeline failed on its own holdout: refuse, say why
            raise RegistrationError(f"the pipeline cannot score the holdout: {error}") from error
        profile = input_profile(features)
    elif sample is not None:
        profile = input_profile(sample)
    measured.update(metrics or {})

    if golden is not None:
        try:
            golden_set = golden_set_from_frame(estimator, task, golden[[c.name for c in resolved]])
        except KeyError as error:
            raise RegistrationError(f"golden set lacks input columns: {error}") from error
    if golden_set is not None:
        _check_golden_set(golden_set, resolved)

    stored_path, digest = store_artifact(artifact, artifact_dir)
    new = NewPipelineVersion(
        name=name,
        version=version,
        kind="artifact",
        task=task,
        input_schema=resolved,
        classes=classes,
        artifact_path=str(stored_path),
        artifact_format=fmt,
        sha256=digest,
        offline_metrics=measured,
        golden_set=golden_set,
        profile=profile,
        environment=dict(environment or environment_fingerprint()),
        metadata=dict(metadata or {}),
        trusted_types=trusted,
    )
    event = NewEvent(
        actor=actor,
        action="pipeline.register",
        reason="registered",
        message=f"registered {name}:{version} ({task}, {fmt}, sha256 {digest[:12]})"
        + (f", trusting {', '.join(trusted)}" if trusted else ""),
    )
    return store.pipelines.add(new, event=event)


class UpstreamTools(Protocol):
    """The data plane's upstream knowledge, injected (the controller never imports router):
    router.backends.upstream.UpstreamTools is the implementation the CLI and the app pass."""

    def configure(
        self, kind: str | None, protocol: str | None, task: str, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]: ...

    def answers(self, version: PipelineVersion, frame: pd.DataFrame) -> Any: ...


PROBE_ROWS = 50


def register_upstream(
    store: Store,
    *,
    name: str,
    version: str,
    url: str,
    protocol: str | None,
    task: str,
    schema: tuple[Column, ...],
    classes: tuple[Any, ...] | None = None,
    metrics: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    actor: str = "cli",
    kind: str | None = None,
    settings: Mapping[str, Any] | None = None,
    tools: UpstreamTools | None = None,
    sample: pd.DataFrame | None = None,
    golden: pd.DataFrame | None = None,
    golden_set: dict[str, Any] | None = None,
    probe: bool = True,
) -> PipelineVersion:
    """Register a remote model server (V2 or MLflow protocol) as a pipeline version.

    With ``tools`` the upstream settings are resolved from the server ``kind``'s preset and the
    ``settings`` overrides (encoding, output names, timeout, pool, retries) and stored with the
    version. Unless ``probe`` is False, the upstream is then sent up to PROBE_ROWS rows of the sample
    (or of the golden rows) and its answer checked against the task: one answer per row, classes
    (not fractional numbers) that are among the declared ``classes``, scores within [0, 1], numbers
    for regression. ``golden`` rows are scored by the upstream itself and become the version's golden
    set, so the parity gate later notices a different model behind the same URL.
    """
    if task not in TASKS:
        raise RegistrationError(f"unknown task {task!r}; choose classification or regression")
    if protocol is not None and protocol not in PROTOCOLS:
        raise RegistrationError(f"unknown protocol {protocol!r}; choose v2 or mlflow")
    if not url.startswith(("http://", "https://")):
        raise RegistrationError(f"upstream URL must start with http:// or https://, got {url!r}")
    if not schema:
        raise RegistrationError("an upstream needs an input schema: give --sample or --schema")
    _check_name(name, version)
    config: dict[str, Any] | None = None
    if tools is not None:
        try:
            config = tools.configure(kind, protocol, task, dict(settings or {}))
        except (ValueError, TypeError) as error:
            raise RegistrationError(f"bad upstream settings: {error}") from error
        protocol = "mlflow" if config["encoding"] == "mlflow" else "v2"
    elif kind is not None or settings:
        raise RegistrationError("upstream kinds and settings need the router's upstream tools")
    protocol = protocol or "v2"
    if golden is not None and golden_set is not None:
        raise RegistrationError("give golden rows or a ready golden set, not both")
    candidate = PipelineVersion(
        id=0, name=name, version=version, kind="http", task=task, input_schema=schema, classes=classes,
        artifact_path=None, artifact_format=None, sha256=None, upstream_url=url,
        upstream_protocol=protocol, offline_metrics={}, golden_set=None, profile=None, environment={},
        metadata={}, created_at=datetime.now(UTC), upstream_config=config,
    )  # fmt: skip
    columns = [c.name for c in schema]
    rows = sample if sample is not None else golden
    if probe and rows is not None and tools is not None:
        probe_rows = _columns_of(rows, columns, "sample").head(PROBE_ROWS)
        _check_answers(task, classes, len(probe_rows), _ask(tools, candidate, probe_rows))
    if golden is not None:
        if tools is None:
            raise RegistrationError("recording an upstream's golden set needs the router's upstream tools")
        if len(golden) > GOLDEN_SET_MAX_ROWS:
            raise RegistrationError(
                f"golden set has {len(golden)} rows; keep it at most {GOLDEN_SET_MAX_ROWS}"
            )
        frame = _columns_of(golden, columns, "golden set")
        answers = _ask(tools, candidate, frame)
        _check_answers(task, classes, len(frame), answers)
        golden_set = {
            "inputs": json.loads(frame.to_json(orient="split", index=False)),
            "outputs": {"prediction": list(answers.outputs)},
            "source": "upstream",
        }
        if answers.scores is not None:
            golden_set["outputs"]["score"] = list(answers.scores)
    if golden_set is not None:
        _check_golden_set(golden_set, schema)
    new = NewPipelineVersion(
        name=name,
        version=version,
        kind="http",
        task=task,
        input_schema=schema,
        classes=classes,
        upstream_url=url,
        upstream_protocol=protocol,
        upstream_config=config,
        golden_set=golden_set,
        offline_metrics=dict(metrics or {}),
        environment={},
        metadata=dict(metadata or {}),
    )
    how = f", {config['encoding']}" if config else ""
    event = NewEvent(
        actor=actor,
        action="pipeline.register",
        reason="registered",
        message=f"registered upstream {name}:{version} ({protocol}{how})",
    )
    return store.pipelines.add(new, event=event)


def check_loadable(version: PipelineVersion, *, trust_pickle: bool) -> None:
    """Refuse (RegistrationError) an artifact version this process cannot load, so no router could serve it.

    Called before a deployment is created with it as champion: a missing or changed file, a type
    that is no longer trusted or a pickle without the server's opt-in would otherwise be found only by
    the routers, after the deployment answers 503.
    """
    if version.kind != "artifact" or not version.artifact_path:
        return
    try:
        load_artifact(
            version.artifact_path,
            sha256=version.sha256 or "",
            fmt=version.artifact_format or "skops",
            trust_pickle=trust_pickle,
            trusted=version.trusted_types,
        )
    except ArtifactError as error:
        raise RegistrationError(
            f"{version.ref} cannot be loaded, so no router could serve it: {error}"
        ) from error


def _columns_of(frame: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RegistrationError(f"the {what} lacks input columns: {', '.join(missing)}")
    if frame.empty:
        raise RegistrationError(f"the {what} has no rows")
    return frame[columns].reset_index(drop=True)


def _ask(tools: UpstreamTools, candidate: PipelineVersion, frame: pd.DataFrame) -> Any:
    try:
        return tools.answers(candidate, frame)
    except Exception as error:  # the upstream's own failure, whatever it is: refuse and say it
        message = getattr(error, "message", None) or str(error)
        raise RegistrationError(f"the upstream probe failed: {message}") from error


def _check_answers(task: str, classes: tuple[Any, ...] | None, rows: int, answers: Any) -> None:
    """Refuse an upstream whose answers do not fit the declared task; the message names the mismatch."""
    outputs = list(getattr(answers, "raw", answers.outputs))  # as sent: a regressor's 1.0 is no class 1
    scores = answers.scores
    prefix = "the upstream's answer does not fit"
    if len(outputs) != rows:
        raise RegistrationError(f"{prefix}: {len(outputs)} answers for {rows} rows")
    if task == "regression":
        for value in outputs:
            if isinstance(value, bool) or not isinstance(value, int | float | None):
                raise RegistrationError(f"{prefix} task regression: it answered {value!r}, not a number")
        if outputs and all(isinstance(v, int) for v in outputs):  # a regressor answers floats (1.0)
            seen = ", ".join(repr(v) for v in sorted(set(outputs))[:5])
            raise RegistrationError(
                f"{prefix} task regression: it answered only integers ({seen}), classes of a classifier? "
                "(--no-probe registers it anyway)"
            )
        return
    for value in outputs:
        if isinstance(value, float) and value == value and not value.is_integer():
            raise RegistrationError(
                f"{prefix} task classification: it answered {value!r}, a fraction, not a class "
                "(a regression model?)"
            )
        if isinstance(value, dict | list):
            raise RegistrationError(f"{prefix} task classification: it answered {value!r}, not a class")
        if classes is not None and not any(_same_class(value, c) for c in classes):
            raise RegistrationError(
                f"{prefix} the declared classes: it answered {value!r}, declared are "
                + ", ".join(repr(c) for c in classes)
            )
    for score in scores or ():
        if not 0.0 <= score <= 1.0:
            raise RegistrationError(
                f"{prefix} task classification: it answered the score {score!r}, outside [0, 1]"
            )


def _same_class(value: Any, declared: Any) -> bool:
    if isinstance(value, bool) != isinstance(declared, bool):
        return False
    if isinstance(value, str) != isinstance(declared, str):
        return False
    return bool(value == declared)


def parse_schema(text: str) -> tuple[Column, ...]:
    """Parse "age:float,plan:str" into columns."""
    columns = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        column, sep, dtype = part.partition(":")
        if not sep or dtype not in ("float", "int", "bool", "str"):
            raise RegistrationError(
                f"bad schema entry {part!r}: write NAME:TYPE with TYPE float, int, bool or str"
            )
        columns.append(Column(column, dtype))
    if not columns:
        raise RegistrationError("empty schema")
    return tuple(columns)


def _check_name(name: str, version: str) -> None:
    from storage import InvalidName
    from storage.entities import check_name

    try:
        check_name("name", name)
        check_name("version", version)
    except InvalidName as error:
        raise RegistrationError(str(error)) from error


def _check_schema_matches(estimator: Any, schema: tuple[Column, ...]) -> None:
    expected = getattr(estimator, "feature_names_in_", None)
    if expected is None:
        return
    given = [c.name for c in schema]
    missing = [str(n) for n in expected if str(n) not in given]
    if missing:
        raise RegistrationError(
            f"the pipeline was fitted on columns missing from the schema: {', '.join(missing)}"
        )


def _check_golden_set(golden_set: Mapping[str, Any], schema: tuple[Column, ...]) -> None:
    try:
        columns = list(golden_set["inputs"]["columns"])
        rows = golden_set["inputs"]["data"]
        predictions = golden_set["outputs"]["prediction"]
    except (KeyError, TypeError) as error:
        raise RegistrationError(
            "golden set must be {inputs: {columns, data}, outputs: {prediction, [proba]}}"
        ) from error
    missing = [c.name for c in schema if c.name not in columns]
    if missing:
        raise RegistrationError(f"golden set lacks input columns: {', '.join(missing)}")
    if len(rows) != len(predictions):
        raise RegistrationError(f"golden set has {len(rows)} input rows but {len(predictions)} outputs")
