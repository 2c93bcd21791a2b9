"""Shared fixtures: databases (SQLite and PostgreSQL, schema from the migrations), in the flaskr
style the app (`create_app` over the test store), its test `client` and a CLI `runner`, and router
data planes over a SQLite store (`sqlite_store`, `settings`, `make_app`).

A test module that needs data stored before the app starts overrides `app_data`; one that needs other
settings overrides `app_settings`. A folder whose upstreams answer slowly overrides
`upstream_timeout_s` (tests/peers: real model servers).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import adminapp
import pytest
from click.testing import CliRunner, Result
from dbtools import truncate_postgres
from flask import Flask
from flask.testing import FlaskClient

from router import create_app as create_router_app
from router.settings import RouterSettings
from storage import Database, Store
from storage import schema as db_schema

PG_ADMIN_URL = os.environ.get("MLCANARY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _postgres_reason() -> str | None:
    """None if PostgreSQL answers, else why not."""
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as error:
        return f"PostgreSQL at {PG_ADMIN_URL} does not answer ({str(error).strip().splitlines()[0]})"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head, dropped at the end."""
    reason = _postgres_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true PostgreSQL is required", pytrace=False)
        pytest.skip(f"{reason}; set MLCANARY_TEST_PG_URL or start PostgreSQL to run these tests")
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"mlcanary_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    db_schema.upgrade(db)
    db.dispose()
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once; each test copies it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    db = Database(f"sqlite:///{path}")
    db_schema.upgrade(db)
    with db.engine.connect().execution_options(mlcanary_write=False) as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: every storage test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "mlcanary.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    truncate_postgres(url)
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def store(db: Database) -> Store:
    return Store(db)


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite database only (for tests that are not about storage)."""
    path = tmp_path / "mlcanary.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """Settings the `app` fixture overrides (none; a module redefines this fixture to change some)."""
    return {}


@pytest.fixture
def app_data() -> Any:
    """Data stored before the app starts (none; a module redefines this fixture to store some)."""
    return None


@pytest.fixture
def app(store: Store, tmp_path: Path, app_settings: dict[str, Any], app_data: Any) -> Iterator[Flask]:
    """The real WSGI app, `create_app(...)` in role "serve", over the test store; closed afterwards."""
    with adminapp.running(store, tmp_path, **app_settings) as built:
        yield built


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of `app`."""
    return app.test_client()


@pytest.fixture
def runner(database_url: str, tmp_path: Path) -> Callable[..., Result]:
    """Run `mlcanary ARGS...` in-process against the test database: ``runner("rollout", "status", "churn")``."""
    from controller.cli.main import cli

    invoker = CliRunner()

    def invoke(*args: str) -> Result:
        return invoker.invoke(cli, ["--database-url", database_url, "--data-dir", str(tmp_path), *args])

    return invoke


# -- router data planes over a SQLite store ----------------------------------------------------------


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    """A store over a migrated SQLite database only (for tests that are not about storage)."""
    db = Database(sqlite_url)
    yield Store(db)
    db.dispose()


@pytest.fixture
def upstream_timeout_s() -> float:
    """The router's upstream and shadow timeout in `settings`; a folder with slow upstreams overrides it."""
    return 1.0


@pytest.fixture
def settings(tmp_path: Path, upstream_timeout_s: float) -> RouterSettings:
    """Router settings for tests: fast refresh and flushes, a spool under tmp_path, pickles trusted."""
    return RouterSettings(
        spool_dir=tmp_path / "spool",
        refresh_interval=0.05,
        shadow_linger_s=0.001,
        shadow_timeout_s=upstream_timeout_s,
        recorder_flush_interval=0.05,
        trust_pickle=True,
        upstream_timeout_s=upstream_timeout_s,
    )


@pytest.fixture
def make_app(sqlite_store: Store, settings: RouterSettings) -> Iterator[Callable[..., Flask]]:
    """Build router apps (over `sqlite_store` unless given a store); every one is closed at the end."""
    apps: list[Flask] = []

    def make(store: Store | None = None, **overrides: Any) -> Flask:
        app = create_router_app(store or sqlite_store, replace(settings, **overrides))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["mlcanary.dataplane"].close(timeout=10)
