"""The store's exceptions: one tree, rooted at :class:`StoreError`.

::

    StoreError                  anything the store raises; sqlite3 errors not named below
    ├── KeyNotFound             no API key has the given id
    ├── OrganisationNotFound    no organisation has the given id
    ├── SchemaVersionError      the database was migrated by a newer mcpgw than this one
    └── StoreUnavailable        the database cannot be used right now: locked past the busy
                                timeout, unreadable, full, or not openable

Errors of ``sqlite3``/``aiosqlite`` never leave the package: they are translated once, where the
store calls the database, with ``raise ... from exc`` so the cause stays on the traceback.
Messages never contain an API key secret.
"""

from __future__ import annotations

__all__ = [
    "KeyNotFound",
    "OrganisationNotFound",
    "SchemaVersionError",
    "StoreError",
    "StoreUnavailable",
]


class StoreError(Exception):
    """Root of every exception raised by the store package."""


class KeyNotFound(StoreError):
    """No API key has the given id."""


class OrganisationNotFound(StoreError):
    """No organisation has the given id."""


class SchemaVersionError(StoreError):
    """The database's schema version is newer than the migrations this code knows."""


class StoreUnavailable(StoreError):
    """The database is locked, unreadable, full, or cannot be opened."""
