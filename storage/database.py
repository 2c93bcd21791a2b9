"""Engines, the one session wrapper, and translation of driver errors into storage's own."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import AlreadyExists, DataRefused, StorageError, Unavailable


def normalise_url(url: str) -> str:
    """Return a SQLAlchemy URL that uses psycopg 3 for PostgreSQL and accepts bare file paths for SQLite."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


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


class Database:
    """One database: its engine and a session wrapper that commits, rolls back and translates errors."""

    def __init__(self, url: str, *, pool_size: int = 5, echo: bool = False) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
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
                connect_args={"connect_timeout": 5},
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
    def connection(self) -> Iterator[Any]:
        """Yield a SQLAlchemy Connection inside a transaction, with errors translated."""
        self._after_fork()
        with translate_errors(), self.engine.connect() as conn:
            conn = conn.execution_options(mlcanary_write=True)
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
    except psycopg.OperationalError as error:  # raw driver use on the bulk path
        raise Unavailable(_first_line(error)) from error
    except psycopg.errors.UniqueViolation as error:
        raise AlreadyExists(_first_line(error)) from error
    except psycopg.errors.ForeignKeyViolation as error:
        raise StorageError(_first_line(error)) from error
    except (psycopg.DataError, psycopg.IntegrityError) as error:
        raise DataRefused(_first_line(error)) from error
    except psycopg.Error as error:
        raise StorageError(_first_line(error)) from error
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


def _first_line(error: BaseException | None) -> str:
    return (str(error) or type(error).__name__).strip().splitlines()[0] if error else "database error"
