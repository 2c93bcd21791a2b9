"""Import skops without its import-time scan, trusting exactly the types skops itself would trust.

skops computes its default trust lists when ``skops.io`` is first imported: ``all_estimators()``
imports every public scikit-learn module (and pytest), and the name of each SciPy ufunc is found by
searching every loaded module for it. That is ~0.7 s of a ``pipelines register`` (bench/cli_speed.py)
spent recomputing lists that only the installed versions decide. skops_trusted_types.json holds
them as skops computed them, with the versions and platform they were computed on (written by
``python -m storage.skops_trust --write``; tests/reliability/test_skops_trust.py checks that they
equal skops' own lists). ``import_skops()`` hands them to skops only when every one of those versions
matches this environment; otherwise skops computes its lists itself, as it always did.

Only skops' list of trusted type *names* is taken from the file, never a decision about an artifact:
every load still asks skops which types the file names and refuses the ones not trusted.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

DATA = Path(__file__).with_name("skops_trusted_types.json")
TRUSTED_TYPES_MODULE = "skops.io._trusted_types"
PACKAGES = ("skops", "scikit-learn", "scipy", "numpy")


def environment() -> dict[str, str]:
    """Return what skops' default lists depend on: the four libraries, Python and the platform."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    found["python"] = ".".join(platform.python_version_tuple()[:2])
    found["platform"] = f"{sys.platform}-{platform.machine()}"
    return found


def pinned_module(data: dict[str, Any], current: dict[str, str]) -> ModuleType | None:
    """Build skops' trusted-types module from the stored lists, or None if they were made elsewhere."""
    if data.get("environment") != current:
        return None
    module = ModuleType(TRUSTED_TYPES_MODULE, "skops' default trusted types (storage/skops_trust.py)")
    module.__package__ = "skops.io"
    # skops' own definitions of the two built-in lists; the names come from the file
    module.PRIMITIVES_TYPES = [int, float, str, bool]  # type: ignore[attr-defined]
    module.CONTAINER_TYPES = [list, set, map, tuple]  # type: ignore[attr-defined]
    for name, names in data["names"].items():
        setattr(module, name, list(names))
    return module


def import_skops() -> ModuleType:
    """Import and return ``skops.io``, with its default trust lists from DATA when they apply here."""
    if TRUSTED_TYPES_MODULE not in sys.modules:
        try:
            data = json.loads(DATA.read_text())
        except (OSError, ValueError):
            data = {}
        module = pinned_module(data, environment())
        if module is not None:
            sys.modules[TRUSTED_TYPES_MODULE] = module
            try:
                import skops.io
            except BaseException:
                sys.modules.pop(TRUSTED_TYPES_MODULE, None)
                raise
            skops.io._trusted_types = module
    import skops.io

    return skops.io


def computed_by_skops() -> dict[str, list[str]]:
    """Return skops' default trusted-type name lists as skops computes them (imports skops normally)."""
    from skops.io import _trusted_types

    return {
        name: list(value)
        for name, value in sorted(vars(_trusted_types).items())
        if name.isupper() and name.endswith("_NAMES")
    }


def main(argv: list[str]) -> None:
    """``--write``: store skops' own lists and this environment in DATA; else print them."""
    if TRUSTED_TYPES_MODULE in sys.modules:
        raise SystemExit("skops is already imported: run in a fresh interpreter")
    text = json.dumps({"environment": environment(), "names": computed_by_skops()}, indent=1) + "\n"
    if argv == ["--write"]:
        DATA.write_text(text)
        print(f"wrote {DATA}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main(sys.argv[1:])
