"""The SQLite :class:`~store.protocol.SignInStore`: hosts' OAuth clients, authorization requests
awaiting consent, authorization codes, grants and their tokens.

Codes, tokens and client secrets are kept as SHA-256 hashes (each is 256 random bits, so a fast
hash is enough; see ``keys.py``). Reads go through the store's statement connection; what must
change several rows at once (redeeming a code, opening a grant, rotating a refresh token) runs
as one ``BEGIN IMMEDIATE`` transaction on the writer connection, where no other statement can
slip in between (``_writer_thread.py``). Every revocation of a grant is signalled through the
revocation marker after its commit, as a key's is (``_revocations.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import aiosqlite
import orjson

from ._revocations import RevocationMarker
from ._sqlite_errors import translated
from ._timestamps import from_unix_ms, parse_timestamp, to_unix_ms
from ._writer_thread import WriterThread
from .keys import hash_api_key
from .models import ApiKey, Grant, IssuedToken, PendingSignIn, SignedIn, SignInClient, SignInCode

__all__ = ["SignInSql"]

T = TypeVar("T")

_REVOKED_KEPT = timedelta(days=7)  # a revoked grant stays listed this long
_CODES_KEPT = timedelta(hours=1)  # past its expiry, so that a replay is still told apart

_CLIENT_COLUMNS = "id, client_id, kind, metadata, secret_hash, created_at, last_used_at, expires_at"
_CODE_COLUMNS = (
    "client_id, client_row_id, client_name, redirect_uri, code_challenge, resource, scope,"
    " organisation_id, api_key_id, expires_at, redirect_uri_explicit"
)
_GRANT_COLUMNS = (
    "g.id, g.organisation_id, g.api_key_id, k.user_id, k.prefix, g.client_row_id, g.client_id,"
    " g.client_name, g.resource, g.scope, g.created_at, g.last_used_at, g.revoked_at, g.revoked_reason,"
    " k.revoked_at"
)
_KEY_COLUMNS = (
    "k.id, k.organisation_id, k.user_id, k.is_admin, k.prefix, k.created_at, k.tools_allow, k.tools_deny"
)
_SIGNED_IN = f"""
SELECT {_GRANT_COLUMNS}, {_KEY_COLUMNS}, t.expires_at, t.used_at
FROM signin_tokens t
JOIN signin_grants g ON g.id = t.grant_id
JOIN api_keys k ON k.id = g.api_key_id
WHERE t.token_hash = ? AND t.kind = ?
"""
_LIVE = "t.expires_at > ? AND g.revoked_at IS NULL AND k.revoked_at IS NULL"
_INSERT_TOKEN = (
    "INSERT INTO signin_tokens (token_hash, grant_id, kind, created_at, expires_at) VALUES (?, ?, ?, ?, ?)"
)


def _ms(moment: datetime) -> int:
    return to_unix_ms(moment)


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else from_unix_ms(ms)


def _client(row: Any) -> SignInClient:
    return SignInClient(
        id=row[0],
        client_id=row[1],
        kind=row[2],
        metadata=orjson.loads(row[3]),
        secret_hash=row[4],
        created_at=from_unix_ms(row[5]),
        last_used_at=_at(row[6]),
        expires_at=_at(row[7]),
    )


def _grant(row: Any) -> Grant:
    revoked_at, reason = _at(row[12]), row[13]
    if revoked_at is None and row[14] is not None:  # the approving key was revoked: so is this
        revoked_at, reason = parse_timestamp(row[14]), "api_key_revoked"
    return Grant(
        id=row[0],
        organisation_id=row[1],
        api_key_id=row[2],
        user_id=row[3],
        key_prefix=row[4],
        client_row_id=row[5],
        client_id=row[6],
        client_name=row[7],
        resource=row[8],
        scope=row[9],
        created_at=from_unix_ms(row[10]),
        last_used_at=_at(row[11]),
        revoked_at=revoked_at,
        revoked_reason=reason,
    )


def _pending(row: Any) -> PendingSignIn:
    return PendingSignIn(
        id=row[0],
        address=row[1],
        client_id=row[2],
        request=orjson.loads(row[3]),
        expires_at=from_unix_ms(row[4]),
    )


def _signed_in(row: Any) -> SignedIn:
    key = ApiKey(
        id=row[15],
        organisation_id=row[16],
        user_id=row[17],
        is_admin=bool(row[18]),
        prefix=row[19],
        created_at=parse_timestamp(row[20]),
        revoked_at=None,
        tools_allow=tuple(orjson.loads(row[21])),
        tools_deny=tuple(orjson.loads(row[22])),
    )
    return SignedIn(grant=_grant(row), key=key, expires_at=from_unix_ms(row[23]))


def _transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    """Run `work` in one immediate transaction on the writer connection, rolled back if it fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _revoke(conn: sqlite3.Connection, grant_id: str, reason: str, now: int) -> bool:
    revoked = conn.execute(
        "UPDATE signin_grants SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL",
        (now, reason, grant_id),
    ).rowcount
    conn.execute("DELETE FROM signin_tokens WHERE grant_id = ?", (grant_id,))
    return revoked > 0


