"""Errors raised by storage; callers never see a database driver's exception.

StorageError (Exception)
├── NotFound (LookupError)          the row asked for does not exist
├── AlreadyExists (ValueError)      a unique name/version/id is taken
├── ConcurrentUpdate                an optimistic version check lost the race
├── InvalidState (ValueError)       the change breaks a rule of the data (e.g. two active rollouts)
│   └── InUse                       a deployment or version to archive/delete is still used
├── DataRefused (ValueError)        the database cannot hold a value (too long, NUL, bad encoding, NULL)
├── InvalidName (ValueError)        a deployment, pipeline or version name breaks entities.NAME_RULE
├── SchemaOutOfDate                 the database schema is not at the migrations' head
└── Unavailable (ConnectionError)   the database cannot be reached; worth retrying later
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error raised by storage."""


class NotFound(StorageError, LookupError):
    """The row asked for does not exist."""


class AlreadyExists(StorageError, ValueError):
    """A row with the same unique key exists already."""


class ConcurrentUpdate(StorageError):
    """Another writer changed the row since it was read (optimistic concurrency)."""


class InvalidState(StorageError, ValueError):
    """The change would break an invariant of the stored data."""


class InUse(InvalidState):
    """A deployment or pipeline version cannot be archived or deleted: something still uses it."""


class DataRefused(StorageError, ValueError):
    """The database refused a value itself (too long for its column, a NUL character, bad encoding)."""


class InvalidName(StorageError, ValueError):
    """A deployment, pipeline or version name breaks the naming rule (entities.check_name)."""


class SchemaOutOfDate(StorageError):
    """The database schema is older (or newer) than this code expects."""

    def __init__(self, current: str | None, head: str, url: str) -> None:
        self.current, self.head = current, head
        super().__init__(
            f"database schema is at {current or 'nothing (empty database)'}, this mlcanary needs {head}; "
            f"run: mlcanary db upgrade --database-url '{url}'"
        )


class Unavailable(StorageError, ConnectionError):
    """The database cannot be reached or refused the connection."""
