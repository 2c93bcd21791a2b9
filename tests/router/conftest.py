"""Router fixtures: a SQLite store with real fitted pipelines, started data planes, loopback servers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlpipes
import pytest
from flask import Flask
from tcpproxy import TcpProxy
from werkzeug.serving import make_server

from router import create_app
from router.settings import RouterSettings
from storage import Database, Store


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    db = Database(sqlite_url)
    yield Store(db)
    db.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> RouterSettings:
    return RouterSettings(
        spool_dir=tmp_path / "spool",
        refresh_interval=0.05,
        shadow_linger_s=0.001,
        shadow_timeout_s=1.0,
        recorder_flush_interval=0.05,
        trust_pickle=True,
        upstream_timeout_s=1.0,
    )


@pytest.fixture
def make_app(sqlite_store: Store, settings: RouterSettings) -> Iterator[Callable[..., Flask]]:
    """Build router apps over the SQLite store; every one is closed at the end."""
    apps: list[Flask] = []

    def make(store: Store | None = None, **overrides: Any) -> Flask:
        from dataclasses import replace

        app = create_app(store or sqlite_store, replace(settings, **overrides))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["mlcanary.dataplane"].close(timeout=5)


@pytest.fixture
def churn(sqlite_store: Store, tmp_path: Path) -> Any:
    """A deployment "churn" with a classifier champion (no rollout yet)."""
    champion = mlpipes.register(sqlite_store, tmp_path, name="churn", version="1")
    deployment = mlpipes.deploy(sqlite_store, "churn", champion)
    return deployment, champion


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve a WSGI app on a loopback port in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def serve_wsgi() -> Iterator[Callable[[Any], str]]:
    """Serve WSGI apps on loopback ports for the test; return their base URLs."""
    stack: list[Any] = []

    def serve(app: Any) -> str:
        manager = serving(app)
        url = manager.__enter__()
        stack.append(manager)
        return url

    yield serve
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[tuple[str, int]], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(target: tuple[str, int]) -> TcpProxy:
        proxy = TcpProxy(target)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
