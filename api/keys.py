"""The API key admin API, admin keys only:

- `GET /mcp/{organisationId}/keys`: every key of the organisation, oldest first (an
  organisation's keys are few: one page), with what identifies a key (its id and first
  characters) and how it is used, never the key or its hash;
- `POST /mcp/{organisationId}/keys/{apiKeyId}/revoke`: revoke one; the answer is the key's row.
  A running gateway refuses the key from its very next request (the store's revocation marker
  tells every process on the database, this one included). Revoking a revoked key changes nothing.

Errors are the listing surface's problem+json: 401 without a valid key, 403 for a key that is
not an admin's, 404 for another organisation (`NotFound`) and for a key not in the caller's
organisation (`Keys.KeyNotFound`), whether or not it exists elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.errors import Refused
from api.sessions import Authenticate, Caller, caller_of, json_response
from store import ApiKey, KeyNotFound, Store, format_timestamp

__all__ = ["KeysApi", "admin_caller", "render_key", "stamp"]


def stamp(moment: datetime | None) -> str | None:
    return None if moment is None else format_timestamp(moment)


async def admin_caller(authenticate: Authenticate, request: Request, what: str) -> Caller:
    """The caller of an admin route of `{organisationId}`: another organisation is 404 (as if
    nothing were there), a key that is not an admin's 403."""
    caller = await caller_of(authenticate, request)
    if request.path_params["organisationId"] != caller.organisation_id:
        raise Refused(404, "NotFound", "Nothing here.")
    if not caller.is_admin:
        raise Refused(403, "Auth.Forbidden", f"Only an admin key {what}; this key is not one.")
    return caller


def render_key(key: ApiKey) -> dict[str, Any]:
    return {
        "apiKeyId": key.id,
        "prefix": key.prefix,
        "userId": key.user_id,
        "admin": key.is_admin,
        "toolsAllow": list(key.tools_allow),
        "toolsDeny": list(key.tools_deny),
        "createdAt": stamp(key.created_at),
        "lastUsedAt": stamp(key.last_used_at),
        "revokedAt": stamp(key.revoked_at),
    }


@dataclass(frozen=True, slots=True)
class KeysApi:
    store: Store
    authenticate: Authenticate

    async def _admin(self, request: Request) -> Caller:
        return await admin_caller(self.authenticate, request, "manages API keys")

    async def list(self, request: Request) -> Response:
        caller = await self._admin(request)
        keys = await self.store.list_api_keys(caller.organisation_id)
        return json_response({"data": [render_key(key) for key in keys]})

    async def revoke(self, request: Request) -> Response:
        caller = await self._admin(request)
        key_id = request.path_params["apiKeyId"]
        if await self._key(caller, key_id) is None:
            raise Refused(404, "Keys.KeyNotFound", "No such API key in this organisation.")
        try:
            await self.store.revoke_api_key(key_id)
        except KeyNotFound:  # gone between the two reads: keys are never deleted, but say so
            raise Refused(404, "Keys.KeyNotFound", "No such API key in this organisation.") from None
        revoked = await self._key(caller, key_id)
        assert revoked is not None
        return json_response(render_key(revoked))

    async def _key(self, caller: Caller, key_id: str) -> ApiKey | None:
        for key in await self.store.list_api_keys(caller.organisation_id):
            if key.id == key_id:
                return key
        return None
