"""The PostgreSQL :class:`~store.protocol.SignInStore`: hosts' OAuth clients, authorization codes,
grants and their tokens, in the same tables and with the same rules as the SQLite one
(``_signin.py``, whose row shapes and queries it shares).

What changes several rows at once (redeeming a code, opening a grant, rotating a refresh token,
revoking) is one transaction that first locks the row it turns on (``SELECT … FOR UPDATE``), so of
two gateway processes redeeming one code or spending one refresh token, the second sees what the
first did. Every revocation of a grant notifies the other processes in its transaction
(``_pg_revocations.py``) and advances this one's key generation after the commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from ._pg import PgDatabase
from ._pg_revocations import CHANNEL
from ._signin import (
    _CLIENT_COLUMNS,
    _CODE_COLUMNS,
    _CODES_KEPT,
    _GRANT_COLUMNS,
    _LIVE,
    _REVOKED_KEPT,
    _SIGNED_IN,
    _client,
    _grant,
    _pending,
    _signed_in,
    _token_rows,
)
from ._timestamps import from_unix_ms, to_unix_ms
from .errors import StoreError
from .keys import hash_api_key
from .models import Grant, IssuedToken, PendingSignIn, SignedIn, SignInClient, SignInCode

__all__ = ["PgSignIn"]

_INSERT_TOKEN = (
    "INSERT INTO signin_tokens (token_hash, grant_id, kind, created_at, expires_at)"
    " VALUES ($1, $2, $3, $4, $5)"
)


def _ms(moment: datetime) -> int:
    return to_unix_ms(moment)


Conn = asyncpg.Connection | PoolConnectionProxy


async def _revoke(conn: Conn, grant_id: str, reason: str, now: int) -> bool:
    status = await conn.execute(
        "UPDATE signin_grants SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
        now,
        reason,
        grant_id,
    )
    await conn.execute("DELETE FROM signin_tokens WHERE grant_id = $1", grant_id)
    revoked = status != "UPDATE 0"
    if revoked:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"grant:{grant_id}")
    return revoked


class PgSignIn:
    """The sign-in tables on the store's pool. Private to the package: callers see ``SignInStore``."""

    def __init__(self, database: PgDatabase, revoked: Callable[[], Awaitable[None]]) -> None:
        self._db = database
        self._revoked = revoked  # advances every live process's key generation

    async def _one(self, sql: str, parameters: Any) -> Any:
        return await self._db.one("read sign-ins", sql, parameters)

    # -- clients -------------------------------------------------------------------------------

    async def client(self, client_id: str) -> SignInClient | None:
        row = await self._one(
            f"SELECT {_CLIENT_COLUMNS} FROM signin_clients WHERE client_id = ?", (client_id,)
        )
        return None if row is None else _client(row)

    async def save_client(self, client: SignInClient) -> SignInClient:
        await self._db.run(
            "save a sign-in client",
            f"INSERT INTO signin_clients ({_CLIENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (client_id) DO UPDATE SET metadata = excluded.metadata,"
            " expires_at = excluded.expires_at WHERE signin_clients.kind = 'document'",
            (
                client.id,
                client.client_id,
                client.kind,
                orjson.dumps(dict(client.metadata)).decode(),
                client.secret_hash,
                _ms(client.created_at),
                None if client.last_used_at is None else _ms(client.last_used_at),
                None if client.expires_at is None else _ms(client.expires_at),
            ),
        )
        saved = await self.client(client.client_id)
        if saved is None:
            raise StoreError("the sign-in client vanished while being saved")
        return saved

    # -- authorization requests awaiting consent -----------------------------------------------

    async def park_authorization(self, pending: PendingSignIn, per_address: int, now: datetime) -> bool:
        # One statement, as on SQLite. Under concurrent writers the cap may be passed by the few
        # inserts that counted at once: it bounds what one address can park, not to the row.
        parked = await self._db.run(
            "park an authorization request",
            "INSERT INTO signin_pending (id, address, client_id, request, created_at, expires_at)"
            " SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT),"
            " CAST(? AS BIGINT), CAST(? AS BIGINT) WHERE (SELECT count(*) FROM signin_pending"
            " WHERE address = ? AND expires_at > ?) < ?",
            (
                pending.id,
                pending.address,
                pending.client_id,
                orjson.dumps(dict(pending.request)).decode(),
                _ms(now),
                _ms(pending.expires_at),
                pending.address,
                _ms(now),
                per_address,
            ),
        )
        return parked > 0

    async def pending_authorization(self, request_id: str, now: datetime) -> PendingSignIn | None:
        row = await self._one(
            "SELECT id, address, client_id, request, expires_at FROM signin_pending"
            " WHERE id = ? AND expires_at > ?",
            (request_id, _ms(now)),
        )
        return None if row is None else _pending(row)

    async def end_authorization(self, request_id: str) -> bool:
        ended = await self._db.run(
            "end an authorization request", "DELETE FROM signin_pending WHERE id = ?", (request_id,)
        )
        return ended > 0

    # -- codes and grants ----------------------------------------------------------------------

    async def issue_code(self, code: str, what: SignInCode, now: datetime) -> None:
        await self._db.run(
            "issue an authorization code",
            f"INSERT INTO signin_codes (code_hash, {_CODE_COLUMNS}, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                hash_api_key(code),
                what.client_id,
                what.client_row_id,
                what.client_name,
                what.redirect_uri,
                what.code_challenge,
                what.resource,
                what.scope,
                what.organisation_id,
                what.api_key_id,
                _ms(what.expires_at),
                int(what.redirect_uri_explicit),
                _ms(now),
            ),
        )

    async def redeem_code(self, code: str, now: datetime) -> SignInCode | None:
        digest, at = hash_api_key(code), _ms(now)
        revoked = False
        with self._db.guarded("redeem an authorization code"):
            async with self._db.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    f"SELECT {_CODE_COLUMNS}, claimed_at, grant_id FROM signin_codes"
                    " WHERE code_hash = $1 FOR UPDATE",
                    digest,
                )
                if row is not None and row[11] is not None:
                    grant_id: str | None = row[12]
                    revoked = grant_id is not None and await _revoke(conn, grant_id, "code_replayed", at)
                    row = None
                elif row is not None:
                    await conn.execute(
                        "UPDATE signin_codes SET claimed_at = $1 WHERE code_hash = $2", at, digest
                    )
        if revoked:
            await self._revoked()
        if row is None:
            return None
        return SignInCode(
            client_id=row[0],
            client_row_id=row[1],
            client_name=row[2],
            redirect_uri=row[3],
            code_challenge=row[4],
            resource=row[5],
            scope=row[6],
            organisation_id=row[7],
            api_key_id=row[8],
            expires_at=from_unix_ms(row[9]),
            redirect_uri_explicit=bool(row[10]),
        )

    async def open_grant(
        self, code: str, grant_id: str, access: IssuedToken, refresh: IssuedToken | None, now: datetime
    ) -> None:
        tokens, digest, at = _token_rows(access, refresh), hash_api_key(code), _ms(now)
        with self._db.guarded("open a grant"):
            async with self._db.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT organisation_id, api_key_id, client_row_id, client_id, client_name,"
                    " resource, scope"
                    " FROM signin_codes WHERE code_hash = $1 AND grant_id IS NULL FOR UPDATE",
                    digest,
                )
                if row is None:
                    raise StoreError("open a grant: the authorization code opened a grant already")
                await conn.execute(
                    "INSERT INTO signin_grants (id, organisation_id, api_key_id, client_row_id, client_id,"
                    " client_name, resource, scope, created_at, last_used_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    grant_id,
                    *row,
                    at,
                    at,
                )
                await conn.executemany(
                    _INSERT_TOKEN, [(t, grant_id, kind, at, until) for t, kind, until in tokens]
                )
                await conn.execute(
                    "UPDATE signin_codes SET grant_id = $1 WHERE code_hash = $2", grant_id, digest
                )
                await conn.execute("UPDATE signin_clients SET last_used_at = $1 WHERE id = $2", at, row[2])

    async def signed_in(self, access_token: str, now: datetime) -> SignedIn | None:
        row = await self._one(f"{_SIGNED_IN} AND {_LIVE}", (hash_api_key(access_token), "access", _ms(now)))
        return None if row is None else _signed_in(row)

    async def access_token_ended(
        self, access_token: str, now: datetime
    ) -> Literal["expired", "revoked"] | None:
        row = await self._one(_SIGNED_IN, (hash_api_key(access_token), "access"))
        if row is None:
            return None
        signed_in = _signed_in(row)
        if signed_in.grant.revoked_at is not None:
            return "revoked"
        return "expired" if signed_in.expires_at <= now else None

    async def refreshable(self, refresh_token: str, now: datetime) -> SignedIn | None:
        row = await self._one(f"{_SIGNED_IN} AND {_LIVE}", (hash_api_key(refresh_token), "refresh", _ms(now)))
        if row is None:
            return None
        if row[24] is not None:  # spent already: someone replays it
            await self.revoke_grant(row[0], "refresh_token_reused", now)
            return None
        return _signed_in(row)

    async def rotate(
        self, refresh_token: str, access: IssuedToken, refresh: IssuedToken, now: datetime
    ) -> bool:
        tokens, digest, at = _token_rows(access, refresh), hash_api_key(refresh_token), _ms(now)
        revoked = rotated = False
        with self._db.guarded("rotate a refresh token"):
            async with self._db.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT t.grant_id, t.used_at, g.client_row_id FROM signin_tokens t"
                    " JOIN signin_grants g ON g.id = t.grant_id"
                    " WHERE t.token_hash = $1 AND t.kind = 'refresh' AND t.expires_at > $2"
                    " AND g.revoked_at IS NULL FOR UPDATE OF t, g",
                    digest,
                    at,
                )
                if row is not None and row[1] is not None:
                    revoked = await _revoke(conn, row[0], "refresh_token_reused", at)
                elif row is not None:
                    grant_id: str = row[0]
                    await conn.execute(
                        "UPDATE signin_tokens SET used_at = $1 WHERE token_hash = $2", at, digest
                    )
                    await conn.executemany(
                        _INSERT_TOKEN, [(t, grant_id, kind, at, until) for t, kind, until in tokens]
                    )
                    await conn.execute(
                        "UPDATE signin_grants SET last_used_at = $1 WHERE id = $2", at, grant_id
                    )
                    await conn.execute(
                        "UPDATE signin_clients SET last_used_at = $1 WHERE id = $2", at, row[2]
                    )
                    rotated = True
        if revoked:
            await self._revoked()
        return rotated

    async def grant_of(self, token: str) -> Grant | None:
        row = await self._one(
            f"SELECT {_GRANT_COLUMNS} FROM signin_tokens t JOIN signin_grants g ON g.id = t.grant_id"
            " JOIN api_keys k ON k.id = g.api_key_id WHERE t.token_hash = ?",
            (hash_api_key(token),),
        )
        return None if row is None else _grant(row)

    async def revoke_grant(self, grant_id: str, reason: str, now: datetime) -> bool:
        with self._db.guarded("revoke a grant"):
            async with self._db.pool.acquire() as conn, conn.transaction():
                revoked = await _revoke(conn, grant_id, reason, _ms(now))
        if revoked:
            await self._revoked()
        return revoked

    async def grants(self, organisation_id: str) -> list[Grant]:
        rows = await self._db.all(
            "list grants",
            f"SELECT {_GRANT_COLUMNS} FROM signin_grants g JOIN api_keys k ON k.id = g.api_key_id"
            " WHERE g.organisation_id = ? ORDER BY g.created_at DESC, g.id DESC",
            (organisation_id,),
        )
        return [_grant(row) for row in rows]

    async def prune(self, now: datetime, unused_before: datetime) -> int:
        at = _ms(now)
        ms = timedelta(milliseconds=1)
        deleted = 0
        with self._db.guarded("prune sign-ins"):
            async with self._db.pool.acquire() as conn, conn.transaction():
                for sql, value in (
                    ("DELETE FROM signin_codes WHERE expires_at < $1", at - _CODES_KEPT // ms),
                    ("DELETE FROM signin_tokens WHERE expires_at <= $1", at),
                    ("DELETE FROM signin_pending WHERE expires_at <= $1", at),
                    (
                        "DELETE FROM signin_grants WHERE revoked_at < $1"
                        " OR (revoked_at IS NULL AND NOT EXISTS"
                        " (SELECT 1 FROM signin_tokens t WHERE t.grant_id = signin_grants.id))",
                        at - _REVOKED_KEPT // ms,
                    ),
                    (
                        "DELETE FROM signin_clients WHERE coalesce(last_used_at, created_at) < $1"
                        " AND NOT EXISTS"
                        " (SELECT 1 FROM signin_grants g WHERE g.client_row_id = signin_clients.id"
                        " AND g.revoked_at IS NULL)",
                        _ms(unused_before),
                    ),
                ):
                    status = await conn.execute(sql, value)
                    deleted += int(status.rpartition(" ")[2])
        return deleted
