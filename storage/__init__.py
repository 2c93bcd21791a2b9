"""Storage: models, repositories and entities. Imports nothing else of mlcanary."""

from storage.database import Database, Keepalive
from storage.errors import (
    AlreadyExists,
    ConcurrentUpdate,
    DataRefused,
    InUse,
    InvalidName,
    InvalidState,
    NotFound,
    SchemaOutOfDate,
    StorageError,
    Unavailable,
)
from storage.repositories import Store

__all__ = [
    "AlreadyExists",
    "ConcurrentUpdate",
    "DataRefused",
    "Database",
    "Keepalive",
    "InvalidName",
    "InUse",
    "InvalidState",
    "NotFound",
    "SchemaOutOfDate",
    "Store",
    "StorageError",
    "Unavailable",
]
