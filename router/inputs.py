"""Turn parsed request columns into the DataFrame a registered pipeline expects, or say what is wrong.

Every protocol (MLflow JSON and CSV, V2) ends here with a mapping column name → list of values.
Columns are checked against the champion's registered input schema: a missing or unknown column, a
value of the wrong type, an empty batch or rows of unequal length is an InvalidInput naming it.

Missing values: JSON null (and an empty CSV field, "NA", "NaN", "null") becomes NaN in every column,
which is what pandas.read_csv yields, so a pipeline sees in production what it saw in research:
float columns hold NaN; an int column with a missing value becomes float64 (as read_csv makes it);
str columns hold NaN in pandas' string dtype; a bool column with a missing value becomes object.
Numbers written as strings are accepted in numeric columns (CSV has nothing else); anything that
is not a number there is a type error. Values of str columns that are numbers become their text.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray

from router.edge import check_text
from router.errors import InvalidInput
from storage.entities import Column

NA_TEXT = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "<NA>"})
_TRUE = frozenset({"true", "True", "TRUE", "1"})
_FALSE = frozenset({"false", "False", "FALSE", "0"})


@dataclass(frozen=True)
class Batch:
    """A validated request: the frame in the registered column order, and its row count.

    columns holds the converted arrays the frame was built from (name → array, registered order):
    the shadow pool joins many requests' arrays into one frame (`join_columns`) and the recorder
    reads raw inputs from them, both without going through pandas per request.
    """

    rows: int
    columns: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The request's frame, built on first use (a batched request is scored in its batch's frame)."""
        return frame_of(self.columns)


class Text:
    """A str column's converted values before pandas: an object array of str and NaN.

    pandas' "str" array costs tens of microseconds to build however short it is, so a request keeps
    its text as a plain object array and the pandas array is built once per frame (`frame_of`,
    `join_columns`): once per batch of requests rather than once per request. `tolist()` gives what
    the pandas array's would (str and NaN).
    """

    __slots__ = ("values",)
    dtype = "str"

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def tolist(self) -> list[Any]:
        return list(self.values.tolist())

    def to_pandas(self) -> Any:
        return _text_array(self.values)


# pandas' "str" dtype and its array class, resolved once: `pd.array(values, dtype="str")` infers
# and resolves them on every call (~50 us); the array class's constructor alone takes ~15.
_STR = pd.array(np.array(["x"], dtype=object), dtype="str").dtype
_STR_ARRAY = _STR.construct_array_type()


def _text_array(values: np.ndarray) -> Any:
    """The pandas "str" array of an object array of str and NaN (what `pd.array(values, dtype="str")` gives)."""
    return _STR_ARRAY._from_sequence(values, dtype=_STR)


@functools.lru_cache(maxsize=1024)
def _column_index(names: tuple[str, ...]) -> pd.Index:
    return pd.Index(list(names))


def _frame(data: dict[str, Any], rows: int) -> pd.DataFrame:
    """Build a frame of one array per column (registered order), as `pd.DataFrame(data, copy=False)` does.

    Scoring one request costs the router little besides building this frame, and pandas' own
    constructor from a dict spends most of its ~0.45 ms inferring what is known here (the column
    index, that each value is already an array of the right length). So numpy arrays of plain
    types and pandas extension arrays (strings) go straight into the frame's blocks; anything else
    (a datetime Series) takes the constructor's path.
    """
    arrays = list(data.values())
    if all(
        (isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "biufO")
        or isinstance(a, ExtensionArray)
        for a in arrays
    ) and all(len(a) == rows for a in arrays):
        return pd.DataFrame._from_arrays(
            arrays,
            columns=_column_index(tuple(data)).copy(),  # a copy: a pipeline may rename its frame's index
            index=pd.RangeIndex(rows),
            verify_integrity=False,
        )
    return pd.DataFrame(data, columns=list(data), copy=False)


def frame_of(columns: Mapping[str, Any]) -> pd.DataFrame:
    """Build the frame of converted columns (registered order), text columns as pandas "str" arrays."""
    data = {name: a.to_pandas() if isinstance(a, Text) else a for name, a in columns.items()}
    return _frame(data, len(next(iter(data.values()))) if data else 0)


def _near(name: str, sent: Sequence[str]) -> str:
    """``plan (did you mean 'Plan'?)`` when a sent column is a near miss of a missing one (case, typo)."""
    by_case = [c for c in sent if c.lower() == name.lower()]
    close = by_case or difflib.get_close_matches(name, list(sent), n=1, cutoff=0.75)
    return f"{name} (did you mean {close[0]!r}?)" if close else name


def build_batch(columns: Mapping[str, Sequence[Any]], schema: Sequence[Column], *, max_rows: int) -> Batch:
    """Check columns against the schema and build the frame (registered columns, registered order)."""
    wanted = [c.name for c in schema]
    if not columns or all(len(v) == 0 for v in columns.values()):
        raise InvalidInput("the batch is empty: send at least one row", code="empty_batch")
    missing = [name for name in wanted if name not in columns]
    known = set(wanted)
    unknown = [str(name) for name in columns if name not in known]
    if missing:
        raise InvalidInput(
            f"missing column(s): {', '.join(_near(name, unknown) for name in missing)}",
            code="missing_columns",
        )
    if unknown:
        raise InvalidInput(
            f"unknown column(s): {', '.join(unknown)}; this deployment takes {', '.join(wanted)}",
            code="unknown_columns",
        )
    lengths = {len(columns[name]) for name in wanted}
    if len(lengths) > 1:
        raise InvalidInput("columns have different numbers of rows", code="ragged_rows")
    rows = lengths.pop() if lengths else 0
    if rows == 0:
        raise InvalidInput("the batch is empty: send at least one row", code="empty_batch")
    if rows > max_rows:
        raise InvalidInput(
            f"the batch has {rows} rows; at most {max_rows} are accepted", code="too_many_rows"
        )
    data = {c.name: convert_column(c, columns[c.name]) for c in schema}
    return Batch(rows, data)


