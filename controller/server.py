"""Run a Flask app factory under gunicorn, one app (and one data plane) per worker process.

The app is built inside each worker after the fork (no preload), so every worker starts its own
background threads. On a graceful stop (SIGTERM) gunicorn calls worker_exit, which closes the app's
data plane: queued shadow work and paired outputs are flushed before the worker exits.

The worker model: each worker process runs `threads` serving threads (gunicorn's gthread worker),
so many requests are in flight per process, and its event loop reads every request in full before
a thread sees it (ReadBufferingWorker). A slow client — a slowloris trickling its headers, or a
body sent a byte at a time — then holds a connection and a small buffer in the event loop, never a
thread: the threads only ever score requests that have arrived. A request not fully received
within read_timeout_s of its first wait is dropped. Requests reach the app whole and concurrently,
which is what live-request batching needs: the data plane's batcher (router.batcher) gathers the
requests of the serving threads that want the same version and one of them scores the batch in a
single call, so the GIL passes between the reading threads and scoring once per batch, not once per
request (docs/operations.md, "Worker model" and "Adaptive batching").

Each worker listens on its own socket (SO_REUSEPORT, gunicorn's reuse_port), so the kernel spreads new
connections over the workers. With one shared socket the worker whose event loop is awake wins
nearly every accept: wrk's 16 connections landed 1/15, 2/14 or 16/0 on two workers, and a worker
left with one connection scores one request per call while the other cannot use the second core.
Since the sockets of a reuse_port group may be shared by any process of the same user, `run` first
checks that nothing listens on the port: a second server on it is refused, never silently sharing.

CPU affinity (cpu_affinity, `choose_cpu`): a worker's threads hand every request to each other (the
event loop to a serving thread, the thread back to the loop, the batch leader to its followers), and
on a virtual machine a wake-up that crosses to another core costs far more than one on the same
core: sampled at one request at a time, the syscalls that wake another core took 0.3-0.5 ms each. So
when there are at least as many workers as CPUs the process may use ("auto", the default), each
worker pins itself, before its threads start, to one CPU, spreading the workers evenly: its threads
stay on one core and the kernel balances the rest (the database, model servers, the controller)
around them. With fewer workers than CPUs nothing is pinned (on a large host with a CPU quota,
pinning would tie the workers to cores others may be using); "on" pins always, "off" never.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import os
import re
import select
import selectors
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn import SERVER
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.http import wsgi
from gunicorn.http.message import TOKEN_RE
from gunicorn.workers.gthread import TConn, ThreadWorker

CLOSE_TIMEOUT_S = 20.0
HEAD_LIMIT = 64 * 1024  # a head longer than this goes to the parser, which refuses it (400/431)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r\n]*chunked", re.IGNORECASE)
_EXPECT = re.compile(rb"\r\nexpect[ \t]*:[ \t]*100-continue", re.IGNORECASE)


class _TimedSocket(socket.socket):
    """A client socket whose "blocking" mode has a timeout: a thread never waits on it for ever.

    gunicorn's threads put the socket in blocking mode before reading a request; here that means
    blocking with a timeout of `timeout_s` per operation (a backstop for what the event loop does
    not buffer: bodies above the buffer size, or sent after a 100-continue).
    """

    __slots__ = ()
    timeout_s: float = 30.0
    # the connection stays open after an answer (gunicorn's keepalive is on): the data plane's
    # batcher counts its client as about to send its next request (router.batcher, "returning")
    keeps_alive: bool = False

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(self.timeout_s)
        else:
            super().setblocking(False)


class ThreadPool:
    """The serving threads of a worker: the executor gunicorn's threaded worker submits requests to.

    What `concurrent.futures.ThreadPoolExecutor` does for gunicorn (submit returning a Future,
    shutdown), with one hand-off per request instead of a crowd. The standard executor's idle
    threads all wait on one queue, and a submit there wakes two of them (the one that takes the
    request, and another that finds nothing and goes back to sleep, after taking the GIL from the
    first: at one request at a time, most of the serving thread's waits for the GIL). Here each idle
    thread waits on its own lock and a submit wakes exactly one, the one idle most recently (its
    stack and caches are warm); a request finding no idle thread is queued, and a new thread is
    started while there are fewer than max_workers. Threads are daemons: gunicorn answers the
    requests in flight (up to its graceful timeout) before it shuts the pool down.
    """

    def __init__(self, max_workers: int, name: str = "mlcanary-serve") -> None:
        if max_workers <= 0:
            raise ValueError("max_workers must be positive")
        self.max_workers = max_workers
        self.name = name
        self._lock = threading.RLock()  # shutdown() may run in a signal handler (gunicorn's SIGQUIT)
        self._queue: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self._idle: list[_Slot] = []  # a stack: the thread idle last is woken first
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        item = (future, fn, args)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            if self._idle:
                slot = self._idle.pop()
                slot.item = item
                slot.wake.release()
                return future
            self._queue.append(item)
            if len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._serve, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def queued(self) -> bool:
        """Whether requests wait for a thread (read without the lock: a hint)."""
        return bool(self._queue)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            idle, self._idle = self._idle, []
            threads = list(self._threads)
        for slot in idle:
            slot.item = None
            slot.wake.release()
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _serve(self) -> None:
        slot = _Slot()
        while True:
            item: tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
            with self._lock:
                if self._queue:
                    item = self._queue.popleft()
                elif self._shutdown:
                    return
                else:
                    item = None
                    self._idle.append(slot)
            if item is None:
                slot.wake.acquire()  # released by submit (with an item) or shutdown (without)
                item, slot.item = slot.item, None
                if item is None:
                    return
            future, fn, args = item
            del item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args


class _Slot:
    """An idle serving thread's wake-up: a lock it waits on, released with the work handed to it."""

    __slots__ = ("item", "wake")

    def __init__(self) -> None:
        self.item: tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


def choose_cpu(allowed: list[int], taken: list[int], rank: int) -> int:
    """The CPU a starting worker pins itself to.

    allowed: the CPUs the process may use; taken: the CPU of each sibling worker already pinned;
    rank: this worker's place among the siblings not pinned yet (itself included, by pid). The
    least-used allowed CPUs are the candidates, and the rank picks one, so workers starting at the
    same moment (none pinned yet) spread over distinct CPUs, and a worker replacing one that died
    takes the CPU it left.
    """
    uses = {cpu: 0 for cpu in allowed}
    for cpu in taken:
        if cpu in uses:
            uses[cpu] += 1
    least = min(uses.values())
    candidates = [cpu for cpu in allowed if uses[cpu] == least]
    return candidates[rank % len(candidates)]


def _sibling_workers(parent: int) -> list[int]:
    """The pids of the other workers of this worker's arbiter: its children started as this one was
    (forked, not exec'd: the same command line), so a child such as `serve`'s controller is not one."""
    mine = Path("/proc/self/cmdline").read_bytes()
    siblings = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            pid = int(stat.parent.name)
            if pid != os.getpid() and (stat.parent / "cmdline").read_bytes() == mine:
                siblings.append(pid)
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return siblings


def pin_worker(mode: str, workers: int, parent: int) -> int | None:
    """Pin the calling worker process to one CPU (see the module docstring); the CPU, or None if not pinned."""
    if mode == "off" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2 or (mode == "auto" and workers < len(allowed)):
        return None
    taken: list[int] = []
    unpinned = [os.getpid()]
    for pid in _sibling_workers(parent):
        try:
            cpus = os.sched_getaffinity(pid)
        except OSError:
            continue
        if len(cpus) == 1:
            taken.extend(cpus)
        else:
            unpinned.append(pid)
    cpu = choose_cpu(allowed, taken, sorted(unpinned).index(os.getpid()))
    os.sched_setaffinity(0, {cpu})  # before any thread starts: the threads inherit it
    return cpu


def _complete_request(data: bytearray, buffer_bytes: int) -> bool:
    """Whether data holds a whole request (or as much as the event loop should read of it)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > HEAD_LIMIT
    head = bytes(data[: end + 2])
    if _EXPECT.search(head):
        return True  # the client waits for "100 Continue", which the thread sends
    body = len(data) - end - 4
    if _CHUNKED.search(head):
        return (
            body >= buffer_bytes
            or data.endswith(b"\r\n0\r\n\r\n")
            or data[end + 4 :].startswith(b"0\r\n\r\n")
        )
    found = _CONTENT_LENGTH.search(head)
    length = int(found.group(1)) if found else 0
    return length > buffer_bytes or body >= length


_PLAIN_LINE = re.compile(rb"([A-Z]+) (/[!-~]*) HTTP/1\.([01])")
_PLAIN_HEADER = re.compile(rb"([!#$%&'*+.^`|~0-9A-Za-z-]+):[ \t]*([\t -~]*?)[ \t]*")
# what only gunicorn's own handling gets right: message framing, upgrades, interim answers
_NOT_PLAIN = frozenset({"TRANSFER_ENCODING", "EXPECT", "UPGRADE", "HTTP2_SETTINGS", "TE", "TRAILER"})


@dataclasses.dataclass(frozen=True)
class PlainRequest:
    """A request plain_request read: its line, headers (environ names), the whole body, bytes after it."""

    method: str
    path: str
    version: int  # HTTP/1.x
    headers: dict[str, str]
    body: bytes
    rest: bytes

    @property
    def closes(self) -> bool:
        """Whether the client asks to close after the answer (as gunicorn's Request.should_close)."""
        connection = self.headers.get("HTTP_CONNECTION")
        if connection is not None:
            value = connection.lower().strip(" \t")
            if value == "close":
                return True
            if value == "keep-alive":
                return False
        return self.version == 0

    def environ(self, conn: TConn, base: dict[str, Any]) -> dict[str, Any]:
        """The WSGI environ gunicorn would build for this request (no query, no proxy protocol) on
        the worker's base environ (`gunicorn.http.wsgi.base_environ`)."""
        environ = dict(base)
        server = conn.server if isinstance(conn.server, tuple) else (str(conn.server), "")
        environ.update(self.headers)
        environ.update(
            {
                "wsgi.input": io.BytesIO(self.body),
                "wsgi.multithread": True,
                "wsgi.url_scheme": "http",
                "gunicorn.socket": conn.sock,
                "REQUEST_METHOD": self.method,
                "QUERY_STRING": "",
                "RAW_URI": self.path,
                "SERVER_PROTOCOL": f"HTTP/1.{self.version}",
                "SCRIPT_NAME": "",
                "PATH_INFO": self.path,
                "SERVER_NAME": str(server[0]),
                "SERVER_PORT": str(server[1]),
            }
        )
        if isinstance(conn.client, tuple):
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(conn.client[0]), str(conn.client[1])
        return environ


@dataclasses.dataclass(frozen=True)
class PlainLimits:
    """What `plain_request` reads of gunicorn's configuration, read once per worker: each read of
    gunicorn's Config goes through its `__getattr__` and the setting's validator (~0.5-1 us, a few
    per request on the plain path)."""

    limit_request_line: int
    limit_request_fields: int
    limit_request_field_size: int
    secure_scheme_headers: frozenset[str]

    @classmethod
    def of(cls, cfg: Any) -> PlainLimits:
        return cls(
            cfg.limit_request_line,
            cfg.limit_request_fields,
            cfg.limit_request_field_size,
            frozenset(cfg.secure_scheme_headers),
        )


def plain_request(
    data: bytes, claims: Callable[[str, str], bool], limits: PlainLimits
) -> PlainRequest | None:
    """Read a whole request gunicorn's parser would read the same way, or None.

    Plain: `METHOD /path HTTP/1.0|1.1` with a path of visible ASCII and no query or percent-escape,
    headers of a token name without "_" (gunicorn drops those) and a visible-ASCII value, each at most
    once, within gunicorn's limits, no framing, upgrade or forwarded-scheme header but one
    Content-Length, and the body all there; and the app claims the method and path. Anything else is gunicorn's to parse (and to
    refuse: its 400s and 431s are unchanged). limits: the worker's `PlainLimits`.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    if (
        len(lines[0]) > (limits.limit_request_line or len(lines[0]))
        or len(lines) - 1 > limits.limit_request_fields
    ):
        return None
    line = _PLAIN_LINE.fullmatch(lines[0])
    if line is None or b"?" in line.group(2) or b"%" in line.group(2):
        return None
    method, path = line.group(1).decode(), line.group(2).decode()
    if not claims(method, path):
        return None
    headers: dict[str, str] = {}
    size_limit = limits.limit_request_field_size or len(data)
    for raw in lines[1:]:
        found = _PLAIN_HEADER.fullmatch(raw)
        if found is None or len(raw) > size_limit:
            return None
        field = found.group(1).decode().upper()
        if field in limits.secure_scheme_headers:
            return None  # X-Forwarded-Proto and its kind: gunicorn weighs them by the peer's address
        name = field.replace("-", "_")
        if name in _NOT_PLAIN:
            return None
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + name
        if key in headers:
            return None  # a repeated header: gunicorn joins (or refuses) it
        headers[key] = found.group(2).decode()
    length = headers.get("CONTENT_LENGTH", "0")
    if not length.isdigit() or not length.isascii():
        return None
    start, stop = end + 4, end + 4 + int(length)
    if stop > len(data):
        return None  # the rest of the body is still coming: gunicorn's reader waits for it
    return PlainRequest(method, path, int(line.group(3)), headers, data[start:stop], data[stop:])


def _send_all(sock: socket.socket, data: bytes) -> None:
    """Send all of data: at once when the socket takes it (a non-blocking socket, as the plain path
    leaves it between requests: no mode switch, no wait), else blocking with the socket's timeout."""
    if sock.gettimeout() == 0.0:
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
        sock.setblocking(True)  # the worker's sockets: blocking with a timeout (_TimedSocket)
    sock.sendall(data)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """gunicorn's Date header value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, gunicorn_util.http_date(now))
    return _date_cache[1]


@dataclasses.dataclass
class _AppAnswer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes
    close: Callable[[], Any]

    def head(self, version: int, close: bool) -> bytes:
        """The status line and headers gunicorn writes for this answer (its Response, length known)."""
        lines = [
            f"HTTP/1.{version} {self.status}\r\n",
            f"Server: {SERVER}\r\n",
            f"Date: {_http_date()}\r\n",
            f"Connection: {'close' if close else 'keep-alive'}\r\n",
        ]
        length = None
        for name, value in self.headers:
            if not TOKEN_RE.fullmatch(name) or not wsgi.HEADER_VALUE_RE.fullmatch(value):
                raise ValueError(f"invalid response header {name!r}")
            value = value.strip(" \t")
            if name.lower() == "content-length":
                length = value
            elif gunicorn_util.is_hoppish(name):
                continue
            lines.append(f"{name}: {value}\r\n")
        if length is None:
            lines.append(f"Content-Length: {len(self.body)}\r\n")
        elif int(length) != len(self.body):
            raise ValueError(f"the answer has {len(self.body)} bytes, its Content-Length says {length}")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")


def _call_app(app: Any, environ: dict[str, Any]) -> _AppAnswer:
    """Call a WSGI app and gather its whole answer; the caller closes it once sent (PEP 3333)."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.append

    result = app(environ, start_response)
    close = getattr(result, "close", None) or (lambda: None)
    try:
        written.extend(result)
        if not started:
            raise RuntimeError("the app returned without calling start_response")
    except BaseException:
        close()
        raise
    return _AppAnswer(started[0], list(started[1]), b"".join(written), close)


class ReadBufferingWorker(ThreadWorker):
    """gunicorn's threaded worker whose event loop reads each request in full before a thread runs it.

    Every request — on a new connection or the next one on a kept-alive connection — is read by
    the worker's event loop (non-blocking recv into a buffer) until its head, and its body when the
    head announces one of at most buffer_bytes (Content-Length, or chunked up to the last chunk),
    have arrived; then the bytes go back to the connection's parser and a thread handles the
    request without waiting on the client. A request not complete read_timeout_s after the loop
    started waiting for it is closed. A larger body, or one sent only after "100 Continue", is read
    by the thread, each socket operation bounded by read_timeout_s.

    The thread that answered a kept-alive connection then waits, at most next_request_wait_s
    (2 ms by default), for that connection's next request, reading it as the event loop would, and
    serves it itself. A client that sends its next request as soon as it has an answer (a service
    calling in sequence, a batch job, a load test) then skips the two hand-offs between threads each
    request otherwise takes (the thread handing the connection back to the event loop through its
    pipe, the loop waking a thread for the next request), a good part of a small request's cost:
    the HTTP floor served 14-38% more requests at one connection (three alternated pairs), the
    batching router 13% / 35% more at 16 connections, champion-only / 100% shadow (BENCHMARKS.md,
    "Eighth session"). A request still incomplete when the wait ends goes to the event loop with
    the bytes read so far, so a slow client holds a thread no longer than the wait. A thread waits
    only while no request is queued for a thread, and not for a connection whose last wait found
    nothing (its client takes its time), until one of that connection's requests comes within the
    wait again.

    The plain path: a whole request that is plain (`plain_request`: no query, no percent-escape,
    no header gunicorn would join, drop or frame by, one Content-Length, the body all read) and
    that the app claims (its wsgi_app's `claims(method, path)`: the router's scoring routes,
    router.http.FastScoring) is answered without gunicorn's parser, environ and response objects:
    the thread builds the environ gunicorn would, calls the app and writes the status line and
    headers gunicorn would write (Server, Date, Connection, then the app's), in one send. Those
    objects cost ~0.3 ms of CPU per request on a thread that has idled for the model's answer, on
    the answer's path at one request at a time (BENCHMARKS.md, "Tenth session"). Anything else,
    and every request when an access log or a request hook is configured, goes through gunicorn as
    before; a test compares both paths' answers on a real router.
    """

    alive: bool  # gunicorn's: False once the worker is told to stop
    read_timeout_s: float = 30.0
    buffer_bytes: int = 1024 * 1024
    cpu_affinity: str = "auto"  # auto | on | off (module docstring, "CPU affinity")
    next_request_wait_s: float = 0.002

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[TConn, float] = {}  # connection -> deadline, in start order
        # the configuration, read once: gunicorn's Config computes each setting on every read
        self._tls = bool(self.cfg.is_ssl)
        self._keepalive = self.cfg.keepalive > 0
        self._limits = PlainLimits.of(self.cfg)
        self._socket_class = type(
            "TimedSocket",
            (_TimedSocket,),
            {"__slots__": (), "timeout_s": self.read_timeout_s, "keeps_alive": self._keepalive},
        )

    def init_process(self) -> None:
        try:
            cpu = pin_worker(self.cpu_affinity, self.cfg.workers, self.ppid)
        except OSError as error:  # a container may forbid it: serve unpinned
            self.log.warning("worker %s not pinned to a CPU: %s", self.pid, error)
        else:
            if cpu is not None:
                self.log.info("worker %s pinned to CPU %s", self.pid, cpu)
        super().init_process()

    def get_thread_pool(self) -> Any:
        return ThreadPool(self.cfg.threads)

    def handle(self, conn: TConn) -> Any:
        """Serve the connection's request, then (next_request_wait_s) its next ones on this thread."""
        keep = self._serve(conn)
        while keep is True and self._wait_here(conn) and self._next_request(conn):
            keep = self._serve(conn)
        if keep is True:
            conn.answered_at = time.monotonic()
        return keep

    def _serve(self, conn: TConn) -> Any:
        """Serve one request: on the plain path when it is one (`plain_request`), else gunicorn's."""
        keep = self._serve_plain(conn)
        return super().handle(conn) if keep is None else keep

    def _serve_plain(self, conn: TConn) -> bool | None:
        """Answer a plain request the app claims without gunicorn's parser, environ and response;
        None (nothing consumed) when it is not one. See the class docstring, "The plain path"."""
        claims = self._claims
        if claims is None or not conn.data_ready or conn.parser is None or self._tls or conn.is_http2:
            return None
        data = conn.parser.unreader.take_buffered()
        request = plain_request(data, claims, self._limits)
        if request is None:
            conn.parser.unreader.unread(data)
            return None
        if request.rest:
            conn.parser.unreader.unread(request.rest)  # a pipelined next request
        self.nr += 1
        must_close = not self.alive or not self._keepalive
        if self.nr >= self.max_requests:
            if self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            must_close = True
        elif len(self.keepalived_conns) >= self.max_keepalived:
            must_close = True
        close = must_close or request.closes
        try:
            answer = _call_app(self.wsgi, request.environ(conn, self._base_environ))
            try:
                _send_all(conn.sock, answer.head(request.version, close) + answer.body)
            finally:
                answer.close()
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            return False
        except Exception:
            self.log.exception("Error handling request %s", request.path)
            return False
        self.log.debug("%s %s answered on the plain path", request.method, request.path)
        return not close

    @functools.cached_property
    def _base_environ(self) -> dict[str, Any]:
        return wsgi.base_environ(self.cfg)

    @functools.cached_property
    def _claims(self) -> Callable[[str, str], bool] | None:
        """The app's say on which requests it answers the same whoever parses them (`claims`), if any."""
        hooks = (self.cfg.pre_request, self.cfg.post_request)
        if self.cfg.accesslog or any(getattr(h, "__module__", None) != "gunicorn.config" for h in hooks):
            return None  # an access line or a request hook of the configuration needs gunicorn's request
        claims = getattr(getattr(self.wsgi, "wsgi_app", None), "claims", None)
        return claims if callable(claims) else None

    def _wait_here(self, conn: TConn) -> bool:
        """Whether the thread that answered conn should wait for its next request (class docstring)."""
        return (
            self.next_request_wait_s > 0
            and getattr(conn, "next_comes_soon", True)
            and self.alive
            and not self.tpool.queued()
            and not (self._tls or conn.is_http2)
        )

    def _next_request(self, conn: TConn) -> bool:
        """Wait at most next_request_wait_s for conn's next request; True once it is whole in the parser.

        Runs on the serving thread, which owns conn until it hands it back: what arrives is read
        into a buffer as the event loop would, and bytes of a request still incomplete at the end
        go back to the parser's buffer, where the event loop takes them up (finish_request).
        """
        data = bytearray(conn.parser.unreader.take_buffered())  # a pipelined request read ahead
        deadline = time.monotonic() + self.next_request_wait_s
        poller = select.poll()
        try:
            if conn.sock.gettimeout() != 0.0:  # each setblocking is a syscall, whatever the mode was
                conn.sock.setblocking(False)
            poller.register(conn.sock.fileno(), select.POLLIN)
            while not _complete_request(data, self.buffer_bytes):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not poller.poll(remaining * 1000):
                    break
                try:
                    chunk = conn.sock.recv(256 * 1024)
                except (BlockingIOError, InterruptedError):
                    continue
                if not chunk:
                    break  # the client closed: the event loop finds the connection readable at its end
                data += chunk
            else:
                conn.parser.unreader.unread(bytes(data))
                return True
        except OSError:
            pass  # a broken connection: the event loop closes it
        conn.next_comes_soon = bool(data)  # nothing came: the client takes its time, wait no more
        if data:
            conn.parser.unreader.unread(bytes(data))
        return False

    def accept(self, listener: socket.socket) -> None:
        try:
            client, address = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        timed = self._socket_class(client.family, client.type, client.proto, fileno=client.detach())
        self.enqueue_req(TConn(self.cfg, timed, address, listener.getsockname()))

    def enqueue_req(self, conn: TConn) -> None:
        if self._tls or conn.is_http2:  # TLS and HTTP/2 are read by the threads, as gunicorn does
            super().enqueue_req(conn)
            return
        answered_at = getattr(conn, "answered_at", None)
        if answered_at is not None:  # a kept-alive connection's next request: did it come soon?
            conn.next_comes_soon = time.monotonic() - answered_at < self.next_request_wait_s
        # read the next request in the event loop; bytes already read ahead count towards it
        conn.request_bytes = bytearray(conn.parser.unreader.take_buffered() if conn.parser else b"")
        conn.sock.setblocking(False)
        # Most requests are already there (a kept-alive connection the poller found readable, a
        # client that sent right after connecting): read at once rather than one poll later.
        if not self._complete(conn) and not self._receive(conn):
            return
        if self._complete(conn):
            self._dispatch(conn)
            return
        self.reading[conn] = time.monotonic() + self.read_timeout_s
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _receive(self, conn: TConn) -> bool:
        """Read what the socket holds into the buffer; False (and closed) if the client went away."""
        try:
            data = conn.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:  # the client went away before sending a whole request
            self._forget(conn)
            self.nr_conns -= 1
            conn.close()
            return False
        conn.request_bytes += data
        return True

    def _on_readable(self, conn: TConn, _sock: Any) -> None:
        if self._receive(conn) and self._complete(conn):
            self._forget(conn)
            self._dispatch(conn)

    def _complete(self, conn: TConn) -> bool:
        """Whether the buffer holds a whole request (or as much as the loop should read of it)."""
        return _complete_request(conn.request_bytes, self.buffer_bytes)

    def _dispatch(self, conn: TConn) -> None:
        data = bytes(conn.request_bytes)
        conn.request_bytes = bytearray()
        conn.init()  # plain HTTP/1: creates the parser if this is the connection's first request
        conn.parser.unreader.unread(data)
        conn.data_ready = True
        super().enqueue_req(conn)

    def _forget(self, conn: TConn) -> None:
        self.reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def murder_pending(self) -> None:
        """Close the connections whose request did not arrive within read_timeout_s (each loop turn)."""
        super().murder_pending()
        now = time.monotonic()
        expired = []
        for conn, deadline in self.reading.items():  # in deadline order: one timeout, added as time goes
            if deadline > now:
                if self.alive:
                    break
                if conn.request_bytes:
                    continue
            expired.append(conn)  # timed out, or idle while the worker stops
        for conn in expired:
            self._forget(conn)
            self.nr_conns -= 1
            conn.close()


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {}) or {}
    for key in ("mlcanary.dataplane",):
        component = extensions.get(key)
        if component is not None:
            component.close(timeout=CLOSE_TIMEOUT_S)


def _child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class Server(BaseApplication):
    """gunicorn with its configuration given in code rather than on a command line."""

    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", _worker_exit)
        self.cfg.set("child_exit", _child_exit)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25.1 opens a control socket at one fixed path per user: two servers on a
            # host (a router and a serve, or parallel tests) would fight over it, and we never use it.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Flask:
        return self.factory()


def worker_class(
    read_timeout_s: float, cpu_affinity: str = "auto", next_request_wait_ms: float = 2.0
) -> type[ReadBufferingWorker]:
    """Return the worker class with its settings (a subclass: the settings travel with it to the workers)."""
    return type(
        "ReadBufferingWorker",
        (ReadBufferingWorker,),
        {
            "read_timeout_s": read_timeout_s,
            "cpu_affinity": cpu_affinity,
            "next_request_wait_s": next_request_wait_ms / 1000,
        },
    )


def prepare_metrics_dir(data_dir: Path) -> Path:
    """Give prometheus-client a fresh multiprocess folder, so /metrics sums every worker correctly."""
    path = Path(tempfile.mkdtemp(prefix="mlcanary-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def check_port_free(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) if something listens on host:port (a reuse_port group would share it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is fine
        probe.bind(address)  # without SO_REUSEPORT: fails while any socket listens there


def run(
    factory: Callable[[], Flask],
    *,
    host: str,
    port: int,
    workers: int,
    data_dir: Path,
    log_level: str = "info",
    graceful_timeout: int = 30,
    threads: int = 32,
    read_timeout_s: float = 30.0,
    cpu_affinity: str = "auto",
    next_request_wait_ms: float = 2.0,
) -> None:
    """Serve until stopped; SIGTERM drains requests and flushes every worker's data plane."""
    check_port_free(host, port)
    metrics_dir = prepare_metrics_dir(data_dir)
    master = os.getpid()
    try:
        Server(
            factory,
            {
                "bind": f"{host}:{port}",
                "workers": workers,
                "worker_class": worker_class(read_timeout_s, cpu_affinity, next_request_wait_ms),
                "threads": threads,
                "timeout": 60,
                "graceful_timeout": graceful_timeout,
                "keepalive": 5,
                "loglevel": log_level,
                "accesslog": None,
                "preload_app": False,
                "reuse_port": hasattr(socket, "SO_REUSEPORT"),  # one socket per worker (module docstring)
            },
        ).run()
    finally:
        # gunicorn forks the workers from inside run() and ends them with sys.exit, so each worker
        # unwinds through this frame too: only the master may remove what the workers still share.
        if os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