def _redeem(conn: sqlite3.Connection, digest: str, now: int) -> tuple[Any, str | None]:
    """(the code's row if this is its first redemption, the grant revoked because it was not)."""

    def work() -> tuple[Any, str | None]:
        row = conn.execute(
            f"SELECT {_CODE_COLUMNS}, claimed_at, grant_id FROM signin_codes WHERE code_hash = ?", (digest,)
        ).fetchone()
        if row is None:
            return None, None
        if row[11] is not None:
            grant_id: str | None = row[12]
            if grant_id is not None and _revoke(conn, grant_id, "code_replayed", now):
                return None, grant_id
            return None, None
        conn.execute("UPDATE signin_codes SET claimed_at = ? WHERE code_hash = ?", (now, digest))
        return row, None

    return _transaction(conn, work)


def _open_grant(
    conn: sqlite3.Connection,
    digest: str,
    grant_id: str,
    tokens: list[tuple[str, str, int]],
    now: int,
) -> None:
    def work() -> None:
        row = conn.execute(
            "SELECT organisation_id, api_key_id, client_row_id, client_id, client_name, resource, scope"
            " FROM signin_codes WHERE code_hash = ? AND grant_id IS NULL",
            (digest,),
        ).fetchone()
        if row is None:
            raise sqlite3.IntegrityError("the authorization code opened a grant already")
        conn.execute(
            "INSERT INTO signin_grants (id, organisation_id, api_key_id, client_row_id, client_id,"
            " client_name, resource, scope, created_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (grant_id, *row, now, now),
        )
        conn.executemany(
            _INSERT_TOKEN, [(token, grant_id, kind, now, until) for token, kind, until in tokens]
        )
        conn.execute("UPDATE signin_codes SET grant_id = ? WHERE code_hash = ?", (grant_id, digest))
        conn.execute("UPDATE signin_clients SET last_used_at = ? WHERE id = ?", (now, row[2]))

    _transaction(conn, work)


def _rotate(
    conn: sqlite3.Connection, digest: str, tokens: list[tuple[str, str, int]], now: int
) -> tuple[bool, str | None]:
    """(rotated, the grant revoked because the token had been spent already)."""

    def work() -> tuple[bool, str | None]:
        row = conn.execute(
            "SELECT t.grant_id, t.used_at, g.client_row_id FROM signin_tokens t"
            " JOIN signin_grants g ON g.id = t.grant_id"
            " WHERE t.token_hash = ? AND t.kind = 'refresh' AND t.expires_at > ? AND g.revoked_at IS NULL",
            (digest, now),
        ).fetchone()
        if row is None:
            return False, None
        grant_id: str = row[0]
        if row[1] is not None:
            return False, grant_id if _revoke(conn, grant_id, "refresh_token_reused", now) else None
        conn.execute("UPDATE signin_tokens SET used_at = ? WHERE token_hash = ?", (now, digest))
        conn.executemany(
            _INSERT_TOKEN, [(token, grant_id, kind, now, until) for token, kind, until in tokens]
        )
        conn.execute("UPDATE signin_grants SET last_used_at = ? WHERE id = ?", (now, grant_id))
        conn.execute("UPDATE signin_clients SET last_used_at = ? WHERE id = ?", (now, row[2]))
        return True, None

    return _transaction(conn, work)


def _revoke_one(conn: sqlite3.Connection, grant_id: str, reason: str, now: int) -> bool:
    return _transaction(conn, lambda: _revoke(conn, grant_id, reason, now))


