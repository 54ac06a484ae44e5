"""The seam where sessions and forwarded requests are recorded.

`Proxy` builds one `CallRecord` per recorded request it forwards (and per one it refuses) and
awaits the recorder *before* the response leaves the gateway, so a durable recorder makes
"durable before acknowledged" true. The registry reports sessions starting and ending the same
way. `NullRecorder` records nothing (recording off); `writer.StoreRecorder` writes to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.protocol.jsonrpc import JSONObject, RequestId
from store import TASK_PENDING, SessionEnd, SessionStart

__all__ = ["CallRecord", "NullRecorder", "Recorder", "TaskEnded", "outcome_of", "task_outcome"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    session_id: str  # the session's record id (a uuid), not its Mcp-Session-Id
    method: str
    name: str  # the tool/prompt name or resource URI as the host saw it
    upstream: str | None
    upstream_name: str | None
    request_id: RequestId | None
    params: JSONObject
    response: JSONObject  # what the host is answered: a result or an error
    outcome: str  # ok | tool_error | upstream_error | timeout | cancelled | denied | auth_required
    started_at: float  # time.time()
    duration_s: float
    upstream_s: float | None
    trace_id: str | None
    invocation_id: str | None = None  # chosen by the caller when it must know it (a task's row)
    span_id: str | None = None  # the span id of the traceparent sent upstream (telemetry's client span)
    upstream_started_at: float | None = None  # time.time() when the upstream call began


@dataclass(frozen=True, slots=True)
class TaskEnded:
    """A task the gateway saw end (a `tasks/get` answered a terminal status): its row is finished."""

    invocation_id: str
    session_id: str  # the record id of the session whose `tools/call` started the task
    outcome: str
    result: Any  # the task's inlined result, its error, or (cancelled) the task itself
    ended_at: float  # time.time()


class Recorder(Protocol):
    async def session_started(self, start: SessionStart) -> None: ...

    async def session_ended(self, end: SessionEnd) -> None: ...

    async def record(self, call: CallRecord) -> None:
        """Return once `call` is durable; raise `gateway.errors.RecordingFailed` if it cannot be."""
        ...

    async def task_ended(self, end: TaskEnded) -> None:
        """Return once the task's row is finished, durably (`RecordingFailed` if it cannot be)."""
        ...


class NullRecorder:
    async def session_started(self, start: SessionStart) -> None:
        return None

    async def session_ended(self, end: SessionEnd) -> None:
        return None

    async def record(self, call: CallRecord) -> None:
        return None

    async def task_ended(self, end: TaskEnded) -> None:
        return None


def outcome_of(response: JSONObject) -> str:
    result: Any = response.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return "tool_error"
    if isinstance(result, dict) and result.get("resultType") == "task":
        return TASK_PENDING  # until the gateway sees the task end
    return "ok" if "result" in response else "upstream_error"


def task_outcome(task: JSONObject) -> str | None:
    """The outcome of a task as `tasks/get` answers it; None while it has not ended."""
    status = task.get("status")
    if status == "completed":
        result = task.get("result")
        return "tool_error" if isinstance(result, dict) and result.get("isError") is True else "ok"
    return {"failed": "upstream_error", "cancelled": "cancelled"}.get(str(status))
