"""Hostile input on every HTTP endpoint: never a 5xx, and a rejected request writes nothing.

Schema-based: schemathesis generates requests for every operation of the served OpenAPI document
(valid and invalid ones) and calls the real WSGI app with an operator token. Property-based:
Hypothesis throws arbitrary JSON at the data plane. Then the classic nasties one by one: malformed
JSON, huge bodies (413), deep nesting, NaN/Infinity, unicode column names, ragged CSV, duplicated
request ids and labels for unknown requests.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adminapp
import mlpipes
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Database, Store

# CI replays a fixed set of examples (a run must not fail by chance); local runs explore new ones.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

MAX_BODY = 64 * 1024
EXAMPLES = 12  # per operation: bounded, the suite stays fast
DATA_PLANE = ("/v1/models/churn/invocations", "/v2/models/churn/infer", "/v1/models/churn/feedback")


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[tuple[Flask, Store, dict[str, str]]]:
    import shutil

    root = tmp_path_factory.mktemp("fuzz")
    shutil.copyfile(sqlite_template, root / "m.db")
    store = Store(Database(f"sqlite:///{root / 'm.db'}"))
    v1 = mlpipes.register(store, root, version="1")
    v2 = mlpipes.register(store, root, version="2", seed=3)
    churn = mlpipes.deploy(store, "churn", v1)
    mlpipes.deploy(store, "idle", v1)
    mlpipes.start_rollout(store, churn, v2, mode="shadow")
    with adminapp.running(store, root, max_body_bytes=MAX_BODY) as app:
        client = app.test_client()
        assert (
            client.post(DATA_PLANE[0], json=_split(2), headers={"X-Request-Id": "known"}).status_code == 200
        )
        yield app, store, adminapp.bearer(store, "operator", "fuzzer")
    store.db.dispose()


def _split(rows: int) -> dict[str, Any]:
    frame, _ = mlpipes.churn_frame(rows, seed=5)
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def snapshot(app: Flask, store: Store) -> tuple[Any, ...]:
    """Everything any request could write (the recorder is flushed first)."""
    app.extensions["mlcanary.dataplane"].recorder.flush()
    return (
        store.pairs.count(),
        store.labels.count(),
        len(store.events.list(limit=100_000)),
        len(store.pipelines.list()),
        len(store.deployments.list()),
        [(r.id, r.phase, r.version) for r in store.rollouts.list()],
        len(store.tokens.list()),
    )


def check(app: Flask, store: Store, before: tuple[Any, ...], status: int, what: str) -> None:
    assert status < 500, f"{what} -> {status}"
    if status >= 400:
        assert snapshot(app, store) == before, f"{what} was refused ({status}) but wrote something"


def test_schemathesis_finds_no_5xx_and_refused_requests_write_nothing(
    world: tuple[Flask, Store, dict[str, str]],
) -> None:
    app, store, token = world
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    calls: dict[str, int] = {}
    for operation in operations:
        _fuzzer(app, store, token, operation, calls)()
    assert len(calls) == len(operations)


def _fuzzer(app: Flask, store: Store, token: dict[str, str], operation: Any, calls: dict[str, int]) -> Any:
    label = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=IN_CI,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def fuzz(case: Any) -> None:
        before = snapshot(app, store)
        response = case.call(headers=token)
        calls[label] = calls.get(label, 0) + 1
        check(app, store, before, response.status_code, f"{label} {case.path_parameters} {case.body!r:.200}")

    return fuzz


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=15), inner, max_size=5),
    max_leaves=40,
)
bodies = json_values | st.fixed_dictionaries(
    {
        "dataframe_split": st.fixed_dictionaries(
            {
                "columns": st.lists(st.text(max_size=10), max_size=8),
                "data": st.lists(st.lists(json_values, max_size=8), max_size=5),
            }
        )
    }
)


@settings(
    max_examples=150, deadline=None, database=None, derandomize=IN_CI, suppress_health_check=list(HealthCheck)
)
@given(path=st.sampled_from(DATA_PLANE), document=bodies)
def test_arbitrary_json_on_the_data_plane_is_answered_or_refused_cleanly(
    world: tuple[Flask, Store, dict[str, str]], path: str, document: Any
) -> None:
    app, store, _ = world
    before = snapshot(app, store)
    response = app.test_client().post(path, json=document)
    check(app, store, before, response.status_code, f"{path} {document!r:.200}")
    if response.status_code >= 400:
        assert set(response.get_json()["error"]) >= {"code", "message"}


def _raw(
    client: FlaskClient, path: str, data: bytes | str, content_type: str = "application/json", **headers: str
) -> Any:
    return client.post(path, data=data, headers={"Content-Type": content_type, **headers})


def test_the_usual_nasties_are_refused_with_a_4xx_and_write_nothing(
    world: tuple[Flask, Store, dict[str, str]],
) -> None:
    app, store, token = world
    client = app.test_client()
    frame, _ = mlpipes.churn_frame(3, seed=8)
    ragged_csv = ",".join(frame.columns) + "\n" + "1,2,3\n" + "1,2,3,4,5,6,7,8,9,10\n"
    unicode_split = _split(1)
    unicode_split["dataframe_split"]["columns"] = [
        "âge",
        "テニュア",
        "💸",
        *unicode_split["dataframe_split"]["columns"][3:],
    ]
    nasties: list[tuple[str, str, Any, str, dict[str, str]]] = []
    for path in DATA_PLANE + ("/api/v1/deployments", "/api/v1/deployments/churn/labels"):
        headers = token if path.startswith("/api") else {}
        nasties += [
            ("malformed JSON", path, b'{"dataframe_split": {"columns": [', "application/json", headers),
            ("huge body", path, b'{"x": "' + b"a" * (2 * MAX_BODY) + b'"}', "application/json", headers),
            ("deep nesting", path, b"[" * 100_000 + b"]" * 100_000, "application/json", headers),
            (
                "NaN and Infinity",
                path,
                b'{"dataframe_split": {"columns": ["age"], "data": [[NaN], [Infinity]]},'
                b' "labels": [{"request_id": "known", "label": NaN}]}',
                "application/json",
                headers,
            ),
            (
                "wrong types",
                path,
                json.dumps(
                    {"dataframe_split": {"columns": 5, "data": "x"}, "labels": "x", "name": 1, "champion": []}
                ),
                "application/json",
                headers,
            ),
            ("not JSON at all", path, b"\x00\xff\xfe binary", "application/octet-stream", headers),
        ]
    nasties += [
        ("ragged CSV", DATA_PLANE[0], ragged_csv, "text/csv", {}),
        ("unicode column names", DATA_PLANE[0], json.dumps(unicode_split), "application/json", {}),
        (
            "labels with a NaN label",
            DATA_PLANE[2],
            b'{"labels": [{"request_id": "known", "label": NaN}]}',
            "application/json",
            {},
        ),
    ]
    seen: dict[str, set[int]] = {}
    for name, path, data, content_type, headers in nasties:
        before = snapshot(app, store)
        response = _raw(client, path, data, content_type, **headers)
        check(app, store, before, response.status_code, f"{name} on {path}")
        assert 400 <= response.status_code < 500, f"{name} on {path} -> {response.status_code}"
        assert set(response.get_json()["error"]) >= {"code", "message"}
        seen.setdefault(name, set()).add(response.status_code)
    assert seen["huge body"] == {413}


def test_a_duplicated_request_id_never_duplicates_a_pair(world: tuple[Flask, Store, dict[str, str]]) -> None:
    app, store, _ = world
    client = app.test_client()
    for _ in range(3):
        assert (
            client.post(DATA_PLANE[0], json=_split(2), headers={"X-Request-Id": "twice"}).status_code == 200
        )
    plane = app.extensions["mlcanary.dataplane"]

    def twice() -> list[Any]:
        plane.recorder.flush()  # after the shadow arm settled each of the three requests
        return [p for p in store.pairs.list(limit=100_000) if p.request_id == "twice"]

    deadline = time.monotonic() + 10
    while plane.shadow.depth and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert sorted(p.row_index for p in twice()) == [0, 1], (
        "one pair per (request id, row), whatever is resent"
    )


def test_labels_for_unknown_requests_are_reported_and_kept_for_their_pair(
    world: tuple[Flask, Store, dict[str, str]],
) -> None:
    app, store, _ = world
    before = store.labels.count()
    response = app.test_client().post(
        DATA_PLANE[2],
        json={
            "labels": [
                {"request_id": "never-seen", "label": 1},
                {"request_id": "known", "row": 1, "label": 0},
            ]
        },
    )
    assert response.status_code == 200
    assert response.get_json() == {"stored": 2, "unknown_request_ids": ["never-seen"]}
    assert store.labels.count() == before + 2
