"""``SqliteStore``: the :class:`~store.protocol.Store` on one aiosqlite connection to a file.

The connections run in autocommit mode (``isolation_level=None``): each statement is its own
transaction, and every read sees what other processes have committed so far. The file is in WAL
mode, so the gateway's reads never wait for a CLI's write and vice versa; writers wait up to
``busy_timeout`` for each other.

There are two connections. Lookups, listings and small writes go through an aiosqlite
connection (its own thread, one statement at a time). The recorder's group commits and the
retention pruner use a plain sqlite3 connection owned by a thread of its own
(``_writer_thread.py``): a whole ``BEGIN … COMMIT`` batch is one call into that thread, where
aiosqlite would make one round trip per statement, and calls run strictly one after another,
so nothing slips into another's transaction. Listing pages never queue behind a batch or a prune.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Collection, Hashable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiosqlite
import anyio
import anyio.to_thread

from ._connection import configure, connect, connect_blocking
from ._credentials import CredentialSql
from ._listing import find_session, get_session, list_invocations, list_sessions
from ._live_sessions import (
    END_OPEN_SESSIONS,
    KEEPING_LIVE,
    end_idle_sessions,
    end_live_session,
    live_session,
    open_live_session,
    sessions_seen,
)
from ._records import PRUNE_BATCH, oldest_kept_invocation, prune_step, write_records
from ._revocations import RevocationMarker
from ._signin import SignInSql
from ._sqlite_errors import translate, translated
from ._statements import SqliteStatements
from ._timestamps import format_timestamp, parse_timestamp, to_unix_ms, utc_now
from ._writer_thread import WriterThread
from .coordination import Coordination, LocalCoordination
from .errors import KeyNotFound, OrganisationNotFound, StoreError
from .keys import KEY_PREFIX, display_prefix, generate_api_key, hash_api_key
from .migrations import apply_migrations
from .models import (
    ApiKey,
    CreatedKey,
    LiveSession,
    Organisation,
    Page,
    RecordedInvocation,
    RecordedSession,
    RecordEvent,
    Seek,
)
from .protocol import CredentialStore, SignInStore
from .sealing import Sealer

__all__ = ["SqliteStore", "open_sqlite_store"]

_ORGANISATION_COLUMNS = "id, name, created_at"
_WRITE_HERE_MAX = 32
"""Record events committed on the event loop's thread at most (see WriterThread.write): a bigger
batch could hold the loop up for more than a millisecond."""
_API_KEY_COLUMNS = (
    "id, organisation_id, user_id, is_admin, prefix, created_at, revoked_at, tools_allow, tools_deny"
)
_API_KEY_LISTED = f"{_API_KEY_COLUMNS}, last_used_at"


def _organisation(row: Any) -> Organisation:
    return Organisation(id=row[0], name=row[1], created_at=parse_timestamp(row[2]))


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row[0],
        organisation_id=row[1],
        user_id=row[2],
        is_admin=bool(row[3]),
        prefix=row[4],
        created_at=parse_timestamp(row[5]),
        revoked_at=None if row[6] is None else parse_timestamp(row[6]),
        tools_allow=tuple(json.loads(row[7])),
        tools_deny=tuple(json.loads(row[8])),
        last_used_at=None if len(row) < 10 or row[9] is None else parse_timestamp(row[9]),
    )


class SqliteStore:
    """The Store over an open, configured and migrated connection; see :func:`open_sqlite_store`."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        writer: WriterThread,
        revocations: RevocationMarker,
        sealer: Sealer | None = None,
    ) -> None:
        self._conn = conn
        self._writer = writer
        self._revocations = revocations
        self._statements = SqliteStatements(conn)
        self._credentials = None if sealer is None else CredentialSql(self._statements, sealer)
        self._signin = SignInSql(conn, writer, revocations)
        self._coordination: Coordination = LocalCoordination()  # one process alone on its file

    @property
    def credentials(self) -> CredentialStore:
        """Upstream credentials, their flows and OAuth clients; needs the store opened with keys."""
        if self._credentials is None:
            raise StoreError("this store was opened without keys, so it cannot hold credentials")
        return self._credentials

    @property
    def coordination(self) -> Coordination:
        return self._coordination

    @property
    def signin(self) -> SignInStore:
        """Hosts that sign in: their clients, codes, grants and tokens (hashed, so no keys needed)."""
        return self._signin

    async def _fetchone(self, sql: str, parameters: tuple[Any, ...]) -> Any:
        async with self._conn.execute(sql, parameters) as cursor:
            return await cursor.fetchone()

    async def _organisation_named(self, name: str) -> Organisation | None:
        row = await self._fetchone(
            f"SELECT {_ORGANISATION_COLUMNS} FROM organisations WHERE name = ?", (name,)
        )
        return None if row is None else _organisation(row)

    async def ensure_organisation(self, name: str) -> Organisation:
        with translated("ensure organisation"):
            existing = await self._organisation_named(name)
            if existing is not None:
                return existing
            # Another process may create the same name between the two statements: the
            # conflict clause makes that a no-op and the second read returns its row.
            await self._conn.execute(
                "INSERT INTO organisations (id, name, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (str(uuid4()), name, format_timestamp(utc_now())),
            )
            created = await self._organisation_named(name)
        if created is None:
            raise StoreError("organisation vanished while being ensured")
        return created

    async def find_organisation(self, name: str) -> Organisation | None:
        with translated("find organisation"):
            return await self._organisation_named(name)

    async def get_organisation(self, organisation_id: str) -> Organisation | None:
        with translated("get organisation"):
            row = await self._fetchone(
                f"SELECT {_ORGANISATION_COLUMNS} FROM organisations WHERE id = ?",
                (organisation_id,),
            )
        return None if row is None else _organisation(row)

    async def create_api_key(
        self,
        organisation_id: str,
        *,
        user_id: str | None = None,
        is_admin: bool = False,
        tools_allow: Sequence[str] = ("*",),
        tools_deny: Sequence[str] = (),
    ) -> CreatedKey:
        secret = generate_api_key()
        key = ApiKey(
            id=str(uuid4()),
            organisation_id=organisation_id,
            user_id=user_id,
            is_admin=is_admin,
            prefix=display_prefix(secret),
            created_at=utc_now(),
            revoked_at=None,
            tools_allow=tuple(tools_allow),
            tools_deny=tuple(tools_deny),
        )
        try:
            await self._conn.execute(
                f"INSERT INTO api_keys ({_API_KEY_COLUMNS}, key_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.organisation_id,
                    key.user_id,
                    int(key.is_admin),
                    key.prefix,
                    format_timestamp(key.created_at),
                    None,
                    json.dumps(key.tools_allow),
                    json.dumps(key.tools_deny),
                    hash_api_key(secret),
                ),
            )
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
                raise OrganisationNotFound(f"no organisation {organisation_id!r}") from exc
            raise translate(exc, "create API key") from exc
        except sqlite3.Error as exc:
            raise translate(exc, "create API key") from exc
        return CreatedKey(key=key, secret=secret)

    async def live_api_keys(
        self, organisation_id: str, *, api_key_id: str | None = None, user_id: str | None = None
    ) -> list[ApiKey]:
        with translated("list API keys"):
            async with self._conn.execute(
                f"""SELECT {_API_KEY_COLUMNS} FROM api_keys
                    WHERE organisation_id = ? AND revoked_at IS NULL
                      AND (? IS NULL OR id = ?) AND (? IS NULL OR user_id = ?)""",
                (organisation_id, api_key_id, api_key_id, user_id, user_id),
            ) as cursor:
                return [_api_key(row) for row in await cursor.fetchall()]

    async def find_api_key(self, secret: str) -> ApiKey | None:
        if not secret.startswith(KEY_PREFIX):
            return None
        with translated("find API key"):
            row = await self._fetchone(
                f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                (hash_api_key(secret),),
            )
        return None if row is None else _api_key(row)

    async def api_key_revoked(self, secret: str) -> bool:
        if not secret.startswith(KEY_PREFIX):
            return False
        with translated("find API key"):
            row = await self._fetchone(
                "SELECT 1 FROM api_keys WHERE key_hash = ? AND revoked_at IS NOT NULL",
                (hash_api_key(secret),),
            )
        return row is not None

    async def list_api_keys(self, organisation_id: str) -> list[ApiKey]:
        with translated("list API keys"):
            async with self._conn.execute(
                f"SELECT {_API_KEY_LISTED} FROM api_keys WHERE organisation_id = ?"
                " ORDER BY created_at, rowid",
                (organisation_id,),
            ) as cursor:
                return [_api_key(row) for row in await cursor.fetchall()]

    def key_generation(self) -> Hashable:
        return self._revocations.generation()

    async def record_key_use(self, used: Mapping[str, datetime]) -> None:
        if not used:
            return
        rows = [(format_timestamp(moment), key_id) for key_id, moment in used.items()]
        with translated("record API key use"):
            # The text sorts in time order, so max() keeps the later of two batches.
            await self._conn.executemany(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ''), ?) WHERE id = ?", rows
            )

    async def revoke_api_key(self, api_key_id: str) -> None:
        with translated("revoke API key"):
            async with self._conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (format_timestamp(utc_now()), api_key_id),
            ) as cursor:
                revoked = cursor.rowcount > 0
            # Nothing updated: either already revoked (a no-op) or no such key.
            exists = revoked or await self._fetchone("SELECT 1 FROM api_keys WHERE id = ?", (api_key_id,))
        if not exists:
            raise KeyNotFound(f"no API key {api_key_id!r}")
        # After the commit (autocommit: the UPDATE above), so whoever sees the signal and looks
        # the key up again finds it revoked. Also when it was revoked already: a second run
        # repairs a signal that a crash between the two steps lost.
        self._revocations.signal(api_key_id)

    async def write_records(self, events: Sequence[RecordEvent]) -> None:
        with translated("write records"):
            await self._writer.write(write_records, events, here=len(events) <= _WRITE_HERE_MAX)

    async def prune_records(self, *, older_than: datetime | None, max_invocations: int | None) -> int:
        deleted = 0
        with translated("prune records"):
            steps: list[tuple[str, int]] = []
            if older_than is not None:
                cutoff = to_unix_ms(older_than)
                steps += [("sessions", cutoff), ("calls", cutoff)]
            if max_invocations is not None:
                oldest_kept = await self._writer.call(oldest_kept_invocation, max_invocations)
                steps += [] if oldest_kept is None else [("excess", oldest_kept)]
            for step, value in steps:
                # One short statement per thread hop, so recorder commits interleave with a prune;
                # counted as writes, so the WAL is checkpointed during a long prune too.
                while (n := await self._writer.write(prune_step, step, value, here=False)) > 0:
                    deleted += n
                    if n < PRUNE_BATCH:
                        break
        return deleted

    async def end_open_sessions(self, reason: str, *, keep_live: bool = False) -> int:
        with translated("end open sessions"):
            async with self._conn.execute(
                END_OPEN_SESSIONS + (KEEPING_LIVE if keep_live else ""), (reason,)
            ) as cursor:
                return cursor.rowcount

    async def open_live_session(self, live: LiveSession) -> LiveSession:
        return await open_live_session(self._statements, live)

    async def live_session(self, mcp_session_id: str) -> LiveSession | None:
        return await live_session(self._statements, mcp_session_id)

    async def sessions_seen(self, mcp_session_ids: Collection[str], at: datetime) -> None:
        await sessions_seen(self._statements, mcp_session_ids, at)

    async def end_live_session(self, mcp_session_id: str) -> bool:
        return await end_live_session(self._statements, mcp_session_id)

    async def end_idle_sessions(
        self, sessions_before: datetime, groups_before: datetime
    ) -> list[LiveSession]:
        return await end_idle_sessions(self._statements, sessions_before, groups_before)

    async def list_sessions(
        self,
        organisation_id: str | None,
        *,
        api_key_id: str | None,
        seek: Seek,
        limit: int,
        client_name: str | None = None,
    ) -> Page[RecordedSession]:
        with translated("list sessions"):
            return await list_sessions(
                self._statements, organisation_id, api_key_id, seek, limit, client_name
            )

    async def get_session(
        self, organisation_id: str | None, session_id: str, *, api_key_id: str | None
    ) -> RecordedSession | None:
        with translated("get session"):
            return await get_session(self._statements, organisation_id, session_id, api_key_id)

    async def find_session(self, mcp_session_id: str) -> RecordedSession | None:
        with translated("find session"):
            return await find_session(self._statements, mcp_session_id)

    async def list_invocations(self, session_id: str, *, seek: Seek, limit: int) -> Page[RecordedInvocation]:
        with translated("list invocations"):
            return await list_invocations(self._statements, session_id, seek, limit)

    async def gateway_secret(self, name: str) -> bytes:
        with translated("read gateway secret"):
            # Two processes may race to create it: the first insert wins, both read the winner.
            await self._conn.execute(
                "INSERT INTO gateway_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, secrets.token_bytes(32)),
            )
            row = await self._fetchone("SELECT value FROM gateway_secrets WHERE name = ?", (name,))
        if row is None:
            raise StoreError(f"gateway secret {name!r} vanished")
        return bytes(row[0])