def _prune(conn: sqlite3.Connection, now: int, unused_before: int) -> int:
    def work() -> int:
        deleted = conn.execute(
            "DELETE FROM signin_codes WHERE expires_at < ?", (now - _CODES_KEPT // timedelta(milliseconds=1),)
        ).rowcount
        deleted += conn.execute("DELETE FROM signin_tokens WHERE expires_at <= ?", (now,)).rowcount
        deleted += conn.execute("DELETE FROM signin_pending WHERE expires_at <= ?", (now,)).rowcount
        deleted += conn.execute(
            "DELETE FROM signin_grants WHERE revoked_at < ? OR (revoked_at IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM signin_tokens t WHERE t.grant_id = signin_grants.id))",
            (now - _REVOKED_KEPT // timedelta(milliseconds=1),),
        ).rowcount
        deleted += conn.execute(
            "DELETE FROM signin_clients WHERE coalesce(last_used_at, created_at) < ? AND NOT EXISTS"
            " (SELECT 1 FROM signin_grants g WHERE g.client_row_id = signin_clients.id"
            " AND g.revoked_at IS NULL)",
            (unused_before,),
        ).rowcount
        return deleted

    return _transaction(conn, work)


def _token_rows(access: IssuedToken, refresh: IssuedToken | None) -> list[tuple[str, str, int]]:
    rows = [(hash_api_key(access.secret), "access", _ms(access.expires_at))]
    if refresh is not None:
        rows.append((hash_api_key(refresh.secret), "refresh", _ms(refresh.expires_at)))
    return rows


class SignInSql:
    """The sign-in tables. Private to the package: everything outside sees ``SignInStore``."""

    def __init__(
        self, conn: aiosqlite.Connection, writer: WriterThread, revocations: RevocationMarker
    ) -> None:
        self._conn = conn
        self._writer = writer
        self._revocations = revocations

    async def _one(self, sql: str, parameters: Any) -> Any:
        with translated("read sign-ins"):
            async with self._conn.execute(sql, parameters) as cursor:
                return await cursor.fetchone()

    def _revoked(self, grant_id: str | None) -> None:
        if grant_id is not None:
            self._revocations.signal(f"grant:{grant_id}")

    # -- clients -------------------------------------------------------------------------------

    async def client(self, client_id: str) -> SignInClient | None:
        row = await self._one(
            f"SELECT {_CLIENT_COLUMNS} FROM signin_clients WHERE client_id = ?", (client_id,)
        )
        return None if row is None else _client(row)

    async def save_client(self, client: SignInClient) -> SignInClient:
        with translated("save a sign-in client"):
            await self._conn.execute(
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
        assert saved is not None
        return saved

    # -- authorization requests awaiting consent -----------------------------------------------

    async def park_authorization(self, pending: PendingSignIn, per_address: int, now: datetime) -> bool:
        # One statement, so the count and the insert cannot be split by another writer.
        with translated("park an authorization request"):
            async with self._conn.execute(
                "INSERT INTO signin_pending (id, address, client_id, request, created_at, expires_at)"
                " SELECT ?, ?, ?, ?, ?, ? WHERE (SELECT count(*) FROM signin_pending"
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
            ) as cursor:
                return cursor.rowcount > 0

    async def pending_authorization(self, request_id: str, now: datetime) -> PendingSignIn | None:
        row = await self._one(
            "SELECT id, address, client_id, request, expires_at FROM signin_pending"
            " WHERE id = ? AND expires_at > ?",
            (request_id, _ms(now)),
        )
        return None if row is None else _pending(row)

    async def end_authorization(self, request_id: str) -> bool:
        with translated("end an authorization request"):
            async with self._conn.execute("DELETE FROM signin_pending WHERE id = ?", (request_id,)) as cursor:
                return cursor.rowcount > 0

    # -- codes and grants ----------------------------------------------------------------------

    async def issue_code(self, code: str, what: SignInCode, now: datetime) -> None:
        with translated("issue an authorization code"):
            await self._conn.execute(
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
        with translated("redeem an authorization code"):
            row, revoked = await self._writer.write(_redeem, hash_api_key(code), _ms(now))
        self._revoked(revoked)
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
        rows = _token_rows(access, refresh)
        with translated("open a grant"):
            await self._writer.write(_open_grant, hash_api_key(code), grant_id, rows, _ms(now))

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
        digest = hash_api_key(refresh_token)
        row = await self._one(f"{_SIGNED_IN} AND {_LIVE}", (digest, "refresh", _ms(now)))
        if row is None:
            return None
        if row[24] is not None:  # spent already: someone replays it
            with translated("revoke a grant"):
                revoked = await self._writer.write(_revoke_one, row[0], "refresh_token_reused", _ms(now))
            self._revoked(row[0] if revoked else None)
            return None
        return _signed_in(row)

    async def rotate(
        self, refresh_token: str, access: IssuedToken, refresh: IssuedToken, now: datetime
    ) -> bool:
        rows = _token_rows(access, refresh)
        with translated("rotate a refresh token"):
            rotated, revoked = await self._writer.write(_rotate, hash_api_key(refresh_token), rows, _ms(now))
        self._revoked(revoked)
        return rotated

    async def grant_of(self, token: str) -> Grant | None:
        row = await self._one(
            f"SELECT {_GRANT_COLUMNS} FROM signin_tokens t JOIN signin_grants g ON g.id = t.grant_id"
            " JOIN api_keys k ON k.id = g.api_key_id WHERE t.token_hash = ?",
            (hash_api_key(token),),
        )
        return None if row is None else _grant(row)

    async def revoke_grant(self, grant_id: str, reason: str, now: datetime) -> bool:
        with translated("revoke a grant"):
            revoked = await self._writer.write(_revoke_one, grant_id, reason, _ms(now))
        self._revoked(grant_id if revoked else None)
        return revoked

    async def grants(self, organisation_id: str) -> list[Grant]:
        with translated("list grants"):
            async with self._conn.execute(
                f"SELECT {_GRANT_COLUMNS} FROM signin_grants g JOIN api_keys k ON k.id = g.api_key_id"
                " WHERE g.organisation_id = ? ORDER BY g.created_at DESC, g.id DESC",
                (organisation_id,),
            ) as cursor:
                return [_grant(row) for row in await cursor.fetchall()]

    async def prune(self, now: datetime, unused_before: datetime) -> int:
        with translated("prune sign-ins"):
            return await self._writer.write(_prune, _ms(now), _ms(unused_before), here=False)
