"""Run a Flask app factory under gunicorn, one app (and one data plane) per worker process.

The app is built inside each worker after the fork (no preload), so every worker starts its own
background threads. On a graceful stop (SIGTERM) gunicorn calls worker_exit, which closes the app's
data plane: queued shadow work and paired outputs are flushed before the worker exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

CLOSE_TIMEOUT_S = 20.0


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {}) or {}
    for key in ("mlcanary.dataplane",):
        component = extensions.get(key)
        if component is not None:
            component.close(timeout=CLOSE_TIMEOUT_S)


def _child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class Server(BaseApplication):
    """gunicorn with its configuration given in code rather than on a command line."""

    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", _worker_exit)
        self.cfg.set("child_exit", _child_exit)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25.1 opens a control socket at one fixed path per user: two servers on a
            # host (a router and a serve, or parallel tests) would fight over it, and we never use it.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Flask:
        return self.factory()


def prepare_metrics_dir(data_dir: Path) -> Path:
    """Give prometheus-client a fresh multiprocess folder, so /metrics sums every worker correctly."""
    path = Path(tempfile.mkdtemp(prefix="mlcanary-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def run(
    factory: Callable[[], Flask],
    *,
    host: str,
    port: int,
    workers: int,
    data_dir: Path,
    log_level: str = "info",
    graceful_timeout: int = 30,
) -> None:
    """Serve until stopped; SIGTERM drains requests and flushes every worker's data plane."""
    metrics_dir = prepare_metrics_dir(data_dir)
    try:
        Server(
            factory,
            {
                "bind": f"{host}:{port}",
                "workers": workers,
                "worker_class": "sync",
                "timeout": 60,
                "graceful_timeout": graceful_timeout,
                "keepalive": 5,
                "loglevel": log_level,
                "accesslog": None,
                "preload_app": False,
            },
        ).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
