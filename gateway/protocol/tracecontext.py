"""W3C Trace Context (https://www.w3.org/TR/trace-context/) for recorded calls.

A host may send `traceparent` in the request's `params._meta` (the MCP convention) or as an
HTTP header. The gateway continues that trace, or starts one, and hands the upstream a child:
same trace id, a new span id for the gateway's hop. `tracestate` passes through unchanged.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from gateway.protocol.jsonrpc import JSONObject, meta_of

__all__ = ["TraceParent", "trace_for"]

# version-traceid-parentid-flags; the all-zero ids are invalid, as is version ff.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: str
    span_id: str
    flags: str

    @classmethod
    def parse(cls, value: object) -> TraceParent | None:
        """The traceparent in `value`, or None when it is not a valid one (then start a new trace)."""
        if not isinstance(value, str):
            return None
        match = _TRACEPARENT.fullmatch(value.strip())
        if match is None:
            return None
        version, trace_id, span_id, flags = match.groups()
        if version == "ff" or (version == "00" and len(value.strip()) != 55):
            return None
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        return cls(trace_id, span_id, flags)

    @classmethod
    def new(cls) -> TraceParent:
        return cls(secrets.token_hex(16), secrets.token_hex(8), "01")

    def child(self) -> TraceParent:
        return TraceParent(self.trace_id, secrets.token_hex(8), self.flags)

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def trace_for(message: JSONObject, header: str | None = None) -> tuple[TraceParent, JSONObject]:
    """The trace of a host request (its `_meta` traceparent, else its `traceparent` `header`)
    and the request to send upstream, carrying the child span."""
    meta = meta_of(message)
    parent = TraceParent.parse(meta.get("traceparent")) or TraceParent.parse(header)
    child = (parent or TraceParent.new()).child()
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    forwarded = {**message, "params": {**params, "_meta": {**meta, "traceparent": str(child)}}}
    return child, forwarded
