"""The OpenAPI document and the app agree: every route is documented and every documented path is served."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adminapp
import pytest
from flask import Flask

from controller.http import openapi
from storage import Database, Store

NOT_API = {"/static/<path:filename>"}  # the dashboard's assets
IMPLICIT = {"HEAD", "OPTIONS"}


@pytest.fixture
def app(sqlite_url: str, tmp_path: Path) -> Iterator[Flask]:
    with adminapp.running(Store(Database(sqlite_url)), tmp_path) as built:
        yield built


def served(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI-style path, method) for every rule of the app's url_map."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in NOT_API:
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        found.update((path, m.lower()) for m in (rule.methods or set()) - IMPLICIT)
    return found


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def test_every_route_is_documented_and_every_documented_route_is_served(app: Flask) -> None:
    document = app.test_client().get("/api/v1/openapi.json").get_json()
    assert served(app) - documented(document) == set(), "routes missing from the OpenAPI document"
    assert documented(document) - served(app) == set(), "documented paths the app does not serve"


def test_the_router_role_serves_only_documented_routes(sqlite_url: str, tmp_path: Path) -> None:
    with adminapp.running(Store(Database(sqlite_url)), tmp_path, role="router") as router_app:
        routes = served(router_app)
    assert routes <= documented(openapi.document())
    assert not any(path.startswith("/api/") for path, _ in routes)


def test_every_path_parameter_is_declared_and_every_reference_resolves() -> None:
    document = openapi.document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)
            assert operation["responses"], (path, method)
    schemas = document["components"]["schemas"]

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    refs = set(walk(document))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


def test_admin_operations_and_feedback_need_the_bearer_token_and_scoring_none() -> None:
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    assert document["security"] == [{"bearer": []}]
    for path, item in document["paths"].items():
        for operation in item.values():
            public = operation.get("security") == []
            labels = path == "/v1/models/{deployment}/feedback"  # a labeller token (issue 17)
            expected_public = (
                not path.startswith("/api/v1/") or path == "/api/v1/openapi.json"
            ) and not labels
            assert public == expected_public, path
            if not public:
                assert {"401", "403"} <= set(operation["responses"]), path


def test_the_document_is_served_as_json_without_a_token(app: Flask) -> None:
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == openapi.document()
