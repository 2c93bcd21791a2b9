"""How an upstream model server is spoken to: its request encoding and where its answers are read.

Chosen at registration and stored with the version (``PipelineVersion.upstream_config``), so the
router, the parity gate and the registration probe all send the same bytes:

    encoding      request body
    v2-columns    Open Inference: one input per column (shape [n], the column's V2 datatype) and the
                  request parameter {"content_type": "pd"}, which MLServer's and KServe's pandas
                  codecs turn into a DataFrame with the column names (a fitted ColumnTransformer needs
                  them). Optional ``request_outputs`` name the outputs asked for (MLServer computes
                  ``predict_proba`` only when asked).
    v2-tensor     Open Inference: one 2-D tensor [n, k] named ``tensor_name`` of ``tensor_datatype``,
                  the columns in schema order, row-major; what Triton, KServe's and MLServer's NumPy
                  models take. The JSON is byte-for-byte what tritonclient writes for the same
                  ``InferInput`` and ``InferRequestedOutput`` with ``binary_data=False`` (a test
                  checks it against tritonclient's encoder).
    mlflow        MLflow scoring: {"dataframe_split": {"columns", "data"}}.

Answers (V2): the class (classification) is read from the output ``class_output``, the value
(regression) from ``value_output``; probabilities from ``proba_output`` ([n, classes]: the score is
P(second class) for two classes, else the top one) or a ready score from ``score_output``. MLflow
answers are ``{"predictions": [...]}`` (or a bare list) of scalars or of records, read with the keys
``class_output`` / ``value_output`` / ``proba_output`` / ``score_output`` when given.

Presets (``--upstream-kind``) fill these in for the servers people run; every field can be overridden.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from router.backends.base import probability_rows
from router.edge import write_json

ENCODINGS = ("v2-columns", "v2-tensor", "mlflow")
KINDS = ("mlserver", "kserve", "triton", "mlflow")
TENSOR_DATATYPES = ("FP64", "FP32", "INT64", "INT32", "BYTES")
_NUMERIC_DATATYPES = {"FP64": float, "FP32": float, "INT64": int, "INT32": int}
_COLUMN_DATATYPES = {"float": "FP64", "int": "INT64", "bool": "BOOL"}  # anything else: BYTES


class ConfigError(ValueError):
    """An upstream configuration that cannot work; the message names the field."""


@dataclass(frozen=True)
class UpstreamConfig:
    """Everything the router needs to call one upstream version (stored as JSON with the version).

    timeout_s / pool_size / retries: per version; None takes the router's upstream_timeout_s and
    upstream_pool_size. ``retries`` re-sends a request that could not be delivered (connection
    refused or reset, 502/503 answers) at most that many times; a timeout is never retried.
    health_url: checked with GET when the router loads the version (None: derived from the URL,
    ``.../ready`` for V2 and ``/ping`` for MLflow; "" turns the check off).
    """

    encoding: str = "v2-columns"
    kind: str | None = None
    tensor_name: str = "input-0"
    tensor_datatype: str = "FP64"
    class_output: str | None = "predict"
    value_output: str | None = "predict"
    proba_output: str | None = "predict_proba"
    score_output: str | None = "score"
    request_outputs: tuple[str, ...] = ()
    timeout_s: float | None = None
    pool_size: int | None = None
    retries: int = 0
    health_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return "mlflow" if self.encoding == "mlflow" else "v2"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["request_outputs"] = list(self.request_outputs)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, *, protocol: str | None = None) -> UpstreamConfig:
        """Read a stored config; None (a version registered before encodings existed) is the protocol's default."""
        if not data:
            return preset(None, protocol=protocol or "v2")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown upstream setting {unknown[0]!r}")
        values = dict(data)
        if "request_outputs" in values:
            values["request_outputs"] = tuple(values["request_outputs"] or ())
        return cls(**values).checked()

    def checked(self) -> UpstreamConfig:
        """Return self if every field makes sense, else raise ConfigError naming the first bad one."""
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"unknown encoding {self.encoding!r}; choose {', '.join(ENCODINGS)}")
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"unknown upstream kind {self.kind!r}; choose {', '.join(KINDS)}")
        if self.tensor_datatype not in TENSOR_DATATYPES:
            raise ConfigError(
                f"tensor datatype {self.tensor_datatype!r} is not one of {', '.join(TENSOR_DATATYPES)}"
            )
        if not self.tensor_name:
            raise ConfigError("the tensor name is empty")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout_s!r}")
        if self.pool_size is not None and (not isinstance(self.pool_size, int) or self.pool_size < 1):
            raise ConfigError(f"pool size must be a positive integer, got {self.pool_size!r}")
        if not isinstance(self.retries, int) or not 0 <= self.retries <= 10:
            raise ConfigError(f"retries must be an integer from 0 to 10, got {self.retries!r}")
        return self


