"""router.edge.parse_json reads every body exactly as json.loads does (orjson first, json for the rest);
router.edge.write_json writes the values json.dumps writes, NaN and infinities as null."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.backends.encodings import configure, encode
from router.edge import parse_json, write_json

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


def _nulled(value: Any) -> Any:
    """What JSON can hold of a value: NaN and infinities as None (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_nulled(v) for v in value]
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    return value


@settings(max_examples=300, deadline=None)
@given(_DOCUMENTS)
def test_every_document_is_written_with_the_values_json_dumps_writes(document: Any) -> None:
    written = write_json(document)
    assert _same(json.loads(written), _nulled(document))
    assert _same(json.loads(written), json.loads(json.dumps(_nulled(document))))


@pytest.mark.parametrize(
    ("document", "text"),
    [
        ({"a": [1.5, None, True], "b": "x"}, b'{"a":[1.5,null,true],"b":"x"}'),  # compact
        ([math.nan, -math.inf, 0.1], b"[null,null,0.1]"),
        ([2**70, "caf\u00e9"], b'[1180591620717411303424,"caf\\u00e9"]'),  # beyond 64 bits: json's own
        ("\ud800", b'"\\ud800"'),  # a lone surrogate: json escapes it
        ({1: "a"}, b'{"1":"a"}'),  # a key that is not text: json's str()
    ],
)
def test_what_orjson_refuses_is_written_by_json(document: Any, text: bytes) -> None:
    assert write_json(document) == text


@pytest.mark.parametrize("value", [datetime.datetime(2026, 1, 1), np.int64(3), {"a": object()}])
def test_what_json_refuses_is_still_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        write_json(value)


def test_text_is_written_as_utf8() -> None:
    assert write_json(["caf\u00e9", "\u2603"]) == '["caf\u00e9","\u2603"]'.encode()


@pytest.mark.parametrize("encoding", ["v2-columns", "mlflow"])
def test_an_upstream_request_keeps_the_infinity_it_always_sent(encoding: str) -> None:
    """A columns or MLflow request goes through write_json; one holding an infinity keeps json.dumps'
    literal (write_json would send null, a missing value, instead)."""
    config = configure("mlserver" if encoding == "v2-columns" else "mlflow", None, "classification", {})
    dtypes = {"x": "float", "s": "str"}
    finite = encode(config, {"x": [1.0, None], "s": ["caf\u00e9", "b"]}, dtypes)
    assert b" " not in finite and "caf\u00e9".encode() in finite  # orjson's compact UTF-8
    infinite = encode(config, {"x": [math.inf, -1.0], "s": ["a", "b"]}, dtypes)
    assert b"Infinity" in infinite and b"null" not in infinite
