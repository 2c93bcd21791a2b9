"""A small pool of keep-alive HTTP/1.1 connections to one model server, on the standard library.

The router calls an upstream once per request (and per shadow batch); httpx spent ~1.5 ms of CPU
per call here against ~0.4 ms for http.client on the same one-row request (bench/results/
upstream_overhead.md), a third of what the upstream hop costs the router. This pool keeps that
path on http.client: at most `size` connections (a caller waits for a free one up to the timeout),
idle ones reused last-in first-out, a connection that failed dropped. A request that found its
reused connection closed by the server (keep-alive expired) is sent once more on a fresh one, never
on another idle one (after an idle spell they are all stale: retrying on the next one failed the
request, seen as BrokenPipe errors in bench/upstream_overhead.py); model inference is idempotent.

A request goes out in one write, its head and body together (`_OneWrite`): http.client writes the
head and then the body, and a model server on an event loop (uvicorn under MLServer and KServe)
wakes for the head, parses it and waits again for the body: a wake-up and a system call more per
request on each side, on the answer's path.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class ConnectError(OSError):
    """The server could not be reached or dropped the connection before answering."""


class Timeout(TimeoutError):
    """No answer (or no free connection) within the timeout."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


class _OneWrite(http.client.HTTPConnection):
    """http.client's connection, writing a request with a bytes body in one send (module docstring)."""

    def _send_output(self, message_body: object = None, encode_chunked: bool = False) -> None:
        if not isinstance(message_body, bytes) or not message_body or encode_chunked:
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]  # not in typeshed
            return
        self._buffer.extend((b"", b""))  # type: ignore[attr-defined]  # as http.client ends the head
        head = b"\r\n".join(self._buffer)  # type: ignore[attr-defined]
        del self._buffer[:]  # type: ignore[attr-defined]
        self.send(head + message_body)


class _OneWriteTLS(_OneWrite, http.client.HTTPSConnection):
    """The same over TLS."""


class ConnectionPool:
    """Keep-alive connections to the host of a base URL; thread-safe."""

    def __init__(self, url: str, *, size: int, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] = {}
    ) -> Reply:
        """Send one request to an absolute URL on this pool's host; raise ConnectError or Timeout."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not self._slots.acquire(timeout=self.timeout):
            raise Timeout(f"no free connection to {self.host}:{self.port} within {self.timeout:g} s")
        try:
            for attempt in (0, 1):
                # the retry opens a fresh connection: after an idle spell every pooled one may be stale
                connection, reused = self._take(fresh=attempt > 0)
                try:
                    connection.request(method, target, body=body, headers=dict(headers))
                    response = connection.getresponse()
                    data = response.read()
                except TimeoutError as exc:
                    connection.close()
                    raise Timeout(
                        f"{self.host}:{self.port} did not answer within {self.timeout:g} s"
                    ) from exc
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()
                    if reused and attempt == 0 and _stale(exc):
                        continue  # the server closed an idle keep-alive connection: a fresh one
                    raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
                if response.will_close:
                    connection.close()
                else:
                    self._give(connection)
                return Reply(response.status, data)
            raise AssertionError("unreachable")
        finally:
            self._slots.release()

    def _take(self, *, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                if self._idle:
                    return self._idle.pop(), True
        kind = _OneWriteTLS if self.https else _OneWrite
        return kind(self.host, self.port, timeout=self.timeout), False

    def _give(self, connection: http.client.HTTPConnection) -> None:
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


def _stale(exc: BaseException) -> bool:
    return isinstance(
        exc,
        http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError | http.client.BadStatusLine,
    )
