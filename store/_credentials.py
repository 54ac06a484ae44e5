"""The :class:`~store.protocol.CredentialStore` of both backends: upstream credentials, the flows
that obtain them, and OAuth client registrations, in SQL both SQLite and PostgreSQL accept
(run through ``_statements.Statements``).

Secret parts are sealed here, on the way in, and opened here, on the way out, each bound to
its table, row and column (``credentials/<id>/secret``), so nothing above the store handles
ciphertext and nothing below it sees plaintext.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import orjson

from ._statements import Parameters, Statements
from ._timestamps import from_unix_ms, to_unix_ms
from .models import AuthFlow, Binding, Credential, CredentialFilter, CredentialRow, OAuthClient
from .sealing import Sealer

__all__ = ["CredentialSql"]

_CREDENTIAL_COLUMNS = (
    "id, organisation_id, upstream, auth_mode, subject, kind, status, secret, header_names,"
    " oauth_client_id, expires_at, created_at, last_refreshed_at, updated_at"
)
_FLOW_COLUMNS = (
    "id, organisation_id, upstream, auth_mode, subject, auth_kind, secret, oauth_client_id,"
    " created_at, expires_at, claimed_at"
)
_BINDING_COLUMNS = ("organisation_id", "upstream", "auth_mode", "subject")
_BINDING_MATCH = " AND ".join(f"{column} = ?" for column in _BINDING_COLUMNS)


def _same_binding(a: str, b: str) -> str:
    return " AND ".join(f"{a}.{column} = {b}.{column}" for column in _BINDING_COLUMNS)


# One listing over both tables: credentials, and each binding's newest live flow when the
# binding has no credential (the spec shows the credential instead of a flow beside it).
# A parameter tested for NULL is cast, so PostgreSQL knows its type from that use alone.
_LISTING = f"""
SELECT * FROM (
    SELECT c.id, CASE c.kind WHEN 'token' THEN 'token' ELSE 'header' END AS kind,
           CASE c.kind WHEN 'token' THEN 'oauth' ELSE 'headers' END AS auth_kind,
           c.organisation_id, c.upstream, c.auth_mode, c.subject, c.status, c.expires_at,
           c.created_at, c.last_refreshed_at, c.updated_at, c.oauth_client_id
    FROM credentials c WHERE c.organisation_id = :org
    UNION ALL
    SELECT f.id, 'flow', f.auth_kind, f.organisation_id, f.upstream, f.auth_mode, f.subject,
           'pending', NULL, f.created_at, NULL, NULL, f.oauth_client_id
    FROM auth_flows f
    WHERE f.organisation_id = :org AND f.claimed_at IS NULL AND f.expires_at > :now
      AND NOT EXISTS (SELECT 1 FROM credentials c WHERE {_same_binding("c", "f")})
      AND NOT EXISTS (
          SELECT 1 FROM auth_flows g
          WHERE {_same_binding("g", "f")} AND g.claimed_at IS NULL AND g.expires_at > :now
            AND (g.created_at, g.id) > (f.created_at, f.id)
      )
) AS r
WHERE (CAST(:status AS TEXT) IS NULL OR r.status = :status)
  AND (CAST(:mode AS TEXT) IS NULL OR r.auth_mode = :mode)
  AND (CAST(:kind AS TEXT) IS NULL OR r.kind = :kind)
  AND (CAST(:upstream AS TEXT) IS NULL OR r.upstream = :upstream)
  AND (CAST(:after_created AS BIGINT) IS NULL OR (r.created_at, r.id) < (:after_created, :after_id))
  AND (CAST(:row_id AS TEXT) IS NULL OR r.id = :row_id)
