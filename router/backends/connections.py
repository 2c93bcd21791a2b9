"""A small pool of keep-alive HTTP/1.1 connections to one model server: sockets and httptools' parser.

The router calls an upstream once per request (and per shadow batch), on the answer's path. httpx
spent ~1.5 ms of CPU per call here, http.client ~0.4 ms on a warm thread and ~0.55 ms on one that
idled for the model's answer (its response object, buffered file and email-package header parsing:
most of a proxied request's own cost at one request at a time; BENCHMARKS.md, "Eleventh
session"). So a request here is one `sendall` of its head and body together and the answer is read
with `recv` into httptools' parser (llhttp, the parser under uvicorn): the status, the framing
(Content-Length, chunked, or the end of the connection) and keep-alive are the parser's; nothing
else of the headers is kept. One write matters to the server too: a model server on an event loop
(uvicorn under MLServer and KServe) woke once for the head and once more for the body when the
two came in separate sends.

At most `size` connections (a caller waits for a free one up to the timeout), idle ones reused
last-in first-out, a connection that failed dropped. The timeout bounds the whole answer (the
first byte and the last), so a server that trickles bytes cannot hold a thread longer. A request
that found its reused connection closed by the server (keep-alive expired: no byte of answer) is
sent once more on a fresh one, never on another idle one (after an idle spell they are all stale:
retrying on the next one failed the request, seen as BrokenPipe errors in
bench/upstream_overhead.py); model inference is idempotent.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools


class ConnectError(OSError):
    """The server could not be reached, dropped the connection before answering, or answered garbage."""


class Timeout(TimeoutError):
    """No answer (or no free connection) within the timeout."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


MAX_ANSWER_BYTES = 256 * 1024 * 1024  # a server answering more than this is broken: ConnectError
_RECV_BYTES = 64 * 1024  # below malloc's mmap threshold: a larger read maps and unmaps memory each time


class _Stale(ConnectError):
    """A reused connection the server had closed: not one byte of the answer came."""


class _Answer:
    """httptools' callbacks for one answer: its body parts, whether it is framed, whether it is whole."""

    __slots__ = ("parser", "parts", "size", "framed", "headers_done", "keep_alive", "done")

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.parts: list[bytes] = []
        self.size = 0
        self.framed = False  # Content-Length or chunked: else the body ends with the connection
        self.headers_done = False
        self.keep_alive = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.parser is not None:  # the parser forgets it once the message has ended
            self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class _Connection:
    """One keep-alive connection: send a request in one write, read its answer whole."""

    __slots__ = ("sock", "timeout", "max_bytes")

    def __init__(
        self, host: str, port: int, timeout: float, tls: ssl.SSLContext | None, max_bytes: int
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.timeout = timeout
        self.max_bytes = max_bytes

    def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Send the request and read the answer: (status, body, whether the connection stays open)."""
        sock = self.sock
        deadline = time.monotonic() + self.timeout
        sock.sendall(request)
        answer = _Answer()
        parser = answer.parser
        assert parser is not None
        received = timed = False
        while not answer.done:
            data = sock.recv(_RECV_BYTES)
            if not data:
                if answer.headers_done and not answer.framed:
                    break  # the body ends with the connection
                if not received:
                    raise _Stale("the server closed the connection before answering")
                raise ConnectError("the server closed the connection in the middle of its answer")
            received = True
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise ConnectError(f"the server's answer is not HTTP/1.1: {exc}") from exc
            if answer.size > self.max_bytes:
                raise ConnectError(f"the answer is larger than {self.max_bytes} bytes")
            if not answer.done:  # another read: the timeout bounds the whole answer, not each read
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the answer did not end within the timeout")
                sock.settimeout(left)
                timed = True
        if timed:
            sock.settimeout(self.timeout)
        answer.parser = None  # the parser holds the answer: no cycle left for the collector
        body = answer.parts[0] if len(answer.parts) == 1 else b"".join(answer.parts)
        return parser.get_status_code(), body, answer.done and answer.keep_alive

    def close(self) -> None:
        self.sock.close()


class ConnectionPool:
    """Keep-alive connections to the host of a base URL; thread-safe."""

    def __init__(
        self, url: str, *, size: int, timeout: float, max_answer_bytes: int = MAX_ANSWER_BYTES
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        default_port = 443 if self.https else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = host if self.port == default_port else f"{host}:{self.port}"
        self._tls = ssl.create_default_context() if self.https else None
        self.size = size
        self._busy = 0  # requests holding a slot (each on one connection)
        self._waiting = 0  # requests waiting for a slot
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._closed = False

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] = {}
    ) -> Reply:
        """Send one request to an absolute URL on this pool's host; raise ConnectError or Timeout."""
        message = self._message(method, url, body, headers)
        idle = self._checkout()
        keep = False
        connection: _Connection | None = None
        try:
            for attempt in (0, 1):
                reused = attempt == 0 and idle is not None
                connection = None
                try:
                    # the retry opens a fresh connection: after an idle spell every pooled one may be stale
                    connection = idle if reused and idle is not None else self._open()
                    status, data, keep = connection.exchange(message)
                except TimeoutError as exc:
                    if connection is not None:
                        connection.close()
                    raise Timeout(
                        f"{self.host}:{self.port} did not answer within {self.timeout:g} s"
                    ) from exc
                except OSError as exc:
                    if connection is not None:
                        connection.close()
                    if reused and attempt == 0 and _stale(exc):
                        continue  # the server closed an idle keep-alive connection: a fresh one
                    if isinstance(exc, ConnectError):
                        raise
                    raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
                if not keep:
                    connection.close()
                return Reply(status, data)
            raise AssertionError("unreachable")
        finally:
            self._checkin(connection if keep else None)

    def _message(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        """The request's bytes: its head (as http.client writes it) and its body, for one write."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("latin-1") + (body or b"")

    def _checkout(self) -> _Connection | None:
        """Take a slot (waiting up to the timeout) and the idle connection used last, if there is one."""
        with self._lock:
            if self._busy >= self.size:
                self._waiting += 1
                try:
                    if not self._freed.wait_for(lambda: self._busy < self.size, self.timeout):
                        raise Timeout(
                            f"no free connection to {self.host}:{self.port} within {self.timeout:g} s"
                        )
                finally:
                    self._waiting -= 1
            self._busy += 1
            return self._idle.pop() if self._idle else None

    def _open(self) -> _Connection:
        return _Connection(self.host, self.port, self.timeout, self._tls, self.max_answer_bytes)

    def _checkin(self, connection: _Connection | None) -> None:
        """Give the slot back, and the connection with it when it stays open."""
        with self._lock:
            self._busy -= 1
            if connection is not None:
                if self._closed:
                    connection.close()
                else:
                    self._idle.append(connection)
            if self._waiting:
                self._freed.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _stale(exc: BaseException) -> bool:
    return isinstance(exc, _Stale | ConnectionResetError | BrokenPipeError)
