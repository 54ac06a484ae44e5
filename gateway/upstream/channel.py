"""What every upstream transport offers the gateway: a channel carrying raw JSON-RPC messages.

A channel is one live connection to one upstream MCP session (a stdio child, or a Streamable
HTTP / SSE session). The gateway sends a request and gets back the upstream's final response;
messages the upstream sends *while* that request runs (progress, logs, elicitation or sampling
requests) go to the request's sink, so they reach the host on the stream of the call that caused
them. Messages tied to no request go to the channel's `unsolicited` sink (the host's GET stream).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.protocol.jsonrpc import JSONObject


class MessageSink(Protocol):
    async def send(self, message: JSONObject) -> None: ...


Unsolicited = Callable[[JSONObject], Awaitable[None]]


class Channel(Protocol):
    @property
    def closed(self) -> bool: ...

    async def request(self, message: JSONObject, sink: MessageSink | None) -> JSONObject:
        """Send a request; relay related messages to `sink`; return the final response message."""
        ...

    async def notify(self, message: JSONObject) -> None:
        """Send a notification (cancelled, initialized, roots/list_changed, ...)."""
        ...

    async def respond(self, message: JSONObject) -> None:
        """Send the response to a request the upstream made (elicitation, sampling, ping, roots)."""
        ...

    async def aclose(self) -> None: ...


class DiscardSink:
    """For requests the gateway makes on its own behalf: related messages have no host to go to."""

    async def send(self, message: JSONObject) -> None:
        return None


DISCARD = DiscardSink()
