"""Where a session's server-initiated messages go: its streams, the other replicas', or a buffer."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import anyio

from gateway.cluster import SessionLink
from gateway.protocol.jsonrpc import JSONObject
from gateway.upstream.channel import MessageSink

_BUFFERED_WHILE_NO_STREAM = 256


class ListenStream:
    """Where a session's server-initiated messages go: the host's GET stream, its 2026-07-28
    listen streams, or, while none is open, a small buffer."""

    def __init__(self, *, buffered: bool = True, one_stream: bool = True) -> None:
        self._sinks: list[MessageSink] = []
        # A session-based session's messages go on one of its streams, never on all of them
        # (Streamable HTTP: "MUST NOT broadcast the same message across multiple streams");
        # a 2026-07-28 group's listen streams are its hosts' subscriptions, each told everything.
        self._one_stream = one_stream
        # 2026-07-28 listen streams promise no replay, so a stateless group keeps nothing back.
        self._buffer: deque[JSONObject] = deque(maxlen=_BUFFERED_WHILE_NO_STREAM if buffered else 0)
        self._lock = anyio.Lock()
        self._none_open = anyio.Event()
        self._none_open.set()
        # On replicas: the session's streams open on the others (gateway/cluster.py).
        self.link: SessionLink | None = None

    @property
    def open(self) -> bool:
        return bool(self._sinks)

    async def attach(self, sink: MessageSink) -> None:
        async with self._lock:
            if self._none_open.is_set():
                self._none_open = anyio.Event()
            self._sinks.append(sink)
            while self._buffer:
                await sink.send(self._buffer.popleft())
        if self.link is not None and len(self._sinks) == 1:
            await self.link.opened()  # the other replicas send here now, what they buffered first

    def detach(self, sink: MessageSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)
            if not self._sinks and self.link is not None:
                self.link.closed()
        if not self._sinks:
            self._none_open.set()

    async def announce(self, message: JSONObject) -> None:
        """A fan-out's message (an upstream's list changed or it recovered, a credential
        connected), which every replica holding the session hears and sends its own copy of:
        written to this replica's streams, else kept for the next one here unless a stream is
        open on another replica (whose own copy reaches it); never passed to another replica."""
        async with self._lock:
            if not self._sinks and (self.link is None or not self.link.holders):
                self._buffer.append(message)
            await self._write(message)

    async def deliver_here(self, message: JSONObject) -> None:
        """A message another replica sent this one's streams: to them, or buffered."""
        async with self._lock:
            if not self._sinks:
                self._buffer.append(message)
            await self._write(message)

    async def _write(self, message: JSONObject) -> None:
        for sink in self._sinks[:1] if self._one_stream else list(self._sinks):
            await sink.send(message)

    async def flush(self, send: Callable[[JSONObject], Awaitable[None]]) -> None:
        """What was buffered, handed to a stream opened on another replica."""
        async with self._lock:
            while self._buffer:
                await send(self._buffer.popleft())

    async def closed(self) -> None:
        """Return once no stream is open."""
        await self._none_open.wait()

    async def send(self, message: JSONObject) -> None:
        async with self._lock:
            if self._one_stream and self._sinks:
                await self._sinks[0].send(message)
                return
            elsewhere = self.link is not None and await self.link.send(message, to_one=self._one_stream)
            if not self._sinks and not elsewhere:
                if self.link is not None and not self._buffer:
                    self.link.buffering()
                self._buffer.append(message)
            await self._write(message)