async def _open_connection(path: str | Path) -> aiosqlite.Connection:
    with translated(f"open {path}"):
        conn = await connect(path)
    try:
        with translated(f"open {path}"):
            await configure(conn)
            await apply_migrations(conn)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await conn.close()
        raise
    return conn


@asynccontextmanager
async def open_sqlite_store(path: str | Path, *, sealer: Sealer | None = None) -> AsyncIterator[SqliteStore]:
    """Open (creating if needed) and migrate the SQLite database at ``path``; close it on exit.

    Raises ``StoreUnavailable`` if the file cannot be opened or stays locked,
    ``SchemaVersionError`` if a newer mcpgw has migrated it.
    """
    async with AsyncExitStack() as stack:
        for_statements = await _open_connection(path)
        stack.push_async_callback(_close, for_statements, path)
        with translated(f"open {path}"), anyio.CancelScope(shield=True):
            writer = WriterThread(await anyio.to_thread.run_sync(connect_blocking, path))
        stack.push_async_callback(writer.aclose)
        revocations = RevocationMarker(Path(f"{path}-revoked"))
        revocations.ensure()
        yield SqliteStore(for_statements, writer, revocations, sealer)


async def _close(conn: aiosqlite.Connection, path: str | Path) -> None:
    with anyio.CancelScope(shield=True), translated(f"close {path}"):
        await conn.close()
