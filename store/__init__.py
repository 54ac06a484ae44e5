"""Persistence for mcpgw: an async ``Store`` Protocol and its SQLite implementation.

No HTTP and no MCP in here; ``gateway`` and ``api`` depend on this package, never the reverse.
Exceptions are documented in :mod:`store.errors`.
"""

from ._timestamps import format_timestamp, utc_now
from .errors import (
    KeyNotFound,
    OrganisationNotFound,
    SchemaVersionError,
    StoreError,
    StoreUnavailable,
)
from .keys import generate_api_key, hash_api_key
from .models import (
    ApiKey,
    CreatedKey,
    InvocationRecord,
    Organisation,
    Page,
    RecordedInvocation,
    RecordedSession,
    RecordEvent,
    Seek,
    SessionEnd,
    SessionStart,
)
from .protocol import Store
from .sqlite import SqliteStore, open_sqlite_store

__all__ = [
    "ApiKey",
    "CreatedKey",
    "InvocationRecord",
    "KeyNotFound",
    "Organisation",
    "OrganisationNotFound",
    "Page",
    "RecordEvent",
    "RecordedInvocation",
    "RecordedSession",
    "SchemaVersionError",
    "Seek",
    "SessionEnd",
    "SessionStart",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "format_timestamp",
    "generate_api_key",
    "hash_api_key",
    "open_sqlite_store",
    "utc_now",
]
