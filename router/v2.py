"""The Open Inference (KServe V2) protocol: tabular requests in, `outputs` out.

A tabular request has one input per column, named like the registered column, with shape [n] or
[n, 1]. A single input of shape [n, k] with k registered columns is read as rows in schema order
(what KServe's sklearn server takes). Data may be nested or flat (row-major). The binary tensor
extension that tritonclient uses by default is read too: the JSON header's length is given by the
Inference-Header-Content-Length header and each input's bytes follow in order, sized by its
`binary_data_size` parameter. Answers are always JSON, which every V2 client accepts.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from router.errors import InvalidInput
from router.mlflow import load_json
from storage.entities import Column, PipelineVersion

HEADER_LENGTH = "Inference-Header-Content-Length"

_NUMPY = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
DATATYPES = {
    "float": "FP64",
    "int": "INT64",
    "bool": "BOOL",
    "str": "BYTES",
    "category": "BYTES",
    "datetime": "BYTES",
}


def read_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """Split a V2 body into its JSON document and the binary data that follows it (maybe empty)."""
    if header_length is None:
        document = load_json(body)
        rest = b""
    else:
        try:
            size = int(header_length)
        except ValueError as exc:
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer") from exc
        if size < 0 or size > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {size} does not fit a body of {len(body)} bytes")
        document = load_json(body[:size])
        rest = body[size:]
    if not isinstance(document, dict):
        raise InvalidInput("a V2 request is a JSON object with an inputs list")
    return document, rest


def read_columns(document: dict[str, Any], binary: bytes, schema: Sequence[Column]) -> dict[str, list[Any]]:
    """Turn a V2 request's inputs into column name → values."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('a V2 request needs a non-empty "inputs" list', code="empty_batch")
    names = {c.name for c in schema}
    offset = 0
    columns: dict[str, list[Any]] = {}
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput("each V2 input needs a name, shape, datatype and data")
        values, offset = _tensor_values(tensor, binary, offset)
        shape = _shape(tensor)
        if tensor["name"] not in names and len(inputs) == 1 and len(shape) == 2 and shape[1] == len(schema):
            width = shape[1]
            return {c.name: values[i::width] for i, c in enumerate(schema)}
        if len(shape) == 2 and shape[1] != 1:
            raise InvalidInput(
                f"input {tensor['name']!r} has shape {shape}; a tabular input is one column, shape [n] or [n, 1]"
            )
        if tensor["name"] in columns:
            raise InvalidInput(f"input {tensor['name']!r} is given twice")
        columns[tensor["name"]] = values
    return columns


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or not 1 <= len(shape) <= 2
    ):
        raise InvalidInput(f"input {tensor['name']!r} needs a shape of one or two non-negative integers")
    return shape


def _tensor_values(tensor: dict[str, Any], binary: bytes, offset: int) -> tuple[list[Any], int]:
    shape = _shape(tensor)
    count = 1
    for d in shape:
        count *= d
    datatype = str(tensor.get("datatype", "")).upper()
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input {tensor['name']!r}: binary_data_size does not match the body")
        chunk = binary[offset : offset + size]
        offset += size
        values = _decode_binary(tensor["name"], datatype, chunk)
    else:
        if "data" not in tensor:
            raise InvalidInput(f"input {tensor['name']!r} has no data")
        values = _flatten(tensor["data"])
    if len(values) != count:
        raise InvalidInput(
            f"input {tensor['name']!r} has {len(values)} values for shape {shape}", code="ragged_rows"
        )
    if datatype == "BYTES":
        values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
    return values, offset


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    for value in data:
        out.extend(_flatten(value))
    return out


def _decode_binary(name: str, datatype: str, chunk: bytes) -> list[Any]:
    if datatype == "BYTES":
        values: list[Any] = []
        position = 0
        while position < len(chunk):
            if position + 4 > len(chunk):
                raise InvalidInput(f"input {name!r}: truncated BYTES element")
            (length,) = struct.unpack_from("<I", chunk, position)
            position += 4
            values.append(chunk[position : position + length])
            position += length
        return values
    dtype = _NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}")
    try:
        return np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<")).tolist()
    except ValueError as exc:
        raise InvalidInput(f"input {name!r}: binary data is not a whole number of {datatype}") from exc


def write_response(
    *, model_name: str, model_version: str, request_id: str, outputs: list[Any], scores: list[float] | None
) -> dict[str, Any]:
    """Return the V2 response: `predict` (class or value per row) and, for classifiers, `score`."""
    rows = len(outputs)
    result: list[dict[str, Any]] = [
        {"name": "predict", "shape": [rows], "datatype": datatype_of(outputs), "data": outputs}
    ]
    if scores is not None:
        result.append({"name": "score", "shape": [rows], "datatype": "FP64", "data": scores})
    return {"model_name": model_name, "model_version": model_version, "id": request_id, "outputs": result}


def datatype_of(values: list[Any]) -> str:
    """Return the V2 datatype naming a list of Python scalars."""
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) or v is None for v in values):
        return "FP64"
    return "BYTES"


def metadata(model_name: str, version: PipelineVersion) -> dict[str, Any]:
    """Return the V2 model metadata of a deployment's champion."""
    outputs: list[dict[str, Any]] = [
        {"name": "predict", "datatype": _output_datatype(version), "shape": [-1]}
    ]
    if version.task == "classification":
        outputs.append({"name": "score", "datatype": "FP64", "shape": [-1]})
    return {
        "name": model_name,
        "versions": [version.ref],
        "platform": "mlcanary",
        "inputs": [
            {"name": c.name, "datatype": DATATYPES.get(c.dtype, "BYTES"), "shape": [-1]}
            for c in version.input_schema
        ],
        "outputs": outputs,
    }


def _output_datatype(version: PipelineVersion) -> str:
    if version.task == "regression":
        return "FP64"
    return datatype_of(list(version.classes or ())) if version.classes else "BYTES"


def encode_request(columns: dict[str, list[Any]], schema: Sequence[Column], *, request_id: str) -> bytes:
    """Write a tabular V2 request (one input per column; missing values as null)."""
    inputs = [
        {
            "name": c.name,
            "shape": [len(columns[c.name])],
            "datatype": DATATYPES.get(c.dtype, "BYTES"),
            "data": columns[c.name],
        }
        for c in schema
    ]
    return json.dumps({"id": request_id, "inputs": inputs}, default=_plain).encode()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
