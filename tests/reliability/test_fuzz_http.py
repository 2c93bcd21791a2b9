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
        deadline = time.monotonic() + 10  # its pairs are stored (after the shadow arm) before any snapshot
        while store.pairs.count() < 2 and time.monotonic() < deadline:
            app.extensions["mlcanary.dataplane"].recorder.flush()
            time.sleep(0.05)
        yield app, store, adminapp.bearer(store, "operator", "fuzzer")
    store.db.dispose()


def _split(rows: int) -> dict[str, Any]:
    frame, _ = mlpipes.churn_frame(rows, seed=5)
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def _split_with(**values: Any) -> dict[str, Any]:
    """A one-row MLflow split body with some cells replaced."""
    body = _split(1)
    columns = body["dataframe_split"]["columns"]
    for name, value in values.items():
        body["dataframe_split"]["data"][0][columns.index(name)] = value
    return body


def _v2_plan(plan: str) -> dict[str, Any]:
    """A one-row V2 request whose plan column is the given text."""
    frame, _ = mlpipes.churn_frame(1, seed=5)
    frame.loc[0, "plan"] = plan
    inputs = []
    for column in mlpipes.input_schema(frame):
        values = [None if v != v else v for v in frame[column.name].tolist()]
        kind = {"float": "FP64", "int": "INT64", "bool": "BOOL", "str": "BYTES"}[column.dtype]
        inputs.append({"name": column.name, "shape": [1], "datatype": kind, "data": values})
    return {"inputs": inputs}


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


# Text with NUL, control characters and lone surrogates; integers far beyond float64 and int64.
nasty_text = st.text(st.characters(categories=["Cs", "Cc", "L", "N", "P"]), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | nasty_text,
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
    app, store, token = world
    before = snapshot(app, store)
    response = app.test_client().post(path, json=document, headers=token if path == DATA_PLANE[2] else {})
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
        headers = token if path.startswith("/api") or path == DATA_PLANE[2] else {}
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
            token,
        ),
        ("label not a class", DATA_PLANE[2], b'{"labels": [{"request_id": "known", "label": "yes"}]}',
         "application/json", token),
        ("label with NUL", DATA_PLANE[2], b'{"labels": [{"request_id": "known", "label": "1\\u0000"}]}',
         "application/json", token),
        ("request id with NUL", DATA_PLANE[2], b'{"labels": [{"request_id": "kn\\u0000own", "label": 1}]}',
         "application/json", token),
        ("labels without a token", DATA_PLANE[2], b'{"labels": [{"request_id": "known", "label": 1}]}',
         "application/json", {}),
        ("lone surrogate", DATA_PLANE[0], json.dumps(_split(1)).replace('"plan"', '"plan"').replace(
            '"basic"', '"\\ud83d"').replace('"plus"', '"\\ud83d"').replace('"pro"', '"\\ud83d"'),
         "application/json", {}),
        ("NUL in a string", DATA_PLANE[1], json.dumps(_v2_plan("ba\x00sic")), "application/json", {}),
        ("huge integer", DATA_PLANE[0], json.dumps(_split_with(age=10**500)), "application/json", {}),
        ("integer past the digit limit", DATA_PLANE[0], '{"dataframe_split": {"columns": ["age"], "data": [['
         + "9" * 5000 + "]]}}", "application/json", {}),
        ("request id too long", DATA_PLANE[0], json.dumps(_split(1)), "application/json", {"X-Request-Id": "r" * 129}),
        ("request id with control characters", DATA_PLANE[0], json.dumps(_split(1)), "application/json",
         {"X-Request-Id": "a\x01b"}),
        ("routing key too long", DATA_PLANE[1], json.dumps(_v2_plan("basic")), "application/json",
         {"X-Routing-Key": "k" * 200}),
        ("V2 id too long", DATA_PLANE[1], json.dumps({**_v2_plan("basic"), "id": "i" * 129}), "application/json", {}),
        ("cross-site text/plain V2 post", DATA_PLANE[1], json.dumps(_v2_plan("basic")), "text/plain", {}),
        ("cross-site form V2 post", DATA_PLANE[1], "inputs=1", "application/x-www-form-urlencoded", {}),
        ("deployment name not ASCII", "/api/v1/deployments", json.dumps({"name": "chürn", "champion": "churn:1"}),
         "application/json", token),
        ("deployment name with a newline", "/api/v1/deployments",
         json.dumps({"name": "churn\nX-Evil: 1", "champion": "churn:1"}), "application/json", token),
    ]  # fmt: skip
    seen: dict[str, set[int]] = {}
    for name, path, data, content_type, headers in nasties:
        before = snapshot(app, store)
        response = _raw(client, path, data, content_type, **headers)
        check(app, store, before, response.status_code, f"{name} on {path}")
        assert 400 <= response.status_code < 500, f"{name} on {path} -> {response.status_code}"
        assert set(response.get_json()["error"]) >= {"code", "message"}
        seen.setdefault(name, set()).add(response.status_code)
    assert seen["huge body"] == {413}
    assert seen["labels without a token"] == {401}
    assert seen["cross-site text/plain V2 post"] == seen["cross-site form V2 post"] == {415}


header_text = st.text(st.characters(min_codepoint=0, max_codepoint=255), min_size=1, max_size=300)


@settings(
    max_examples=100, deadline=None, database=None, derandomize=IN_CI, suppress_health_check=list(HealthCheck)
)
@given(request_id=header_text, routing_key=header_text)
def test_arbitrary_request_ids_and_routing_keys_are_scored_or_refused_at_the_edge(
    world: tuple[Flask, Store, dict[str, str]], request_id: str, routing_key: str
) -> None:
    import re

    app, _, _ = world
    try:
        response = app.test_client().post(
            DATA_PLANE[0], json=_split(1), headers={"X-Request-Id": request_id, "X-Routing-Key": routing_key}
        )
    except ValueError:  # the test client itself refuses a header value with a newline
        return
    valid = re.compile(r"[\x20-\x7e]{1,128}")
    if valid.fullmatch(request_id) and valid.fullmatch(routing_key):
        assert response.status_code == 200
        assert response.headers["X-Request-Id"] == request_id
    else:  # refused before routing: nothing is scored, so nothing can be stored
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "invalid_request_id"


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
    app, store, token = world
    before = store.labels.count()
    response = app.test_client().post(
        DATA_PLANE[2],
        json={
            "labels": [
                {"request_id": "never-seen", "label": 1},
                {"request_id": "known", "row": 1, "label": 0},
            ]
        },
        headers=token,
    )
    assert response.status_code == 200
    assert response.get_json() == {
        "stored": 2,
        "unknown_request_ids": ["never-seen"],
        "dropped_request_ids": [],
    }
    assert store.labels.count() == before + 2
