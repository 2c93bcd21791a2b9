"""A small pool of keep-alive HTTP/1.1 connections to one model server, on plain sockets.

The router calls an upstream once per request (and per shadow batch), so this client is on the
request path of every proxied request. httpx spent ~1.5 ms of CPU per call against ~0.4 ms for
http.client (bench/results/upstream_overhead.md); http.client in turn spent most of its time
parsing the answer's headers with the email package, and it sends a request's head and body in
two writes (two packets the server reads in two turns). Here a request is one write (head and
body together) and an answer is read into one buffer and split by hand: status line, headers,
then the body by Content-Length, chunked transfer coding, or until the server closes.

At most `size` connections (a caller waits for a free one up to the timeout), idle ones reused
last-in first-out, a connection that failed dropped, one the server asked to close (or whose
answer ended with the connection) not reused. A request that found its reused connection closed
by the server (keep-alive expired: the write fails, or the connection ends before any byte of an
answer) is sent once more on a fresh one; model inference is idempotent. Every socket operation
is bounded by the timeout.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

HEAD_LIMIT = 64 * 1024  # the longest status line + headers accepted from a server
_READ = 256 * 1024
_NO_BODY = (204, 304)


class ConnectError(OSError):
    """The server could not be reached, dropped the connection, or answered something not HTTP/1.x."""


class Timeout(TimeoutError):
    """No answer (or no free connection) within the timeout."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


class _Stale(Exception):
    """A reused connection turned out to be closed before the server answered a byte."""


class _Malformed(Exception):
    """The server's answer is not well-formed HTTP/1.x."""


class _Connection:
    """One keep-alive connection: a socket and the bytes read past the last answer (none, normally)."""

    __slots__ = ("sock", "buffer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _fill(self) -> bool:
        """Read what the socket holds into the buffer; False when the server closed the connection."""
        data = self.sock.recv(_READ)
        if not data:
            return False
        self.buffer += data
        return True

    def exchange(self, message: bytes, method: str) -> tuple[int, bytes, bool]:
        """Send one request, read its answer: (status, body, whether the connection must close)."""
        try:
            self.sock.sendall(message)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _Stale() from exc
        answered = False
        while True:  # skip interim answers (100 Continue, 103 Early Hints)
            end = self.buffer.find(b"\r\n\r\n")
            while end < 0:
                if len(self.buffer) > HEAD_LIMIT:
                    raise _Malformed(f"an answer head longer than {HEAD_LIMIT} bytes")
                try:
                    more = self._fill()
                except ConnectionResetError as exc:
                    if answered or self.buffer:
                        raise
                    raise _Stale() from exc
                if not more:
                    if answered or self.buffer:
                        raise _Malformed("the server closed the connection in the middle of an answer")
                    raise _Stale()
                end = self.buffer.find(b"\r\n\r\n")
            answered = True
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            version, status, headers = _parse_head(head)
            if not 100 <= status < 200 or status == 101:
                break
        close = _closes(version, headers)
        if method == "HEAD" or status in _NO_BODY or 100 <= status < 200:
            return status, b"", close
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, self._read_chunked(), close
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length.split(",")[0])
            except ValueError as exc:
                raise _Malformed(f"Content-Length {length!r}") from exc
            if size < 0:
                raise _Malformed(f"Content-Length {length!r}")
            while len(self.buffer) < size:
                if not self._fill():
                    raise _Malformed("the server closed the connection in the middle of an answer")
            body = bytes(self.buffer[:size])
            del self.buffer[:size]
            return status, body, close
        while self._fill():  # neither: the body ends with the connection
            pass
        body = bytes(self.buffer)
        self.buffer.clear()
        return status, body, True

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            end = self._line_end()
            size_text = bytes(self.buffer[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise _Malformed(f"chunk size {size_text!r}") from exc
            del self.buffer[: end + 2]
            if size == 0:
                while True:  # trailers, up to the empty line
                    end = self._line_end()
                    del self.buffer[: end + 2]
                    if end == 0:
                        return b"".join(parts)
            while len(self.buffer) < size + 2:
                if not self._fill():
                    raise _Malformed("the server closed the connection in the middle of a chunk")
            parts.append(bytes(self.buffer[:size]))
            del self.buffer[: size + 2]

    def _line_end(self) -> int:
        end = self.buffer.find(b"\r\n")
        while end < 0:
            if len(self.buffer) > HEAD_LIMIT:
                raise _Malformed("a chunk line too long")
            if not self._fill():
                raise _Malformed("the server closed the connection in the middle of a chunk")
            end = self.buffer.find(b"\r\n")
        return end


def _parse_head(head: str) -> tuple[str, int, dict[str, str]]:
    """The HTTP version, status and headers (lower-case names; repeated ones joined by commas)."""
    lines = head.split("\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise _Malformed(f"status line {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    key = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and key:  # an obsolete folded continuation of the last header
            headers[key] = f"{headers[key]} {line.strip()}"
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise _Malformed(f"header line {line[:100]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return parts[0], int(parts[1]), headers


def _closes(version: str, headers: Mapping[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


class ConnectionPool:
    """Keep-alive connections to the host of a base URL; thread-safe."""

    def __init__(self, url: str, *, size: int, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        default_port = 443 if self.https else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = name if self.port == default_port else f"{name}:{self.port}"
        self.timeout = timeout
        self._tls: ssl.SSLContext | None = None
        if self.https:
            self._tls = ssl.create_default_context()
            self._tls.set_alpn_protocols(["http/1.1"])
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] = {}
    ) -> Reply:
        """Send one request to an absolute URL on this pool's host; raise ConnectError or Timeout."""
        message = self._message(method, url, body, headers)
        if not self._slots.acquire(timeout=self.timeout):
            raise Timeout(f"no free connection to {self.host}:{self.port} within {self.timeout:g} s")
        try:
            for attempt in (0, 1):
                connection: _Connection | None = None
                reused = False
                try:
                    connection, reused = self._take()
                    status, data, close = connection.exchange(message, method)
                except TimeoutError as exc:
                    if connection is not None:
                        connection.close()
                    raise Timeout(
                        f"{self.host}:{self.port} did not answer within {self.timeout:g} s"
                    ) from exc
                except _Stale as exc:
                    assert connection is not None
                    connection.close()
                    if reused and attempt == 0:
                        continue  # the server closed an idle keep-alive connection: a fresh one
                    raise ConnectError("RemoteDisconnected: the server closed the connection") from exc
                except _Malformed as exc:
                    assert connection is not None
                    connection.close()
                    raise ConnectError(f"BadResponse: {exc}") from exc
                except OSError as exc:
                    if connection is not None:
                        connection.close()
                    raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
                if close or connection.buffer:  # asked to close, or bytes nobody asked for
                    connection.close()
                else:
                    self._give(connection)
                return Reply(status, data)
            raise AssertionError("unreachable")
        finally:
            self._slots.release()

    def _message(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        """The whole request, head and body, to be sent in one write."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}", "Accept-Encoding: identity"]
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"invalid header {name!r}")
            lines.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        if "\r" in target or "\n" in target or " " in target:
            raise ValueError(f"invalid request target {target!r}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def _take(self) -> tuple[_Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock), False

    def _give(self, connection: _Connection) -> None:
        with self._lock:
            if self._closed:
                connection.close()
            else:
                self._idle.append(connection)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