def join_columns(parts: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Build one frame from several batches' converted columns (same names), rows in order.

    The result equals `pd.concat` of the batches' frames (with a new index) — the same dtype
    promotions: an int column with a missing value in one part becomes float64, a bool column with
    one becomes object — at a fraction of its cost: numpy arrays are concatenated directly and only
    pandas arrays (strings, dates) go through pandas, once per column.
    """
    names = list(parts[0])
    data: dict[str, Any] = {}
    for name in names:
        arrays = [part[name] for part in parts]
        first = arrays[0]
        if all(isinstance(a, Text) for a in arrays):  # text: one pandas array for the whole batch
            data[name] = _text_array(np.concatenate([a.values for a in arrays]))
            continue
        arrays = [a.to_pandas() if isinstance(a, Text) else a for a in arrays]
        first = arrays[0]
        if all(isinstance(a, np.ndarray) for a in arrays):
            data[name] = np.concatenate(arrays)
        elif isinstance(first, ExtensionArray) and all(
            type(a) is type(first) and a.dtype == first.dtype for a in arrays
        ):  # strings: the extension array interface's own concatenation
            data[name] = type(first)._concat_same_type(arrays)
        else:
            data[name] = pd.concat([pd.Series(a, copy=False) for a in arrays], ignore_index=True)
    return _frame(data, sum(len(part[names[0]]) for part in parts))


def convert_column(column: Column, values: Sequence[Any]) -> Any:
    """Convert one column's values to the array pandas would build for the registered dtype."""
    kind = column.dtype
    if kind in ("float", "int"):
        return _numeric(column, values)
    if kind == "bool":
        return _boolean(column, values)
    if kind == "datetime":
        try:
            return pd.to_datetime(pd.Series([None if _is_na(v) else v for v in values], dtype=object))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"column {column.name!r} expects dates: {exc}", code="wrong_type") from exc
    return _text(column, values)


def _is_na(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and value in NA_TEXT


_NOT_A_NUMBER = (bool, list, dict)  # a tuple: `bool | list | dict` in the loop built a union per value


def _numeric(column: Column, values: Sequence[Any]) -> np.ndarray:
    try:
        array = np.array(values, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):  # OverflowError: an integer beyond float64
        array = None
    if array is None or array.ndim != 1 or any(isinstance(v, _NOT_A_NUMBER) for v in values):
        array = np.empty(len(values), dtype=np.float64)
        for i, value in enumerate(values):
            if _is_na(value):
                array[i] = np.nan
            elif isinstance(value, bool) or not isinstance(value, int | float | str):
                raise _type_error(column, value, "a number")
            else:
                try:
                    array[i] = float(value)
                except (ValueError, OverflowError) as exc:
                    raise _type_error(column, value, "a number") from exc
    if column.dtype == "int":
        # one pass over the floats (a request has a few): numpy's masks and floors cost ~9 us a column
        missing = False
        for number in array.tolist():
            if number != number:
                missing = True
            elif not number.is_integer():  # 1.5, and infinity: not an integer
                raise _type_error(column, number, "an integer")
            elif not _INT64_MIN <= number < _INT64_END:
                raise _type_error(column, number, "an integer of at most 64 bits")
        if not missing:
            return array.astype(np.int64)
    return array


_INT64_MIN, _INT64_END = -(2.0**63), 2.0**63  # an int64 holds every whole float in [MIN, END)


def _boolean(column: Column, values: Sequence[Any]) -> Any:
    out: list[Any] = []
    has_na = False
    for value in values:
        if isinstance(value, bool | np.bool_):
            out.append(bool(value))
        elif _is_na(value):
            out.append(np.nan)
            has_na = True
        elif isinstance(value, str) and value in _TRUE:
            out.append(True)
        elif isinstance(value, str) and value in _FALSE:
            out.append(False)
        elif isinstance(value, int | float) and value in (0, 1):
            out.append(bool(value))
        else:
            raise _type_error(column, value, "true or false")
    return np.array(out, dtype=object) if has_na else np.array(out, dtype=bool)


def _text(column: Column, values: Sequence[Any]) -> Text:
    out: list[Any] = []
    for value in values:
        if isinstance(value, str):
            out.append(np.nan if value in NA_TEXT else check_text(value, f"column {column.name!r}"))
        elif value is None or (isinstance(value, float) and value != value):
            out.append(np.nan)
        elif isinstance(value, bool | int | float):
            try:
                out.append(str(value))
            except ValueError as exc:  # an integer beyond Python's 4300-digit conversion limit
                raise _type_error(column, "an integer of more than 4300 digits", "a string") from exc
        else:
            raise _type_error(column, value, "a string")
    array = np.empty(len(out), dtype=object)
    array[:] = out
    return Text(array)


def _type_error(column: Column, value: Any, expected: str) -> InvalidInput:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return InvalidInput(
        f"column {column.name!r} ({column.dtype}) expects {expected}, got {shown}", code="wrong_type"
    )
