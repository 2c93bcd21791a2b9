"""The control plane's one JSON encoding: what the admin API, reports, events and the CLI write.

    plain(value)   -> the same data made of JSON types: NaN and infinities become null, numpy scalars
                      and arrays Python numbers and lists, datetimes ISO 8601 (UTC kept as given),
                      dates ISO, paths strings, tuples lists, mapping keys strings
    dumps(value)   -> JSON text of plain(value) (compact; ``indent=`` for people)

The data plane (router/) and storage keep their own encoders: they may not import controller/.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import PurePath
from typing import Any

__all__ = ["dumps", "finite", "plain"]


def finite(value: Any) -> float | None:
    """Return a number as a finite float, or None for None, NaN, infinities and non-numbers."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def plain(value: Any) -> Any:
    """Return ``value`` made only of JSON types (see the module docstring)."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):  # numpy's float64 too: made a plain float
        number = float(value)
        return number if math.isfinite(number) else None
    # A numpy value means numpy is loaded: never import it here (`mlcanary rollout status` needs none).
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(value, np.floating):
            number = float(value)
            return number if math.isfinite(number) else None
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.ndarray):
            return [plain(v) for v in value.tolist()]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Return ``value`` as JSON text (NaN -> null, numpy, datetimes); TypeError for anything else."""
    separators = None if indent is not None else (",", ":")
    return json.dumps(plain(value), allow_nan=False, indent=indent, separators=separators)
