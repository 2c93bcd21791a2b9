"""The MLflow scoring protocol: read a request's columns, write `{"predictions": [...]}`.

JSON bodies carry exactly one of `dataframe_split` ({"columns": [...], "data": [[...], ...]}),
`dataframe_records` ([{column: value}, ...]), `instances` (records, or rows in schema order) or
`inputs` ({column: [values]}, records, or rows in schema order), and optionally `params` (a JSON
object; accepted and not used by scikit-learn pipelines). `text/csv` bodies have a header line.
Rows must all be as wide as the header (a ragged body is refused, not padded).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from router.edge import parse_json
from router.errors import InvalidInput, UnsupportedMediaType
from storage.entities import Column

KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def read_columns(body: bytes, content_type: str, schema: Sequence[Column]) -> dict[str, list[Any]]:
    """Parse an MLflow request body into column name → values."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("text/csv", "application/csv"):
        return _csv_columns(body)
    if media not in ("application/json", "") and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"content type {media!r} is not supported; send application/json or text/csv"
        )
    document = load_json(body)
    if not isinstance(document, dict):
        raise InvalidInput("the JSON body must be an object with one of: " + ", ".join(KEYS))
    present = [k for k in KEYS if k in document]
    unknown = sorted(set(document) - set(KEYS) - {"params"})
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(unknown)}; expected one of: {', '.join(KEYS)}")
    if len(present) != 1:
        raise InvalidInput(
            f"send exactly one of {', '.join(KEYS)} (got {', '.join(present) or 'none'})",
            code="invalid_format",
        )
    params = document.get("params")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput("params must be a JSON object")
    key = present[0]
    payload = document[key]
    if key == "dataframe_split":
        return _split_columns(payload, schema)
    if key == "dataframe_records":
        return _records_columns(payload, key)
    if isinstance(payload, dict):
        return _columnar(payload, key)
    if isinstance(payload, list) and payload and all(isinstance(r, list) for r in payload):
        return _rows_columns([c.name for c in schema], payload, key)
    return _records_columns(payload, key)


def load_json(body: bytes) -> Any:
    """Parse a JSON body (NaN and Infinity literals allowed, as MLflow clients may send them)."""
    if not body:
        raise InvalidInput("the request body is empty", code="empty_batch")
    try:
        return parse_json(body)
    except (ValueError, UnicodeDecodeError) as exc:  # also integers beyond 4300 digits
        raise InvalidInput(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:
        raise InvalidInput("the body is nested too deeply", code="invalid_json") from exc


def _split_columns(payload: Any, schema: Sequence[Column]) -> dict[str, list[Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("data", None), list):
        raise InvalidInput('dataframe_split must be {"columns": [...], "data": [[...], ...]}')
    columns = payload.get("columns")
    if columns is None:
        columns = [c.name for c in schema]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInput("dataframe_split.columns must be a list of column names")
    data = payload["data"]
    if data and not all(isinstance(r, list) for r in data):
        raise InvalidInput("dataframe_split.data must be a list of rows (lists)")
    return _rows_columns(columns, data, "dataframe_split")


def _rows_columns(columns: list[str], rows: list[Any], key: str) -> dict[str, list[Any]]:
    width = len(columns)
    if len(set(columns)) != width:
        raise InvalidInput(f"{key} names a column twice")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InvalidInput(f"{key} row {i} has {len(row)} values for {width} columns", code="ragged_rows")
    if not rows:
        return {name: [] for name in columns}
    return {name: list(values) for name, values in zip(columns, zip(*rows, strict=True), strict=True)}


def _records_columns(records: Any, key: str) -> dict[str, list[Any]]:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InvalidInput(f"{key} must be a list of objects (one per row)")
    if not records:
        return {}
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    # A key missing from one record is a missing value, as pandas.DataFrame.from_records makes it.
    return {name: [r.get(name) for r in records] for name in names}


def _columnar(payload: dict[str, Any], key: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for name, values in payload.items():
        out[name] = values if isinstance(values, list) else [values]
    return out


def _csv_columns(body: bytes) -> dict[str, list[Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput("the CSV body is not UTF-8", code="invalid_csv") from exc
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InvalidInput(f"the CSV body cannot be read: {exc}", code="invalid_csv") from exc
    rows = [r for r in rows if r]  # blank lines, as pandas.read_csv skips them
    if not rows:
        raise InvalidInput(
            "the CSV body is empty: send a header line and at least one row", code="empty_batch"
        )
    header, data = rows[0], rows[1:]
    for i, row in enumerate(data):
        if len(row) != len(header):
            raise InvalidInput(
                f"CSV line {i + 2} has {len(row)} fields for {len(header)} columns", code="ragged_rows"
            )
    return _rows_columns(header, data, "CSV")


def write_predictions(outputs: list[Any]) -> dict[str, list[Any]]:
    """Return the MLflow response body for the served predictions."""
    return {"predictions": outputs}
