"""The session/invocation listing API (`spec/sessions-list…`, `spec/session-invocations…`).

- `GET /mcp/{organisationId}/sessions`: sessions, most recent activity first (`Limit` ≤ 200, default 20)
- `GET /mcp/{organisationId}/sessions/{sessionId}`: one session and its first invocations inline
- `GET /mcp/{organisationId}/sessions/{sessionId}/invocations`: its invocations, oldest first (default 50)

A caller is an API key: an admin key sees every session of its organisation, any other key the
sessions it opened. Everything else (another organisation, another key's session, an id that
is not one) is the same 404, so nobody learns what exists elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import orjson
from starlette.requests import Request
from starlette.responses import Response

from api.cursor import CursorCodec
from api.errors import Refused
from api.paging import page_body, read_limit, read_seek
from store import RecordedInvocation, RecordedSession, Seek, Store, format_timestamp

__all__ = ["Authenticate", "Caller", "SessionsApi", "caller_of", "client_of", "is_uuid", "json_response"]

INLINE_INVOCATIONS = 50
"""How many invocations the session detail carries inline; the rest are paged."""


class Caller(Protocol):
    """Who is asking, as the gateway's host authentication resolves an API key."""

    @property
    def organisation_id(self) -> str: ...

    @property
    def api_key_id(self) -> str | None: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def is_admin(self) -> bool: ...


Authenticate = Callable[[Mapping[str, str], str | None], Awaitable[Caller | None]]
"""The caller from a request's headers and client address; may raise `api.errors.Throttled`."""


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


async def caller_of(authenticate: Authenticate, request: Request) -> Caller:
    """The API key behind `request`; a `Refused` 401 if there is none (key-less mode opens MCP,
    never the listing API), or it is unknown or revoked."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    caller = await authenticate(headers, client_of(request))
    if caller is None or caller.api_key_id is None:
        missing = "authorization" not in headers and "x-api-key" not in headers
        why = "An API key is required" if missing else "The API key is unknown or revoked"
        raise Refused(401, "Auth.Unauthorized", f"{why}: send 'Authorization: Bearer mgw_…' or 'x-api-key'.")
    return caller


def render_session(session: RecordedSession) -> dict[str, Any]:
    return {
        "id": session.id,
        "clientId": session.client_id,
        "apiKeyId": session.api_key_id,
        "mcpSessionId": session.mcp_session_id,
        "startedAt": format_timestamp(session.started_at),
        "lastCallAt": format_timestamp(session.last_call_at),
        "callCount": session.call_count,
        "clientName": session.client_name,
        "clientVersion": session.client_version,
        "protocolVersion": session.protocol_version,
        "endedAt": None if session.ended_at is None else format_timestamp(session.ended_at),
        "endReason": session.end_reason,
    }


def render_invocation(call: RecordedInvocation) -> dict[str, Any]:
    return {
        "id": call.id,
        "toolName": call.tool_name,
        "argumentsJson": call.arguments_json,
        "resultJson": call.result_json,
        "success": call.success,
        "durationMs": call.duration_ms,
        "traceId": call.trace_id,
        "createdAt": format_timestamp(call.created_at),
        "method": call.method,
        "outcome": call.outcome,
        "upstream": call.upstream,
        "upstreamToolName": call.upstream_name,
        "upstreamMs": call.upstream_ms,
        "jsonRpcId": call.request_id,
        "argumentsTruncated": call.arguments_truncated,
        "resultTruncated": call.result_truncated,
    }


def json_response(body: Any) -> Response:
    return Response(orjson.dumps(body), 200, media_type="application/json")


def is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Scope:
    """The caller's view: which organisation, and whose sessions (None: every key's)."""

    organisation_id: str
    api_key_id: str | None

    def query(self, *parts: str) -> str:
        return "|".join((*parts, self.organisation_id, self.api_key_id or "*"))


@dataclass(frozen=True, slots=True)
class SessionsApi:
    store: Store
    codec: CursorCodec
    authenticate: Authenticate

    async def _scope(self, request: Request) -> _Scope:
        caller = await caller_of(self.authenticate, request)
        if request.path_params["organisationId"] != caller.organisation_id:
            raise Refused(404, "NotFound", "Nothing here.")
        return _Scope(caller.organisation_id, None if caller.is_admin else caller.api_key_id)

    async def _session(self, request: Request, scope: _Scope) -> RecordedSession:
        session_id = request.path_params["sessionId"]
        found = None
        if is_uuid(session_id):
            found = await self.store.get_session(
                scope.organisation_id, session_id, api_key_id=scope.api_key_id
            )
        if found is None:
            raise Refused(404, "Mcp.SessionNotFound", "No such session, or it belongs to another API key.")
        return found

    async def list_sessions(self, request: Request) -> Response:
        scope = await self._scope(request)
        limit = read_limit(request.query_params, 20)
        query = scope.query("sessions")
        seek = read_seek(request.query_params, self.codec, query)
        page = await self.store.list_sessions(
            scope.organisation_id, api_key_id=scope.api_key_id, seek=seek, limit=limit
        )
        incoming = request.query_params.get("Cursor")
        return json_response(
            page_body(page, codec=self.codec, scope=query, incoming=incoming, render=render_session)
        )

    async def get_session(self, request: Request) -> Response:
        scope = await self._scope(request)
        session = await self._session(request, scope)
        page = await self.store.list_invocations(session.id, seek=Seek(), limit=INLINE_INVOCATIONS)
        following = None
        if page.more_after:
            following = self.codec.mint(scope.query("invocations", session.id), Seek(page.rows[-1].key))
        body = render_session(session)
        body["invocations"] = [render_invocation(call) for call in page.rows]
        body["invocationsNextCursor"] = following
        return json_response(body)

    async def list_invocations(self, request: Request) -> Response:
        scope = await self._scope(request)
        session = await self._session(request, scope)
        limit = read_limit(request.query_params, 50)
        query = scope.query("invocations", session.id)
        seek = read_seek(request.query_params, self.codec, query)
        page = await self.store.list_invocations(session.id, seek=seek, limit=limit)
        incoming = request.query_params.get("Cursor")
        return json_response(
            page_body(page, codec=self.codec, scope=query, incoming=incoming, render=render_invocation)
        )
