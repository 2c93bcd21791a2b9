"""skops trusts exactly the same types whether it scans at import or takes the stored lists (issue 19).

storage.skops_trust hands skops its default trust lists from storage/skops_trusted_types.json instead
of letting it import every scikit-learn module to compute them (bench/cli_speed.py). These tests hold
that shortcut to skops' own answer: the stored lists equal the ones skops computes in a fresh
interpreter, the lists skops' loaders use are the same either way, and a file made for other versions
is ignored. The hostile corpus (tests/reliability/test_artifact_trust.py) goes through the shortcut.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from storage import skops_trust

# skops imported normally (its own scan), or through import_skops; prints the lists its loaders use
LISTS_USED = """
import json, sys
if sys.argv[1] == "shortcut":
    from storage.skops_trust import import_skops
    import_skops()
else:
    import skops.io
from skops.io import _general, _numpy, _trusted_types
names = {n: list(v) for n, v in vars(_trusted_types).items() if n.isupper() and n[0] != "_"}
names = {n: v if n.endswith("_NAMES") else [t.__name__ for t in v] for n, v in names.items()}
used = {n: list(getattr(m, n)) for m in (_general, _numpy) for n in vars(m) if n.endswith("TYPE_NAMES")}
print(json.dumps({"module": names, "used": used, "pytest": "pytest" in sys.modules}))
"""


def lists(how: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", LISTS_USED, how], capture_output=True, text=True, check=True, timeout=300
    )
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_stored_lists_were_made_for_the_pinned_libraries() -> None:
    stored, here = json.loads(skops_trust.DATA.read_text())["environment"], skops_trust.environment()
    if {k: stored[k] for k in ("python", "platform")} != {k: here[k] for k in ("python", "platform")}:
        pytest.skip(f"lists made on {stored['platform']}, Python {stored['python']}: skops scans itself here")
    assert stored == here, (
        "skops, scikit-learn, SciPy or NumPy changed: run `python -m storage.skops_trust --write` "
        "in a fresh interpreter (on Linux x86-64, Python 3.11, as CI) and commit storage/skops_trusted_types.json"
    )


def test_skops_trusts_the_same_types_with_and_without_its_import_time_scan() -> None:
    scanned, shortcut = lists("scan"), lists("shortcut")
    assert shortcut["module"] == scanned["module"]
    assert shortcut["used"] == scanned["used"]
    stored = json.loads(skops_trust.DATA.read_text())
    if stored["environment"] == skops_trust.environment():  # else the shortcut was not taken: equal anyway
        names = {n: v for n, v in scanned["module"].items() if n.endswith("_NAMES")}  # type: ignore[union-attr]
        assert stored["names"] == names
        assert not shortcut["pytest"]  # the scan (all_estimators imports pytest) did not run


def test_lists_made_elsewhere_are_ignored_and_skops_scans_itself() -> None:
    stored = json.loads(skops_trust.DATA.read_text())
    here = skops_trust.environment()
    assert skops_trust.pinned_module(stored, here) is not None
    for key in here:
        assert skops_trust.pinned_module(stored, {**here, key: "0.0"}) is None, key
    assert skops_trust.pinned_module({}, here) is None
