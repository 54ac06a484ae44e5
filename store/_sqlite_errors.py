"""The package boundary for sqlite3 errors: each becomes a StoreError, raised ``from`` it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import StoreError, StoreUnavailable

__all__ = ["is_busy", "translate", "translated"]

# Primary result codes that mean "the database cannot be used right now", not "bad request".
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLITE_BUSY: another connection holds a lock we need."""
    return _primary_code(exc) == sqlite3.SQLITE_BUSY


def translate(exc: sqlite3.Error, action: str) -> StoreError:
    """Return the StoreError for ``exc``. sqlite messages never carry bound values (secrets)."""
    if _primary_code(exc) in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"{action}: {exc}")
    return StoreError(f"{action}: {exc}")


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Translate sqlite3 errors raised in the block into StoreErrors."""
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc, action) from exc
