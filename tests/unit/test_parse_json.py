"""router.edge.parse_json reads every body exactly as json.loads does (orjson first, json for the rest)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.edge import parse_json

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)  # beyond 64 bits too: orjson refuses those
    | st.floats(allow_nan=True, allow_infinity=True)  # NaN and Infinity literals: json's own
    | st.text()  # lone surrogates included
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(_DOCUMENTS, st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-8-sig"]), st.booleans())
def test_every_document_is_read_as_json_loads_reads_it(
    document: Any, encoding: str, ascii_only: bool
) -> None:
    text = json.dumps(document, ensure_ascii=ascii_only)
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:  # a lone surrogate written raw: no encoding holds it
        return
    assert _same(parse_json(data), json.loads(data))


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": NaN, "b": -Infinity}',
        b"[18446744073709551616, -9223372036854775809]",
        b'{"k": 1, "k": 2}',
        b'"\\ud800"',
        '{"x": "caf\u00e9"}'.encode("utf-16"),
        b"\xef\xbb\xbf[1]",
        b"1e400",
    ],
)
def test_what_only_the_standard_library_reads_is_read_by_it(data: bytes) -> None:
    assert _same(parse_json(data), json.loads(data))


@pytest.mark.parametrize("data", [b"{not json", b"", b"[1,]", b'"\xff"', b"[" * 5000 + b"]" * 5000])
def test_what_neither_reads_raises_the_standard_librarys_error(data: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as expected:
        json.loads(data)
    with pytest.raises(expected.type):
        parse_json(data)