def preset(kind: str | None, *, protocol: str = "v2", task: str = "classification") -> UpstreamConfig:
    """The defaults for a server kind (None: mlcanary's own conventions for the protocol)."""
    proba = ("predict_proba",) if task == "classification" else ()
    if kind == "mlserver":
        return UpstreamConfig(encoding="v2-columns", kind=kind, request_outputs=("predict", *proba))
    if kind == "kserve":
        return UpstreamConfig(
            encoding="v2-columns",
            kind=kind,
            class_output="output-0",
            value_output="output-0",
            proba_output=None,
            score_output=None,
        )
    if kind == "triton":
        return UpstreamConfig(
            encoding="v2-tensor",
            kind=kind,
            tensor_name="input__0",
            tensor_datatype="FP32",
            class_output="output__0",
            value_output="output__0",
            proba_output=None,
            score_output=None,
        )
    if kind == "mlflow" or protocol == "mlflow":
        return UpstreamConfig(
            encoding="mlflow",
            kind=kind,
            class_output=None,
            value_output=None,
            proba_output=None,
            score_output=None,
        )
    if kind is not None:
        raise ConfigError(f"unknown upstream kind {kind!r}; choose {', '.join(KINDS)}")
    return UpstreamConfig()


def configure(
    kind: str | None, protocol: str | None, task: str, overrides: Mapping[str, Any] | None = None
) -> UpstreamConfig:
    """Start from the kind's preset (or the protocol's default) and apply the given overrides."""
    base = preset(kind, protocol=protocol or "v2", task=task)
    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in fields(UpstreamConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown upstream setting {unknown[0]!r}")
    if "request_outputs" in values:
        values["request_outputs"] = tuple(values["request_outputs"])
    for name in ("class_output", "value_output", "proba_output", "score_output"):
        if values.get(name) == "":
            values[name] = None  # "" switches an output off
    config = replace(base, **values).checked()
    if protocol is not None and config.protocol != protocol:
        raise ConfigError(f"encoding {config.encoding} does not speak protocol {protocol}")
    return config


# --------------------------------------------------------------------------------------------- requests


def encode(
    config: UpstreamConfig,
    columns: Mapping[str, Sequence[Any]],
    dtypes: Mapping[str, str],
    *,
    request_id: str = "mlcanary",
) -> bytes:
    """Encode columns (name -> plain Python values, None for missing) in the config's encoding."""
    names = list(columns)
    rows = len(columns[names[0]]) if names else 0
    if config.encoding == "mlflow":
        data = [list(r) for r in zip(*columns.values(), strict=True)]
        return _write({"dataframe_split": {"columns": names, "data": data}}, columns)
    document: dict[str, Any] = {"id": request_id}  # key order as tritonclient writes it
    if config.encoding == "v2-columns":
        document["inputs"] = [
            {
                "name": name,
                "shape": [rows],
                "datatype": _COLUMN_DATATYPES.get(dtypes.get(name, "str"), "BYTES"),
                "data": list(values),
            }
            for name, values in columns.items()
        ]
    else:
        document["inputs"] = [
            {
                "name": config.tensor_name,
                "shape": [rows, len(names)],
                "datatype": config.tensor_datatype,
                "data": tensor_values(config.tensor_datatype, columns),
            }
        ]
    if config.request_outputs:
        document["outputs"] = [
            {"name": name, "parameters": {"binary_data": False}} for name in config.request_outputs
        ]
    if config.encoding == "v2-columns":
        document["parameters"] = {"content_type": "pd"}
        return _write(document, columns)
    return json.dumps(document, separators=(",", ":")).encode()  # compact, as tritonclient writes it


def _write(document: dict[str, Any], columns: Mapping[str, Sequence[Any]]) -> bytes:
    """The JSON of a columns or MLflow request: through `write_json` (orjson), unless a value is an
    infinity or NaN, which json.dumps writes as the literal it always sent (write_json: null)."""
    if all(math.isfinite(v) for values in columns.values() for v in values if type(v) is float):
        return write_json(document)
    return json.dumps(document, separators=(",", ":")).encode()


def tensor_values(datatype: str, columns: Mapping[str, Sequence[Any]]) -> list[Any]:
    """Flatten columns row-major into one tensor's data; refuse values the datatype cannot hold."""
    cast = _NUMERIC_DATATYPES.get(datatype)
    out: list[Any] = []
    for row in zip(*columns.values(), strict=True):
        for name, value in zip(columns, row, strict=True):
            if cast is None:
                out.append("" if value is None else str(value))
            elif value is None:
                if cast is int:
                    raise ValueError(f"column {name!r} has a missing value, which {datatype} cannot hold")
                out.append(math.nan)
            elif isinstance(value, str):
                raise ValueError(f"column {name!r} holds text ({value!r}), which {datatype} cannot hold")
            else:
                out.append(cast(value))
    if datatype == "FP32":  # what tritonclient sends: the float32 value written back as a double
        out = np.asarray(out, dtype=np.float32).astype(np.float64).tolist()
    return out


# --------------------------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Answer:
    """An upstream's answer before it is checked against the task: labels or values, and scores."""

    outputs: list[Any]
    scores: list[float] | None
    classes_width: int | None = None  # the probability tensor's second dimension, when there is one
    probabilities: list[dict[str, float]] | None = None  # > 2 classes: each row's vector by class


def read_v2(config: UpstreamConfig, document: Any, task: str, classes: Sequence[Any] | None = None) -> Answer:
    """Read a V2 answer: the configured output for classes or values, and probabilities or scores.

    ``classes``: the version's classes in the model's column order; with more than two of them and a
    probability tensor as wide, each row's vector is kept keyed by class (``Answer.probabilities``).
    """
    if not isinstance(document, dict) or not isinstance(document.get("outputs"), list):
        raise ValueError('the answer has no "outputs" list')
    outputs = {o["name"]: o for o in document["outputs"] if isinstance(o, dict) and "name" in o}
    wanted = config.class_output if task == "classification" else config.value_output
    if wanted is not None and wanted in outputs:
        main = outputs[wanted]
    elif wanted is None or len(outputs) == 1:
        main = document["outputs"][0]
    else:
        raise ValueError(f"no output named {wanted!r} (the answer has {', '.join(sorted(outputs))})")
    labels = _flat(main["data"])
    if task != "classification":
        return Answer(labels, None)
    scores = None
    width = None
    probabilities = None
    if config.score_output and config.score_output in outputs:
        scores = [float(v) for v in _flat(outputs[config.score_output]["data"])]
    elif config.proba_output and config.proba_output in outputs:
        tensor = outputs[config.proba_output]
        proba = np.asarray(_flat(tensor["data"]), dtype=np.float64).reshape(tensor["shape"])
        if proba.ndim != 2:
            raise ValueError(f"output {config.proba_output!r} has shape {tensor['shape']}, not [n, classes]")
        width = int(proba.shape[1])
        scores = (proba[:, 1] if width == 2 else proba.max(axis=1)).tolist()
        probabilities = probability_rows(classes or (), proba)
    return Answer(labels, scores, width, probabilities)


def read_mlflow(config: UpstreamConfig, document: Any, task: str) -> Answer:
    """Read an MLflow answer: {"predictions": [...]} or a bare list, of scalars or records.

    A record's score may be a mapping of more than two classes to their probabilities: it is kept as
    the row's vector (``Answer.probabilities``) and its top probability is the score.
    """
    predictions = document["predictions"] if isinstance(document, dict) else document
    if not isinstance(predictions, list):
        raise ValueError("the answer has no predictions list")
    label_keys = [k for k in (config.class_output, config.value_output) if k] + [
        "class",
        "label",
        "prediction",
        "predict",
    ]
    score_keys = [k for k in (config.score_output, config.proba_output) if k] + ["score", "probability"]
    labels: list[Any] = []
    scores: list[float] | None = []
    vectors: list[dict[str, float]] | None = []
    for item in predictions:
        if isinstance(item, dict):
            labels.append(next((item[k] for k in label_keys if k in item), None))
            score = next((item[k] for k in score_keys if k in item), None)
            if isinstance(score, dict) and len(score) > 2 and vectors is not None:
                # a record's class probabilities ({"setosa": 0.9, ...}): the top one is the score
                vector = {str(k): float(v) for k, v in score.items()}
                vectors.append(vector)
                score = max(vector.values())
            else:
                vectors = None
            if score is None or scores is None:
                scores = None
            else:
                scores.append(float(score))
        else:
            labels.append(item)
            scores = vectors = None
    if task != "classification":
        return Answer(labels, None)
    return Answer(labels, scores, probabilities=vectors or None)


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise TypeError("data is not a list")
    if any(isinstance(v, list) for v in data):
        return [x for v in data for x in (v if isinstance(v, list) else [v])]
    return data
