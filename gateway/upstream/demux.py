"""Matching what arrives on one shared inbound stream to the calls waiting for it.

stdio children and legacy SSE servers send everything (responses, progress, logs, their own
requests) down one stream, with no notion of "which call this belongs to". Responses match
their call by id; progress by its token; what a running call can cause (logs, elicitation,
sampling, roots) goes to the newest call still running; anything else is `unsolicited`.

The stream is read by one task, so nothing it reads may wait on a host: what goes to a call's
host (and what is unsolicited) is handed to that destination's `Outbox`, a bounded queue with a
task of its own that writes it. A host that stops reading holds up its own outbox only; past
`OUTBOX_MESSAGES` waiting, what it is sent is dropped (logged) until the write timeout closes
its connection (`security.write_timeout_s`), and every other call on the stream is answered.

A response is taken only as the answer to a request this stream was sent and has not answered
yet: one with an id it was never sent (another session's, another upstream's), or a second
answer to the same request, is dropped and logged (`StrayResponses`: the first, then at most
one line a minute with the count), never passed on: a host matches answers by id alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

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


_STRAYS_LOGGED_EVERY_S = 60.0
OUTBOX_MESSAGES = 256  # waiting for one destination before what it is sent is dropped


class StrayResponses:
    """Responses an upstream sent to no request it has in flight: dropped, and logged so that a
    misbehaving upstream is seen without flooding the log (the first at once, then one line a
    minute at most, counting those not logged)."""

    __slots__ = ("_logged_at", "_name", "_unlogged")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logged_at: float | None = None
        self._unlogged = 0

    def drop(self, message: JSONObject) -> None:
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < _STRAYS_LOGGED_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last such line)" if self._unlogged else ""
        self._logged_at, self._unlogged = now, 0
        logger.warning(
            "upstream %s: dropped a response with id %.80r, which answers no request of this "
            "session in flight (never sent, or answered already)%s",
            self._name,
            message.get("id"),
            more,
        )


class Outbox:
    """What one destination is sent off the stream, in order, written by a task of its own."""

    __slots__ = ("_deliver", "_dropped", "_name", "_receive", "_send", "drained")

    def __init__(self, name: str, deliver: Callable[[JSONObject], Awaitable[None]]) -> None:
        self._name = name
        self._deliver = deliver
        self._send, self._receive = anyio.create_memory_object_stream[JSONObject](OUTBOX_MESSAGES)
        self._dropped = 0
        self.drained = anyio.Event()  # set once closed and everything before is written

    def put(self, message: JSONObject) -> None:
        try:
            self._send.send_nowait(message)
        except anyio.WouldBlock:
            self._dropped += 1
            if self._dropped == 1:
                logger.warning(
                    "upstream %s: a host is not reading what it is sent; dropping its messages"
                    " (%d waiting) until it reads again or its connection is closed",
                    self._name,
                    OUTBOX_MESSAGES,
                )
        except anyio.ClosedResourceError:
            pass  # its call has ended: nothing more goes to it

    def close(self) -> None:
        self._send.close()

    async def run(self) -> None:
        try:
            async with self._receive:
                async for message in self._receive:
                    await self._deliver(message)
        finally:
            self._send.close()  # cancelled with its stream's reader: nothing more is taken
            self.drained.set()


@dataclass(slots=True)
class Pending:
    sink: MessageSink | None
    progress_token: object
    done: anyio.Event = field(default_factory=anyio.Event)
    response: JSONObject | None = None
    outbox: Outbox | None = None


class Demux:
    def __init__(self, name: str, unsolicited: Unsolicited) -> None:
        self._name = name
        self._unsolicited = unsolicited
        self._pending: dict[RequestId, Pending] = {}
        self._strays = StrayResponses(name)
        self._task_group: TaskGroup | None = None
        self._unsolicited_box: Outbox | None = None

    def writing_in(self, task_group: TaskGroup) -> None:
        """Write what goes to hosts from tasks of `task_group` (the stream reader's, so they end
        with it); until called, it is written by the reading task itself."""
        self._task_group = task_group

    def _outbox(self, deliver: Callable[[JSONObject], Awaitable[None]]) -> Outbox | None:
        if self._task_group is None:
            return None
        outbox = Outbox(self._name, deliver)
        self._task_group.start_soon(outbox.run)
        return outbox

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
            request_id = message.get("id")
            pending = self._pending.get(request_id) if isinstance(request_id, str | int) else None
            if pending is None or pending.response is not None:  # not asked, or answered already
                self._strays.drop(message)
                return
            pending.response = message
            pending.done.set()
            return
        pending = self._route(method, message)
        if pending is not None and pending.sink is not None:
            if pending.outbox is None:
                pending.outbox = self._outbox(pending.sink.send)
            if pending.outbox is None:
                await pending.sink.send(message)
            else:
                pending.outbox.put(message)
            return
        if self._unsolicited_box is None:
            self._unsolicited_box = self._outbox(self._unsolicited)
        if self._unsolicited_box is None:
            await self._unsolicited(message)
        else:
            self._unsolicited_box.put(message)

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
            if pending.outbox is not None:
                pending.outbox.close()
        if pending.outbox is not None:
            await pending.outbox.drained.wait()  # what came before the answer reaches the host first
        return pending.response

    def fail_all(self) -> None:
        """The stream ended: wake every waiting call (each finds no response)."""
        for pending in list(self._pending.values()):
            pending.done.set()

    def _route(self, method: str, message: JSONObject) -> Pending | None:
        if method == "notifications/progress":
            token = message.get("params", {}).get("progressToken")
            for pending in self._pending.values():
                if pending.progress_token == token and pending.sink is not None:
                    return pending
            return None
        if method in _CALL_SCOPED:
            for pending in reversed(self._pending.values()):
                if pending.sink is not None:
                    return pending
        return None
