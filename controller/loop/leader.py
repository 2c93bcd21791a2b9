"""Leader election among `mlcanary controller` processes: exactly one acts, the others stand by.

- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) held on a dedicated connection that
  stays open. The server releases it when the session ends, so a killed leader frees it at once; a
  leader whose connection is lost has lost leadership and must win the lock again.
- SQLite: ``fcntl.flock`` on a lock file beside the database file (``<database>.controller.lock``), so
  every controller of the same database contends for the same lock whatever its data directory. The
  kernel releases it when the process dies.

``acquire()`` is called before every pass: it returns True while this process leads (checking that
a PostgreSQL session is still alive) and otherwise tries, without blocking, to take the lock. Standbys
thus retry every interval and a killed leader is replaced within one or two intervals. Leadership
alone does not make writes safe: every transition is also applied with optimistic concurrency, so
a deposed leader that finishes a pass cannot apply a step twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy.engine import make_url

log = logging.getLogger("mlcanary.controller")

# A fixed 64-bit key: "mlcanary" in ASCII, the lock every controller of one database contends for.
ADVISORY_KEY = int.from_bytes(b"mlcanary", "big") >> 1

__all__ = ["ADVISORY_KEY", "FileLeadership", "Leadership", "PostgresLeadership", "Tracked", "leadership_for"]


class Leadership(Protocol):
    """Who leads: ``acquire`` (True while leading; tries to take the lead otherwise) and ``release``."""

    def acquire(self) -> bool: ...

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

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class PostgresLeadership:
    """Lead while holding a session advisory lock on a dedicated, open PostgreSQL connection."""

    def __init__(self, url: str, *, key: int = ADVISORY_KEY, connect_timeout: int = 5) -> None:
        parsed = make_url(url)
        self.dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self.key = key
        self.connect_timeout = connect_timeout
        self._conn: object | None = None
        self._held = False

    def acquire(self) -> bool:
        import psycopg

        try:
            if self._conn is None:
                self._conn = psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=self.connect_timeout,
                    application_name="mlcanary-controller",
                )
            conn: psycopg.Connection = self._conn  # type: ignore[assignment]
            if self._held:
                conn.execute("SELECT 1")  # the lock lives as long as this session: is it still there?
                return True
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            self._held = bool(row and row[0])
            return self._held
        except psycopg.Error as error:
            if self._held:
                log.error("lost the controller lock with the database connection: %s", error)
            self._drop()
            return False

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                conn.close()  # type: ignore[attr-defined]

    def release(self) -> None:
        if self._conn is not None and self._held:
            with contextlib.suppress(Exception):  # closing the session releases it anyway
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))  # type: ignore[attr-defined]
        self._drop()


class Tracked:
    """Wrap a Leadership and remember whether the last claim won, for components that act only when leading."""

    def __init__(self, inner: Leadership) -> None:
        self.inner = inner
        self.held = False

    def acquire(self) -> bool:
        self.held = self.inner.acquire()
        return self.held

    def release(self) -> None:
        self.held = False
        self.inner.release()


def leadership_for(database_url: str) -> Leadership:
    """Return the election that fits the database: an advisory lock on PostgreSQL, a file lock on SQLite."""
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "postgresql":
        return PostgresLeadership(database_url)
    database = parsed.database
    if not database or database == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be shared by controllers; use a file")
    return FileLeadership(Path(database).with_name(Path(database).name + ".controller.lock"))
