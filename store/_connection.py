"""Opening and configuring the aiosqlite connection a SqliteStore runs on.

The database holds hashed keys, sealed credentials and every recorded call, so it is created
readable by its owner only (as the key file is), and a looser file from before is tightened;
SQLite gives the WAL and shared-memory files it creates the database file's mode.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from functools import partial
from pathlib import Path

import aiosqlite
import anyio
import anyio.lowlevel
import anyio.to_thread

from ._sqlite_errors import is_busy

__all__ = ["BUSY_TIMEOUT_MS", "configure", "connect", "connect_blocking"]

logger = logging.getLogger(__name__)

# aiosqlite logs every statement it runs, with its parameters, at DEBUG: hashes of API keys,
# sealed secrets, recorded arguments. Nothing turns that on by accident.
logging.getLogger("aiosqlite").addFilter(lambda record: record.levelno > logging.DEBUG)

_OWNER_ONLY = 0o600
_BESIDE = ("", "-wal", "-shm", "-journal")

BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another connection's lock before failing."""

_PRAGMAS = (
    "PRAGMA synchronous = NORMAL",  # with WAL: durable at each checkpoint, never corrupt
    "PRAGMA foreign_keys = ON",
)


async def connect(path: str | Path) -> aiosqlite.Connection:
    """Open ``path`` in autocommit mode (``isolation_level=None``); raise sqlite3 errors.

    The sqlite3 connection is opened first, in a worker thread, and only then handed to
    aiosqlite: when ``aiosqlite.connect`` itself fails to open a file it leaves its worker
    thread finishing after the caller has moved on (a thread exception once the loop closes).
    """
    opener = partial(_open_owner_only, path)
    with anyio.CancelScope(shield=True):  # opening does not wait for locks; keep the result
        raw = await anyio.to_thread.run_sync(opener)
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()
        return await aiosqlite.Connection(lambda: raw, iter_chunk_size=64)
    except BaseException:
        raw.close()
        raise


def _open_owner_only(path: str | Path) -> sqlite3.Connection:
    if str(path) != ":memory:" and not str(path).startswith("file:"):
        _make_owner_only(Path(path))
    return sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,  # used by one thread at a time: this one, then aiosqlite's
    )


def _make_owner_only(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, _OWNER_ONLY))  # an existing file keeps its mode...
    except OSError:
        return  # SQLite reports what is wrong with the path, as the store's own error
    for file in (path.with_name(path.name + suffix) for suffix in _BESIDE):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:  # ...so one readable by others is tightened, with a word to the operator
            file.chmod(mode & 0o700)
            logger.warning("%s was readable by others (mode %o); now by its owner only", file, mode)


async def configure(conn: aiosqlite.Connection) -> None:
    """Set the per-connection pragmas and switch the file to WAL if it is not already."""
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    await _use_wal(conn)
    for pragma in _PRAGMAS:
        await conn.execute(pragma)


async def _journal_mode(conn: aiosqlite.Connection, sql: str) -> str:
    async with conn.execute(sql) as cursor:
        row = await cursor.fetchone()
    return "" if row is None else str(row[0])


async def _use_wal(conn: aiosqlite.Connection) -> None:
    """Switch to WAL. SQLite does not call the busy handler for this (it needs an exclusive
    lock and fails at once when another connection is opening the file too), so retry here,
    backing off, until the busy timeout has passed."""
    deadline = anyio.current_time() + BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            if await _journal_mode(conn, "PRAGMA journal_mode") == "wal":
                return
            await _journal_mode(conn, "PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or anyio.current_time() + delay > deadline:
                raise
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.05)


def connect_blocking(path: str | Path) -> sqlite3.Connection:
    """Open and configure a plain sqlite3 connection (call it in a worker thread). The file must
    already be in WAL mode and migrated: ``connect`` + ``configure`` did that."""
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,  # used from worker threads, one at a time (the store's lock)
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        for pragma in _PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn
