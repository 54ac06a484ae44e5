"""The SDK's pieces every span of the gateway is built of. Spans are built finished, once a
request has been answered (`tracing.py`), never started and ended: nothing lives while a call
runs, and the SDK's tracer (its per-span locks, attribute cleaning) is not on the call's path."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

__all__ = ["SAMPLED", "SCOPE", "UNSET", "finished", "new_context", "status_of"]

SCOPE = InstrumentationScope("mcpgw")
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
UNSET = Status(StatusCode.UNSET)


def new_context(trace_id: int, span_id: int | None = None) -> SpanContext:
    """A sampled span's own context in `trace_id` (a new span id unless given)."""
    span_id = random.getrandbits(64) if span_id is None else span_id
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=SAMPLED)


def status_of(error_type: str | None, text: str | None = None) -> Status:
    return UNSET if error_type is None else Status(StatusCode.ERROR, text)


def finished(
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    resource: Resource,
    attributes: Mapping[str, Any],
    kind: SpanKind,
    status: Status,
    start_ns: int,
    end_ns: int,
    links: Sequence[Link] = (),
) -> ReadableSpan:
    return ReadableSpan(
        name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        links=links,
        kind=kind,
        status=status,
        start_time=start_ns,
        end_time=end_ns,
        instrumentation_scope=SCOPE,
    )
