"""One request cannot stop pairs being stored (issue 17 items 2 and 10), on SQLite and PostgreSQL.

At the edge: request ids, V2 ids and routing keys longer than 128 characters or not printable, and
NUL characters or lone surrogates in any string, are refused with 400 and write nothing. Behind it:
a spooled batch holding rows the database refuses stores every other row and quarantines the bad
ones with the reason, once (the spool is not replayed forever).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import adminapp
import mlpipes
import pytest

from router.recorder import Recorder
from storage import Store
from storage.entities import PairRecord

FRAME, _ = mlpipes.churn_frame(5, seed=4)


def _split(rows: int = 1, frame: Any = FRAME) -> dict[str, Any]:
    return {"dataframe_split": json.loads(frame.iloc[:rows].to_json(orient="split", index=False))}


def _v2(rows: int = 1, **extra: Any) -> dict[str, Any]:
    part = FRAME.iloc[:rows]
    inputs = []
    for column in mlpipes.input_schema(FRAME):
        values = [None if v != v else v for v in part[column.name].tolist()]
        kind = {"float": "FP64", "int": "INT64", "bool": "BOOL", "str": "BYTES"}[column.dtype]
        inputs.append({"name": column.name, "shape": [rows], "datatype": kind, "data": values})
    return {"inputs": inputs, **extra}


def _record(request_id: str, deployment_id: int, **fields: Any) -> PairRecord:
    values: dict[str, Any] = {
        "request_id": request_id, "row_index": 0, "deployment_id": deployment_id, "rollout_id": None,
        "step": None, "received_at": datetime.now(UTC), "routing_key_hash": 7, "served_arm": "champion",
        "champion_version_id": None, "challenger_version_id": None, "champion_class": "1",
        "champion_latency_ms": 1.5, "raw_input": {"plan": "basic"},
    }  # fmt: skip
    values.update(fields)
    return PairRecord(**values)


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_a_spooled_batch_with_bad_rows_stores_the_others_and_quarantines_the_bad_ones_once(
    store: Store, tmp_path: Path
) -> None:
    champion = mlpipes.register(store, tmp_path, version="1")
    deployment = mlpipes.deploy(store, "churn", champion)
    good = [_record(f"good-{i}", deployment.id) for i in range(99)]
    bad = [
        _record("surrogate-\ud800", deployment.id),  # no database stores a lone surrogate
        _record("nul-in-raw-input", deployment.id, raw_input={"plan": "ba\x00sic"}),
        _record("x" * 200, deployment.id),  # longer than the column on PostgreSQL
    ]
    batch = good[:50] + bad + good[50:]
    spool = tmp_path / "spool"
    spool.mkdir()
    lines = [json.dumps({**r.__dict__, "received_at": r.received_at.isoformat()}) for r in batch]
    (spool / f"pairs-{_dead_pid()}-deadbeef-000001.jsonl").write_text("\n".join(lines) + "\n")

    recorder = Recorder(store, spool_dir=spool, batch_size=1000, flush_interval=0.05, retry_interval=0.05)
    recorder.start()
    deadline = time.monotonic() + 20
    while (
        any(p.name.startswith(("pairs-", "claimed-")) for p in spool.iterdir())
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    time.sleep(0.3)  # a few more recorder cycles: nothing is replayed again
    recorder.close()

    stored = {p.request_id for p in store.pairs.list(limit=1000)}
    assert {r.request_id for r in good} <= stored, "every innocent pair is stored"
    quarantine = [
        json.loads(line) for f in spool.glob("quarantine-*.jsonl") for line in f.read_text().splitlines()
    ]
    quarantined = {q["record"]["request_id"] for q in quarantine}
    assert "surrogate-\ud800" in quarantined
    assert len(stored) + len(quarantine) == len(batch), (len(stored), quarantined)
    assert all(q["reason"] for q in quarantine)
    if store.db.dialect == "postgresql":
        assert quarantined == {r.request_id for r in bad}
    assert not [p for p in spool.iterdir() if p.name.startswith(("pairs-", "claimed-"))], (
        "nothing left to retry"
    )
    assert recorder.quarantined == len(quarantine)


@pytest.fixture
def served(store: Store, tmp_path: Path) -> Any:
    champion = mlpipes.register(store, tmp_path, version="1")
    mlpipes.deploy(store, "churn", champion)
    with adminapp.running(store, tmp_path) as app:
        yield app


def test_ids_keys_and_strings_storage_cannot_hold_are_refused_at_the_edge_and_write_nothing(
    store: Store, served: Any
) -> None:
    client = served.test_client()
    nul = FRAME.copy()
    nul.loc[0, "plan"] = "ba\x00sic"
    surrogate = json.dumps(_split()).replace('"basic"', '"\\ud800"').replace('"plus"', '"\\ud800"')
    surrogate = surrogate.replace('"pro"', '"\\ud800"')
    bad = [
        ("mlflow", {"X-Request-Id": "r" * 129}, _split()),
        ("mlflow", {"X-Request-Id": "tab\there"}, _split()),
        ("mlflow", {"X-Routing-Key": "k" * 129}, _split()),
        ("mlflow", {}, _split(frame=nul)),
        ("v2", {}, _v2(id="i" * 129)),
        ("v2", {}, _v2(id="nul\x00id")),
        ("v2", {"X-Request-Id": "ok", "X-Routing-Key": "key\x7f"}, _v2()),
    ]
    for protocol, headers, body in bad:
        url = "/v1/models/churn/invocations" if protocol == "mlflow" else "/v2/models/churn/infer"
        response = client.post(url, json=body, headers=headers)
        assert response.status_code == 400, (headers, response.get_data(as_text=True))
        assert response.get_json()["error"]["code"] in ("invalid_request_id", "invalid_text")
    response = client.post(
        "/v1/models/churn/invocations", data=surrogate, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_text"
    ok = client.post("/v1/models/churn/invocations", json=_split(), headers={"X-Request-Id": "r" * 128})
    assert ok.status_code == 200 and ok.headers["X-Request-Id"] == "r" * 128
    served.extensions["mlcanary.dataplane"].close(timeout=5)
    assert [p.request_id for p in store.pairs.list()] == ["r" * 128]


def test_a_request_id_reused_on_another_deployment_keeps_both_pairs_and_their_own_labels(
    store: Store, tmp_path: Path
) -> None:
    champion = mlpipes.register(store, tmp_path, version="1")
    churn = mlpipes.deploy(store, "churn", champion)
    other = mlpipes.deploy(store, "other", champion)
    assert store.pairs.insert_many([_record("shared", churn.id, champion_class="1")]) == 1
    assert store.pairs.insert_many([_record("shared", other.id, champion_class="0")]) == 1
    assert store.pairs.insert_many([_record("shared", other.id, champion_class="0")]) == 0  # a replay
    assert store.pairs.count(deployment_id=churn.id) == 1 and store.pairs.count(deployment_id=other.id) == 1
    assert store.labels.upsert_many(churn.id, [("shared", 0, 1)]) == (1, [])
    assert store.labels.upsert_many(other.id, [("shared", 0, 0)]) == (1, [])
    assert store.labels.get("shared", deployment_id=churn.id).label == 1
    assert store.labels.get("shared", deployment_id=other.id).label == 0
