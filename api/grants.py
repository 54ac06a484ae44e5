"""The host sign-in admin API (issue 13), admin keys only:

- `GET /mcp/{organisationId}/grants`: the organisation's sign-ins, newest first, revoked ones too
  (until pruned): whose (the user and key that approved it), which host's client, for which MCP
  URL, when it was made and last refreshed. Never a token.
- `POST /mcp/{organisationId}/grants/{grantId}/revoke`: end one. A running gateway refuses its
  tokens from their very next request (the store signals the revocation marker, as for a key);
  the host is sent to sign in again. Revoking a revoked grant changes nothing.

Errors are the listing surface's problem+json, as the keys API's: 401, 403 for a key that is not
an admin's, 404 for another organisation (`NotFound`) and for a grant not in the caller's
organisation (`Grants.GrantNotFound`), whether or not it exists elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.errors import Refused
from api.keys import admin_caller, stamp
from api.sessions import Authenticate, Caller, json_response
from store import Grant, Store, utc_now

__all__ = ["GrantsApi", "render_grant"]

_NOT_FOUND = ("Grants.GrantNotFound", "No such sign-in in this organisation.")


def render_grant(grant: Grant) -> dict[str, Any]:
    return {
        "grantId": grant.id,
        "userId": grant.user_id,
        "apiKeyId": grant.api_key_id,
        "keyPrefix": grant.key_prefix,
        "clientId": grant.client_row_id,
        "oauthClientId": grant.client_id,
        "clientName": grant.client_name,
        "resource": grant.resource,
        "createdAt": stamp(grant.created_at),
        "lastUsedAt": stamp(grant.last_used_at),
        "revokedAt": stamp(grant.revoked_at),
        "revokedReason": grant.revoked_reason,
    }


@dataclass(frozen=True, slots=True)
class GrantsApi:
    store: Store
    authenticate: Authenticate

    async def list(self, request: Request) -> Response:
        caller = await admin_caller(self.authenticate, request, "manages sign-ins")
        grants = await self.store.signin.grants(caller.organisation_id)
        return json_response({"data": [render_grant(grant) for grant in grants]})

    async def revoke(self, request: Request) -> Response:
        caller = await admin_caller(self.authenticate, request, "manages sign-ins")
        grant_id = request.path_params["grantId"]
        if await self._grant(caller, grant_id) is None:
            raise Refused(404, *_NOT_FOUND)
        await self.store.signin.revoke_grant(grant_id, "revoked", utc_now())
        revoked = await self._grant(caller, grant_id)
        if revoked is None:  # pruned between the reads
            raise Refused(404, *_NOT_FOUND)
        return json_response(render_grant(revoked))

    async def _grant(self, caller: Caller, grant_id: str) -> Grant | None:
        return next(
            (g for g in await self.store.signin.grants(caller.organisation_id) if g.id == grant_id), None
        )
