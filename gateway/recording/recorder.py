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
from store import SessionEnd, SessionStart

__all__ = ["CallRecord", "NullRecorder", "Recorder", "outcome_of"]


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


class Recorder(Protocol):
    async def session_started(self, start: SessionStart) -> None: ...

    async def session_ended(self, end: SessionEnd) -> None: ...

    async def record(self, call: CallRecord) -> None:
        """Return once `call` is durable; raise `gateway.errors.RecordingFailed` if it cannot be."""
        ...


class NullRecorder:
    async def session_started(self, start: SessionStart) -> None:
        return None

    async def session_ended(self, end: SessionEnd) -> None:
        return None

    async def record(self, call: CallRecord) -> None:
        return None


def outcome_of(response: JSONObject) -> str:
    result: Any = response.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return "tool_error"
    return "ok" if "result" in response else "upstream_error"
