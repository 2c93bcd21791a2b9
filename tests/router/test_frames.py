"""The frames the router scores: built straight from the converted columns, equal to what pandas builds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from router.inputs import Text, build_batch, frame_of, join_columns
from storage.entities import Column

SCHEMA = (
    Column("x", "float"),
    Column("n", "int"),
    Column("flag", "bool"),
    Column("plan", "str"),
    Column("region", "category"),
    Column("seen", "datetime"),
)


def _rows(i: int, *, missing: bool, schema: tuple[Column, ...] = SCHEMA) -> dict[str, list[Any]]:
    gap = missing and i % 2 == 1
    every = {
        "x": [None if gap else i * 0.5],
        "n": [None if gap else i],
        "flag": [None if gap else i % 3 == 0],
        "plan": [None if gap else f"p{i % 4}"],
        "region": ["NA" if gap else "north"],
        "seen": [None if gap else f"2026-01-{i + 1:02d}"],
    }
    return {c.name: every[c.name] for c in schema}


def _pandas_frame(columns: dict[str, Any]) -> pd.DataFrame:
    """What pandas' own constructor builds from the converted columns (the router's reference)."""
    data = {
        name: pd.array(a.values, dtype="str") if isinstance(a, Text) else a for name, a in columns.items()
    }
    return pd.DataFrame(data, columns=list(columns), copy=False)


# with a date column (built by pandas' constructor) and without (built straight from the arrays)
SCHEMAS = (SCHEMA, SCHEMA[:5])


def test_a_requests_frame_equals_the_one_pandas_builds_for_every_column_type() -> None:
    for schema in SCHEMAS:
        for missing in (False, True):
            for i in range(4):
                batch = build_batch(_rows(i, missing=missing, schema=schema), schema, max_rows=10)
                frame = frame_of(batch.columns)
                pd.testing.assert_frame_equal(frame, _pandas_frame(dict(batch.columns)))
                assert list(frame.columns) == [c.name for c in schema]
                assert isinstance(frame.index, pd.RangeIndex) and len(frame) == 1


def test_a_batch_frame_equals_the_concatenated_frames_and_keeps_the_promotions() -> None:
    for schema in SCHEMAS:
        batches = [build_batch(_rows(i, missing=True, schema=schema), schema, max_rows=10) for i in range(6)]
        joined = join_columns([b.columns for b in batches])
        expected = pd.concat([_pandas_frame(dict(b.columns)) for b in batches], ignore_index=True)
        pd.testing.assert_frame_equal(joined, expected)
        assert joined["n"].dtype == np.float64 and joined["flag"].dtype == object  # promoted by the gaps
        assert math.isnan(joined["x"][1]) and joined["plan"].isna().tolist() == [False, True] * 3


def test_renaming_one_frames_columns_leaves_the_next_frames_alone() -> None:
    batch = build_batch(_rows(0, missing=False, schema=SCHEMA[:4]), SCHEMA[:4], max_rows=10)
    first = frame_of(batch.columns)
    first.columns.name = "renamed by a pipeline"
    first.columns = ["a", "b", "c", "d"]
    second = frame_of(batch.columns)
    assert list(second.columns) == ["x", "n", "flag", "plan"] and second.columns.name is None
