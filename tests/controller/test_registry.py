"""Pipeline registry through the CLI: what is registered, and every refusal writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import joblib
import mlpipes
import pytest
from click.testing import CliRunner, Result

from controller.cli.main import cli
from storage import Database, Store


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A fitted classifier saved as skops and as joblib, a holdout, a sample and golden rows."""
    model = mlpipes.classifier()
    frame, target = mlpipes.churn_frame(300, seed=7)
    holdout = frame.assign(churn=target)
    paths = {
        "skops": mlpipes.save(model, tmp_path, "churn-1"),
        "joblib": tmp_path / "churn-1.joblib",
        "holdout": tmp_path / "holdout.csv",
        "golden": tmp_path / "golden.csv",
    }
    joblib.dump(model, paths["joblib"])
    holdout.to_csv(paths["holdout"], index=False)
    frame.head(20).to_csv(paths["golden"], index=False)
    return paths


def invoke(runner: CliRunner, url: str, *args: str) -> Result:
    return runner.invoke(cli, ["--database-url", url, *[str(a) for a in args]], catch_exceptions=False)


def register_args(files: dict[str, Path], version: str = "1") -> list[str]:
    return [
        "pipelines", "register", "churn", version, "--artifact", str(files["skops"]), "--task", "classification",
        "--holdout", str(files["holdout"]), "--target", "churn", "--golden", str(files["golden"]),
    ]  # fmt: skip


def test_register_records_schema_metrics_golden_set_and_environment(
    runner: CliRunner, database_url: str, files: dict[str, Path], tmp_path: Path
) -> None:
    result = invoke(runner, database_url, "--data-dir", tmp_path / "var", *register_args(files))
    assert result.exit_code == 0, result.output
    assert "registered churn:1" in result.output
    version = Store(Database(database_url)).pipelines.get_by_ref("churn:1")
    assert [c.name for c in version.input_schema] == list(mlpipes.COLUMNS[:3]) + [
        "support_calls", "autopay", "plan", "region",
    ]  # fmt: skip
    assert {c.name: c.dtype for c in version.input_schema}["plan"] == "str"
    assert version.classes == (0, 1)
    assert 0.5 < version.offline_metrics["accuracy"] <= 1.0
    assert (
        version.offline_metrics["holdout_size"] == 300
        and len(version.offline_metrics["holdout_fingerprint"]) == 64
    )
    assert {"accuracy", "f1", "roc_auc"} <= set(version.offline_metrics)
    assert len(version.golden_set["outputs"]["prediction"]) == 20  # type: ignore[index]
    assert version.environment["scikit-learn"] and version.profile["rows"] == 300  # type: ignore[index]
    assert Path(version.artifact_path or "").is_file() and version.artifact_format == "skops"


