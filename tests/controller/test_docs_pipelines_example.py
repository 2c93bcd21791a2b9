"""docs/pipelines.md's examples, run as written in a fresh folder outside the repository (issue 19).

The Python blocks run in one interpreter, as cells of one notebook, after a first cell that stands for
the reader's own data (``train_X``, ``train_y``, the holdout and golden files the commands name); the
custom transformer's module is written to ``features.py`` as its block says; the shell blocks run as
written, except the PYTHONPATH folder (the example's /srv/mlcanary/features is this test's folder).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NOTEBOOK_DATA = """
import numpy as np, pandas as pd
rng = np.random.default_rng(7)
n = 1500
X = pd.DataFrame({
    "age": rng.integers(18, 80, n).astype(float), "tenure_months": rng.integers(0, 72, n).astype(float),
    "monthly_charges": rng.uniform(10, 120, n).round(2), "plan": rng.choice(["basic", "plus", "pro"], n),
    "region": rng.choice(["north", "south"], n),
})
X.loc[rng.random(n) < 0.05, "age"] = np.nan
y = ((X.monthly_charges / (X.tenure_months + 1) > 3) ^ (rng.random(n) < 0.1)).astype(int).rename("churned")
train_X, train_y = X[:1000], y[:1000]
X[1000:].assign(churned=y[1000:]).to_csv("holdout.csv", index=False)
X[1000:1100].to_csv("golden.csv", index=False)
"""


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "docs" / "pipelines.md").read_text(), re.S)


def test_the_pipeline_and_custom_transformer_examples_register_and_deploy_as_written(tmp_path: Path) -> None:
    python = blocks("python")
    first, save, features, custom = python[0], python[1], python[2], python[3]
    assert features.startswith("# features.py") and "FunctionTransformer(features.add_ratios)" in custom
    (tmp_path / "features.py").write_text(features)
    notebook = "\n".join([NOTEBOOK_DATA, first, save, custom])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLCANARY_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", MLCANARY_DATA_DIR=str(tmp_path / "var"))
    env.pop("PYTHONPATH", None)

    def run(command: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            command, cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    run([sys.executable, "-c", notebook], PYTHONPATH=str(tmp_path))  # `import features` as in a notebook
    assert {"churn-2.skops", "churn-3.skops"} <= {p.name for p in tmp_path.iterdir()}
    run(["mlcanary", "db", "upgrade"])
    shell = blocks("sh")
    register_custom = next(b for b in shell if "--trust features.add_ratios" in b)
    register_plain = next(b for b in shell if "register churn 2" in b)
    run(["bash", "-ec", register_custom.replace("/srv/mlcanary/features", str(tmp_path))])
    run(["bash", "-ec", register_plain])
    shown = json.loads(run(["mlcanary", "pipelines", "show", "churn:3"]).stdout)
    assert shown["trusted_types"] == ["features.add_ratios"]
    assert shown["offline_metrics"]["holdout_size"] == 500
    # deployments create loads the champion once: with the module on PYTHONPATH it serves ...
    run(["mlcanary", "deployments", "create", "custom", "--champion", "churn:3"], PYTHONPATH=str(tmp_path))
    # ... and without it, it is refused before a deployment exists that could only answer 503
    refused = subprocess.run(
        ["mlcanary", "deployments", "create", "nofeatures", "--champion", "churn:3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode == 1 and "features" in refused.stderr
    assert "created deployment churn" not in refused.stdout
