"""The seam where every forwarded request is recorded.

`Proxy` builds one `CallRecord` per host request it forwards (and per request it refuses) and
hands it to the recorder *before* the response leaves the gateway, so a durable recorder can
make "durable before acknowledged" true. The default records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.jsonrpc import JSONObject, RequestId


@dataclass(frozen=True, slots=True)
class CallRecord:
    session_id: str
    organisation_id: str
    api_key_id: str | None
    method: str
    name: str | None  # the tool/prompt name or resource URI as the host saw it
    upstream: str | None
    upstream_name: str | None
    request_id: RequestId | None
    params: JSONObject
    response: JSONObject
    outcome: str  # ok | tool_error | upstream_error | timeout | cancelled | denied | auth_required
    started_at: float  # time.time()
    duration_s: float
    upstream_s: float | None


class Recorder(Protocol):
    async def record(self, call: CallRecord) -> None: ...


class NullRecorder:
    async def record(self, call: CallRecord) -> None:
        return None


def outcome_of(response: JSONObject) -> str:
    result: Any = response.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return "tool_error"
    return "ok" if "result" in response else "upstream_error"