ORDER BY r.created_at DESC, r.id DESC
LIMIT :limit
"""


def state_hash(state: str) -> str:
    """What the database keeps of an OAuth ``state`` or a connect link's token: enough to find
    the flow, not to forge one."""
    return hashlib.sha256(state.encode()).hexdigest()


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else to_unix_ms(moment)


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else from_unix_ms(ms)


class CredentialSql:
    """The credential tables on the store's statement connection, sealing with ``sealer``.
    Private to the package: everything outside sees the ``CredentialStore`` protocol."""

    def __init__(self, statements: Statements, sealer: Sealer) -> None:
        self._db = statements
        self._sealer = sealer

    def _seal(self, table: str, row_id: str, value: Mapping[str, Any]) -> bytes:
        return self._sealer.seal(orjson.dumps(dict(value)), f"{table}/{row_id}/secret")

    def _open(self, table: str, row_id: str, sealed: bytes) -> dict[str, Any]:
        return cast(
            dict[str, Any], orjson.loads(self._sealer.open(bytes(sealed), f"{table}/{row_id}/secret"))
        )

    # Every statement goes through these three, which turn driver errors into StoreErrors.
    async def _one(self, sql: str, parameters: Parameters) -> Any:
        return await self._db.one("read credentials", sql, parameters)

    async def _all(self, sql: str, parameters: Parameters = ()) -> list[Any]:
        return await self._db.all("read credentials", sql, parameters)

    async def _run(self, sql: str, parameters: Parameters) -> int:
        return await self._db.run("write credentials", sql, parameters)

    # -- credentials ---------------------------------------------------------------------------

    def _credential(self, row: Any) -> Credential:
        return Credential(
            id=row[0],
            binding=Binding(row[1], row[2], row[3], row[4]),
            kind=row[5],
            status=row[6],
            secret=self._open("credentials", row[0], row[7]),
            header_names=tuple(orjson.loads(row[8])),
            oauth_client_id=row[9],
            expires_at=_at(row[10]),
            created_at=from_unix_ms(row[11]),
            last_refreshed_at=_at(row[12]),
            updated_at=_at(row[13]),
        )

    async def credential_for(self, binding: Binding) -> Credential | None:
        row = await self._one(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials WHERE {_BINDING_MATCH}", _binding(binding)
        )
        return None if row is None else self._credential(row)

    async def credential(self, organisation_id: str, credential_id: str) -> Credential | None:
        row = await self._one(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials WHERE organisation_id = ? AND id = ?",
            (organisation_id, credential_id),
        )
        return None if row is None else self._credential(row)

    async def save(
        self,
        credential_id: str,
        binding: Binding,
        *,
        kind: str,
        secret: Mapping[str, Any],
        header_names: tuple[str, ...],
        oauth_client_id: str | None,
        expires_at: datetime | None,
        now: datetime,
    ) -> None:
        """Store the binding's credential, replacing any it had (a reauth keeps the row's id)."""
        existing = await self._one(f"SELECT id FROM credentials WHERE {_BINDING_MATCH}", _binding(binding))
        row_id = credential_id if existing is None else existing[0]
        sealed = self._seal("credentials", row_id, secret)
        names = orjson.dumps(list(header_names)).decode()
        is_header = kind == "header"
        await self._run(
            f"""INSERT INTO credentials ({_CREDENTIAL_COLUMNS})
                VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, NULL, ?)
                ON CONFLICT (organisation_id, upstream, auth_mode, subject) DO UPDATE SET
                    kind = excluded.kind, status = 'active', secret = excluded.secret,
                    header_names = excluded.header_names, oauth_client_id = excluded.oauth_client_id,
                    expires_at = excluded.expires_at, last_refreshed_at = NULL,
                    updated_at = excluded.updated_at""",
            (
                row_id,
                *_binding(binding),
                kind,
                sealed,
                names,
                oauth_client_id,
                _ms(expires_at),
                to_unix_ms(now),
                to_unix_ms(now) if is_header else None,
            ),
        )

    async def refreshed(
        self, credential_id: str, secret: Mapping[str, Any], expires_at: datetime | None, now: datetime
    ) -> None:
        await self._run(
            """UPDATE credentials SET secret = ?, expires_at = ?, last_refreshed_at = ?, status = 'active'
               WHERE id = ?""",
            (
                self._seal("credentials", credential_id, secret),
                _ms(expires_at),
                to_unix_ms(now),
                credential_id,
            ),
        )

    async def set_status(self, credential_id: str, status: str, *, unless: str | None = None) -> bool:
        changed = await self._run(
            "UPDATE credentials SET status = ? WHERE id = ? AND status != ? AND status != coalesce(?, '')",
            (status, credential_id, status, unless),
        )
        return changed > 0

    async def all_bindings(self) -> list[tuple[str, Binding, str, tuple[str, ...]]]:
        """(id, binding, status, header names) of every credential: for reconciling statuses."""
        rows = await self._all(
            "SELECT id, organisation_id, upstream, auth_mode, subject, status, header_names FROM credentials"
        )
        return [(r[0], Binding(r[1], r[2], r[3], r[4]), r[5], tuple(orjson.loads(r[6]))) for r in rows]

    async def delete(self, organisation_id: str, row_id: str) -> bool:
        """Delete a credential or flow row and the pending flows of its binding; False if unknown."""
        for table in ("credentials", "auth_flows"):
            row = await self._one(
                f"SELECT organisation_id, upstream, auth_mode, subject FROM {table}"
                " WHERE organisation_id = ? AND id = ?",
                (organisation_id, row_id),
            )
            if row is not None:
                # Flows first: a flow left behind could mint the credential again after the delete.
                await self._run(f"DELETE FROM auth_flows WHERE {_BINDING_MATCH}", tuple(row))
                await self._run(f"DELETE FROM credentials WHERE {_BINDING_MATCH}", tuple(row))
                return True
        return False

    async def delete_session_bindings(self, organisation_id: str, session_id: str) -> int:
        """Remove what `session`-mode bindings of one (ended) session hold: flows, then credentials."""
        where = "organisation_id = ? AND auth_mode = 'session' AND subject = ?"
        await self._run(f"DELETE FROM auth_flows WHERE {where}", (organisation_id, session_id))
        return await self._run(f"DELETE FROM credentials WHERE {where}", (organisation_id, session_id))

    async def listing(
        self,
        organisation_id: str,
        where: CredentialFilter,
        after: tuple[int, str] | None,
        limit: int,
        now: datetime,
        *,
        row_id: str | None = None,
    ) -> list[CredentialRow]:
        """A page of the listing after keyset position `after` (or just the row `row_id`)."""
        parameters = {
            "org": organisation_id,
            "now": to_unix_ms(now),
            "status": where.status,
            "mode": where.auth_mode,
            "kind": where.kind,
            "upstream": where.upstream,
            "after_created": None if after is None else after[0],
            "after_id": None if after is None else after[1],
            "limit": limit,
            "row_id": row_id,
        }
        rows = await self._all(_LISTING, parameters)
        prefixes = await self._key_prefixes({r[6] for r in rows if r[5] == "vk"})
        return [
            CredentialRow(
                id=r[0],
                kind=r[1],
                auth_kind=r[2],
                binding=Binding(r[3], r[4], r[5], r[6]),
                status=r[7],
                expires_at=_at(r[8]),
                created_at=from_unix_ms(r[9]),
                last_refreshed_at=_at(r[10]),
                updated_at=_at(r[11]),
                oauth_client_id=r[12],
                key_prefix=prefixes.get(r[6]) if r[5] == "vk" else None,
                key=(r[9], r[0]),
            )
            for r in rows
        ]

    async def _key_prefixes(self, key_ids: set[str]) -> dict[str, str]:
        if not key_ids:
            return {}
        marks = ", ".join("?" * len(key_ids))
        rows = await self._all(f"SELECT id, prefix FROM api_keys WHERE id IN ({marks})", tuple(key_ids))
        return {row[0]: row[1] for row in rows}

    # -- flows ---------------------------------------------------------------------------------

    def _flow(self, row: Any) -> AuthFlow:
        return AuthFlow(
            id=row[0],
            binding=Binding(row[1], row[2], row[3], row[4]),
            auth_kind=row[5],
            secret=self._open("auth_flows", row[0], row[6]),
            oauth_client_id=row[7],
            created_at=from_unix_ms(row[8]),
            expires_at=from_unix_ms(row[9]),
            claimed_at=_at(row[10]),
        )

    async def create_flow(
        self,
        flow_id: str,
        binding: Binding,
        auth_kind: str,
        *,
        secret: Mapping[str, Any],
        oauth_client_id: str | None,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        state, link = secret.get("state"), secret.get("link")
        await self._run(
            f"INSERT INTO auth_flows ({_FLOW_COLUMNS}, state_hash, link_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
            (
                flow_id,
                *_binding(binding),
                auth_kind,
                self._seal("auth_flows", flow_id, secret),
                oauth_client_id,
                to_unix_ms(now),
                to_unix_ms(expires_at),
                state_hash(state) if isinstance(state, str) else None,
                state_hash(link) if isinstance(link, str) else None,
            ),
        )

    async def flow(self, flow_id: str) -> AuthFlow | None:
        row = await self._one(f"SELECT {_FLOW_COLUMNS} FROM auth_flows WHERE id = ?", (flow_id,))
        return None if row is None else self._flow(row)

    async def flow_by_link(self, link: str) -> AuthFlow | None:
        """The flow whose connect link ends in ``link`` (its ``secret["link"]``)."""
        row = await self._one(
            f"SELECT {_FLOW_COLUMNS} FROM auth_flows WHERE link_hash = ?", (state_hash(link),)
        )
        return None if row is None else self._flow(row)

    async def flow_by_state(self, state: str) -> AuthFlow | None:
        row = await self._one(
            f"SELECT {_FLOW_COLUMNS} FROM auth_flows WHERE state_hash = ?", (state_hash(state),)
        )
        return None if row is None else self._flow(row)

    async def live_flow(self, binding: Binding, auth_kind: str, not_before: datetime) -> AuthFlow | None:
        """The binding's newest unclaimed flow of this kind that lives past ``not_before`` and
        has a connect link to offer again."""
        row = await self._one(
            f"""SELECT {_FLOW_COLUMNS} FROM auth_flows
                WHERE {_BINDING_MATCH} AND auth_kind = ? AND claimed_at IS NULL AND expires_at > ?
                  AND link_hash IS NOT NULL
                ORDER BY created_at DESC LIMIT 1""",
            (*_binding(binding), auth_kind, to_unix_ms(not_before)),
        )
        return None if row is None else self._flow(row)

    async def claim_flow(self, flow_id: str, now: datetime) -> bool:
        """Mark the flow used; False if it was already (a replay) or has expired."""
        claimed = await self._run(
            "UPDATE auth_flows SET claimed_at = ? WHERE id = ? AND claimed_at IS NULL AND expires_at > ?",
            (to_unix_ms(now), flow_id, to_unix_ms(now)),
        )
        return claimed > 0

    async def prune_flows(self, before: datetime) -> int:
        return await self._run("DELETE FROM auth_flows WHERE expires_at < ?", (to_unix_ms(before),))

    # -- OAuth client registrations ------------------------------------------------------------

    async def oauth_client(self, upstream: str, issuer: str, redirect_uri: str) -> OAuthClient | None:
        row = await self._one(
            "SELECT id, client_id, secret FROM oauth_clients"
            " WHERE upstream = ? AND issuer = ? AND redirect_uri = ?",
            (upstream, issuer, redirect_uri),
        )
        if row is None:
            return None
        secret = self._open("oauth_clients", row[0], row[2])
        return OAuthClient(row[0], upstream, issuer, redirect_uri, row[1], secret.get("client_secret"))

    async def oauth_client_by_id(self, client_row_id: str) -> OAuthClient | None:
        row = await self._one(
            "SELECT upstream, issuer, redirect_uri, client_id, secret FROM oauth_clients WHERE id = ?",
            (client_row_id,),
        )
        if row is None:
            return None
        secret = self._open("oauth_clients", client_row_id, row[4])
        return OAuthClient(client_row_id, row[0], row[1], row[2], row[3], secret.get("client_secret"))

    async def save_oauth_client(self, client: OAuthClient, now: datetime) -> OAuthClient:
        """Keep a registration; if another process registered first, theirs wins and is returned."""
        await self._run(
            """INSERT INTO oauth_clients (id, upstream, issuer, redirect_uri, client_id, secret, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (upstream, issuer, redirect_uri) DO NOTHING""",
            (
                client.id,
                client.upstream,
                client.issuer,
                client.redirect_uri,
                client.client_id,
                self._seal("oauth_clients", client.id, {"client_secret": client.client_secret}),
                to_unix_ms(now),
            ),
        )
        saved = await self.oauth_client(client.upstream, client.issuer, client.redirect_uri)
        assert saved is not None
        return saved

    # -- rotation ------------------------------------------------------------------------------

    async def reseal(self) -> int:
        """Seal every secret not yet under the current key with it; return how many were."""
        count = 0
        keyring = self._sealer.keyring
        for table in ("credentials", "auth_flows", "oauth_clients"):
            for row_id, sealed in await self._all(f"SELECT id, secret FROM {table}"):
                if not keyring.needs_resealing(bytes(sealed)):
                    continue
                where = f"{table}/{row_id}/secret"
                fresh = keyring.seal(keyring.open(bytes(sealed), where), where)
                # Only if unchanged meanwhile: a running gateway may have just refreshed it.
                count += await self._run(
                    f"UPDATE {table} SET secret = ? WHERE id = ? AND secret = ?", (fresh, row_id, sealed)
                )
        return count

    async def key_ids_in_use(self) -> set[str]:
        used: set[str] = set()
        keyring = self._sealer.keyring
        for table in ("credentials", "auth_flows", "oauth_clients"):
            used.update(
                keyring.key_id_of(bytes(row[0])) for row in await self._all(f"SELECT secret FROM {table}")
            )
        return used


def _binding(binding: Binding) -> tuple[str, str, str, str]:
    return (binding.organisation_id, binding.upstream, binding.auth_mode, binding.subject)
