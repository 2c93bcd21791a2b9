"""A test-only gunicorn entry point: `gunicorn -c router_wsgi.py "router_wsgi:create()"`.

Reads the database URL and spool folder from ROUTER_TEST_DATABASE_URL / ROUTER_TEST_SPOOL_DIR and
closes each worker's data plane in gunicorn's worker_exit hook (what controller/server.py does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask

from router import create_app
from router.metrics import mark_process_dead
from router.settings import RouterSettings
from storage import Database, Store


def create() -> Flask:
    store = Store(Database(os.environ["ROUTER_TEST_DATABASE_URL"]))
    return create_app(store, RouterSettings(spool_dir=Path(os.environ["ROUTER_TEST_SPOOL_DIR"])))


def worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    plane = getattr(app, "extensions", {}).get("mlcanary.dataplane")
    if plane is not None:
        plane.close(timeout=20)


def child_exit(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)
