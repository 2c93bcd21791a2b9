"""`serve` runs its controller loop niced, so a look takes the cores the requests in flight leave.

A real `mlcanary serve` (gunicorn and its controller child) on SQLite: the child's niceness, read
from the kernel, becomes the server's plus controller_nice (10 by default) once it has started (it
starts at the server's: niced from its first instruction, its imports behind a saturated router took
30-50 s); with 0 they are equal.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from servers import Server, wait_for

from storage import Database
from storage import schema as db_schema


@pytest.mark.parametrize(("setting", "added"), [(None, 10), (0, 0), (5, 5)])
def test_the_controller_child_runs_at_the_configured_niceness(
    tmp_path: Path, setting: int | None, added: int
) -> None:
    url = f"sqlite:///{tmp_path / 'mlcanary.db'}"
    db_schema.upgrade(Database(url))
    extra = {} if setting is None else {"controller_nice": setting}
    server = Server("serve", url, tmp_path / "var", workers=1, **extra)
    try:
        server.wait_ready(timeout=60)
        wait_for(server.controller_child, timeout=20, message="the controller child")
        child = server.controller_child()
        assert child is not None, server.output()
        own = os.getpriority(os.PRIO_PROCESS, server.pid)
        wait_for(
            lambda: os.getpriority(os.PRIO_PROCESS, child) == min(19, own + added),
            timeout=30,
            message=f"the controller child at niceness {min(19, own + added)}",
        )
        assert os.getpriority(os.PRIO_PROCESS, server.workers()[0]) == own  # the router is not niced
    finally:
        server.terminate()
