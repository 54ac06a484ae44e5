"""The span of a task that outlives its `tools/call` (the tasks extension): an INTERNAL span
`task {tool}` from the call's start until a `tasks/get` shows its end, a child of the call's
server span and linked to that `tasks/get`'s server span. A task started on another replica
(or before a restart) has none: what its span needs is kept in this process only."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import Link, SpanContext, SpanKind

from gateway.recording.recorder import TaskEnded
from gateway.telemetry.otlp import OtlpExport
from gateway.telemetry.spans import finished, new_context, status_of

__all__ = ["TaskSpans"]

# What a task's span repeats of its tools/call's (never content: that stays on the call's span).
_TASK_ATTRIBUTES = ("mcp.method.name", "mcp.protocol.version", "gen_ai.operation.name", "gen_ai.tool.name")
_MAX_TASKS = 4096  # tasks awaiting their end, per process; past it the oldest get no span


@dataclass(frozen=True, slots=True)
class _TaskStart:
    name: str  # its tools/call's span name
    server: SpanContext  # its tools/call's server span
    started_ns: int
    attributes: Mapping[str, Any]


class TaskSpans:
    def __init__(self, export: OtlpExport, resource: Resource) -> None:
        self._export = export
        self._resource = resource
        self._tasks: OrderedDict[str, _TaskStart] = OrderedDict()  # by invocation id, oldest first

    def started(
        self,
        invocation_id: str,
        name: str,
        server: SpanContext,
        started_ns: int,
        attributes: Mapping[str, Any],
    ) -> None:
        """Keep what the span of a task this call started needs, until a `tasks/get` shows its end."""
        kept = {key: attributes[key] for key in _TASK_ATTRIBUTES if key in attributes}
        self._tasks[invocation_id] = _TaskStart(name, server, started_ns, kept)
        while len(self._tasks) > _MAX_TASKS:
            self._tasks.popitem(last=False)

    def ended(self, end: TaskEnded, observed: SpanContext) -> None:
        """Queue the span of the task `end` ended, linked to `observed` (the `tasks/get`'s span)."""
        start = self._tasks.pop(end.invocation_id, None)
        if start is None:
            return
        attributes = dict(start.attributes, **{"mcpgw.task.outcome": end.outcome})
        error_type = None if end.outcome in ("ok", "task_pending") else end.outcome
        if error_type is not None:
            attributes["error.type"] = error_type
        self._export.queue(
            finished(
                f"task {start.name}",
                new_context(start.server.trace_id),
                start.server,
                self._resource,
                attributes,
                SpanKind.INTERNAL,
                status_of(error_type),
                start.started_ns,
                max(start.started_ns, int(end.ended_at * 1e9)),
                links=(Link(observed),),
            )
        )
