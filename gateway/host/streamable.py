"""The host-facing MCP endpoint: Streamable HTTP at `/mcp` and `/mcp/{organisationId}`.

One ASGI callable serves both protocol generations. A POST whose body carries the 2026-07-28
per-request envelope (or whose `MCP-Protocol-Version` header names that revision) goes to the
stateless path in `stateless.py`; everything else is the session-based protocol: `initialize`
mints an `Mcp-Session-Id` bound to the caller's API key, later requests must present it, GET
opens the session's server-to-host stream and DELETE ends the session.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Any

import anyio
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS
from starlette.types import Receive, Scope, Send

from gateway.core.host_session import HostSession
from gateway.core.proxy import Proxy
from gateway.core.registry import SessionRegistry
from gateway.errors import AuthThrottled, HostRefusal, RecordingFailed, SessionLimit, SessionsUnreachable
from gateway.host.asgi import (
    EventStream,
    OriginGuard,
    ResponseStream,
    answering_refusals,
    headers_of,
    receive_message,
    send_bytes,
    send_json,
    wait_for_disconnect_or,
)
from gateway.host.auth import HostAuth, Refusal
from gateway.host.shutdown import Shutdown
from gateway.host.stateless import StatelessHandler
from gateway.principal import Principal
from gateway.protocol.context import RequestContext
from gateway.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    JSONObject,
    is_notification,
    is_request,
    meta_of,
    params_of,
    result,
)
from gateway.signin.resource import ProtectedResource
from gateway.upstream.connector import Handshake

logger = logging.getLogger(__name__)

SERVER_INFO = {"name": "mcpgw", "version": package_version("mcpgw")}
GATEWAY_CAPABILITIES: JSONObject = {
    "tools": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "prompts": {"listChanged": True},
    "logging": {},
    "completions": {},
}
_MODERN_META_KEY = "io.modelcontextprotocol/protocolVersion"
# Without host sign-in the gateway has no authorization server, so its 401 must not name the
# Bearer scheme: MCP clients answer a Bearer challenge by starting an OAuth flow (RFC 9728
# discovery, then registration), which can only fail here. RFC 9110 section 11.6.1 still requires
# a 401 to carry at least one challenge, and section 11.1 lets it name any auth-scheme token;
# "ApiKey" is one no OAuth client acts on, and its parameters say where the key goes. (Keys are
# also accepted as "Authorization: Bearer <key>", which the error message says.)
_API_KEY_CHALLENGE = (b"www-authenticate", b'ApiKey realm="mcpgw", header="x-api-key"')
_SEND_YOUR_KEY = "send your API key as x-api-key or Authorization: Bearer"


@dataclass(slots=True)
class Endpoint:
    auth: HostAuth
    guard: OriginGuard
    registry: SessionRegistry
    proxy: Proxy
    stateless: StatelessHandler
    max_body_bytes: int
    shutdown: Shutdown  # the server stopping: the GET streams end
    signin: ProtectedResource | None = None  # with host sign-in: the MCP URLs hosts sign in to

    async def admit(self, scope: Scope, headers: dict[str, str]) -> Principal:
        """Guard, authenticate and scope a request (`HostRefusal` if it may not be served)."""
        problem = self.guard.problem(headers)
        if problem is not None:
            raise HostRefusal(problem[0], INVALID_REQUEST, problem[1])
        client = scope.get("client")
        organisation = scope.get("path_params", {}).get("organisationId")
        # A signed-in host's token is good only for the MCP URL it was issued for (RFC 8707); the
        # legacy SSE paths, which share this door, take keys only.
        on_mcp = self.signin is not None and scope["path"].startswith("/mcp")
        resource = self.signin.url(organisation) if self.signin is not None and on_mcp else None
        try:
            principal = await self.auth.admit(headers, client[0] if client else None, resource)
        except AuthThrottled as exc:
            message = "Too many failed authentications from this address; retry later"
            retry_after = (b"retry-after", str(exc.retry_after_s).encode())
            raise HostRefusal(429, INVALID_REQUEST, message, headers=(retry_after,)) from None
        if isinstance(principal, Refusal):
            missing = principal is Refusal.MISSING
            if self.signin is not None and on_mcp:
                # RFC 9728 section 5.1: where the host finds out how to sign in.
                description = None if missing else principal.value
                challenge = self.signin.challenge(
                    organisation, invalid_token=not missing, description=description
                )
                reason = f"sign in, or {_SEND_YOUR_KEY}" if missing else principal.value
                raise HostRefusal(401, INVALID_REQUEST, f"Unauthorized: {reason}", headers=(challenge,))
            reason = f"missing API key: {_SEND_YOUR_KEY}" if missing else principal.value
            raise HostRefusal(401, INVALID_REQUEST, f"Unauthorized: {reason}", headers=(_API_KEY_CHALLENGE,))
        if organisation is not None and organisation != principal.organisation_id:
            # Another tenant's URL: answer as if it did not exist.
            raise HostRefusal(404, INVALID_REQUEST, "Not Found")
        return principal

    async def initialize(
        self, message: JSONObject, principal: Principal, traceparent: str | None = None
    ) -> tuple[HostSession, JSONObject]:
        """Open a host session for an `initialize` request; return it and the answer.
        `HostRefusal` if none can be opened: 503 when it cannot be recorded, 429 or 503 past
        the sessions the caller or the gateway may hold. `traceparent`: the request's header."""
        if self.proxy.tracing is not None:
            opening = self._open_session(message, principal)
            return await self.proxy.tracing.initialize(opening, message, traceparent)
        return await self._open_session(message, principal)

    async def _open_session(
        self, message: JSONObject, principal: Principal
    ) -> tuple[HostSession, JSONObject]:
        params = params_of(message)
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        handshake = Handshake(version, _object(params.get("capabilities")), _object(params.get("clientInfo")))
        try:
            session = await self.registry.create(principal, handshake, version)
        except RecordingFailed as exc:
            logger.error("refusing a session that could not be recorded: %s", exc)
            text = "The gateway cannot record sessions right now"
            raise HostRefusal(503, INTERNAL_ERROR, text, request_id=message["id"]) from None
        except SessionLimit as exc:
            raise HostRefusal(exc.status, INVALID_REQUEST, str(exc), request_id=message["id"]) from None
        answer = {"protocolVersion": version, "capabilities": GATEWAY_CAPABILITIES, "serverInfo": SERVER_INFO}
        return session, result(message["id"], answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await answering_refusals(self._serve, scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = headers_of(scope)
        principal = await self.admit(scope, headers)
        method = scope["method"]
        if method == "POST":
            await self._post(scope, receive, send, headers, principal)
        elif method == "GET":
            await self._get(receive, send, headers, principal)
        elif method == "DELETE":
            await self._delete(send, headers, principal)
        else:
            raise HostRefusal(
                405, INVALID_REQUEST, "Method Not Allowed", headers=((b"allow", b"GET, POST, DELETE"),)
            )

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], principal: Principal
    ) -> None:
        message = await receive_message(receive, headers, self.max_body_bytes)
        if headers.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS or _MODERN_META_KEY in meta_of(
            message
        ):
            # A listen stream is no request in flight: those have a cap of their own.
            if not is_request(message) or message["method"] == "subscriptions/listen":
                await self.stateless.handle(message, headers, principal, receive, send)
                return
            caller = self._begin(principal, message)
            try:
                await self.stateless.handle(message, headers, principal, receive, send)
            finally:
                self.registry.end_request(caller)
            return
        if message.get("method") == "initialize" and is_request(message):
            await self._initialize(send, message, principal, headers.get("traceparent"))
            return
        session = await self._session(headers, principal)
        if is_request(message):
            caller = self._begin(principal, message)
            try:
                context = RequestContext.of(headers)
                stream = ResponseStream(send, [], context.event_stream)
                await stream.finish(await self.proxy.answer(session, message, stream, context))
            finally:
                self.registry.end_request(caller)
            return
        if is_notification(message):
            await self.proxy.notification(session, message, RequestContext.of(headers))
        else:
            await self.proxy.response(session, message)
        await send_bytes(send, 202, b"", [])

    def _begin(self, principal: Principal, message: JSONObject) -> tuple[str, str | None]:
        try:
            return self.registry.begin_request(principal)
        except SessionLimit as exc:
            raise HostRefusal(exc.status, INVALID_REQUEST, str(exc), request_id=message["id"]) from None

    async def _initialize(
        self, send: Send, message: JSONObject, principal: Principal, traceparent: str | None
    ) -> None:
        session, answer = await self.initialize(message, principal, traceparent)
        await send_json(send, 200, answer, [(b"mcp-session-id", session.id.encode())])

    async def _session(self, headers: dict[str, str], principal: Principal) -> HostSession:
        version = headers.get("mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            text = f"Bad Request: unsupported MCP-Protocol-Version {version[:40]!r}"
            raise HostRefusal(400, INVALID_REQUEST, text)
        session_id = headers.get("mcp-session-id")
        if not session_id:
            raise HostRefusal(400, INVALID_REQUEST, "Bad Request: Missing Mcp-Session-Id header")
        try:
            session = await self.registry.get(session_id, principal)
        except SessionsUnreachable as exc:
            logger.error("a session could not be looked up: %s", exc)
            raise HostRefusal(
                503, INTERNAL_ERROR, "The gateway cannot find sessions right now: try again"
            ) from None
        if session is None:
            raise HostRefusal(404, INVALID_REQUEST, "Session not found")
        return session

    async def _get(self, receive: Receive, send: Send, headers: dict[str, str], principal: Principal) -> None:
        if "text/event-stream" not in headers.get("accept", ""):
            raise HostRefusal(406, INVALID_REQUEST, "Not Acceptable: GET needs Accept: text/event-stream")
        session = await self._session(headers, principal)
        if session.listen.open:
            raise HostRefusal(409, INVALID_REQUEST, "Conflict: this session already has a GET stream")
        stream = EventStream(send)
        await stream.start([(b"mcp-session-id", session.id.encode())])
        await session.listen.attach(stream)
        try:
            await wait_for_disconnect_or(receive, session.ended, self.shutdown)
        finally:
            session.listen.detach(stream)
        with anyio.CancelScope(shield=True):
            await stream.close()

    async def _delete(self, send: Send, headers: dict[str, str], principal: Principal) -> None:
        session = await self._session(headers, principal)
        await self.registry.end(session, "deleted")
        await send_bytes(send, 200, b"", [])


def _object(value: Any) -> JSONObject:
    return value if isinstance(value, dict) else {}
