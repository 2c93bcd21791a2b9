"""What a data-plane request may carry, checked before anything is routed, scored or stored.

One place for the rules every storage backend can hold (PostgreSQL refuses NUL characters and lone
surrogates in text and JSON, and keys longer than their columns), so that one request can never
make a batch of other requests' pairs fail to store:

- request ids (`X-Request-Id`, the V2 `id`) and routing keys (`X-Routing-Key`): 1..128 printable
  ASCII characters (space to `~`);
- every string in a body: no NUL character, no lone surrogate (`check_text`);
- header values written back to a client: printable ASCII, anything else percent-encoded
  (`header_value`), so a stored name can never break a response.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import orjson

from router.errors import InvalidInput
from storage.entities import MAX_REQUEST_ID as MAX_ID
from storage.entities import storable_text, valid_request_id

_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def check_id(value: str, what: str) -> str:
    """Return value if it is a valid id or key, else InvalidInput (400) naming `what`."""
    if not valid_request_id(value):
        shown = value[:40].encode("unicode_escape").decode("ascii")
        raise InvalidInput(
            f"{what} must be 1..{MAX_ID} printable ASCII characters, got {len(value)} characters "
            f"starting {shown!r}",
            code="invalid_request_id",
        )
    return value


def check_text(value: str, where: str) -> str:
    """Return value unless it holds a NUL character or a lone surrogate (InvalidInput, 400)."""
    if not storable_text(value):
        raise InvalidInput(
            f"{where} holds a NUL character or an unpaired surrogate, which cannot be stored",
            code="invalid_text",
        )
    return value


def header_value(value: str) -> str:
    """Return value as a safe HTTP header value: printable ASCII kept, anything else percent-encoded."""
    if valid_request_id(value) and "%" not in value:
        return value
    return quote(value, safe=_HEADER_SAFE)


def parse_json(data: bytes) -> Any:
    """Parse JSON as `json.loads` does, through orjson when it can (the same values, a third of the time).

    orjson refuses some of what the standard library reads (NaN and Infinity literals, UTF-16 and
    UTF-32 bodies, a byte-order mark, lone surrogates) and reads an integer beyond 64 bits as a
    float: a body with a run of 19 digits or more, and any body orjson refuses, goes to
    `json.loads`, which gives its own result or its own error. A body parsed here is on the
    answer's path of every request (the request, an upstream's answer): json.loads spent ~17 us on
    a one-row request, orjson 2-12 (tests/unit/test_parse_json.py checks the two agree).
    """
    if _LONG_NUMBER.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


_LONG_NUMBER = re.compile(rb"\d{19}")  # 2**63 has 19 digits: orjson makes a float of what exceeds 64 bits


def write_json(payload: Any) -> bytes:
    """Write plain JSON values compactly as UTF-8, NaN and infinities as null, through orjson when it can.

    The value `json.dumps(payload, separators=(",", ":"))` writes, but for two spellings: text
    outside ASCII is written as itself (UTF-8) rather than as \\u escapes, and a float in its
    shortest form (1e-7 for 1e-07); NaN and infinities, which JSON cannot hold, become null.
    Anything orjson writes otherwise than json (an integer beyond 64 bits, a datetime, a subclass
    of str, int, dict or list, a dataclass) or refuses (a lone surrogate) goes to json.dumps,
    which writes it or raises as it always did (orjson alone also writes a UUID, as its text,
    which json refuses; the router's answers and requests hold none). On the answer's path of
    every request (the upstream's request, the client's answer): json.dumps spent ~15 us on a
    one-row V2 request warm, orjson ~1; on the path, after the thread idled for the model, the
    request's encoding step took 45.5 us with json and 21 with orjson, the answer's 17.8 and 4.3
    (BENCHMARKS.md, "Sixteenth session"; tests/unit/test_parse_json.py checks the two agree).
    """
    try:
        return orjson.dumps(payload, option=_ORJSON_AS_JSON)
    except orjson.JSONEncodeError:
        pass
    try:
        return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:  # NaN or infinity: JSON has null for them
        return json.dumps(_nan_to_null(payload), separators=(",", ":")).encode()


# what orjson writes otherwise than json.dumps, it refuses instead (write_json then asks json)
_ORJSON_AS_JSON = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _nan_to_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, list):
        return [_nan_to_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    return value
