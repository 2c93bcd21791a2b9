"""Fixtures of the reliability tests: real mlcanary processes on loopback, killed at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import Server


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start mlcanary servers for a test; every process group is SIGKILLed at teardown."""
    servers: list[Server] = []

    def start(role: str, database_url: str, *, data_dir: Path | None = None, **settings: Any) -> Server:
        server = Server(role, database_url, data_dir or tmp_path / "var", **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
