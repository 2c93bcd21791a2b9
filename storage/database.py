"""Engines, the one session wrapper, and translation of driver errors into storage's own."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import GenericFunction

from storage.errors import AlreadyExists, DataRefused, StorageError, Unavailable


def normalise_url(url: str) -> str:
    """Return a SQLAlchemy URL that uses psycopg 3 for PostgreSQL and accepts bare file paths for SQLite."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


@dataclass(frozen=True, kw_only=True)
class Keepalive:
    """How soon both ends of a PostgreSQL connection give up on a peer that vanished without a reset.

    A silent partition (packets dropped, no RST) leaves a session alive on the server until TCP
    notices: by default after two hours of keepalive silence, or ~15 minutes of retransmissions. A
    session holds what it holds (the controllers' advisory lock, row locks) all that time. So every
    connection asks the server for short keepalives and a ``tcp_user_timeout`` for its own session
    (user-settable parameters since PostgreSQL 12, sent in the startup packet's ``options``), and sets
    the same on its own socket (libpq parameters): whichever end is cut off, its socket fails after
    ``dead_after_s`` = ``idle_s + interval_s * count`` seconds without an answer from the other end.
    ``idle_s=0`` leaves both ends to their own settings (e.g. behind a PgBouncer that refuses the
    ``options`` startup parameter): nothing is sent.
    """

    idle_s: int = 10
    interval_s: int = 3
    count: int = 3

    def __post_init__(self) -> None:
        if self.idle_s < 0 or self.interval_s < 1 or self.count < 1:
            raise ValueError(f"keepalive idle must be >= 0 (0: off), interval and count >= 1, got {self}")

    @property
    def enabled(self) -> bool:
        return self.idle_s > 0

    @property
    def dead_after_s(self) -> int:
        """Seconds of silence after which either end drops the connection."""
        return self.idle_s + self.interval_s * self.count

    def connect_args(
        self, *, options: str | None = None, user_timeout_s: float | None = None
    ) -> dict[str, Any]:
        """libpq parameters for one connection: server-side settings in ``options``, client-side as parameters.

        ``options`` (the URL's own, if any) is kept, ours appended. ``user_timeout_s`` shortens the
        client's ``tcp_user_timeout`` (the controllers' lock connection: a hung query fails sooner).
        Nothing when keepalives are off.
        """
        if not self.enabled:
            return {}
        dead_ms = self.dead_after_s * 1000
        server = (
            f"-c tcp_keepalives_idle={self.idle_s} -c tcp_keepalives_interval={self.interval_s} "
            f"-c tcp_keepalives_count={self.count} -c tcp_user_timeout={dead_ms}"
        )
        client_ms = dead_ms if user_timeout_s is None else max(1, round(user_timeout_s * 1000))
        return {
            "keepalives": 1,
            "keepalives_idle": self.idle_s,
            "keepalives_interval": self.interval_s,
            "keepalives_count": self.count,
            "tcp_user_timeout": client_ms,
            "options": f"{options} {server}" if options else server,
        }


class floor(GenericFunction[Any]):  # noqa: N801 (the SQL function's name: func.floor builds one)
    """``func.floor``: PostgreSQL's floor; on SQLite the same integer in plain SQL, see below."""

    name = "floor"
    inherit_cache = True


