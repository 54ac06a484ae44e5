"""The store's exceptions: one tree, rooted at :class:`StoreError`.

::

    StoreError                  anything the store raises; database errors not named below
    ├── KeyNotFound             no API key has the given id
    ├── OrganisationNotFound    no organisation has the given id
    ├── SchemaVersionError      the database was migrated by a newer mcpgw than this one
    ├── StoreUnavailable        the database cannot be used right now: locked past the busy
    │   │                       timeout, unreadable, full, or not openable
    │   └── StoreUnreachable    the database server cannot be reached (down, connection lost):
    │                           waiting for it is pointless, every use fails at once until it is back
    ├── SealError               a sealed secret does not open: unknown key id, sealed for
    │                           another place, or tampered with
    └── KeyFileError            the key file (the keys that seal secrets) is missing,
                                unreadable or malformed

The database driver's errors (``sqlite3``/``aiosqlite`` for the SQLite backend) never leave the
package: they are translated once, where the store calls the database, with ``raise ... from
exc`` so the cause stays on the traceback. Messages never contain a secret: no API key, no
credential, no key from the key file.
"""

from __future__ import annotations

__all__ = [
    "KeyFileError",
    "KeyNotFound",
    "OrganisationNotFound",
    "SchemaVersionError",
    "SealError",
    "StoreError",
    "StoreUnavailable",
    "StoreUnreachable",
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


class StoreUnreachable(StoreUnavailable):
    """The database server cannot be reached now: callers fail at once rather than wait for it."""


class SealError(StoreError):
    """A sealed value cannot be opened: unknown key id, wrong place, or tampered with."""


class KeyFileError(StoreError):
    """The key file is missing, unreadable or malformed."""
