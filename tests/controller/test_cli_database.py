"""The right database every time: a command says which database it uses, never creates one by accident,
finds the project's mlcanary.toml from any subfolder, and goes through the admin API when given one."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import adminapp
import pytest
from click.testing import CliRunner, Result
from werkzeug.serving import make_server

from controller.cli.main import cli
from storage import Database, Store

UPSTREAM = ["--upstream", "http://127.0.0.1:9/v2", "--task", "regression", "--schema", "a:float,b:str"]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    """Run `mlcanary ARGS` in-process from a folder, with no MLCANARY_* variable of the test's own."""
    for key in [k for k in os.environ if k.startswith("MLCANARY_") and k != "MLCANARY_TEST_PG_URL"]:
        monkeypatch.delenv(key)

    def invoke(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Result:
        monkeypatch.chdir(cwd)
        return CliRunner().invoke(cli, list(args), env=env)

    yield invoke


def test_a_command_refuses_a_missing_database_and_names_the_command_that_creates_it(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    for args in (["pipelines", "list"], ["deployments", "create", "churn", "--champion", "churn:1"],
                 ["tokens", "list"], ["db", "check"], ["pipelines", "register", "r", "1", *UPSTREAM]):  # fmt: skip
        result = run(tmp_path, *args)
        assert result.exit_code == 1, (args, result.output)
        assert f"no database at {tmp_path / 'var' / 'mlcanary.db'}" in result.output
        assert f"run: mlcanary --data-dir {tmp_path / 'var'} db upgrade" in result.output
        assert not (tmp_path / "var" / "mlcanary.db").exists(), args  # nothing created on the way
    created = run(tmp_path, "db", "upgrade")
    assert created.exit_code == 0 and (tmp_path / "var" / "mlcanary.db").is_file()
    assert run(tmp_path, "pipelines", "list").output.strip() == "no pipeline versions registered"


def test_mlcanary_toml_in_a_parent_pins_the_database_and_every_write_names_it(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    project, sub = tmp_path / "project", tmp_path / "project" / "notebooks" / "exp1"
    sub.mkdir(parents=True)
    (project / "mlcanary.toml").write_text('data_dir = "state"\n')
    assert run(project, "db", "upgrade").exit_code == 0
    registered = run(sub, "pipelines", "register", "remote", "1", *UPSTREAM)
    assert registered.exit_code == 0, registered.output
    pinned = project / "state" / "mlcanary.db"
    assert f"database sqlite:///{pinned} (from {project / 'mlcanary.toml'})" in registered.output
    assert Store(Database(f"sqlite:///{pinned}")).pipelines.get_by_ref("remote:1").task == "regression"
    assert not (sub / "var").exists() and not (sub / "state").exists()
    listed = run(sub, "-v", "pipelines", "list")
    assert f"database sqlite:///{pinned}" in listed.output and "remote:1" in listed.output
    # the environment (then the options) still win over the file, and say so
    elsewhere = run(sub, "-v", "pipelines", "list", env={"MLCANARY_DATA_DIR": str(tmp_path / "other")})
    assert elsewhere.exit_code == 1 and "(from MLCANARY_DATA_DIR)" in elsewhere.output


def test_a_typo_in_mlcanary_toml_is_refused_with_the_nearest_setting(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "mlcanary.toml").write_text('data_dri = "state"\n')
    result = run(tmp_path, "pipelines", "list")
    assert result.exit_code == 1
    assert "unknown setting 'data_dri'; did you mean data_dir?" in result.output


@pytest.fixture
def server(store: Store, tmp_path: Path) -> Iterator[str]:
    """The real app on a loopback port, over the test store."""
    with adminapp.running(store, tmp_path / "server") as app:
        http = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{http.server_port}"
        http.shutdown()


def test_global_api_options_send_writes_to_the_server_and_touch_no_local_database(
    run: Callable[..., Result], store: Store, server: str, tmp_path: Path
) -> None:
    token, _ = store.tokens.create("ops", "operator")
    here = tmp_path / "laptop"
    here.mkdir()
    api = ["--api", server, "--token", token]
    registered = run(here, *api, "pipelines", "register", "remote", "1", *UPSTREAM)
    assert registered.exit_code == 0, registered.output
    created = run(here, *api, "deployments", "create", "remote", "--champion", "remote:1")
    assert created.exit_code == 0, created.output
    assert store.deployments.get("remote").champion_id == store.pipelines.get_by_ref("remote:1").id
    listed = run(here, *api, "deployments", "list")
    assert listed.output.strip() == "remote: champion remote:1"
    assert "remote:1" in run(here, *api, "pipelines", "list").output
    status = run(here, *api, "rollout", "status", "remote")
    assert "no rollout yet" in status.output
    tokens = run(here, *api, "tokens", "list")  # every command has a route now: tokens and prune too
    assert tokens.exit_code == 0 and tokens.output.split()[:3] == ["ops", "operator", "active"], tokens.output
    local_only = run(here, *api, "db", "check")  # runs on the database's host only: refused in one line
    assert local_only.exit_code == 1 and "does not work through the admin API" in local_only.output
    assert not (here / "var").exists()  # no local database was created or opened


def test_an_upstream_registered_through_the_api_keeps_every_upstream_option_as_a_local_one(
    run: Callable[..., Result], store: Store, server: str, tmp_path: Path
) -> None:
    token, _ = store.tokens.create("ops", "operator")
    options = ["--upstream", "http://127.0.0.1:9/v2", "--task", "classification", "--schema", "a:float,b:str",
               "--upstream-kind", "mlserver", "--classes", "0,1", "--request-output", "predict",
               "--upstream-timeout", "3.5", "--upstream-retries", "2", "--health-url", "", "--no-probe"]  # fmt: skip
    remote = run(tmp_path, "--api", server, "--token", token, "pipelines", "register", "up", "1", *options)
    assert remote.exit_code == 0, remote.output
    local = run(tmp_path, "--database-url", store.db.url, "pipelines", "register", "up", "2", *options)
    assert local.exit_code == 0, local.output
    through_api, here = store.pipelines.get_by_ref("up:1"), store.pipelines.get_by_ref("up:2")
    assert through_api.upstream_config == here.upstream_config
    assert through_api.upstream_config is not None
    assert through_api.upstream_config["timeout_s"] == 3.5 and through_api.upstream_config["retries"] == 2
    assert through_api.upstream_config["request_outputs"] == ["predict"]
    assert through_api.classes == here.classes == (0, 1)
