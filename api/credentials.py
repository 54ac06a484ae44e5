"""The credential sessions API (`spec/credential-sessions.openapi.yaml`), admin keys only.

- `GET /api/mcp/sessions`: credentials and pending flows of the caller's organisation, newest
  first; filters `status`, `auth_mode`, `kind`, `mcp_client`; paged by `limit` (1-200, default
  50) and the opaque `cursor` the previous page gave as `next_cursor`.
- `POST /api/mcp/sessions/{id}/reauth`: a fresh connect URL bound to the row's own identity
  (`authorize_url` for OAuth, `submit_url` for headers); 403 for an orphaned row and for a
  user-mode row of another user (it would mint a credential for whoever opens the URL); 409
  when the row's upstream no longer takes per-user credentials.
- `DELETE /api/mcp/sessions/{id}`: the binding's pending flows, then its credential.

Secrets never appear here: rows carry status and times, never a token or header value.
Errors are the spec's BifrostError (`api/errors.py`); another organisation's row is 404.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from api.cursor import CursorCodec
from api.errors import InvalidCursor, ReauthRefused, Refused
from api.sessions import Authenticate, Caller, client_of
from store import Binding, CredentialFilter, CredentialRow, Store, format_timestamp, utc_now

__all__ = ["CredentialsApi", "Forget", "Reauthorise", "may_reauth", "render_row"]

_DEFAULT_LIMIT = 50
_MAX_LIMIT = 200
_FILTERS = {
    "status": ("active", "orphaned", "pending", "needs_reauth", "needs_update"),
    "auth_mode": ("user", "vk", "session"),
    "kind": ("token", "header", "flow"),
}


Reauthorise = Callable[[Binding], Awaitable[tuple[str, str, str]]]
"""Start a new flow for a binding: (flow id, auth kind `oauth`|`headers`, URL to open); raises
`api.errors.ReauthRefused` when the binding can have none."""

Forget = Callable[[Binding], Awaitable[None]]


def render_row(row: CredentialRow, caller: Caller) -> dict[str, Any]:
    """One row; fields that do not apply to it are left out (the spec's omitempty), not null."""
    binding = row.binding
    user_mode, vk_mode = binding.auth_mode == "user", binding.auth_mode == "vk"
    fields = {
        "id": row.id,
        "kind": row.kind,
        "auth_kind": row.auth_kind,
        "auth_mode": binding.auth_mode,
        "user_id": binding.subject if user_mode else None,
        # No `user` summary: mcpgw keeps no user table, user ids are what keys are bound to.
        "virtual_key": {"id": binding.subject, "name": row.key_prefix or binding.subject}
        if vk_mode
        else None,
        "mcp_client": {"client_id": binding.upstream, "name": binding.upstream},
        "session_id": binding.subject if binding.auth_mode == "session" else None,
        "status": row.status,
        "expires_at": _time(row.expires_at),
        "created_at": format_timestamp(row.created_at),
        "last_refreshed_at": _time(row.last_refreshed_at),
        "updated_at": _time(row.updated_at),
        "oauth_config_id": row.oauth_client_id,
        "can_reauth": may_reauth(binding, row.status, caller),
    }
    return {name: value for name, value in fields.items() if value is not None}


def _time(moment: Any) -> str | None:
    return None if moment is None else format_timestamp(moment)


def may_reauth(binding: Binding, status: str, caller: Caller) -> bool:
    """Whether `caller` may re-authorise the row: never an orphaned one, and a user-mode row only
    its own user (the URL would mint a credential for whoever opens it)."""
    if status == "orphaned":
        return False
    return binding.auth_mode != "user" or caller.user_id == binding.subject


@dataclass(frozen=True, slots=True)
class CredentialsApi:
    store: Store
    codec: CursorCodec
    authenticate: Authenticate
    reauthorise: Reauthorise
    forget: Forget

    async def _admin(self, request: Request) -> Caller:
        caller = await self.authenticate(request.headers, client_of(request))
        if caller is None or caller.api_key_id is None:
            raise Refused(
                401, "unauthorized", "An admin API key is required: send 'Authorization: Bearer mgw_…'."
            )
        if not caller.is_admin:  # authenticated, not allowed
            raise Refused(403, "forbidden", "This API needs an admin key; this key is not one.")
        return caller

    async def list(self, request: Request) -> Response:
        caller = await self._admin(request)
        query = request.query_params
        where = CredentialFilter(
            status=_choice(query, "status"),
            auth_mode=_choice(query, "auth_mode"),
            kind=_choice(query, "kind"),
            upstream=query.get("mcp_client") or None,
        )
        limit = _limit(query.get("limit"))
        rows, following = await self.page(caller, where, query.get("cursor"), limit)
        body = {"sessions": [render_row(row, caller) for row in rows], "next_cursor": following}
        return Response(orjson.dumps(body), 200, media_type="application/json")

    async def page(
        self, caller: Caller, where: CredentialFilter, cursor: str | None, limit: int
    ) -> tuple[Sequence[CredentialRow], str | None]:
        """Up to `limit` rows of the caller's organisation after `cursor`, and the next page's
        cursor (None on the last page); a `Refused` 400 for a cursor not minted for this query."""
        # A cursor is good only for the organisation and filters it was minted under.
        filters = (where.status, where.auth_mode, where.kind, where.upstream)
        scope = "|".join(("credentials", caller.organisation_id, *(str(v) for v in filters)))
        after = None
        if cursor:
            try:
                created, row_id = self.codec.open(scope, cursor)
                after = (int(created), str(row_id))
            except (InvalidCursor, ValueError, TypeError):
                raise Refused(400, "invalid_cursor", "The cursor is invalid for this query.") from None
        rows = await self.store.credentials.listing(
            caller.organisation_id, where, after, limit + 1, utc_now()
        )
        following = self.codec.seal(scope, list(rows[limit - 1].key)) if len(rows) > limit else None
        return rows[:limit], following

    async def reauth(self, request: Request) -> Response:
        caller = await self._admin(request)
        row = await self.row(caller, request.path_params["id"])
        flow_id, kind, url = await self.start_reauth(caller, row)
        key = "authorize_url" if kind == "oauth" else "submit_url"
        return Response(orjson.dumps({key: url, "session_id": flow_id}), 200, media_type="application/json")

    async def start_reauth(self, caller: Caller, row: CredentialRow) -> tuple[str, str, str]:
        """A fresh flow for the row's binding, (flow id, auth kind, URL); `Refused` as the API
        words it (403 orphaned or another user's, 409 no longer re-authorisable). The console
        calls this too, so both refuse exactly alike."""
        if row.status == "orphaned":
            raise Refused(403, "orphaned", "This credential's identity no longer reaches the upstream.")
        if not may_reauth(row.binding, row.status, caller):
            raise Refused(
                403, "not_bound_user", "Only the user this credential belongs to can re-authorise it."
            )
        try:
            return await self.reauthorise(row.binding)
        except ReauthRefused as exc:
            raise Refused(409, "not_reauthorisable", str(exc)) from exc

    async def delete(self, request: Request) -> Response:
        caller = await self._admin(request)
        row = await self.row(caller, request.path_params["id"])
        await self.remove(caller, row)
        return Response(status_code=204)

    async def remove(self, caller: Caller, row: CredentialRow) -> None:
        """Delete the row (its binding's flows, then its credential) and forget it in memory."""
        await self.store.credentials.delete(caller.organisation_id, row.id)
        await self.forget(row.binding)

    async def row(self, caller: Caller, row_id: str) -> CredentialRow:
        """The caller's organisation's row with this id; a `Refused` 404 for any other."""
        for row in await self.store.credentials.listing(
            caller.organisation_id, CredentialFilter(), None, _MAX_LIMIT, utc_now(), row_id=row_id
        ):
            return row
        raise Refused(404, "not_found", "No such MCP session.")


def _choice(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if value not in _FILTERS[name]:
        raise Refused(400, "invalid_filter", f"{name} must be one of {', '.join(_FILTERS[name])}.")
    return value


def _limit(raw: str | None) -> int:
    if raw is None:
        return _DEFAULT_LIMIT
    value = int(raw) if re.fullmatch(r"[0-9]{1,4}", raw.strip()) else 0
    if not 1 <= value <= _MAX_LIMIT:
        raise Refused(400, "invalid_limit", f"limit must be a whole number from 1 to {_MAX_LIMIT}.")
    return value
