"""Matching what arrives on one shared inbound stream to the calls waiting for it.

stdio children and legacy SSE servers send everything (responses, progress, logs, their own
requests) down one stream, with no notion of "which call this belongs to". Responses match
their call by id; progress by its token; what a running call can cause (logs, elicitation,
sampling, roots) goes to the newest call still running; anything else is `unsolicited`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from gateway.jsonrpc import JSONObject, RequestId, meta_of
from gateway.upstream.channel import MessageSink, Unsolicited

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
    def __init__(self, unsolicited: Unsolicited) -> None:
        self._unsolicited = unsolicited
        self._pending: dict[RequestId, Pending] = {}

    def expect(self, message: JSONObject, sink: MessageSink | None) -> Pending:
        pending = Pending(sink, meta_of(message).get("progressToken"))
        self._pending[message["id"]] = pending
        return pending

    def forget(self, request_id: RequestId) -> None:
        self._pending.pop(request_id, None)

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
