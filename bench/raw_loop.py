"""The router's own work without the serving worker, for bench/upstream_overhead.py's --rawloop setups.

    python bench/raw_loop.py PORT hop|flat|router [--steps FILE]

bench/raw_hop.py's loop (a thread per client connection, blocking sockets, Content-Length framing)
answering each request as the product's worker does on its plain path (`controller.server`:
`plain_request`, the environ, the WSGI call, the answer's head) with one WSGI app: `hop` the bare
hop (bench/router_apps.py `plain_hop()`, BENCH_UPSTREAM_URL), `flat` the least a validating
router does per request (`router_apps.flat()`, BENCH_DATABASE_URL: the floor of the router's own
path), `router` the mlcanary router (`router_apps.router()`, BENCH_DATABASE_URL and
BENCH_SPOOL_DIR). Set beside the raw hop and the product's worker in the same turns, it splits what
the router adds into the serving worker's part (event loop, thread hand-offs, the wait for a
kept-alive connection's next request), the app's, and what of the app's any validating router pays.

--steps FILE wraps the router's steps on the answer's path (reading the body, validation, the data
plane, the batcher, the upstream's encoding, call and answer, the answer's JSON; and the work after
the answer) with timers, and on SIGTERM writes each step's median thread CPU and wall time per
request to FILE (the first 50 requests left out). The timers cost a few microseconds per step: read
the steps against each other, not the setup's latency against the others'.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from gunicorn.config import Config  # noqa: E402
from gunicorn.http import wsgi  # noqa: E402
from raw_hop import read_message, serve_forever  # noqa: E402

from controller.server import PlainLimits, _call_app, plain_request  # noqa: E402

_CPU: defaultdict[str, list[int]] = defaultdict(list)
_WALL: defaultdict[str, list[int]] = defaultdict(list)
_ORDER: list[str] = []  # the steps in the order they nest (time_steps)


def _timed(owner: Any, name: str, label: str) -> None:
    function = getattr(owner, name)

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            _CPU[label].append(time.thread_time_ns() - cpu)
            _WALL[label].append(time.perf_counter_ns() - wall)

    setattr(owner, name, timed)
    _ORDER.append(label)


def time_steps() -> None:
    """Wrap the router's steps (inclusive timers: a step's figure includes the steps it calls)."""
    import router.backends.connections as connections
    import router.backends.upstream as upstream
    import router.batcher as batcher
    import router.dataplane as dataplane
    import router.http as http
    import router.mlflow as mlflow

    for owner, name, label in (
        (http, "score", "score (the whole request, the upstream call included)"),
        (http, "_read_body", "  reading the body"),
        (dataplane.DataPlane, "enter", "  data plane: enter"),
        (mlflow, "read_columns", "  MLflow body to columns"),
        (http, "build_batch", "  validation into arrays (build_batch)"),
        (dataplane.DataPlane, "serve", "  data plane: serve"),
        (batcher.Batcher, "score", "    batcher: score"),
        (upstream.UpstreamBackend, "predict_columns", "      upstream: predict_columns"),
        (upstream, "_plain_columns", "        arrays to lists"),
        (upstream, "encode", "        V2 encoding"),
        (connections.ConnectionPool, "request", "        upstream call (HTTP client)"),
        (upstream, "parse_json", "        the answer's JSON"),
        (upstream, "read_v2", "        reading the V2 answer"),
        (mlflow, "write_predictions", "  the MLflow answer"),
        (http, "write_json", "  the answer's JSON text"),
        (dataplane.DataPlane, "answered", "  data plane: answered"),
        (http, "_answered", "after the answer (pair, shadow hand-off, metrics)"),
    ):
        _timed(owner, name, label)


def write_steps(path: Path) -> None:
    lines = ["| step | requests | thread CPU us (median) | wall us (median) |", "|---|---|---|---|"]
    for label in _ORDER:
        kept, wall = _CPU[label][50:], _WALL[label][50:]
        if kept:
            depth = (len(label) - len(label.lstrip())) // 2
            lines.append(
                f"| {'· ' * depth}{label.strip()} | {len(kept)} | {statistics.median(kept) / 1000:.1f}"
                f" | {statistics.median(wall) / 1000:.1f} |"
            )
    path.write_text("\n".join(lines) + "\n")


class _Connection:
    __slots__ = ("server", "client", "sock")

    def __init__(self, server: tuple[str, int], client: Any, sock: socket.socket) -> None:
        self.server, self.client, self.sock = server, client, sock


def serve(app: Any, client: socket.socket, address: Any, port: int) -> None:
    claims = app.wsgi_app.claims
    config = Config()
    limits, base = PlainLimits.of(config), wsgi.base_environ(config)
    connection = _Connection(("127.0.0.1", port), address, client)
    with contextlib.suppress(OSError), client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffered = b""
        while True:
            message, buffered = read_message(client, buffered)
            if message is None:
                return
            request = plain_request(message, claims, limits)
            if request is None:  # readiness probes and anything else the app does not claim
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                continue
            answer = _call_app(app, request.environ(connection, base))
            try:
                client.sendall(answer.head(request.version, False) + answer.body)
            finally:
                answer.close()  # the router's work after the answer, as under gunicorn


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    steps = Path(sys.argv[4]) if sys.argv[3:4] == ["--steps"] else None
    import router_apps

    if steps is not None:
        time_steps()
    app = {"hop": router_apps.plain_hop, "flat": router_apps.flat, "router": router_apps.router}[mode]()
    plane = getattr(app, "extensions", {}).get("mlcanary.dataplane")
    deadline = time.monotonic() + 60
    while plane is not None and not plane.ready and time.monotonic() < deadline:
        time.sleep(0.05)  # listen once the router's routes are loaded: no 503 while warming up

    def stop(*_: Any) -> None:
        if steps is not None:
            write_steps(steps)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    serve_forever(port, lambda client, address: serve(app, client, address, port))


if __name__ == "__main__":
    main()
