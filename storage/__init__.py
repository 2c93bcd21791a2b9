"""Storage: models, repositories and entities. Imports nothing else of mlcanary."""

from storage.database import Database
from storage.errors import (
    AlreadyExists,
    ConcurrentUpdate,
    DataRefused,
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
    "InvalidName",
    "InvalidState",
    "NotFound",
    "SchemaOutOfDate",
    "Store",
    "StorageError",
    "Unavailable",
]
