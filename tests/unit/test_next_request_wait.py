"""The serving thread waits a moment for a kept-alive connection's next request and serves it itself.

controller.server.ReadBufferingWorker.handle, driven directly on a real loopback TCP connection with
a real gunicorn configuration, parser and WSGI app (no gunicorn event loop: the test plays its part
by handing the first request to the thread as the loop does). What the wait must do: serve the
next requests that come within it on the same call, without the event loop; give a connection back
as soon as its client takes its time, with a partly sent request's bytes kept for the event loop
(a slow client holds the thread no longer than the wait); not wait at all while requests queue for a
thread, nor for a connection whose last wait found nothing, nor when the setting is 0.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import TConn

from controller.config import ConfigError, Settings
from controller.server import ReadBufferingWorker, ThreadPool, worker_class


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def _answers(client: socket.socket, count: int) -> list[bytes]:
    """Read count answers (the apps' bodies) from client."""
    data = b""
    bodies: list[bytes] = []
    while len(bodies) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(data) >= head_end + 4 + length:
                bodies.append(data[head_end + 4 : head_end + 4 + length])
                data = data[head_end + 4 + length :]
                continue
        chunk = client.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    return bodies


class Harness:
    """A worker (its real __init__, a real config) and one loopback connection to hand to its handle()."""

    def __init__(self, wait_ms: float) -> None:
        cfg = Config()
        cfg.set("keepalive", 5)
        cfg.set("threads", 1)
        cls = worker_class(30.0, "off", wait_ms)
        self.worker = cls(0, os.getppid(), [], None, 30, cfg, Logger(cfg))
        self.worker.wsgi = _app
        self.worker.tpool = ThreadPool(1)
        listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(listener.getsockname())
        self.client.settimeout(5)
        server, address = listener.accept()
        listener.close()
        timed = self.worker._socket_class(server.family, server.type, server.proto, fileno=server.detach())
        self.conn = TConn(cfg, timed, address, ("127.0.0.1", 0))

    def handle(self, first: bytes) -> Any:
        """Give the thread a request the event loop has read whole (as _dispatch does), and serve it."""
        self.conn.init()
        self.conn.parser.unreader.unread(first)
        self.conn.data_ready = True
        return self.worker.handle(self.conn)

    def close(self) -> None:
        self.client.close()
        self.conn.close()
        self.worker.tpool.shutdown(wait=False)
        self.worker.tmp.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    made: list[Harness] = []

    def make(wait_ms: float = 1000.0) -> Harness:  # long: a loaded machine must not make a test miss
        made.append(Harness(wait_ms))
        return made[-1]

    yield make  # type: ignore[misc]
    for one in made:
        one.close()


class _Client(threading.Thread):
    """A client that sends each next request as soon as it has the answer to the one before."""

    def __init__(self, harness: Harness, first: str, paths: list[str], after: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.harness, self.first, self.paths, self.after = harness, first, paths, after
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            previous = self.first
            for path in self.paths:
                assert _answers(self.harness.client, 1) == [previous.encode()]
                self.harness.client.sendall(_request(path))
                previous = path
            if self.after:
                assert _answers(self.harness.client, 1) == [previous.encode()]
                self.harness.client.sendall(self.after)
        except BaseException as error:  # noqa: BLE001 - reported by done()
            self.error = error

    def done(self) -> None:
        self.join(5)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error


def test_the_next_requests_sent_in_turn_are_served_on_the_same_call_without_the_event_loop(harness) -> None:
    one = harness()
    client = _Client(one, "/a", ["/b", "/c", "/d"])
    assert one.handle(_request("/a")) is True  # keep-alive: the connection goes back to the event loop
    client.done()
    assert one.worker.nr == 4  # a, then b, c, d as they came, on this thread
    assert _answers(one.client, 1) == [b"/d"]
    assert one.conn.next_comes_soon is False  # the wait after /d found nothing: do not wait next time
    assert one.conn.parser.unreader.take_buffered() == b""


def test_a_pipelined_request_already_read_is_served_at_once(harness) -> None:
    one = harness()
    assert one.handle(_request("/a") + _request("/b")) is True
    assert one.worker.nr == 2
    assert _answers(one.client, 2) == [b"/a", b"/b"]


def test_a_request_half_sent_when_the_wait_ends_goes_back_with_its_bytes(harness) -> None:
    one = harness()
    half = _request("/slow")[:12]
    client = _Client(one, "/a", [], after=half)
    assert one.handle(_request("/a")) is True  # given back after the wait, not held until the rest comes
    client.done()
    assert one.worker.nr == 1
    assert one.conn.parser.unreader.take_buffered() == half  # for the event loop to read the rest after
    assert one.conn.next_comes_soon is True  # the client was sending: worth waiting for next time


def test_a_client_that_closes_during_the_wait_leaves_the_connection_to_the_event_loop(harness) -> None:
    one = harness()
    closer = threading.Thread(target=lambda: (_answers(one.client, 1), one.client.shutdown(socket.SHUT_WR)))
    closer.start()
    assert one.handle(_request("/a")) is True
    closer.join(5)
    assert one.worker.nr == 1
    assert one.conn.parser.unreader.take_buffered() == b""


def test_no_wait_while_requests_queue_for_a_thread(harness) -> None:
    one = harness()
    release = threading.Event()
    one.worker.tpool.submit(release.wait, 5)  # the pool's one thread is busy ...
    queued = one.worker.tpool.submit(lambda: None)  # ... and a request waits for it
    try:
        client = _Client(one, "/a", ["/b"])
        assert one.handle(_request("/a")) is True
        assert one.worker.nr == 1  # /b is left to the event loop, which hands it to the queue
        client.done()
    finally:
        release.set()
    queued.result(5)


def test_no_wait_for_a_connection_whose_last_wait_found_nothing_or_with_the_setting_at_zero(harness) -> None:
    slow = harness()
    slow.conn.next_comes_soon = False  # as the last wait left it
    client = _Client(slow, "/a", ["/b"])
    assert slow.handle(_request("/a")) is True
    client.done()
    assert slow.worker.nr == 1

    off = harness(wait_ms=0.0)
    client = _Client(off, "/a", ["/b"])
    assert off.handle(_request("/a")) is True
    client.done()
    assert off.worker.nr == 1


@pytest.mark.parametrize(("raw", "value"), [("0", 0.0), ("2", 2.0), ("0.5", 0.5), ("100", 100.0)])
def test_the_setting_takes_0_to_100_ms(raw: str, value: float) -> None:
    assert Settings.from_env({"MLCANARY_NEXT_REQUEST_WAIT_MS": raw}).next_request_wait_ms == value


@pytest.mark.parametrize("raw", ["-1", "101", "soon"])
def test_the_setting_refuses_anything_else(raw: str) -> None:
    with pytest.raises(ConfigError, match="(?i)next_request_wait_ms"):
        Settings.from_env({"MLCANARY_NEXT_REQUEST_WAIT_MS": raw})


def test_the_default_is_2_ms_in_the_settings_and_the_worker() -> None:
    assert Settings.from_env({}).next_request_wait_ms == 2.0
    assert worker_class(30.0).next_request_wait_s == ReadBufferingWorker.next_request_wait_s == 0.002