def test_listing_shows_registered_versions(
    runner: CliRunner, sqlite_url: str, files: dict[str, Path]
) -> None:
    invoke(runner, sqlite_url, *register_args(files))
    listed = invoke(runner, sqlite_url, "pipelines", "list", "--json")
    assert [v["ref"] for v in json.loads(listed.output)] == ["churn:1"]
    shown = json.loads(invoke(runner, sqlite_url, "pipelines", "show", "churn:1").output)
    assert shown["task"] == "classification" and shown["golden_set_rows"] == 20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, f: a[:4] + ["--artifact", str(f["skops"].with_name("nope.skops"))] + a[6:], "not found"),
        (lambda a, f: [x if x != "classification" else "ranking" for x in a], "unknown task 'ranking'"),
        (lambda a, f: [x if x != str(f["skops"]) else str(f["joblib"]) for x in a], "--trust-pickle"),
        (lambda a, f: [x if x != "churn" or i != 2 else "a/b" for i, x in enumerate(a)], "bad name"),
        (lambda a, f: a + ["--schema", "age:float"], "missing from the schema"),
    ],
    ids=["missing-file", "unknown-task", "pickle-without-opt-in", "path-in-name", "schema-mismatch"],
)
def test_a_bad_registration_gives_one_line_and_writes_nothing(
    runner: CliRunner,
    sqlite_url: str,
    files: dict[str, Path],
    change,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    result = invoke(runner, sqlite_url, *change(register_args(files), files))
    assert result.exit_code != 0
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert Store(Database(sqlite_url)).pipelines.list() == []


def test_duplicate_registration_is_refused(
    runner: CliRunner, database_url: str, files: dict[str, Path]
) -> None:
    assert invoke(runner, database_url, *register_args(files)).exit_code == 0
    again = invoke(runner, database_url, *register_args(files))
    assert again.exit_code == 1 and "churn:1 is already registered" in again.output
    assert len(Store(Database(database_url)).pipelines.list()) == 1


def test_pickle_registers_only_with_the_explicit_opt_in(
    runner: CliRunner, sqlite_url: str, files: dict[str, Path]
) -> None:
    args = [x if x != str(files["skops"]) else str(files["joblib"]) for x in register_args(files)]
    result = invoke(runner, sqlite_url, *args, "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert Store(Database(sqlite_url)).pipelines.get_by_ref("churn:1").artifact_format == "joblib"


def test_not_a_fitted_estimator_is_refused(runner: CliRunner, sqlite_url: str, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    path = mlpipes.save(LogisticRegression(), tmp_path, "unfitted")
    result = invoke(runner, sqlite_url, "pipelines", "register", "x", "1", "--artifact", path, "--task",
                    "classification", "--schema", "a:float")  # fmt: skip
    assert result.exit_code == 1 and "not fitted" in result.output


def test_a_tampered_artifact_is_refused_at_load(
    runner: CliRunner, sqlite_url: str, files: dict[str, Path]
) -> None:
    from storage.artifacts import ArtifactError, load_artifact

    invoke(runner, sqlite_url, *register_args(files))
    version = Store(Database(sqlite_url)).pipelines.get_by_ref("churn:1")
    path = Path(version.artifact_path or "")
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ArtifactError, match="changed after registration"):
        load_artifact(path, sha256=version.sha256 or "", fmt="skops")


def test_upstream_version_needs_a_schema_and_a_known_protocol(runner: CliRunner, sqlite_url: str) -> None:
    base = [
        "pipelines",
        "register",
        "remote",
        "1",
        "--upstream",
        "http://127.0.0.1:9/v2",
        "--task",
        "regression",
    ]
    assert "needs an input schema" in invoke(runner, sqlite_url, *base).output
    ok = invoke(runner, sqlite_url, *base, "--schema", "a:float,b:str")
    assert ok.exit_code == 0, ok.output
    assert Store(Database(sqlite_url)).pipelines.get_by_ref("remote:1").upstream_protocol == "v2"


def test_a_registered_version_survives_a_restart(files: dict[str, Path], tmp_path: Path) -> None:
    """Register in one process and read it back in another, on the embedded default database."""
    data_dir = tmp_path / "var"
    command = [sys.executable, "-m", "controller", "--data-dir", str(data_dir)]
    subprocess.run([*command, "db", "upgrade"], check=True, capture_output=True, timeout=120)
    subprocess.run([*command, *register_args(files)], check=True, capture_output=True, timeout=120)
    listed = subprocess.run(
        [*command, "pipelines", "list"], check=True, capture_output=True, text=True, timeout=120
    )
    assert "churn:1" in listed.stdout and (data_dir / "mlcanary.db").is_file()


def test_help_and_unknown_settings(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    output = runner.invoke(cli, ["--help"]).output
    assert all(
        command in output for command in ("db", "pipelines", "deployments", "serve", "router", "tokens")
    )
    monkeypatch.setenv("MLCANARY_DATABSE_URL", "sqlite://")
    result = runner.invoke(cli, ["pipelines", "list"])
    assert result.exit_code == 1 and "unknown setting MLCANARY_DATABSE_URL" in result.output


def test_db_upgrade_builds_a_new_database_and_serving_refuses_an_old_one(
    runner: CliRunner, tmp_path: Path, postgres_url: str
) -> None:
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    urls = [f"sqlite:///{tmp_path / 'fresh.db'}"]
    name = f"mlcanary_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    urls.append(make_url(postgres_url).set(database=name).render_as_string(hide_password=False))
    try:
        for url in urls:
            refused = invoke(runner, url, "pipelines", "list")
            assert refused.exit_code == 1 and "run: mlcanary" in refused.output
            assert "db upgrade" in refused.output
            upgraded = invoke(runner, url, "db", "upgrade")
            assert upgraded.exit_code == 0 and "schema empty -> " in upgraded.output
            assert invoke(runner, url, "db", "check").exit_code == 0
            assert (
                invoke(runner, url, "pipelines", "list").output.strip() == "no pipeline versions registered"
            )
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_deployments_show_names_the_champion_and_refuses_an_unknown_deployment(
    runner: CliRunner, sqlite_url: str, files: dict[str, Path]
) -> None:
    invoke(runner, sqlite_url, *register_args(files))
    assert (
        invoke(runner, sqlite_url, "deployments", "create", "churn", "--champion", "churn:1").exit_code == 0
    )
    shown = json.loads(invoke(runner, sqlite_url, "deployments", "show", "churn", "--json").output)
    assert shown["name"] == "churn" and shown["champion"] == "churn:1" and shown["rollout"] is None
    missing = invoke(runner, sqlite_url, "deployments", "show", "nope")
    assert missing.exit_code == 1 and "no deployment 'nope'" in missing.output


def test_offline_metrics_cover_every_quality_gate_with_the_online_definitions() -> None:
    """The holdout metrics equal what controller.core.metrics computes online from the same rows."""
    import numpy as np

    from controller.core import metrics as quality
    from controller.registry import offline_metrics

    model = mlpipes.classifier(seed=0)
    frame, target = mlpipes.churn_frame(500, seed=41)
    offline = offline_metrics(model, "classification", frame, target)
    predicted = model.predict(frame)
    conf = quality.confusion_from_rows(target, predicted, predicted, names=(0, 1))
    matrix = conf.arm_matrices()[0]
    assert offline["balanced_accuracy"] == quality.classification_value(matrix, "balanced_accuracy")
    assert abs(offline["macro_f1"] - quality.classification_value(matrix, "macro_f1")) < 1e-12
    assert abs(offline["recall"]["1"] - quality.classification_value(matrix, "recall", cls=1)) < 1e-12
    assert abs(offline["precision"]["0"] - quality.classification_value(matrix, "precision", cls=0)) < 1e-12
    score = model.predict_proba(frame)[:, 1]
    y = np.asarray(target) == 1
    p_true = np.clip(np.where(y, score, 1 - score), quality.EPS, 1 - quality.EPS)
    assert abs(offline["log_loss"] - float(np.mean(-np.log(p_true)))) < 1e-9
    assert abs(offline["brier"] - float(np.mean((score - y) ** 2))) < 1e-12
    assert abs(offline["roc_auc"] - quality.roc_auc(y, score)) < 1e-12

    regressor = mlpipes.regressor(seed=0)
    value = frame["tenure_months"] * 1.5
    out = offline_metrics(regressor, "regression", frame, value)
    errors = regressor.predict(frame) - value.to_numpy()
    assert set(out["pinball"]) == {"0.1", "0.5", "0.9"}
    assert abs(out["pinball"]["0.5"] - float(np.mean(np.abs(errors))) / 2) < 1e-9


def test_deployment_batching_is_set_at_creation_and_changed_by_configure(
    runner: CliRunner, sqlite_url: str, files: dict[str, Path]
) -> None:
    from storage import Database, Store

    invoke(runner, sqlite_url, *register_args(files))
    created = invoke(
        runner,
        sqlite_url,
        "deployments",
        "create",
        "churn",
        "--champion",
        "churn:1",
        "--max-batch-rows",
        "16",
    )
    assert created.exit_code == 0, created.output
    store = Store(Database(sqlite_url))
    assert store.deployments.get("churn").batching.max_batch_rows == 16
    off = invoke(runner, sqlite_url, "deployments", "configure", "churn", "--no-batching")
    assert off.exit_code == 0 and off.stdout.strip() == "deployment churn: batching off"
    assert "mlcanary: database sqlite:" in off.stderr  # a write says where it went, as create does
    on = invoke(
        runner, sqlite_url, "deployments", "configure", "churn", "--batching", "--max-batch-delay-ms", "3"
    )
    assert on.stdout.strip() == "deployment churn: batching on, at most 16 rows and 3 ms"
    config = store.routing.load_table()["churn"].batching
    assert (config.enabled, config.max_batch_delay_ms, config.max_batch_rows) == (True, 3.0, 16)
    assert store.events.list(limit=10)[-1].action == "deployment.configure"
    nothing = invoke(runner, sqlite_url, "deployments", "configure", "churn")
    assert nothing.exit_code != 0 and "nothing to change" in nothing.output
    bad = invoke(runner, sqlite_url, "deployments", "configure", "churn", "--max-batch-rows", "0")
    assert bad.exit_code != 0 and store.deployments.get("churn").batching.max_batch_rows == 16
    unknown = invoke(runner, sqlite_url, "deployments", "configure", "nope", "--no-batching")
    assert unknown.exit_code == 1 and "no deployment 'nope'" in unknown.output
