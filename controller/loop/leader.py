"""Leader election among `mlcanary controller` processes: exactly one acts, the others stand by.

- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) held on a dedicated connection that
  stays open. The server releases it when the session ends, so a killed leader frees it at once; a
  leader whose connection is lost has lost leadership and must win the lock again.
- SQLite: ``fcntl.flock`` on a lock file beside the database file (``<database>.controller.lock``), so
  every controller of the same database contends for the same lock whatever its data directory. The
  kernel releases it when the process dies.

``acquire()`` is called before every pass: it returns True while this process leads (checking that
a PostgreSQL session is still alive) and otherwise tries, without blocking, to take the lock. Standbys
thus retry every interval and a killed leader is replaced within one or two intervals.

A silent partition (packets dropped, no reset) is the hard case: the server keeps the cut-off leader's
session, and its lock, until TCP gives up on the peer. The lock connection asks the server for short
keepalives for its own session (storage.Keepalive: silence for ``idle_s``, then ``count`` unanswered
probes ``interval_s`` apart, or data unacknowledged for as long, and the server ends the session), so
a standby takes the lock within ``dead_after_s`` plus an interval. The server cannot end the session
before ``idle_s`` seconds have passed since it last heard from the leader, and it heard from it no
earlier than when the leader sent its last answered health query. So the leader holds a *lease* of
``idle_s / 2`` seconds from that moment: ``leads()`` is False once the lease ran out without a newer
answer, and the loop checks it before every write (re-confirming with one query when it ran out). A
health query that is not acknowledged within the lease fails (the lock connection's client-side
``tcp_user_timeout``), so a cut-off leader knows it lost the lock long before anyone else can take it.

Leadership alone does not make writes safe (a process can stall between its check and its write, or
its write can travel slower than the lock's release): every transition is also applied with
optimistic concurrency (``UPDATE ... WHERE version = <the version it judged>``), so a deposed leader
that finishes a pass cannot apply a step twice or apply one on top of a newer state: its write
matches no row and is dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy.engine import make_url

from storage import Keepalive

log = logging.getLogger("mlcanary.controller")

# A fixed 64-bit key: "mlcanary" in ASCII, the lock every controller of one database contends for.
ADVISORY_KEY = int.from_bytes(b"mlcanary", "big") >> 1

__all__ = ["ADVISORY_KEY", "FileLeadership", "Leadership", "PostgresLeadership", "Tracked", "leadership_for"]


class Leadership(Protocol):
    """Who leads: ``acquire`` (True while leading; tries to take the lead otherwise), ``leads`` and ``release``.

    ``leads()`` answers without any I/O whether this process may act now (it holds the lock and, where
    the lock can be lost silently, confirmed it recently enough).
    """

    def acquire(self) -> bool: ...

    def leads(self) -> bool: ...

    def release(self) -> None: ...


class FileLeadership:
    """Lead while holding an exclusive ``flock`` on ``path`` (SQLite deployments, one host)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open while leading
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def leads(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class PostgresLeadership:
    """Lead while holding a session advisory lock on a dedicated, open PostgreSQL connection.

    ``keepalive`` sets how soon the server ends the session of a leader cut off silently (and so frees
    the lock); the lease, during which the leader may act after a confirmed contact, is half its
    ``idle_s``. With keepalives off, half the server's own ``tcp_keepalives_idle`` as the session
    reports it (0, the OS default of two hours: an hour). ``clock`` (monotonic seconds) is injectable.
    """

    def __init__(
        self,
        url: str,
        *,
        key: int = ADVISORY_KEY,
        connect_timeout: int = 5,
        keepalive: Keepalive | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = make_url(url)
        self.dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        options = parsed.query.get("options")
        self._options = " ".join(options) if isinstance(options, tuple) else options
        self.key = key
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive or Keepalive()
        self.lease_s = self.keepalive.idle_s / 2 if self.keepalive.enabled else 3600.0
        self.clock = clock
        self._conn: object | None = None
        self._held = False
        self._confirmed = float("-inf")  # when the last answered health query (or lock claim) was sent
        self._mutex = threading.Lock()  # acquire() and release() may come from different threads

    def acquire(self) -> bool:
        import psycopg

        with self._mutex:
            try:
                if self._conn is None:
                    self._conn = psycopg.connect(
                        self.dsn,
                        autocommit=True,
                        connect_timeout=self.connect_timeout,
                        application_name="mlcanary-controller",
                        **self.keepalive.connect_args(options=self._options, user_timeout_s=self.lease_s),
                    )
                    if not self.keepalive.enabled:
                        self.lease_s = self._server_lease(self._conn)
                conn: psycopg.Connection = self._conn  # type: ignore[assignment]
                sent = self.clock()
                if self._held:
                    conn.execute("SELECT 1")  # the lock lives as long as this session: is it still there?
                else:
                    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                    self._held = bool(row and row[0])
                if self._held:
                    self._confirmed = sent
                return self._held
            except psycopg.Error as error:
                if self._held:
                    log.error("lost the controller lock with the database connection: %s", error)
                self._drop()
                return False

    @staticmethod
    def _server_lease(conn: object) -> float:
        row = conn.execute("SELECT current_setting('tcp_keepalives_idle')::int").fetchone()  # type: ignore[attr-defined]
        idle = int(row[0]) if row else 0
        return idle / 2 if idle > 0 else 3600.0

    def leads(self) -> bool:
        """Whether this process holds the lock and sent an answered query less than a lease ago."""
        return self._held and self.clock() - self._confirmed < self.lease_s

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        self._confirmed = float("-inf")
        if conn is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                conn.close()  # type: ignore[attr-defined]

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None and self._held:
                with contextlib.suppress(Exception):  # closing the session releases it anyway
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))  # type: ignore[attr-defined]
            self._drop()


class Tracked:
    """Wrap a Leadership and remember whether the last claim won, for components that act only when leading."""

    def __init__(self, inner: Leadership) -> None:
        self.inner = inner
        self._won = False

    @property
    def held(self) -> bool:
        """The last claim won and the lead is still confirmed (no I/O: safe from any thread)."""
        return self._won and self.inner.leads()

    def acquire(self) -> bool:
        self._won = self.inner.acquire()
        return self._won

    def leads(self) -> bool:
        return self.held

    def release(self) -> None:
        self._won = False
        self.inner.release()


def leadership_for(database_url: str, *, keepalive: Keepalive | None = None) -> Leadership:
    """Return the election that fits the database: an advisory lock on PostgreSQL, a file lock on SQLite."""
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "postgresql":
        return PostgresLeadership(database_url, keepalive=keepalive)
    database = parsed.database
    if not database or database == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be shared by controllers; use a file")
    return FileLeadership(Path(database).with_name(Path(database).name + ".controller.lock"))
