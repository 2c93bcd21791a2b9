"""The plain path's answer write (controller.server._send_all), on real connected sockets.

Between requests the serving thread leaves a kept-alive connection's socket non-blocking (it waits
for the next request with poll); the answer is then written at once when the socket takes it all,
with no switch of the socket's mode (each switch is a syscall). What the write must still do: send
every byte of an answer larger than the socket takes at once, waiting for a slow reader with the
worker's timeout, and refuse a reader that never reads once the timeout has passed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from controller.server import _send_all, _TimedSocket


class _Timed(_TimedSocket):
    __slots__ = ()
    timeout_s = 2.0


@pytest.fixture
def pair() -> Iterator[tuple[_Timed, socket.socket]]:
    """(the worker's side, the client's side): a loopback TCP connection with small buffers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
        client.connect(listener.getsockname())
        accepted, _ = listener.accept()
    server = _Timed(accepted.family, accepted.type, accepted.proto, fileno=accepted.detach())
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def _read(client: socket.socket, size: int, delay: float = 0.0) -> bytes:
    time.sleep(delay)
    client.settimeout(10)
    data = bytearray()
    while len(data) < size:
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _send_to_reader(server: _Timed, client: socket.socket, answer: bytes, delay: float) -> list[bytes]:
    """_send_all the answer while a reader starts reading it after `delay`; what the reader got."""
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read(client, len(answer), delay=delay)))
    reader.start()
    _send_all(server, answer)
    reader.join(20)
    return received


def test_an_answer_the_socket_takes_at_once_is_sent_without_switching_the_socket_mode(pair) -> None:
    server, client = pair
    server.setblocking(False)
    _send_all(server, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert server.gettimeout() == 0.0  # still non-blocking: no switch
    assert _read(client, 40) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_an_answer_larger_than_the_socket_takes_is_sent_whole_to_a_slow_reader(pair) -> None:
    server, client = pair
    server.setblocking(False)
    answer = bytes(range(256)) * 8192  # 2 MiB: far more than both buffers hold
    assert _send_to_reader(server, client, answer, delay=0.2) == [answer]
    assert server.gettimeout() == _Timed.timeout_s  # the rest went blocking, with the worker's timeout


def test_an_answer_on_a_timed_socket_is_sent_whole(pair) -> None:
    server, client = pair
    server.setblocking(True)  # as gunicorn leaves a connection it hands to a thread
    answer = b"x" * (512 * 1024)
    assert _send_to_reader(server, client, answer, delay=0.1) == [answer]


def test_a_reader_that_never_reads_is_given_up_after_the_timeout(pair) -> None:
    server, _client = pair
    server.setblocking(False)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _send_all(server, b"x" * (8 * 1024 * 1024))
    assert time.monotonic() - started >= _Timed.timeout_s * 0.9
