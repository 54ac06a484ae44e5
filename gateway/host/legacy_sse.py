"""The legacy HTTP+SSE transport (revision 2024-11-05) for hosts that predate Streamable HTTP.

`GET /sse` opens a stream whose first event names where to POST (`/messages?session_id=…`).
Every POSTed message is acknowledged with 202; answers, notifications and upstream requests all
travel down the one stream. Behind this, a connection is an ordinary host session.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs

import anyio
from anyio.abc import TaskGroup
from starlette.types import Receive, Scope, Send

from gateway.core.host_session import HostSession
from gateway.errors import HostRefusal, SessionLimit
from gateway.host.asgi import (
    EventStream,
    answering_refusals,
    headers_of,
    receive_message,
    send_bytes,
    wait_for_disconnect_or,
)
from gateway.host.streamable import Endpoint
from gateway.principal import Principal
from gateway.protocol.context import RequestContext
from gateway.protocol.jsonrpc import (
    INVALID_REQUEST,
    JSONObject,
    error,
    is_notification,
    is_request,
)

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Connection:
    principal: Principal
    stream: EventStream
    tasks: TaskGroup
    session: HostSession | None = None


@dataclass(slots=True)
class LegacySse:
    endpoint: Endpoint
    _connections: dict[str, _Connection] = field(default_factory=dict)

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /sse: one connection, open until the host goes away."""
        await answering_refusals(self._stream, scope, receive, send)

    async def message(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /messages?session_id=…: one message in, 202 out; its answer goes down the stream."""
        await answering_refusals(self._message, scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = await self.endpoint.admit(scope, headers_of(scope))
        connection_id = secrets.token_urlsafe(24)
        stream = EventStream(send)
        await stream.start([])
        await send(
            {
                "type": "http.response.body",
                "body": f"event: endpoint\ndata: /messages?session_id={connection_id}\n\n".encode(),
                "more_body": True,
            }
        )
        gone = True
        try:
            async with anyio.create_task_group() as tasks:
                self._connections[connection_id] = _Connection(principal, stream, tasks)
                gone = await wait_for_disconnect_or(receive, self.endpoint.shutdown)
                tasks.cancel_scope.cancel()
        finally:
            connection = self._connections.pop(connection_id, None)
            with anyio.CancelScope(shield=True):
                if connection is not None and connection.session is not None:
                    reason = "closed" if gone else "shutdown"
                    await self.endpoint.registry.end(connection.session, reason)
                if not gone:
                    await stream.close()

    async def _message(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = headers_of(scope)
        principal = await self.endpoint.admit(scope, headers)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        connection = self._connections.get((query.get("session_id") or [""])[0])
        if connection is None or not principal.same_caller(connection.principal):
            raise HostRefusal(404, INVALID_REQUEST, "Session not found")
        message = await receive_message(receive, headers, self.endpoint.max_body_bytes)
        await send_bytes(send, 202, b"Accepted", [(b"content-type", b"text/plain")])
        # Whatever this POST accepts, its answer and everything about it go down the one stream.
        await self._handle(connection, message, replace(RequestContext.of(headers), event_stream=True))

    async def _handle(self, connection: _Connection, message: JSONObject, context: RequestContext) -> None:
        if message.get("method") == "initialize" and is_request(message):
            try:
                session, answer = await self.endpoint.initialize(
                    message, connection.principal, context.traceparent
                )
            except HostRefusal as refusal:  # this transport answers on its stream, not in HTTP
                await connection.stream.send(error(message["id"], refusal.code, refusal.message))
                return
            await connection.stream.send(answer)
            connection.session = session
            await session.listen.attach(connection.stream)  # this transport's one stream carries everything
            return
        current = connection.session
        if current is None:
            if is_request(message):
                await connection.stream.send(error(message["id"], INVALID_REQUEST, "Not initialized"))
            return
        if is_request(message):
            connection.tasks.start_soon(self._answer, connection, current, message, context)
        elif is_notification(message):
            await self.endpoint.proxy.notification(current, message, context)
        else:
            await self.endpoint.proxy.response(current, message)

    async def _answer(
        self, connection: _Connection, session: HostSession, message: JSONObject, context: RequestContext
    ) -> None:
        stream = connection.stream
        try:
            # Counted in the task, not before it starts: a task cancelled unstarted runs no `finally`.
            caller = self.endpoint.registry.begin_request(connection.principal)
        except SessionLimit as exc:  # this transport answers on its stream, not in HTTP
            await stream.send(error(message["id"], INVALID_REQUEST, str(exc)))
            return
        try:
            await stream.send(await self.endpoint.proxy.answer(session, message, stream, context))
        finally:
            self.endpoint.registry.end_request(caller)
