"""The demo, in its fast mode, shows the three outcomes and leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fast_demo_blocks_the_skewed_rolls_back_the_worse_and_promotes_the_better(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLCANARY_")}
    result = subprocess.run(
        [sys.executable, "-m", "controller", "--data-dir", str(tmp_path / "var"), "demo", "--fast"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    demo = tmp_path / "var" / "demo"
    outcomes = {o["role"]: o for o in json.loads((demo / "summary.json").read_text())}
    assert outcomes["skewed"]["phase"] == "blocked" and "parity" in outcomes["skewed"]["reason"]
    assert outcomes["worse"]["phase"] == "rolled_back" and outcomes["worse"]["labels"] > 0
    assert outcomes["better"]["phase"] == "promoted"
    for role in ("worse", "better"):
        report = Path(outcomes[role]["report"])
        assert report.is_file() and "<svg" in report.read_text()
    group = int((demo / "server.pid").read_text())  # serve, its gunicorn workers and its controller
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
