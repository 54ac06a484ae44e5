"""What one host request carries besides its JSON-RPC message, from the transport that read it
to the upstream call that sends it on.

Explicit, not ambient: each host transport builds a `RequestContext` from the request's headers
and hands it down through the proxy and the session to the upstream call, so a transport cannot
forget to set something that a layer below reads. It holds:

- `traceparent`: the W3C header, continued when the message's `_meta` carries none;
- `forwarded`: a 2026-07-28 host's `Mcp-Param-*` headers. The host computes them from a
  tool's schema and the upstream checks them against the body, so they pass on unchanged;
- `event_stream`: whether the host takes an event stream for the response (its `Accept`), so
  that messages about its request can go before the answer; else they go to its GET stream.

A call also has one `Deadline`, made where its upstream is known (`HostSession.forward`) and
handed to every wait on its way upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mcp.shared.inbound import MCP_PARAM_HEADER_PREFIX

__all__ = ["NO_CONTEXT", "NO_HEADERS", "Deadline", "RequestContext"]

NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_PARAM_PREFIX = MCP_PARAM_HEADER_PREFIX.lower()


class Deadline:
    """A host call's one deadline: its upstream's `timeouts.call_s`, counted from the first
    time the call waits for an upstream (opening the upstream session before it has a budget
    of its own, `connect_s`). A second try after the upstream forgot the session, the new
    session it needs, and every round of a bridged call spend what is left of it."""

    __slots__ = ("_at", "budget_s")

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self._at: float | None = None

    def at(self) -> float:
        """The deadline on the event loop's clock (what `asyncio.timeout_at` takes)."""
        if self._at is None:
            self._at = asyncio.get_running_loop().time() + self.budget_s
        return self._at


@dataclass(frozen=True, slots=True)
class RequestContext:
    traceparent: str | None = None
    forwarded: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS)
    event_stream: bool = True

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> RequestContext:
        """The context of a request with these headers (names lower-case, as ASGI gives them)."""
        forwarded = {name: value for name, value in headers.items() if name.startswith(_PARAM_PREFIX)}
        # No Accept at all takes anything, an event stream included.
        event_stream = "text/event-stream" in headers.get("accept", "text/event-stream")
        return cls(headers.get("traceparent"), forwarded or NO_HEADERS, event_stream)


NO_CONTEXT = RequestContext()
"""For requests the gateway makes on its own (listings, setLevel replays): nothing to carry."""
