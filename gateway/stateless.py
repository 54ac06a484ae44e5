"""Hosts speaking the stateless 2026-07-28 revision: one self-contained POST per request.

There is no `initialize` and no `Mcp-Session-Id`; each request carries its protocol version,
client info and capabilities in `params._meta`. The gateway still groups a host's requests into
one session per (API key, client name+version), closed after an idle gap, and that group owns
the upstream sessions its requests use. Requests from different host processes may share a
group, so their ids are remapped on the way upstream. Cancelling is closing the response
stream, so the call is cancelled upstream when the host disconnects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS, InboundLadderRejection, classify_inbound_request
from mcp_types.version import LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS
from starlette.types import Receive, Send

from gateway.eras import to_modern_response, with_server_info
from gateway.hostauth import Principal
from gateway.httpio import ResponseStream, send_bytes, send_json, wait_for_disconnect
from gateway.jsonrpc import JSONObject, error, is_request, result
from gateway.proxy import Proxy
from gateway.sessions import HostSession, SessionRegistry
from gateway.upstream.connector import Handshake

logger = logging.getLogger(__name__)

_NO_BACK_CHANNEL = -32601


@dataclass(slots=True)
class StatelessHandler:
    registry: SessionRegistry
    proxy: Proxy
    capabilities: JSONObject
    server_info: JSONObject
    _groups: dict[tuple[str, str | None, str, str], HostSession] = field(default_factory=dict)

    async def handle(
        self, message: JSONObject, headers: dict[str, str], principal: Principal, receive: Receive, send: Send
    ) -> None:
        if not is_request(message):
            # This revision defines no host-to-server notifications or responses over HTTP.
            await send_bytes(send, 202, b"", [])
            return
        route = classify_inbound_request(message, headers=headers)
        if isinstance(route, InboundLadderRejection):
            status = ERROR_CODE_HTTP_STATUS.get(route.code, 400)
            await send_json(send, status, error(message["id"], route.code, route.message, route.data))
            return
        if message["method"] == "server/discover":
            await send_json(send, 200, result(message["id"], self._discover()))
            return
        session = self._group(principal, route.client_info, route.client_capabilities)
        stream = ResponseStream(send, [], True)
        sink = _NoBackChannel(session, stream)
        response: JSONObject | None = None
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await wait_for_disconnect(receive)
                tg.cancel_scope.cancel()  # the host closed the stream: that is its cancellation

            tg.start_soon(watch)
            response = await self.proxy.request(session, message, sink)
            tg.cancel_scope.cancel()
        if response is not None:
            response = with_server_info(to_modern_response(message["method"], response), self.server_info)
            code = response.get("error", {}).get("code") if "error" in response else None
            await stream.finish(response, ERROR_CODE_HTTP_STATUS.get(code, 200) if code is not None else 200)

    def _discover(self) -> JSONObject:
        return {
            "supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
            "capabilities": {k: v for k, v in self.capabilities.items() if k != "logging"},
            "cacheScope": "private",
            "ttlMs": 0,
            "resultType": "complete",
            "_meta": {"io.modelcontextprotocol/serverInfo": self.server_info},
        }

    def _group(self, principal: Principal, client_info: object, capabilities: object) -> HostSession:
        info = client_info if isinstance(client_info, dict) else {}
        key = (principal.organisation_id, principal.api_key_id, str(info.get("name", "")), str(info.get("version", "")))
        session = self._groups.get(key)
        if session is None or session.closed:
            handshake = Handshake(
                LATEST_HANDSHAKE_VERSION, capabilities if isinstance(capabilities, dict) else {}, info
            )
            session = self.registry.create(principal, handshake, stateless=True)
            self._groups[key] = session
        return session


class _NoBackChannel:
    """Relays progress and logs; declines requests upstreams make, which this revision cannot carry."""

    def __init__(self, session: HostSession, stream: ResponseStream) -> None:
        self._session = session
        self._stream = stream

    async def send(self, message: JSONObject) -> None:
        if "id" not in message:
            await self._stream.send(message)
            return
        outbound = self._session.take_outbound(message["id"])
        if outbound is not None:
            reason = f"{message.get('method')} cannot reach a 2026-07-28 host through this gateway yet"
            await outbound.upstream.channel.respond(error(outbound.original_id, _NO_BACK_CHANNEL, reason))

