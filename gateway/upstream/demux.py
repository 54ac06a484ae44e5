"""Matching what arrives on one shared inbound stream to the calls waiting for it.

stdio children and legacy SSE servers send everything (responses, progress, logs, their own
requests) down one stream, with no notion of "which call this belongs to". Responses match
their call by id; progress by its token; what a running call can cause (logs, elicitation,
sampling, roots) goes to the newest call still running; anything else is `unsolicited`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from gateway.errors import MessageError, TooDeep
from gateway.protocol.jsonrpc import (
    MAX_DEPTH,
    UPSTREAM_UNAVAILABLE,
    JSONObject,
    RequestId,
    error,
    is_response,
    loads_relayable,
    meta_of,
)
from gateway.upstream.channel import MessageSink, Unsolicited

logger = logging.getLogger(__name__)

_CALL_SCOPED = frozenset(
    {"notifications/message", "elicitation/create", "sampling/createMessage", "roots/list"}
)


@dataclass(slots=True)
class Pending:
    sink: MessageSink | None
    progress_token: object
    done: anyio.Event = field(default_factory=anyio.Event)
    response: JSONObject | None = None


class Demux:
    def __init__(self, name: str, unsolicited: Unsolicited) -> None:
        self._name = name
        self._unsolicited = unsolicited
        self._pending: dict[RequestId, Pending] = {}

    def expect(self, message: JSONObject, sink: MessageSink | None) -> Pending:
        pending = Pending(sink, meta_of(message).get("progressToken"))
        self._pending[message["id"]] = pending
        return pending

    def forget(self, request_id: RequestId) -> None:
        self._pending.pop(request_id, None)

    async def dispatch_raw(self, raw: bytes | str) -> None:
        """Decode one message read off the stream and dispatch it. What is not a message is
        skipped (the stream goes on); a response nested too deep to relay answers its call
        with an error instead."""
        try:
            message = loads_relayable(raw)
        except TooDeep as exc:
            logger.warning(
                "upstream %s: a message nested over %d levels deep; not relayed", self._name, MAX_DEPTH
            )
            message = self._stand_in(exc.value)
        except MessageError:
            logger.warning("upstream %s: skipping something on its stream that is not JSON", self._name)
            return
        if isinstance(message, dict):
            await self.dispatch(message)

    def _stand_in(self, message: object) -> JSONObject | None:
        if not isinstance(message, dict) or not is_response(message) or "id" not in message:
            return None
        text = f"upstream {self._name!r}: answered with JSON nested more than {MAX_DEPTH} levels deep"
        return error(message["id"], UPSTREAM_UNAVAILABLE, text)

    async def dispatch(self, message: JSONObject) -> None:
        method = message.get("method")
        if method is None:
            pending = self._pending.get(message.get("id"))  # type: ignore[arg-type]
            if pending is not None:
                pending.response = message
                pending.done.set()
            return
        target = self._route(method, message)
        if target is not None:
            await target.send(message)
        else:
            await self._unsolicited(message)

    async def round_trip(
        self, message: JSONObject, sink: MessageSink | None, write: Callable[[JSONObject], Awaitable[None]]
    ) -> JSONObject | None:
        """Write a request and wait for its response; None when the stream ended first."""
        pending = self.expect(message, sink)
        try:
            await write(message)
            await pending.done.wait()
        finally:
            self.forget(message["id"])
        return pending.response

    def fail_all(self) -> None:
        """The stream ended: wake every waiting call (each finds no response)."""
        for pending in list(self._pending.values()):
            pending.done.set()

    def _route(self, method: str, message: JSONObject) -> MessageSink | None:
        if method == "notifications/progress":
            token = message.get("params", {}).get("progressToken")
            for pending in self._pending.values():
                if pending.progress_token == token and pending.sink is not None:
                    return pending.sink
            return None
        if method in _CALL_SCOPED:
            for pending in reversed(self._pending.values()):
                if pending.sink is not None:
                    return pending.sink
        return None
