"""The upstream connection pool's HTTP/1.1 client against scripted raw-socket servers (router.backends.connections)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from router.backends.connections import ConnectError, ConnectionPool, Timeout

Script = Callable[[socket.socket, list[bytes]], None]


@pytest.fixture
def scripted() -> Iterator[Callable[..., tuple[str, list[bytes], list[int]]]]:
    """Serve connections with a script each (conn, requests so far); return (url, requests, accepted)."""
    listeners: list[socket.socket] = []

    def start(*scripts: Script) -> tuple[str, list[bytes], list[int]]:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        requests: list[bytes] = []
        accepted: list[int] = []

        def serve() -> None:
            for script in scripts:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                accepted.append(1)
                with conn:
                    script(conn, requests)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/v2/models/m/infer", requests, accepted

    yield start
    for listener in listeners:
        listener.close()


def read_request(conn: socket.socket, requests: list[bytes]) -> bytes:
    """Read one whole request (head and Content-Length body) and keep it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    requests.append(data[: len(head) + 4] + body)
    return body


def answers(*replies: bytes, pieces: int = 1) -> Script:
    """A script answering each request on the connection with the next reply, sent in `pieces` writes."""

    def script(conn: socket.socket, requests: list[bytes]) -> None:
        for reply in replies:
            read_request(conn, requests)
            step = max(1, len(reply) // pieces)
            for start in range(0, len(reply), step):
                conn.sendall(reply[start : start + step])
                if pieces > 1:
                    threading.Event().wait(0.005)

    return script


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def test_a_request_is_one_write_with_host_length_and_the_callers_headers(
    scripted: Callable[..., tuple[str, list[bytes], list[int]]],
) -> None:
    url, requests, _ = scripted(answers(OK))
    pool = ConnectionPool(url, size=1, timeout=5)
    reply = pool.request("POST", url + "?x=1", b'{"a":1}', {"Content-Type": "application/json"})
    assert (reply.status, reply.body) == (200, b'{"ok":true}')
    port = url.split(":")[2].split("/")[0]
    assert requests == [
        b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
        b"Accept-Encoding: identity\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n"
        b'{"a":1}'
    ]
    pool.close()


def test_a_get_has_no_content_length_and_answers_are_reused_on_one_connection(
    scripted: Callable[..., tuple[str, list[bytes], list[int]]],
) -> None:
    url, requests, accepted = scripted(answers(OK, OK, OK))
    pool = ConnectionPool(url, size=1, timeout=5)
    for _ in range(3):
        assert pool.request("GET", url).body == b'{"ok":true}'
    assert len(accepted) == 1
    assert b"content-length" not in requests[0].lower()
    pool.close()


@pytest.mark.parametrize("pieces", [1, 7])
def test_bodies_by_length_and_chunked_arrive_whole_however_they_are_split(
    scripted: Callable[..., tuple[str, list[bytes], list[int]]], pieces: int
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"ok\r\n7\r\n":true}\r\n0\r\nX-Trailer: 1\r\n\r\n'
    )
    big = b"x" * 300_000
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(big)).encode() + b"\r\n\r\n" + big
    url, _, accepted = scripted(answers(chunked, sized, OK, pieces=pieces))
    pool = ConnectionPool(url, size=1, timeout=5)
    assert pool.request("POST", url, b"{}").body == b'{"ok":true}'
    assert pool.request("POST", url, b"{}").body == big
    assert pool.request("POST", url, b"{}").body == b'{"ok":true}'
    assert len(accepted) == 1  # all three on one kept-alive connection
    pool.close()


def test_interim_answers_are_skipped_and_204_has_no_body(
    scripted: Callable[..., tuple[str, list[bytes], list[int]]],
) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    url, _, accepted = scripted(answers(interim, b"HTTP/1.1 204 No Content\r\n\r\n", OK))
    pool = ConnectionPool(url, size=1, timeout=5)
    assert pool.request("POST", url, b"{}").body == b'{"ok":true}'
    assert (pool.request("POST", url, b"{}").status, pool.request("POST", url, b"{}").status) == (204, 200)
    assert len(accepted) == 1
    pool.close()


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nok",  # no length: the body ends with the connection
    ],
)
def test_a_connection_the_answer_closes_is_not_reused(
    scripted: Callable[..., tuple[str, list[bytes], list[int]]], first: bytes
) -> None:
    url, _, accepted = scripted(answers(first), answers(OK))
    pool = ConnectionPool(url, size=1, timeout=5)
    assert pool.request("POST", url, b"{}").body == b"ok"
    assert pool.request("POST", url, b"{}").body == b'{"ok":true}'
    assert len(accepted) == 2
    pool.close()


def test_an_idle_connection_the_server_closed_is_replaced_but_a_fresh_one_is_not_retried(
    scripted: Callable[..., tuple[str, list[bytes], list[int]]],
) -> None:
    def close_after_reading(conn: socket.socket, requests: list[bytes]) -> None:
        read_request(conn, requests)

    url, _, accepted = scripted(answers(OK), answers(OK), close_after_reading)
    pool = ConnectionPool(url, size=1, timeout=5)
    assert pool.request("POST", url, b"{}").status == 200
    threading.Event().wait(0.1)  # the first connection is closed by now
    assert pool.request("POST", url, b"{}").status == 200  # retried once on a fresh connection
    pool.close()
    pool = ConnectionPool(url, size=1, timeout=5)
    with pytest.raises(ConnectError, match="RemoteDisconnected"):
        pool.request("POST", url, b"{}")  # a fresh connection closed without an answer
    assert len(accepted) == 3


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "middle of an answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    ],
)
def test_a_malformed_or_cut_answer_is_a_connect_error(
    scripted: Callable[..., tuple[str, list[bytes], list[int]]], reply: bytes, match: str
) -> None:
    url, _, _ = scripted(answers(reply))
    pool = ConnectionPool(url, size=1, timeout=5)
    with pytest.raises(ConnectError, match=match):
        pool.request("POST", url, b"{}")
    pool.close()


def test_a_server_that_does_not_answer_is_a_timeout_and_a_closed_port_a_connect_error(
    scripted: Callable[..., tuple[str, list[bytes], list[int]]],
) -> None:
    release = threading.Event()

    def silent(conn: socket.socket, requests: list[bytes]) -> None:
        read_request(conn, requests)
        release.wait(5)

    url, _, _ = scripted(silent)
    pool = ConnectionPool(url, size=1, timeout=0.3)
    with pytest.raises(Timeout):
        pool.request("POST", url, b"{}")
    release.set()
    pool.close()
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    closed = ConnectionPool(f"http://127.0.0.1:{port}/", size=1, timeout=1)
    with pytest.raises(ConnectError):
        closed.request("GET", f"http://127.0.0.1:{port}/")


def test_header_injection_is_refused_before_anything_is_sent() -> None:
    pool = ConnectionPool("http://127.0.0.1:9/", size=1, timeout=1)
    with pytest.raises(ValueError, match="invalid header"):
        pool.request("POST", "http://127.0.0.1:9/x", b"{}", {"X-A": "1\r\nX-B: 2"})
