"""``PostgresStore``: the :class:`~store.protocol.Store` on a PostgreSQL server, through asyncpg.

Three kinds of connection: a bounded pool for lookups, listings and small writes (each statement
its own transaction, or one explicit transaction where several rows change together); one
connection of the recorder's own for its group commits (``_pg_records.py``); and one that
listens for revocations (``_pg_revocations.py``). Everything a second gateway process needs to
see is in the database; nothing is kept beside it (the sealing key comes from the config, see
``gateway/credentials/sealing.py``).

When the server goes away, every use fails at once with ``StoreUnavailable`` until a retry is
due (``_pg.Availability``), and the pool reconnects by itself on the next use after that.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Collection, Hashable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any
from uuid import uuid4

import anyio
import asyncpg

from ._confirmations import Confirmations
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
from ._pg import PgDatabase, no_reset, translate
from ._pg_coordination import PgCoordination
from ._pg_records import RecordWriter
from ._pg_revocations import CHANNEL, RevocationListener
from ._pg_schema import apply_postgres_migrations
from ._pg_signin import PgSignIn
from ._records import PRUNE_BATCH, PRUNE_STEPS
from ._timestamps import format_timestamp, parse_timestamp, to_unix_ms, utc_now
from .coordination import Coordination, LocalCoordination
from .errors import KeyNotFound, OrganisationNotFound, StoreError
from .keys import KEY_PREFIX, display_prefix, generate_api_key, hash_api_key
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

__all__ = ["DEFAULT_POOL_SIZE", "PostgresStore", "open_postgres_store", "redacted_url"]

logger = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 10
# How long a revocation waits for the other replicas to say they dropped their cached keys and
# grants; a replica killed a moment ago (heartbeat not yet lapsed) costs the admin this once.
REVOCATION_CONFIRM_S = 2.0
CONNECT_TIMEOUT_S = 5.0
_ORGANISATION_COLUMNS = "id, name, created_at"
_API_KEY_COLUMNS = (
    "id, organisation_id, user_id, is_admin, prefix, created_at, revoked_at, tools_allow, tools_deny"
)
_OLDEST_KEPT = "SELECT seq FROM invocations ORDER BY seq DESC LIMIT 1 OFFSET $1"


def redacted_url(url: str) -> str:
    """``url`` without its password, for messages and the log."""
    scheme, sep, rest = url.partition("://")
    credentials, at, where = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.partition(':')[0]}:***@{where}"


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


class PostgresStore:
    """The Store on an open pool and a migrated schema; see :func:`open_postgres_store`."""

    def __init__(
        self,
        database: PgDatabase,
        writer: RecordWriter,
        revocations: RevocationListener,
        sealer: Sealer | None = None,
        coordination: Coordination | None = None,
    ) -> None:
        self._db = database
        self._writer = writer
        self._revocations = revocations
        self._credentials = None if sealer is None else CredentialSql(database, sealer)
        self._coordination: Coordination = coordination or LocalCoordination()
        self._signin = PgSignIn(database, self._revoked)
        self._everyone = Confirmations(self._coordination, "revocations", revocations.advance)

    @property
    def credentials(self) -> CredentialStore:
        if self._credentials is None:
            raise StoreError("this store was opened without keys, so it cannot hold credentials")
        return self._credentials

    @property
    def coordination(self) -> Coordination:
        return self._coordination

    @property
    def signin(self) -> SignInStore:
        return self._signin

    @property
    def listening(self) -> bool:
        """Whether revocations are heard now (else they are polled)."""
        return self._revocations.listening

    async def _revoked(self) -> None:
        """A revocation committed: it holds here at once, and on every other live replica once
        this returns (each has dropped its cached keys and grants, or is named in the log)."""
        self._revocations.advance()
        silent = await self._everyone.everyone(REVOCATION_CONFIRM_S)
        if silent:
            logger.warning(
                "revocation: replicas %s did not confirm within %gs; each refuses the revoked key or"
                " grant once the revocation's notice reaches it",
                sorted(silent),
                REVOCATION_CONFIRM_S,
            )

    async def _organisation_named(self, name: str) -> Organisation | None:
        row = await self._db.one(
            "find organisation", f"SELECT {_ORGANISATION_COLUMNS} FROM organisations WHERE name = ?", (name,)
        )
        return None if row is None else _organisation(row)

    async def ensure_organisation(self, name: str) -> Organisation:
        existing = await self._organisation_named(name)
        if existing is not None:
            return existing
        await self._db.run(
            "ensure organisation",
            "INSERT INTO organisations (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (str(uuid4()), name, format_timestamp(utc_now())),
        )
        created = await self._organisation_named(name)
        if created is None:
            raise StoreError("organisation vanished while being ensured")
        return created

    async def find_organisation(self, name: str) -> Organisation | None:
        return await self._organisation_named(name)

    async def get_organisation(self, organisation_id: str) -> Organisation | None:
        row = await self._db.one(
            "get organisation",
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
            await self._db.run(
                "create API key",
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
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.ForeignKeyViolationError):
                raise OrganisationNotFound(f"no organisation {organisation_id!r}") from exc.__cause__
            raise
        return CreatedKey(key=key, secret=secret)

    async def live_api_keys(
        self, organisation_id: str, *, api_key_id: str | None = None, user_id: str | None = None
    ) -> list[ApiKey]:
        rows = await self._db.all(
            "list API keys",
            f"""SELECT {_API_KEY_COLUMNS} FROM api_keys
                WHERE organisation_id = :org AND revoked_at IS NULL
                  AND (CAST(:key AS TEXT) IS NULL OR id = :key)
                  AND (CAST(:user AS TEXT) IS NULL OR user_id = :user)""",
            {"org": organisation_id, "key": api_key_id, "user": user_id},
        )
        return [_api_key(row) for row in rows]

    async def find_api_key(self, secret: str) -> ApiKey | None:
        if not secret.startswith(KEY_PREFIX):
            return None
        row = await self._db.one(
            "find API key",
            f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
            (hash_api_key(secret),),
        )
        return None if row is None else _api_key(row)

    async def api_key_revoked(self, secret: str) -> bool:
        if not secret.startswith(KEY_PREFIX):
            return False
        row = await self._db.one(
            "find API key",
            "SELECT 1 FROM api_keys WHERE key_hash = ? AND revoked_at IS NOT NULL",
            (hash_api_key(secret),),
        )
        return row is not None

    async def list_api_keys(self, organisation_id: str) -> list[ApiKey]:
        rows = await self._db.all(
            "list API keys",
            f"SELECT {_API_KEY_COLUMNS}, last_used_at FROM api_keys WHERE organisation_id = ?"
            " ORDER BY created_at, seq",
            (organisation_id,),
        )
        return [_api_key(row) for row in rows]

    def key_generation(self) -> Hashable:
        return self._revocations.generation()

    async def record_key_use(self, used: Mapping[str, datetime]) -> None:
        if not used:
            return
        rows = [(format_timestamp(moment), key_id) for key_id, moment in used.items()]
        with self._db.guarded("record API key use"):
            # The text sorts in time order, so GREATEST keeps the later of two batches.
            await self._db.pool.executemany(
                "UPDATE api_keys SET last_used_at = GREATEST(coalesce(last_used_at, ''), $1) WHERE id = $2",
                rows,
            )

    async def revoke_api_key(self, api_key_id: str) -> None:
        with self._db.guarded("revoke API key"):
            async with self._db.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                    format_timestamp(utc_now()),
                    api_key_id,
                )
                exists = await conn.fetchval("SELECT 1 FROM api_keys WHERE id = $1", api_key_id)
                if exists:
                    # Delivered when the transaction commits, to every listening process. Also
                    # when it was revoked already: a second run repairs a notice a crash lost.
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"key:{api_key_id}")
        if not exists:
            raise KeyNotFound(f"no API key {api_key_id!r}")
        await self._revoked()

    async def write_records(self, events: Sequence[RecordEvent]) -> None:
        await self._writer.write(events)

    async def prune_records(self, *, older_than: datetime | None, max_invocations: int | None) -> int:
        deleted = 0
        steps: list[tuple[str, int]] = []
        if older_than is not None:
            cutoff = to_unix_ms(older_than)
            steps += [("sessions", cutoff), ("calls", cutoff)]
        if max_invocations is not None:
            row = await self._db.one("prune records", _OLDEST_KEPT.replace("$1", "?"), (max_invocations,))
            steps += [] if row is None else [("excess", int(row[0]) + 1)]
        for step, value in steps:
            # One short statement at a time, each its own transaction: commits go on meanwhile.
            while (
                n := await self._db.run(
                    "prune records", PRUNE_STEPS[step], {"value": value, "batch": PRUNE_BATCH}
                )
            ) > 0:
                deleted += n
                if n < PRUNE_BATCH:
                    break
        return deleted

    async def end_open_sessions(self, reason: str, *, keep_live: bool = False) -> int:
        sql = END_OPEN_SESSIONS + (KEEPING_LIVE if keep_live else "")
        return await self._db.run("end open sessions", sql, (reason,))

    async def open_live_session(self, live: LiveSession) -> LiveSession:
        return await open_live_session(self._db, live)

    async def live_session(self, mcp_session_id: str) -> LiveSession | None:
        return await live_session(self._db, mcp_session_id)

    async def sessions_seen(self, mcp_session_ids: Collection[str], at: datetime) -> None:
        await sessions_seen(self._db, mcp_session_ids, at)

    async def end_live_session(self, mcp_session_id: str) -> bool:
        return await end_live_session(self._db, mcp_session_id)

    async def end_idle_sessions(
        self, sessions_before: datetime, groups_before: datetime
    ) -> list[LiveSession]:
        return await end_idle_sessions(self._db, sessions_before, groups_before)

    async def list_sessions(
        self,
        organisation_id: str | None,
        *,
        api_key_id: str | None,
        seek: Seek,
        limit: int,
        client_name: str | None = None,
    ) -> Page[RecordedSession]:
        return await list_sessions(self._db, organisation_id, api_key_id, seek, limit, client_name)

    async def get_session(
        self, organisation_id: str | None, session_id: str, *, api_key_id: str | None
    ) -> RecordedSession | None:
        return await get_session(self._db, organisation_id, session_id, api_key_id)

    async def find_session(self, mcp_session_id: str) -> RecordedSession | None:
        return await find_session(self._db, mcp_session_id)

    async def list_invocations(self, session_id: str, *, seek: Seek, limit: int) -> Page[RecordedInvocation]:
        return await list_invocations(self._db, session_id, seek, limit)

    async def gateway_secret(self, name: str) -> bytes:
        await self._db.run(
            "read gateway secret",
            "INSERT INTO gateway_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, secrets.token_bytes(32)),
        )
        row = await self._db.one(
            "read gateway secret", "SELECT value FROM gateway_secrets WHERE name = ?", (name,)
        )
        if row is None:
            raise StoreError(f"gateway secret {name!r} vanished")
        return bytes(row[0])


def _connect_options(pool_size: int) -> dict[str, Any]:
    return {
        "timeout": CONNECT_TIMEOUT_S,
        "command_timeout": None,
        "server_settings": {"application_name": "mcpgw"},
    }


async def _connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url, **_connect_options(1))
    return conn


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    sealer: Sealer | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    migrate: bool = True,
) -> AsyncIterator[PostgresStore]:
    """Connect to the PostgreSQL database at ``url`` (a ``postgresql://`` URL; a password it
    leaves out comes from ``PGPASSWORD`` or ``~/.pgpass``, TLS from its ``sslmode`` and kin),
    migrate its schema (unless ``migrate`` is false: then it must be current), and close every
    connection on exit.

    Raises ``StoreUnavailable`` when the server cannot be reached or refuses the login,
    ``SchemaVersionError`` when a newer mcpgw migrated the schema.
    """
    where = redacted_url(url)
    async with AsyncExitStack() as stack:
        try:
            # The first connection says whether the server is there and takes our login, and
            # migrates: before the pool opens its others.
            first = await _connect(url)
        except Exception as exc:
            raise translate(exc, f"connect to {where}") from exc
        try:
            from ._pg_schema import postgres_scripts, read_postgres_version
            from .errors import SchemaVersionError

            if migrate:
                await apply_postgres_migrations(first)
            else:
                found = await read_postgres_version(first)
                if found != len(postgres_scripts()):
                    raise SchemaVersionError(
                        f"the database's schema is version {found}, this mcpgw's {len(postgres_scripts())}"
                        ": run `mcpgw migrate`"
                    )
        except StoreError:
            raise
        except Exception as exc:
            raise translate(exc, f"migrate {where}") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await first.close(timeout=2)
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, reset=no_reset, **_connect_options(pool_size)
            )
        except Exception as exc:
            raise translate(exc, f"connect to {where}") from exc
        stack.push_async_callback(_close_pool, pool)
        database = PgDatabase(pool)
        writer = RecordWriter(database, partial(_connect, url))
        stack.push_async_callback(writer.aclose)

        async def poll(sql: str) -> Any:
            return await database.one("poll revocations", sql)

        revocations = RevocationListener(partial(_connect, url), poll)
        stack.push_async_callback(revocations.aclose)
        try:
            await revocations.start()
        except Exception as exc:
            raise translate(exc, f"listen on {where}") from exc
        coordination = PgCoordination(database, partial(_connect, url))
        stack.push_async_callback(coordination.aclose)
        try:
            await coordination.start()
        except Exception as exc:
            raise translate(exc, f"listen on {where}") from exc
        yield PostgresStore(database, writer, revocations, sealer, coordination)


async def _close_pool(pool: asyncpg.Pool) -> None:
    with anyio.CancelScope(shield=True):
        try:
            with anyio.fail_after(5):
                await pool.close()
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pool.terminate()
