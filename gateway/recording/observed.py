"""`ObservedRecorder`: the recorder as operators see it. It wraps the recorder the gateway uses
(the store's, or `NullRecorder` with recording off) and, for every call that recorder is handed,
counts it in the metrics, adds it to the upstreams' last hour and writes its log line; with
telemetry on, it hands the record to the request's spans (`telemetry/tracing.py`).

It sits here because the recorder already sees every recorded call's outcome, timings and trace
id, once, after the call has ended; it learns from the sessions it is told of which
`Mcp-Session-Id` and API key a call's session has, and forgets them when the session ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.recording.recorder import CallRecord, Recorder, TaskEnded
from gateway.telemetry.logs import CALLS, log_call
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import Tracing
from gateway.telemetry.window import UpstreamWindow
from store import SessionEnd, SessionStart

__all__ = ["ObservedRecorder"]


@dataclass(frozen=True, slots=True)
class _Who:
    mcp_session_id: str
    api_key_id: str | None


class ObservedRecorder:
    def __init__(
        self,
        inner: Recorder,
        metrics: GatewayMetrics,
        window: UpstreamWindow,
        log_calls: bool,
        tracing: Tracing | None = None,
    ) -> None:
        self.inner = inner
        self._tracing = tracing
        self._metrics = metrics
        self._window = window
        self._log_calls = log_calls
        self._who: dict[str, _Who] = {}  # by the session's record id; only sessions open now

    async def session_started(self, start: SessionStart) -> None:
        await self.inner.session_started(start)
        self._who[start.id] = _Who(start.mcp_session_id, start.api_key_id)

    async def session_ended(self, end: SessionEnd) -> None:
        self._who.pop(end.id, None)
        await self.inner.session_ended(end)

    async def record(self, call: CallRecord) -> None:
        try:
            await self.inner.record(call)
        finally:
            self._observe(call)

    async def task_ended(self, end: TaskEnded) -> None:
        # Counted once already, as the call that started it (outcome task_pending); its end is
        # the record's business.
        await self.inner.task_ended(end)
        if self._tracing is not None:
            self._tracing.task_ended(end)

    def _observe(self, call: CallRecord) -> None:
        if self._tracing is not None:
            self._tracing.called(call)
        name = _shown(call.method, call.name)
        self._metrics.call(call.upstream, name, call.method, call.outcome, call.duration_s, call.upstream_s)
        if call.upstream is not None:
            self._window.add(call.upstream, call.outcome == "ok", call.duration_s)
        if self._log_calls and CALLS.isEnabledFor(logging.INFO):
            who = self._who.get(call.session_id)
            log_call(
                {
                    "session": who.mcp_session_id if who else None,
                    "key": who.api_key_id if who else None,
                    "method": call.method,
                    "tool": name,
                    "upstream": call.upstream,
                    "outcome": call.outcome,
                    "ms": round(call.duration_s * 1000, 1),
                    "upstream_ms": None if call.upstream_s is None else round(call.upstream_s * 1000, 1),
                    "trace": call.trace_id,
                }
            )


def _shown(method: str, name: str) -> str:
    """The name as metrics and the log show it: a resource URI without its query or fragment,
    where a token could be."""
    if method.startswith("resources/"):
        return name.split("?", 1)[0].split("#", 1)[0]
    return name
