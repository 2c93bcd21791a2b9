"""Router fixtures: a deployment with a real fitted pipeline, loopback servers, a TCP proxy.

The SQLite store, the router settings and `make_app` are shared with tests/peers in tests/conftest.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlpipes
import pytest
from tcpproxy import TcpProxy
from werkzeug.serving import make_server

from storage import Store


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