@compiles(floor, "sqlite")
def _sqlite_floor(element: floor, compiler: SQLCompiler, **kw: Any) -> str:
    """floor(x) as CAST(-ceil(-x) AS INTEGER) on SQLite: its own C ceil, x evaluated once.

    SQLAlchemy's pysqlite dialect registers Python's ``math.floor`` as SQLite's ``floor`` on every
    connection, so each call was a Python call holding the GIL: histogram scans of a million rows paid
    one per row and could not run side by side on the report's threads. This is the same integer for
    every finite x (negation is exact), and NULL for NULL where ``math.floor`` raised.
    """
    (x,) = element.clauses.clauses
    return f"CAST(-ceil(-({compiler.process(x, **kw)})) AS INTEGER)"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit off at the driver; SQLAlchemy issues BEGIN itself (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # pysqlite's own transaction handling is switched off above; SQLAlchemy's BEGIN is the only one.
    # A transaction that will write takes the write lock up front (BEGIN IMMEDIATE), so a second
    # writer waits on busy_timeout; a deferred read transaction that later writes would instead fail
    # at once with "database is locked" whenever another process is writing.
    write = conn.get_execution_options().get("mlcanary_write", True)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _options(parsed: Any) -> str | None:
    """The ``options`` query parameter of a PostgreSQL URL, if it has one."""
    value = parsed.query.get("options")
    if isinstance(value, tuple):
        return " ".join(value)
    return value if isinstance(value, str) else None


class Database:
    """One database: its engine and a session wrapper that commits, rolls back and translates errors."""

    def __init__(
        self, url: str, *, pool_size: int = 5, echo: bool = False, keepalive: Keepalive | None = None
    ) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        self.keepalive = keepalive or Keepalive()
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                self.url, echo=echo, connect_args={"check_same_thread": False, "timeout": 10}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        elif self.dialect == "postgresql":
            self.engine = create_engine(
                self.url,
                echo=echo,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                connect_args={"connect_timeout": 5, **self.keepalive.connect_args(options=_options(parsed))},
            )
        else:
            raise StorageError(f"unsupported database {self.dialect!r}; use sqlite:/// or postgresql://")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._pid = os.getpid()

    @property
    def display_url(self) -> str:
        """Return the URL with any password masked (for logs and messages)."""
        return make_url(self.url).render_as_string(hide_password=True)

    def _after_fork(self) -> None:
        # A pool inherited across fork shares sockets with the parent; start afresh in the child.
        if os.getpid() != self._pid:
            self.engine.dispose(close=False)
            self._pid = os.getpid()

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """Yield a session in a transaction: commit on success, roll back on error, translate errors.

        write=False marks a read-only transaction: on SQLite it does not take the write lock, so long
        reads (reports) never hold up writers (the router's recorder).
        """
        self._after_fork()
        with translate_errors(), self._sessions() as session:
            session.connection(execution_options={"mlcanary_write": write})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def connection(self, *, write: bool = True) -> Iterator[Any]:
        """Yield a SQLAlchemy Connection inside a transaction, with errors translated (write: as session's)."""
        self._after_fork()
        with translate_errors(), self.engine.connect() as conn:
            conn = conn.execution_options(mlcanary_write=write)
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, or in tests)."""
        self.engine.dispose()


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn SQLAlchemy and driver exceptions into storage errors, keeping the cause."""
    try:
        yield
    except StorageError:
        raise
    except exc.IntegrityError as error:
        text = str(error.orig).lower()
        if "unique" in text or "duplicate" in text:
            raise AlreadyExists(_first_line(error.orig)) from error
        if "foreign key" in text:  # a row it refers to is missing (yet): not the value's fault
            raise StorageError(_first_line(error.orig)) from error
        raise DataRefused(_first_line(error.orig)) from error
    except exc.DataError as error:
        raise DataRefused(_first_line(error.orig)) from error
    except (exc.OperationalError, exc.InterfaceError) as error:
        text = str(error.orig).lower()
        if "locked" in text or "busy" in text:
            raise Unavailable(f"database busy: {_first_line(error.orig)}") from error
        if any(
            w in text for w in ("connect", "connection", "server closed", "terminating", "unable to open")
        ):
            raise Unavailable(_first_line(error.orig)) from error
        raise StorageError(_first_line(error.orig)) from error
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise Unavailable(_first_line(error.orig)) from error
        raise StorageError(_first_line(error.orig)) from error
    except exc.SQLAlchemyError as error:
        raise StorageError(str(error)) from error
    except sqlite3.IntegrityError as error:
        text = str(error).lower()
        if "foreign key" in text:
            raise StorageError(_first_line(error)) from error
        if "unique" not in text:
            raise DataRefused(_first_line(error)) from error
        raise AlreadyExists(_first_line(error)) from error
    except sqlite3.DataError as error:
        raise DataRefused(_first_line(error)) from error
    except sqlite3.OperationalError as error:
        raise Unavailable(_first_line(error)) from error
    except sqlite3.Error as error:
        raise StorageError(_first_line(error)) from error
    except UnicodeEncodeError as error:  # a lone surrogate the driver cannot encode as UTF-8
        raise DataRefused(f"a value cannot be encoded as UTF-8: {error.reason}") from error
    except Exception as error:
        _translate_psycopg(error)
        raise


def _translate_psycopg(error: Exception) -> None:
    """Raise the storage error of a raw psycopg error (the bulk path's driver use); else return.

    psycopg is looked up, not imported: an error of it can only come once something imported it, and
    importing it here would cost every SQLite command (the CLI's) a few hundred milliseconds.
    """
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(error, psycopg.Error):
        return
    if isinstance(error, psycopg.OperationalError):
        raise Unavailable(_first_line(error)) from error
    if isinstance(error, psycopg.errors.UniqueViolation):
        raise AlreadyExists(_first_line(error)) from error
    if isinstance(error, psycopg.errors.ForeignKeyViolation):
        raise StorageError(_first_line(error)) from error
    if isinstance(error, (psycopg.DataError, psycopg.IntegrityError)):
        raise DataRefused(_first_line(error)) from error
    raise StorageError(_first_line(error)) from error


def _first_line(error: BaseException | None) -> str:
    return (str(error) or type(error).__name__).strip().splitlines()[0] if error else "database error"
