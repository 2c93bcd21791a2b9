"""Recorder: one record per answered row, flushed on close, spooled while storage is down, replayed once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlpipes
import pytest
from sqlalchemy.engine import make_url

from router import create_app
from router.recorder import Recorder
from router.settings import RouterSettings
from storage import Database, Store
from storage import schema as db_schema

FRAME, _ = mlpipes.churn_frame(20, seed=2)


def _body(rows: int = 1) -> dict[str, Any]:
    return {"dataframe_split": json.loads(FRAME.iloc[:rows].to_json(orient="split", index=False))}


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_request_of_k_rows_gives_k_records_and_close_flushes_them_all(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any
) -> None:
    deployment, champion = churn
    challenger = mlpipes.register(sqlite_store, tmp_path, version="2", seed=3)
    rollout = mlpipes.start_rollout(sqlite_store, deployment, challenger, mode="shadow")
    app = make_app(recorder_flush_interval=30.0)  # nothing is written before close()
    client = app.test_client()
    for i in range(40):
        response = client.post(
            "/v1/models/churn/invocations", json=_body(3), headers={"X-Request-Id": f"r{i}"}
        )
        assert response.status_code == 200
    app.extensions["mlcanary.dataplane"].close(timeout=10)
    pairs = sqlite_store.pairs.list(limit=1000)
    assert len(pairs) == 120
    assert {(p.request_id, p.row_index) for p in pairs} == {(f"r{i}", j) for i in range(40) for j in range(3)}
    first = next(p for p in pairs if p.request_id == "r0" and p.row_index == 2)
    assert first.rollout_id == rollout.id and first.step == 0
    assert first.champion_version_id == champion.id and first.challenger_version_id == challenger.id
    assert first.champion_class in ("0", "1") and first.challenger_class in ("0", "1")
    assert first.champion_latency_ms and first.challenger_latency_ms
    assert first.raw_input["plan"] == FRAME.iloc[2]["plan"]
    assert 0 <= first.routing_key_hash < 2**63


def test_raw_inputs_are_omitted_when_the_deployment_says_so(
    sqlite_store: Store, tmp_path: Path, make_app: Any
) -> None:
    champion = mlpipes.register(sqlite_store, tmp_path, version="1")
    mlpipes.deploy(sqlite_store, "churn", champion, store_raw_inputs=False)
    app = make_app()
    assert app.test_client().post("/v1/models/churn/invocations", json=_body(2)).status_code == 200
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    pairs = sqlite_store.pairs.list()
    assert len(pairs) == 2 and all(p.raw_input is None for p in pairs)


def _spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl")) if directory.exists() else []


def test_records_are_spooled_while_the_schema_is_missing_and_replayed_once_it_exists(
    tmp_path: Path, sqlite_url: str, settings: RouterSettings
) -> None:
    # The router's own store works; the recorder writes to a database with no tables yet.
    routing = Store(Database(sqlite_url))
    champion = mlpipes.register(routing, tmp_path, version="1")
    mlpipes.deploy(routing, "churn", champion)
    broken_db = Database(f"sqlite:///{tmp_path / 'later.db'}")
    broken = Store(broken_db)
    app = create_app(routing, settings)
    plane = app.extensions["mlcanary.dataplane"]
    plane.recorder.store = broken
    client = app.test_client()
    for i in range(10):
        assert (
            client.post(
                "/v1/models/churn/invocations", json=_body(2), headers={"X-Request-Id": f"s{i}"}
            ).status_code
            == 200
        )
    assert _wait(lambda: plane.recorder.spooled == 20)
    assert _spool_files(settings.spool_dir)
    db_schema.upgrade(broken_db)  # the database comes back, with the deployment the records refer to
    mlpipes.deploy(broken, "churn", mlpipes.register(broken, tmp_path / "again", version="1"))
    assert _wait(lambda: broken.pairs.count() == 20)
    plane.close(timeout=5)
    assert broken.pairs.count() == 20
    assert _spool_files(settings.spool_dir) == []


@pytest.mark.postgres
def test_a_postgres_outage_is_absorbed_by_the_spool_and_replayed_exactly_once(
    postgres_url: str, tmp_path: Path, settings: RouterSettings, tcp_proxy: Any
) -> None:
    from dbtools import truncate_postgres

    truncate_postgres(postgres_url)
    url = make_url(postgres_url)
    proxy = tcp_proxy((url.host or "127.0.0.1", url.port or 5432))
    store = Store(Database(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)))
    champion = mlpipes.register(store, tmp_path, version="1")
    mlpipes.deploy(store, "churn", champion)
    app = create_app(store, settings)
    plane = app.extensions["mlcanary.dataplane"]
    client = app.test_client()
    for i in range(5):
        client.post("/v1/models/churn/invocations", json=_body(), headers={"X-Request-Id": f"before{i}"})
    assert _wait(lambda: plane.recorder.written == 5)
    proxy.cut()  # the database is unreachable now
    for i in range(30):
        response = client.post(
            "/v1/models/churn/invocations", json=_body(), headers={"X-Request-Id": f"during{i}"}
        )
        assert response.status_code == 200  # answers go on; records go to the spool
    assert _wait(lambda: plane.recorder.spooled == 30, timeout=20)
    proxy.restore()
    assert _wait(lambda: plane.recorder.replayed == 30, timeout=20)
    plane.close(timeout=10)
    ids = store.pairs.existing_request_ids(
        [f"during{i}" for i in range(30)] + [f"before{i}" for i in range(5)]
    )
    assert len(ids) == 35
    assert store.pairs.count() == 35
    assert _spool_files(settings.spool_dir) == []


def test_leftover_spool_of_a_dead_process_is_replayed_at_start_and_claimed_once(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any, settings: RouterSettings
) -> None:
    # Spool records from a first router whose database was gone, then let that process "die".
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    app = make_app()
    plane = app.extensions["mlcanary.dataplane"]
    plane.recorder.store = Store(Database(f"sqlite:///{tmp_path / 'gone.db'}"))
    for i in range(6):
        app.test_client().post(
            "/v1/models/churn/invocations", json=_body(), headers={"X-Request-Id": f"d{i}"}
        )
    plane.close(timeout=5)
    (spooled,) = _spool_files(settings.spool_dir)
    leftover = spooled.with_name(f"pairs-{dead_pid}-deadbeef-000001.jsonl")
    spooled.rename(leftover)
    # Two recorders start on the same spool folder: each record is stored once, the file claimed once.
    first = Recorder(sqlite_store, spool_dir=settings.spool_dir, flush_interval=0.05)
    second = Recorder(sqlite_store, spool_dir=settings.spool_dir, flush_interval=0.05)
    first.start()
    second.start()
    assert _wait(lambda: sqlite_store.pairs.count() == 6)
    first.close()
    second.close()
    assert first.replayed + second.replayed == 6
    assert _spool_files(settings.spool_dir) == []
