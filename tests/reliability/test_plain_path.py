"""The worker's plain path: a real `mlcanary router` answers plain scoring requests without gunicorn's
parser, and its answers are the ones gunicorn's own path gives, byte for byte but the Date and the id.

Each request goes over a raw socket, as a client writes it; the router logs (at debug level) each
request it answered on the plain path, so each test also says which path a request took: a plain
one takes it, a request with a query string, a header gunicorn drops, a repeated Content-Length or
a chunked body goes through gunicorn's parser as before.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import mlpipes
import pytest
from servers import Server, wait_for

from storage import Database, Store

pytestmark = pytest.mark.slow

FRAME, _ = mlpipes.churn_frame(2, seed=21)
BODY = json.dumps({"dataframe_split": json.loads(FRAME.to_json(orient="split", index=False))}).encode()
PLAIN = "answered on the plain path"


@pytest.fixture
def router(tmp_path: Path, sqlite_template: Path, launch: Callable[..., Server]) -> Server:
    path = tmp_path / "mlcanary.db"
    shutil.copyfile(sqlite_template, path)
    store = Store(Database(f"sqlite:///{path}"))
    mlpipes.deploy(store, "churn", mlpipes.register(store, tmp_path, version="1"))
    store.db.dispose()
    server = launch("router", f"sqlite:///{path}", workers=1, log_level="debug")
    server.wait_ready(timeout=90)
    return server


def _request(target: str = "/v1/models/churn/invocations", *, version: str = "1.1", rid: str = "r1",
             headers: str = "", body: bytes = BODY) -> bytes:  # fmt: skip
    return (
        f"POST {target} HTTP/{version}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: {rid}\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _read_answer(sock: socket.socket, buffer: bytearray) -> tuple[str, dict[str, str], bytes]:
    """Read one answer (status line, headers, Content-Length body) from the socket."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed before answering: {bytes(buffer)!r}"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n")
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(headers["Content-Length"])
    while len(buffer) < end + 4 + length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed in the middle of an answer"
        buffer += chunk
    body = bytes(buffer[end + 4 : end + 4 + length])
    del buffer[: end + 4 + length]
    return lines[0], headers, body


def _exchange(server: Server, *requests: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Send the requests on one connection, in one write (pipelined), and read their answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        buffer = bytearray()
        return [_read_answer(sock, buffer) for _ in requests]


def _plain_count(server: Server) -> int:
    return server.log.read_text(errors="replace").count(PLAIN)


def _same(answer: tuple[str, dict[str, str], bytes], rid: str) -> tuple[str, dict[str, str], bytes]:
    status, headers, body = answer
    kept = {k: v.replace(rid, "<id>") for k, v in headers.items() if k != "Date"}
    return status, kept, body.replace(rid.encode(), b"<id>")


def test_a_plain_request_is_answered_on_the_plain_path_as_gunicorns_path_answers_it(router: Server) -> None:
    [plain] = _exchange(router, _request(rid="plain-1"))
    wait_for(lambda: _plain_count(router) == 1, 10, "the plain path's log line")
    # the same request with a query string: the scoring route ignores it, gunicorn's parser reads it
    [parsed] = _exchange(router, _request("/v1/models/churn/invocations?from=test", rid="parsed-1"))
    time.sleep(0.3)
    assert _plain_count(router) == 1
    assert plain[0] == "HTTP/1.1 200 OK"
    assert _same(plain, "plain-1") == _same(parsed, "parsed-1")
    assert set(plain[1]) >= {"Server", "Date", "Connection", "Content-Type", "Content-Length", "X-Request-Id"}
    assert plain[1]["Connection"] == "keep-alive"
    assert len(json.loads(plain[2])["predictions"]) == len(FRAME)
    # an error answer too: a body that is not JSON
    [bad_plain] = _exchange(router, _request(rid="plain-2", body=b"{nope"))
    [bad_parsed] = _exchange(
        router, _request("/v1/models/churn/invocations?x", rid="parsed-2", body=b"{nope")
    )
    assert bad_plain[0] == "HTTP/1.1 400 BAD REQUEST"
    assert _same(bad_plain, "plain-2") == _same(bad_parsed, "parsed-2")
    wait_for(lambda: _plain_count(router) == 2, 10, "the plain path's log line")


def test_pipelined_requests_keep_their_order_and_http_1_0_closes(router: Server) -> None:
    answers = _exchange(router, *(_request(rid=f"pipe-{n}") for n in range(3)))
    assert [a[1]["X-Request-Id"] for a in answers] == ["pipe-0", "pipe-1", "pipe-2"]
    assert all(a[0] == "HTTP/1.1 200 OK" for a in answers)
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(_request(version="1.0", rid="old"))
        buffer = bytearray()
        status, headers, _ = _read_answer(sock, buffer)
        assert (status, headers["Connection"]) == ("HTTP/1.0 200 OK", "close")
        assert sock.recv(10) == b""  # closed after the answer
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(_request(rid="bye", headers="Connection: close\r\n"))
        status, headers, _ = _read_answer(sock, bytearray())
        assert headers["Connection"] == "close"
        assert sock.recv(10) == b""
    wait_for(lambda: _plain_count(router) == 5, 10, "the plain path's log lines")


def test_requests_that_are_not_plain_take_gunicorns_path_and_are_answered_as_before(router: Server) -> None:
    # a header name with "_" (gunicorn drops it): answered, on gunicorn's path
    [dropped] = _exchange(router, _request(rid="underscore", headers="X_Routing_Key: k\r\n"))
    assert dropped[0] == "HTTP/1.1 200 OK"
    # a forwarded scheme (gunicorn trusts it from some peers only)
    [forwarded] = _exchange(router, _request(rid="forwarded", headers="X-Forwarded-Proto: https\r\n"))
    assert forwarded[0] == "HTTP/1.1 200 OK"
    # a repeated Content-Length: gunicorn refuses it
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(_request(rid="twice", headers=f"Content-Length: {len(BODY)}\r\n"))
        answer = sock.recv(65536)
        assert re.match(rb"HTTP/1\.1 400 ", answer), answer
    # a chunked body
    chunked = (
        b"POST /v1/models/churn/invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(BODY):x}\r\n".encode() + BODY + b"\r\n0\r\n\r\n"
    )
    [answer] = _exchange(router, chunked)
    assert answer[0] == "HTTP/1.1 200 OK"
    # a body that arrives in two parts: read whole by the event loop, then plain
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        whole = _request(rid="halves")
        sock.sendall(whole[:-20])
        time.sleep(0.2)
        sock.sendall(whole[-20:])
        status, headers, _ = _read_answer(sock, bytearray())
        assert (status, headers["X-Request-Id"]) == ("HTTP/1.1 200 OK", "halves")
    wait_for(lambda: _plain_count(router) == 1, 10, "the plain path's log line")
    time.sleep(0.3)
    assert _plain_count(router) == 1  # only the last one
