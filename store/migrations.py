"""Schema migrations: an ordered list of SQL scripts; the schema version is ``PRAGMA user_version``.

Script ``MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``. Scripts are only ever
appended: a released script is never edited. :func:`apply_migrations` runs every pending script
and sets the new version in one ``BEGIN IMMEDIATE`` transaction, reading the version inside it,
so it is idempotent, all-or-nothing, and safe when several processes open a new file at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

import aiosqlite
import anyio

from .errors import SchemaVersionError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "apply_migrations", "read_schema_version"]

MIGRATIONS: tuple[str, ...] = (
    # 1: organisations and API keys.
    """
    CREATE TABLE organisations (
        id TEXT PRIMARY KEY,
        name TEXT UNIQUE NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        organisation_id TEXT NOT NULL REFERENCES organisations(id),
        user_id TEXT,
        is_admin INTEGER NOT NULL,
        key_hash TEXT UNIQUE NOT NULL,
        prefix TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE INDEX api_keys_organisation ON api_keys(organisation_id);
    """,
    # 2: per-key tool filters (JSON arrays of globs over host-visible tool names).
    """
    ALTER TABLE api_keys ADD COLUMN tools_allow TEXT NOT NULL DEFAULT '["*"]';
    ALTER TABLE api_keys ADD COLUMN tools_deny TEXT NOT NULL DEFAULT '[]';
    """,
    # 3: recorded sessions and invocations, and secrets the gateway keeps for itself.
    # Times are unix milliseconds (INTEGER): half the index size of ISO text on the largest
    # table, and keyset comparisons on integers. `seq` (the rowid) breaks ties in every order
    # and is what invocations point at, so their session index holds integers, not uuids.
    # Every listing is a keyset walk over one of these indexes (no OFFSET, no COUNT).
    """
    CREATE TABLE sessions (
        seq INTEGER PRIMARY KEY,
        id TEXT UNIQUE NOT NULL,
        mcp_session_id TEXT NOT NULL,
        organisation_id TEXT NOT NULL REFERENCES organisations(id),
        api_key_id TEXT,
        client_id TEXT,
        client_name TEXT,
        client_version TEXT,
        protocol_version TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        last_call_at INTEGER NOT NULL,
        call_count INTEGER NOT NULL DEFAULT 0,
        ended_at INTEGER,
        end_reason TEXT
    );
    CREATE INDEX sessions_by_activity ON sessions(organisation_id, last_call_at);
    CREATE INDEX sessions_by_key_activity ON sessions(organisation_id, api_key_id, last_call_at);
    CREATE INDEX sessions_by_last_call ON sessions(last_call_at);
    CREATE TABLE invocations (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        session_seq INTEGER NOT NULL REFERENCES sessions(seq) ON DELETE CASCADE,
        method TEXT NOT NULL,
        tool_name TEXT NOT NULL,
        upstream TEXT,
        upstream_name TEXT,
        request_id TEXT,
        arguments_json TEXT,
        arguments_truncated INTEGER NOT NULL DEFAULT 0,
        result_json TEXT,
        result_truncated INTEGER NOT NULL DEFAULT 0,
        success INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        upstream_ms INTEGER,
        trace_id TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX invocations_by_session ON invocations(session_seq, created_at);
    CREATE TABLE gateway_secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    """,
    # 4: per-identity credentials for upstreams, the flows that obtain them, and the gateway's
    # OAuth client registrations. `secret` columns hold AES-GCM sealed JSON (store/sealing.py),
    # bound to their table, row and column. A binding (organisation, upstream, mode, subject)
    # has at most one credential; flows are looked up by binding and by a hash of their state.
    """
    CREATE TABLE oauth_clients (
        id TEXT PRIMARY KEY,
        upstream TEXT NOT NULL,
        issuer TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        client_id TEXT NOT NULL,
        secret BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (upstream, issuer, redirect_uri)
    );
    CREATE TABLE credentials (
        id TEXT PRIMARY KEY,
        organisation_id TEXT NOT NULL REFERENCES organisations(id),
        upstream TEXT NOT NULL,
        auth_mode TEXT NOT NULL,
        subject TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        secret BLOB NOT NULL,
        header_names TEXT NOT NULL DEFAULT '[]',
        oauth_client_id TEXT,
        expires_at INTEGER,
        created_at INTEGER NOT NULL,
        last_refreshed_at INTEGER,
        updated_at INTEGER,
        UNIQUE (organisation_id, upstream, auth_mode, subject)
    );
    CREATE INDEX credentials_by_created ON credentials(organisation_id, created_at);
    CREATE TABLE auth_flows (
        id TEXT PRIMARY KEY,
        organisation_id TEXT NOT NULL REFERENCES organisations(id),
        upstream TEXT NOT NULL,
        auth_mode TEXT NOT NULL,
        subject TEXT NOT NULL,
        auth_kind TEXT NOT NULL,
        state_hash TEXT UNIQUE,
        secret BLOB NOT NULL,
        oauth_client_id TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        claimed_at INTEGER
    );
    CREATE INDEX auth_flows_by_binding ON auth_flows(organisation_id, upstream, auth_mode, subject);
    CREATE INDEX auth_flows_by_expiry ON auth_flows(expires_at);
    """,
    # 5: when each API key was last used (ISO text like created_at), written at most about once a
    # minute per key by a running gateway, for `mcpgw keys list`.
    """
    ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
    """,
    # 6: a flow's connect link is a capability, so the database keeps only its hash (and the
    # link itself sealed inside `secret`, so a live flow can be offered again). Flows from
    # before used their id as the link: they are dropped (they lived 15 minutes at most).
    """
    ALTER TABLE auth_flows ADD COLUMN link_hash TEXT;
    CREATE UNIQUE INDEX auth_flows_by_link ON auth_flows(link_hash);
    DELETE FROM auth_flows;
    """,
    # 7: hosts that sign in, the gateway being their OAuth authorization server. Clients a host
    # registered (RFC 7591) or whose metadata document was fetched (then `expires_at` is when to
    # fetch it again); authorization codes; grants (one per consent: what a host may act as,
    # the API key that approved it); and their access and refresh tokens. Codes, tokens and
    # client secrets are kept as SHA-256 hashes only, never the values.
    """
    CREATE TABLE signin_clients (
        id TEXT PRIMARY KEY,
        client_id TEXT UNIQUE NOT NULL,
        kind TEXT NOT NULL,
        metadata TEXT NOT NULL,
        secret_hash TEXT,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        expires_at INTEGER
    );
    CREATE TABLE signin_codes (
        code_hash TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        client_row_id TEXT NOT NULL,
        client_name TEXT,
        redirect_uri TEXT NOT NULL,
        redirect_uri_explicit INTEGER NOT NULL DEFAULT 1,
        code_challenge TEXT NOT NULL,
        resource TEXT NOT NULL,
        scope TEXT NOT NULL,
        organisation_id TEXT NOT NULL REFERENCES organisations(id),
        api_key_id TEXT NOT NULL REFERENCES api_keys(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        claimed_at INTEGER,
        grant_id TEXT
    );
    CREATE INDEX signin_codes_by_expiry ON signin_codes(expires_at);
    CREATE TABLE signin_grants (
        id TEXT PRIMARY KEY,
        organisation_id TEXT NOT NULL REFERENCES organisations(id),
        api_key_id TEXT NOT NULL REFERENCES api_keys(id),
        client_row_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        client_name TEXT,
        resource TEXT NOT NULL,
        scope TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at INTEGER,
        revoked_reason TEXT
    );
    CREATE INDEX signin_grants_by_organisation ON signin_grants(organisation_id, created_at);
    CREATE INDEX signin_grants_by_client ON signin_grants(client_row_id);
    CREATE TABLE signin_tokens (
        token_hash TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL REFERENCES signin_grants(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
    );
    CREATE INDEX signin_tokens_by_grant ON signin_tokens(grant_id);
    CREATE INDEX signin_tokens_by_expiry ON signin_tokens(expires_at);
    """,
    # 8: the admin console lists an organisation's sessions of one client (by the name it gave),
    # alone or with one key, newest activity first: keyset pages over these, like the others.
    """
    CREATE INDEX sessions_by_client_activity ON sessions(organisation_id, client_name, last_call_at);
    CREATE INDEX sessions_by_key_client_activity
        ON sessions(organisation_id, api_key_id, client_name, last_call_at);
    """,
    # 9: authorization requests awaiting the person's consent, where every process sees them,
    # counted per client address (live ones: unexpired) and pruned by expiry.
    """
    CREATE TABLE signin_pending (
        id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        client_id TEXT NOT NULL,
        request TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX signin_pending_by_address ON signin_pending(address, expires_at);
    CREATE INDEX signin_pending_by_expiry ON signin_pending(expires_at);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
"""The version a database has once every known migration is applied."""


def split_statements(script: str) -> Iterator[str]:
    """Yield the complete SQL statements of ``script`` (``sqlite3.complete_statement`` decides)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()[:60]!r}")


async def read_schema_version(conn: aiosqlite.Connection) -> int:
    """Return the database's ``PRAGMA user_version``."""
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def apply_migrations(conn: aiosqlite.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring the schema up to ``len(migrations)`` and return that version.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open transaction.
    Raises ``SchemaVersionError`` if the database is newer than ``migrations``; sqlite3 errors
    propagate (the caller translates them) after the transaction is rolled back.
    """
    target = len(migrations)
    await conn.execute("BEGIN IMMEDIATE")
    try:
        current = await read_schema_version(conn)
        if current > target:
            raise SchemaVersionError(f"database schema version {current} is newer than this mcpgw's {target}")
        for script in migrations[current:]:
            for statement in split_statements(script):
                await conn.execute(statement)
        if current != target:
            # PRAGMA takes no parameters; target is an int we computed.
            await conn.execute(f"PRAGMA user_version = {target:d}")
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with anyio.CancelScope(shield=True):
                await conn.execute("ROLLBACK")
        raise
    return target
