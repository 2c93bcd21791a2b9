"""Slow clients cost a connection, not a worker: slowloris sockets never stop `mlcanary serve` answering.

A real `mlcanary serve` (gunicorn, 2 workers x 2 threads, read timeout 4 s) on loopback. Before any
fast request, more slow sockets than workers and threads together are opened: some trickle their
headers a byte at a time, some announce a body and send it a byte at a time. With sync workers
(before this change) as many such sockets as workers gave no answer at all until they gave up.
Now /healthz and scoring answer, each well within the read timeout, and the server closes each
slow socket once the read timeout has passed, although it keeps sending.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import mlpipes
import pytest
from servers import Server, body

from storage import Database, Store

pytestmark = pytest.mark.slow

WORKERS = 2
THREADS = 2
READ_TIMEOUT_S = 4.0
SLOW_HEADERS = WORKERS * THREADS + 1  # N+1 for workers and for threads alike
SLOW_BODIES = WORKERS + 1


class Trickler:
    """Open slow sockets and keep each sending one byte every `every` seconds; note when each is closed."""

    def __init__(self, port: int, every: float = 0.3) -> None:
        self.port = port
        self.every = every
        self.sockets: list[socket.socket] = []
        self.closed_after: dict[int, float] = {}
        self.opened_at: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def open(self, head: bytes) -> None:
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(head)
        s.setblocking(False)
        self.opened_at[len(self.sockets)] = time.monotonic()
        self.sockets.append(s)

    def start(self) -> Trickler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for number, s in enumerate(self.sockets):
                if number in self.closed_after:
                    continue
                try:
                    if s.recv(1) == b"":
                        raise ConnectionResetError
                except BlockingIOError:  # still open, nothing said: keep trickling
                    try:
                        s.send(b"x")
                        continue
                    except OSError:
                        pass
                except OSError:
                    pass
                self.closed_after[number] = time.monotonic() - self.opened_at[number]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.sockets:
            s.close()


def _deployed(tmp_path: Path, sqlite_template: Path) -> str:
    """A SQLite database with deployment "churn" (champion only); its URL."""
    path = tmp_path / "mlcanary.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    store = Store(Database(url))
    mlpipes.deploy(store, "churn", mlpipes.register(store, tmp_path, version="1"))
    store.db.dispose()
    return url


@pytest.fixture
def serving(tmp_path: Path, sqlite_template: Path, launch: Callable[..., Server]) -> Server:
    url = _deployed(tmp_path, sqlite_template)
    server = launch("serve", url, workers=WORKERS, threads=THREADS, read_timeout_s=READ_TIMEOUT_S)
    server.wait_ready(timeout=90)
    return server


def test_more_slowloris_sockets_than_workers_and_threads_leave_health_and_scoring_answering(
    serving: Server,
) -> None:
    trickler = Trickler(serving.port)
    for _ in range(SLOW_HEADERS):  # a head that never ends
        trickler.open(b"POST /v1/models/churn/invocations HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    for _ in range(SLOW_BODIES):  # a whole head, then a body that takes for ever
        trickler.open(
            b"POST /v1/models/churn/invocations HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
    trickler.start()
    try:
        time.sleep(0.5)  # the slow sockets are accepted and waiting before any fast request
        answered = []
        budget = READ_TIMEOUT_S / 2  # each answer must come well before a slow socket could give up
        with httpx.Client(base_url=serving.base_url, timeout=budget) as client:
            for n in range(10):
                health = client.get("/healthz", headers={"Connection": "close"})
                scored = client.post(
                    "/v1/models/churn/invocations", json=body(1, n), headers={"Connection": "close"}
                )
                answered.append((health.status_code, scored.status_code))
        assert answered == [(200, 200)] * 10
        # no slow socket has been closed yet (they are within their read timeout) ...
        early = dict(trickler.closed_after)
        assert all(after >= READ_TIMEOUT_S for after in early.values()), early
        # ... and each one is closed by the server once it has had its read timeout (the event loop looks once a second)
        deadline = time.monotonic() + 3 * READ_TIMEOUT_S
        total = SLOW_HEADERS + SLOW_BODIES
        while len(trickler.closed_after) < total and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        trickler.stop()
    assert len(trickler.closed_after) == total, trickler.closed_after
    assert all(READ_TIMEOUT_S <= after <= 2 * READ_TIMEOUT_S for after in trickler.closed_after.values()), (
        trickler.closed_after
    )


def _http(path: str, payload: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP answer (status, body) from a blocking socket with a timeout."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed by the server"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed by the server"
        rest += chunk
    return int(head.split()[1]), rest[:length]


def test_a_kept_alive_client_that_stalls_after_its_answer_does_not_hold_the_only_thread(
    tmp_path: Path, sqlite_template: Path, launch: Callable[..., Server]
) -> None:
    """One worker, one thread, the longest wait for a next request (100 ms): client A is answered, then
    sends half of its next request and stalls. The thread that answered A waits for that request only
    its 100 ms and gives the half back to the event loop: client B, sent after A's half, is answered
    while A's request is still incomplete, and A, completing it later, gets its own answer (its first
    bytes were not lost)."""
    url = _deployed(tmp_path, sqlite_template)
    server = launch(
        "router", url, workers=1, threads=1, read_timeout_s=READ_TIMEOUT_S, next_request_wait_ms=100
    )
    server.wait_ready(timeout=90)
    endpoint = "/v1/models/churn/invocations"
    first, second = (json.dumps(body(1, n)).encode() for n in (0, 1))
    with httpx.Client(base_url=server.base_url, timeout=READ_TIMEOUT_S) as client:
        expected = client.post(endpoint, content=second, headers={"Content-Type": "application/json"}).json()
    a = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT_S)
    b = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT_S)
    try:
        a.sendall(_http(endpoint, first))
        assert _answer(a)[0] == 200
        stalled = _http(endpoint, second)
        a.sendall(stalled[: len(stalled) // 2])  # at once: the thread that answered A is waiting for it
        b.sendall(_http(endpoint, first))
        assert _answer(b)[0] == 200  # the only thread is free for B: A's half went back to the event loop
        a.sendall(stalled[len(stalled) // 2 :])
        status, answer = _answer(a)
        assert (status, json.loads(answer)) == (200, expected)
    finally:
        a.close()
        b.close()
