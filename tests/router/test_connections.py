"""The upstream connection pool (router.backends.connections) against raw servers on loopback.

Each server here is a listening socket answering with exact bytes, so the answers a model server
may send (chunked, ended by the connection, refused keep-alive, trickled, garbage, oversized) are
what the pool reads, not what an HTTP library would have normalised.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from router.backends.connections import ConnectError, ConnectionPool, Timeout


class RawServer:
    """Accept connections on loopback; `answer(conn, request_bytes)` replies to each request read."""

    def __init__(self, answer: Callable[[socket.socket, bytes], bool]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v2/models/m/infer"
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the pool may drop a connection mid-answer
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                if not self.answer(conn, body):
                    return  # the answer closes the connection

    def close(self) -> None:
        self.listener.close()


def replying(data: bytes, *, keep: bool = True) -> Callable[[socket.socket, bytes], bool]:
    """An answer sending these exact bytes to every request, then closing the connection unless keep."""

    def answer(conn: socket.socket, body: bytes) -> bool:
        conn.sendall(data)
        return keep

    return answer


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, bytes], bool]], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Callable[[socket.socket, bytes], bool]) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_chunked_answer_is_read_whole_and_the_connection_kept(raw_server: Callable[..., RawServer]) -> None:
    def answer(conn: socket.socket, body: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.01)  # the chunks in separate segments
        conn.sendall(b'5\r\n{"a":\r\n')
        conn.sendall(b"2\r\n1}\r\n0\r\n\r\n")
        return True

    server = raw_server(answer)
    pool = ConnectionPool(server.url, size=1, timeout=5)
    replies = [pool.request("POST", server.url, b"{}") for _ in range(3)]
    assert [(r.status, r.body) for r in replies] == [(200, b'{"a":1}')] * 3
    assert server.connections == 1
    pool.close()


def test_an_answer_ended_by_the_connection_is_read_and_the_connection_not_reused(
    raw_server: Callable[..., RawServer],
) -> None:
    server = raw_server(
        replying(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"outputs": []}', keep=False)
    )
    pool = ConnectionPool(server.url, size=1, timeout=5)
    replies = [pool.request("POST", server.url, b"{}") for _ in range(2)]
    assert [(r.status, r.body) for r in replies] == [(200, b'{"outputs": []}')] * 2
    assert server.connections == 2
    pool.close()


def test_a_server_that_refuses_keep_alive_gets_a_new_connection_each_time(
    raw_server: Callable[..., RawServer],
) -> None:
    refusal = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy"
    server = raw_server(replying(refusal, keep=False))
    pool = ConnectionPool(server.url, size=1, timeout=5)
    replies = [pool.request("POST", server.url, b"{}") for _ in range(3)]
    assert [(r.status, r.body) for r in replies] == [(503, b"busy")] * 3
    assert server.connections == 3
    pool.close()


def test_the_request_is_what_http_client_would_send(raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    pool = ConnectionPool(server.url, size=1, timeout=5)
    pool.request("POST", server.url, b'{"x": 1}', {"Content-Type": "application/json"})
    pool.request("GET", server.url.removesuffix("/infer") + "/ready?verbose=1")
    post, get = server.requests
    assert post == (
        b"POST /v2/models/m/infer HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{server.port}\r\n".encode()
        + b"Accept-Encoding: identity\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n"
        + b'{"x": 1}'
    )
    assert get.startswith(b"GET /v2/models/m/ready?verbose=1 HTTP/1.1\r\n")
    assert b"content-length" not in get.lower()  # a GET without a body announces none
    pool.close()


def test_a_server_that_trickles_its_answer_times_out_within_the_timeout_not_per_read(
    raw_server: Callable[..., RawServer],
) -> None:
    """Each byte comes well within the timeout; the answer as a whole does not: Timeout."""
    stop = threading.Event()

    def answer(conn: socket.socket, body: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b"x")
            except OSError:
                return False
            time.sleep(0.05)
        return False

    server = raw_server(answer)
    pool = ConnectionPool(server.url, size=1, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(Timeout):
        pool.request("POST", server.url, b"{}")
    elapsed = time.monotonic() - started
    stop.set()
    assert elapsed < 2.0  # http.client's per-read timeout waited for the last of 100,000 bytes: ~80 min
    pool.close()


def test_an_answer_that_is_not_http_is_a_connect_error_naming_it(
    raw_server: Callable[..., RawServer],
) -> None:
    server = raw_server(replying(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    pool = ConnectionPool(server.url, size=1, timeout=5)
    with pytest.raises(ConnectError, match="not HTTP/1.1"):
        pool.request("POST", server.url, b"{}")
    pool.close()


def test_an_answer_larger_than_the_limit_is_refused(raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300_000))
    small = ConnectionPool(server.url, size=1, timeout=5, max_answer_bytes=100_000)
    with pytest.raises(ConnectError, match="larger than 100000 bytes"):
        small.request("POST", server.url, b"{}")
    small.close()
    large = ConnectionPool(server.url, size=1, timeout=5)
    assert len(large.request("POST", server.url, b"{}").body) == 300_000
    large.close()


def test_a_server_that_closes_in_the_middle_of_its_answer_is_not_retried(
    raw_server: Callable[..., RawServer],
) -> None:
    """Only a reused connection closed before any byte of the answer is sent again (keep-alive expired)."""

    server = raw_server(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial", keep=False))
    pool = ConnectionPool(server.url, size=1, timeout=5)
    with pytest.raises(ConnectError, match="in the middle of its answer"):
        pool.request("POST", server.url, b"{}")
    assert len(server.requests) == 1
    pool.close()


def test_a_refused_connection_is_a_connect_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v2/models/m/infer"
    listener.close()
    pool = ConnectionPool(url, size=1, timeout=5)
    with pytest.raises(ConnectError, match="ConnectionRefusedError"):
        pool.request("POST", url, b"{}")
    pool.close()


def test_requests_beyond_the_pool_size_wait_for_a_free_connection_up_to_the_timeout(
    raw_server: Callable[..., RawServer],
) -> None:
    def echo(conn: socket.socket, body: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        return True

    server = raw_server(echo)
    pool = ConnectionPool(server.url, size=1, timeout=0.3)
    assert pool._checkout() is None  # the only slot taken (a request in flight), no idle connection
    with pytest.raises(Timeout, match="no free connection"):
        pool.request("POST", server.url, b"late")
    answers: list[bytes] = []
    waiting = threading.Thread(target=lambda: answers.append(pool.request("POST", server.url, b"waits").body))
    waiting.start()
    time.sleep(0.1)
    assert answers == []  # still waiting for the slot
    pool._checkin(None)  # the request in flight is done: the waiting one goes
    waiting.join(5)
    assert answers == [b"waits"]
    assert pool.request("POST", server.url, b"again").body == b"again"
    assert server.connections == 1  # the waiting request's connection was kept and reused
    pool.close()
