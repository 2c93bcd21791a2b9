"""No code runs from an artifact (issue 17 item 1, issue 19 item 2).

A corpus of hostile skops files (exec, eval, getattr chains, os/subprocess/importlib, operator tricks,
functools.partial, numpy.load with pickles, pandas.eval) is refused at registration through the CLI
and the admin API and at load in the router, even when the stored version claims to trust the name.
A custom transformer registers and serves only when its function is trusted by exact name.
"""

from __future__ import annotations

import importlib
import io
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import adminapp
import hostile
import mlpipes
import pytest
from click.testing import CliRunner

from controller.cli.main import cli
from router.backends import MissingBackend, create_backend
from router.settings import RouterSettings
from storage import Database, NotFound, Store
from storage.artifacts import ArtifactError, check_trusted_names, sha256_of, store_artifact
from storage.entities import NewPipelineVersion

RATIOS = '''
import os

import numpy as np


def add_ratios(frame):
    """Add charges per month of tenure: a feature engineered outside scikit-learn."""
    out = frame.copy()
    out["charge_ratio"] = out["monthly_charges"] / (out["tenure_months"] + 1.0)
    return out


system = os.system
'''


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return hostile.save_corpus(tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def ratios(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A user's module on the path (a unique name per test) holding a custom transformer function."""
    name = f"userfeatures_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "pythonpath"
    folder.mkdir()
    (folder / f"{name}.py").write_text(RATIOS)
    monkeypatch.syspath_prepend(str(folder))
    return importlib.import_module(name)


def _custom_pipeline(module: ModuleType) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    frame, target = mlpipes.churn_frame(300)
    numeric = ["age", "tenure_months", "monthly_charges", "charge_ratio"]
    prepare = ColumnTransformer([("numeric", make_pipeline(SimpleImputer(), StandardScaler()), numeric)])
    model = Pipeline(
        [
            ("ratios", FunctionTransformer(module.add_ratios)),
            ("prepare", prepare),
            ("model", LogisticRegression()),
        ]
    )
    return model.fit(frame, target)


def _cli(url: str, tmp_path: Path, *args: Any) -> Any:
    return CliRunner().invoke(
        cli,
        ["--database-url", url, "--data-dir", str(tmp_path / "var"), *[str(a) for a in args]],
        catch_exceptions=False,
    )


def _sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.csv"
    frame, target = mlpipes.churn_frame(40, seed=3)
    frame.to_csv(path, index=False)
    frame.assign(churn=target).to_csv(tmp_path / "holdout.csv", index=False)
    return path


def test_every_hostile_artifact_is_refused_by_the_cli_and_nothing_is_written(
    database_url: str, corpus: dict[str, Path], tmp_path: Path
) -> None:
    sample = _sample(tmp_path)
    for number, (case, path) in enumerate(corpus.items()):
        result = _cli(
            database_url, tmp_path, "pipelines", "register", "evil", str(number), "--artifact", path,
            "--task", "classification", "--sample", sample, "--golden", sample,
        )  # fmt: skip
        assert result.exit_code != 0, f"{case} was registered: {result.output}"
        assert "not trusted" in result.output, (case, result.output)
        assert len(result.output.strip().splitlines()) == 1, (case, result.output)
    assert Store(Database(database_url)).pipelines.list() == []
    assert not (tmp_path / "var" / "artifacts").exists() or not any(
        (tmp_path / "var" / "artifacts").iterdir()
    )


def test_every_hostile_artifact_is_refused_by_the_admin_api(
    store: Store, corpus: dict[str, Path], tmp_path: Path
) -> None:
    sample = _sample(tmp_path).read_bytes()
    with adminapp.running(store, tmp_path) as app:
        client = app.test_client()
        operator = adminapp.bearer(store, "operator")
        for number, (case, path) in enumerate(corpus.items()):
            form = {
                "name": "evil", "version": str(number), "task": "classification",
                "artifact": (io.BytesIO(path.read_bytes()), "model.skops"),
                "golden": (io.BytesIO(sample), "golden.csv"),
            }  # fmt: skip
            response = client.post("/api/v1/pipelines", data=form, headers=operator)
            assert response.status_code == 400, (case, response.get_data(as_text=True))
            assert response.get_json()["error"]["code"] == "invalid_registration"
            assert "not trusted" in response.get_json()["error"]["message"], case
            # asking the server to trust the dangerous name is refused too
            name = (sorted(_untrusted(path)) or ["builtins.exec"])[0]
            form["artifact"] = (io.BytesIO(path.read_bytes()), "model.skops")
            form["golden"] = (io.BytesIO(sample), "golden.csv")
            form["trust"] = name
            response = client.post("/api/v1/pipelines", data=form, headers=operator)
            assert response.status_code == 400, (case, name, response.get_data(as_text=True))
    assert [v for v in store.pipelines.list() if v.name == "evil"] == []


def _untrusted(path: Path) -> list[str]:
    import skops.io as sio

    return [t for t in sio.get_untrusted_types(file=path) if t != "numpy.dtype"]


def test_a_router_refuses_to_load_a_hostile_artifact_even_when_its_row_claims_to_trust_it(
    store: Store, corpus: dict[str, Path], tmp_path: Path
) -> None:
    frame, _ = mlpipes.churn_frame(5)
    for number, (case, path) in enumerate(corpus.items()):
        stored, digest = store_artifact(path, tmp_path / "artifacts")
        for claimed in ((), tuple(_untrusted(path))):  # a row written by old code, or edited by hand
            version = store.pipelines.add(
                NewPipelineVersion(
                    name="evil", version=f"{number}-{len(claimed)}", kind="artifact", task="classification",
                    input_schema=mlpipes.input_schema(frame), classes=(0, 1), artifact_path=str(stored),
                    artifact_format="skops", sha256=digest, trusted_types=claimed,
                )
            )  # fmt: skip
            backend = create_backend(version, RouterSettings(spool_dir=tmp_path / "spool"))
            assert isinstance(backend, MissingBackend), f"{case} loaded in the router"
            assert "trust" in backend.reason, (case, backend.reason)


def test_a_custom_transformer_registers_and_serves_only_when_its_function_is_trusted(
    database_url: str, ratios: ModuleType, tmp_path: Path
) -> None:
    artifact = mlpipes.save(_custom_pipeline(ratios), tmp_path / "sources", "custom-1")
    sample = _sample(tmp_path)
    args = ["pipelines", "register", "custom", "1", "--artifact", artifact, "--task", "classification",
            "--holdout", tmp_path / "holdout.csv", "--target", "churn"]  # fmt: skip
    refused = _cli(database_url, tmp_path, *args)
    assert refused.exit_code != 0 and f"{ratios.__name__}.add_ratios" in refused.output, refused.output
    assert "--trust" in refused.output
    store = Store(Database(database_url))
    with pytest.raises(NotFound):
        store.pipelines.get_by_ref("custom:1")

    accepted = _cli(database_url, tmp_path, *args, "--trust", f"{ratios.__name__}.add_ratios")
    assert accepted.exit_code == 0, accepted.output
    version = store.pipelines.get_by_ref("custom:1")
    assert version.trusted_types == (f"{ratios.__name__}.add_ratios",)

    backend = create_backend(version, RouterSettings(spool_dir=tmp_path / "spool"))
    assert not isinstance(backend, MissingBackend), getattr(backend, "reason", "")
    frame, _ = mlpipes.churn_frame(30, seed=9)
    model = _custom_pipeline(ratios)
    expected = model.predict_proba(frame)[:, 1]
    assert backend.predict(frame).scores == pytest.approx(expected.tolist())
    assert sample.is_file()


def test_trusting_refuses_prefixes_dangerous_names_and_modules_that_do_not_import(
    ratios: ModuleType,
) -> None:
    refused = [
        "builtins", "builtins.", "builtins.*", "builtins.exec", "builtins.getattr", "os.system",
        "posix.system", "subprocess.Popen", "importlib.import_module", "operator.attrgetter",
        "functools.partial", "numpy.load", "pandas.eval", "sklearn", "no_such_module_xyz.thing",
        f"{ratios.__name__}.missing", f"{ratios.__name__}.system", "a b.c", "mod.__class__",
    ]  # fmt: skip
    for name in refused:
        with pytest.raises(ArtifactError):
            check_trusted_names([name])
    assert check_trusted_names([f"{ratios.__name__}.add_ratios"]) == (f"{ratios.__name__}.add_ratios",)


def test_a_plain_pipeline_needs_no_trust(tmp_path: Path) -> None:
    from storage.artifacts import load_artifact

    for model in (mlpipes.classifier(), mlpipes.regressor(boosted=True)):
        path = mlpipes.save(model, tmp_path, f"plain-{id(model)}")
        assert hasattr(load_artifact(path, sha256=sha256_of(path), fmt="skops"), "predict")


def test_a_deployment_cannot_be_created_on_a_version_no_router_can_load(
    store: Store, corpus: dict[str, Path], tmp_path: Path
) -> None:
    frame, _ = mlpipes.churn_frame(5)
    stored, digest = store_artifact(corpus["builtins.exec"], tmp_path / "artifacts")
    legacy = store.pipelines.add(  # registered by a version of mlcanary that trusted builtins.*
        NewPipelineVersion(
            name="evil", version="1", kind="artifact", task="classification",
            input_schema=mlpipes.input_schema(frame), classes=(0, 1), artifact_path=str(stored),
            artifact_format="skops", sha256=digest,
        )
    )  # fmt: skip
    result = _cli(store.db.url, tmp_path, "deployments", "create", "churn", "--champion", legacy.ref)
    assert result.exit_code != 0 and "no router could serve it" in result.output, result.output
    with adminapp.running(store, tmp_path) as app:
        response = app.test_client().post(
            "/api/v1/deployments",
            json={"name": "churn", "champion": legacy.ref},
            headers=adminapp.bearer(store, "operator"),
        )
    assert response.status_code == 400 and "not trusted" in response.get_json()["error"]["message"]
    assert store.deployments.list() == []
