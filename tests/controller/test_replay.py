"""`mlcanary replay`: stored raw inputs or a file, scored offline through registered versions, paired."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlpipes
import pandas as pd
import pytest
from click.testing import CliRunner

from controller.cli.main import cli
from storage import Database, Store
from storage.entities import PairRecord


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Any:
    db = Database(sqlite_url)
    yield Store(db)
    db.dispose()


def run(sqlite_url: str, tmp_path: Path, *args: str) -> Any:
    runner = CliRunner()
    return runner.invoke(
        cli,
        ["--database-url", sqlite_url, "--data-dir", str(tmp_path / "data"), "replay", *args],
        catch_exceptions=False,
    )


def summary_of(output: str) -> dict[str, Any]:
    start = output.index("{")
    return json.loads(output[start : output.rindex("}") + 1])


def test_replays_a_file_through_two_versions_and_writes_the_paired_comparison(
    sqlite_url: str, sqlite_store: Store, tmp_path: Path
) -> None:
    mlpipes.register(sqlite_store, tmp_path, version="1", seed=0)
    mlpipes.register(sqlite_store, tmp_path, version="2", model=mlpipes.classifier(seed=3, c=0.05))
    frame, target = mlpipes.churn_frame(120, seed=11)
    source = tmp_path / "yesterday.csv"
    frame.assign(churn=target).to_csv(source, index=False)  # the label column is not an input: dropped
    out = tmp_path / "replay.csv"

    result = run(
        sqlite_url,
        tmp_path,
        "--version",
        "churn:2",
        "--against",
        "churn:1",
        "--file",
        str(source),
        "--output",
        str(out),
        "--batch-size",
        "50",
        "--json",
    )

    assert result.exit_code == 0, result.output
    summary = summary_of(result.output)
    assert summary["rows"] == summary["compared"] == 120
    assert summary["errors"] == {"version": 0, "against": 0}
    assert 0.5 < summary["agreement"] < 1.0 and summary["mean_abs_diff"] > 0
    written = pd.read_csv(out)
    assert len(written) == 120 and written["source"].iloc[0] == "yesterday.csv:1"
    assert written["agree"].mean() == pytest.approx(summary["agreement"])
    assert written["abs_diff"].mean() == pytest.approx(summary["mean_abs_diff"])
    assert set(written["version_output"]) <= {0, 1}


def test_replays_stored_raw_inputs_against_the_champion_with_since_and_limit_and_isolates_bad_rows(
    sqlite_url: str, sqlite_store: Store, tmp_path: Path
) -> None:
    champion = mlpipes.register(sqlite_store, tmp_path, version="1")
    mlpipes.register(sqlite_store, tmp_path, version="2", model=mlpipes.classifier(seed=4))
    deployment = mlpipes.deploy(sqlite_store, "churn", champion)
    frame, _ = mlpipes.churn_frame(60, seed=12)
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in frame.astype(object).to_dict("records")
    ]
    rows[45]["age"] = "not a number"  # what a stored raw input cannot be decoded as
    start = datetime(2026, 11, 1, tzinfo=UTC)
    sqlite_store.pairs.insert_many([
        PairRecord(request_id=f"q{i}", row_index=0, deployment_id=deployment.id, rollout_id=None, step=None,
                   received_at=start + timedelta(minutes=i), routing_key_hash=1, served_arm="champion",
                   champion_version_id=champion.id, challenger_version_id=None, raw_input=row)
        for i, row in enumerate(rows)
    ])  # fmt: skip
    out = tmp_path / "replay.csv"

    result = run(
        sqlite_url,
        tmp_path,
        "--version",
        "churn:2",
        "--deployment",
        "churn",
        "--since",
        "2026-11-01T00:20:00Z",
        "--limit",
        "30",
        "--output",
        str(out),
        "--batch-size",
        "8",
        "--json",
    )

    assert result.exit_code == 0, result.output
    summary = summary_of(result.output)
    assert summary["against"] == "churn:1"  # the deployment's champion by default
    assert summary["rows"] == 30 and summary["compared"] == 29
    assert summary["errors"] == {"version": 1, "against": 1}
    written = pd.read_csv(out, keep_default_na=False)
    assert list(written["source"]) == [f"q{i}" for i in range(20, 50)]
    bad = written[written["source"] == "q45"].iloc[0]
    assert "age" in bad["version_error"] and "age" in bad["against_error"]
    assert (written[written["source"] != "q45"]["version_error"] == "").all()


def test_a_version_replayed_against_itself_agrees_everywhere(
    sqlite_url: str, sqlite_store: Store, tmp_path: Path
) -> None:
    mlpipes.register(sqlite_store, tmp_path, version="1", kind="regression")
    frame, _ = mlpipes.churn_frame(40, seed=2)
    source = tmp_path / "rows.parquet"
    frame.to_parquet(source)
    out = tmp_path / "same.csv"
    result = run(
        sqlite_url,
        tmp_path,
        "--version",
        "churn:1",
        "--against",
        "churn:1",
        "--file",
        str(source),
        "--output",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert (
        "replayed 40 rows through churn:1 against churn:1: agreement 100.00%, mean |diff| 0" in result.output
    )


def test_operator_mistakes_give_one_line_and_a_non_zero_exit(
    sqlite_url: str, sqlite_store: Store, tmp_path: Path
) -> None:
    mlpipes.register(sqlite_store, tmp_path, version="1")
    both = run(
        sqlite_url,
        tmp_path,
        "--version",
        "churn:1",
        "--deployment",
        "churn",
        "--file",
        "x.csv",
        "--output",
        str(tmp_path / "o.csv"),
    )
    assert both.exit_code != 0 and "exactly one of --deployment" in both.output
    unknown = run(
        sqlite_url, tmp_path, "--version", "churn:9", "--file", "x.csv", "--output", str(tmp_path / "o.csv")
    )
    assert unknown.exit_code == 1 and "churn:9" in unknown.output and "Traceback" not in unknown.output
