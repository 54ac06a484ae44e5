"""The gateway's Prometheus metrics: one `CollectorRegistry` per app, never the process's global one
(tests run many gateways in one process, and two apps must not count into each other).

Per call (fed by the recorder, `gateway/recording/observed.py`): calls by upstream, tool, method
and outcome, and two latency histograms, the gateway's own time and the upstream's. Label values
are bounded: outcomes come from a fixed set, and each upstream keeps at most `MAX_TOOLS_PER_UPSTREAM`
tool names (a host can send any name it likes), the rest counted as `other`.

What is held open (host sessions, upstream sessions, children, the recorder's queue) is read when
Prometheus scrapes, not counted on the hot path: `watch` hands in functions that report it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "MAX_TOOLS_PER_UPSTREAM",
    "OUTCOMES",
    "GatewayMetrics",
    "HeldOpen",
]

# A `_created` series beside every counter and histogram doubles what a scrape carries and says
# only when the gateway started; prometheus-client's switch for it is process-wide.
disable_created_metrics()  # type: ignore[no-untyped-call]

MAX_TOOLS_PER_UPSTREAM = 100
OUTCOMES = frozenset(
    {"ok", "tool_error", "upstream_error", "timeout", "cancelled", "denied", "auth_required", "task_pending"}
)
NO_UPSTREAM = "none"  # the call never reached one (an unknown tool, a refusal)
OTHER = "other"

# The gateway's own time is a fraction of a millisecond; an upstream's, anything up to its timeout.
_GATEWAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


UPSTREAM_STATES = ("unknown", "starting", "up", "down")  # upstream/health.py's State


@dataclass(frozen=True, slots=True)
class HeldOpen:
    """What the gateway holds at one moment, as `watch`'s reporter sees it."""

    host_sessions: Mapping[str, int]  # by kind: session (handshake era) | group (2026-07-28)
    upstream_sessions: Mapping[str, int]  # by upstream
    children: Mapping[str, int]  # stdio processes, by upstream
    recorder_queue: int
    upstream_states: Mapping[str, str] = field(default_factory=dict)  # unknown | starting | up | down
    replicas: int = 1  # live replicas on the database, this one included, as of its last check


@dataclass(slots=True)
class _Tools:
    """The tool label values one upstream may use: the first MAX_TOOLS_PER_UPSTREAM seen."""

    names: set[str] = field(default_factory=set)

    def label(self, name: str) -> str:
        if name in self.names:
            return name
        if len(self.names) < MAX_TOOLS_PER_UPSTREAM:
            self.names.add(name)
            return name
        return OTHER


class GatewayMetrics:
    def __init__(self, upstreams: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self._calls = Counter(
            "mcpgw_calls",
            "Recorded requests (tools/call, prompts/get, resources/read) by upstream, tool, method, outcome.",
            ("upstream", "tool", "method", "outcome"),
            registry=self.registry,
        )
        self._gateway_s = Histogram(
            "mcpgw_call_gateway_seconds",
            "The gateway's own time per call: the call's total less the time spent waiting on the upstream.",
            ("upstream", "method"),
            buckets=_GATEWAY_BUCKETS,
            registry=self.registry,
        )
        self._upstream_s = Histogram(
            "mcpgw_call_upstream_seconds",
            "Time per call spent waiting on the upstream (calls that reached one).",
            ("upstream", "method"),
            buckets=_UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        self._commit_s = Histogram(
            "mcpgw_recorder_commit_seconds",
            "Time to commit one batch of recorded rows (a group commit).",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )
        self._refreshes = Counter(
            "mcpgw_credential_refreshes",
            "OAuth token refreshes for upstream credentials by result: ok, refused (needs reauth), failed.",
            ("upstream", "result"),
            registry=self.registry,
        )
        self._maintenance = Counter(
            "mcpgw_maintenance_rounds",
            "Rounds of work done once across replicas (retention, sign-in and credential upkeep) that"
            " this replica ran, holding the task's lease, by task.",
            ("task",),
            registry=self.registry,
        )
        self._upstreams = frozenset(upstreams)
        self._tools: dict[str, _Tools] = {}
        # The label children, looked up once per label set: `labels()` costs more than `inc()`.
        self._call_children: dict[tuple[str, str, str, str], Callable[[float], None]] = {}
        self._latency_children: dict[tuple[str, str], tuple[Histogram, Histogram]] = {}

    def call(
        self,
        upstream: str | None,
        tool: str,
        method: str,
        outcome: str,
        total_s: float,
        upstream_s: float | None,
    ) -> None:
        """Count one recorded call and its two latencies."""
        up = upstream if upstream is not None and upstream in self._upstreams else NO_UPSTREAM
        tools = self._tools.get(up)
        if tools is None:
            tools = self._tools[up] = _Tools()
        key = (up, tools.label(tool), method, outcome if outcome in OUTCOMES else OTHER)
        inc = self._call_children.get(key)
        if inc is None:
            inc = self._call_children[key] = self._calls.labels(*key).inc
        inc(1)
        pair = self._latency_children.get((up, method))
        if pair is None:
            pair = self._latency_children[(up, method)] = (
                self._gateway_s.labels(up, method),
                self._upstream_s.labels(up, method),
            )
        gateway, waited = pair
        gateway.observe(max(0.0, total_s - (upstream_s or 0.0)))
        if upstream_s is not None:
            waited.observe(upstream_s)

    def commit(self, seconds: float) -> None:
        self._commit_s.observe(seconds)

    def refresh(self, upstream: str, result: str) -> None:
        """One OAuth refresh for `upstream`: ok | refused | failed."""
        self._refreshes.labels(upstream, result).inc()

    def maintenance(self, task: str) -> None:
        """One round of `task` (a lease's name) ran here."""
        self._maintenance.labels(task).inc()

    def watch(self, report: Callable[[], HeldOpen]) -> None:
        """Report what the gateway holds open, read at each scrape."""
        self.registry.register(_HeldOpenCollector(report, self._upstreams))

    def watch_telemetry(self, dropped: Callable[[], int]) -> None:
        """Count the spans OTLP export dropped (telemetry/otlp.py), read at each scrape."""
        self.registry.register(_DroppedCollector(dropped))

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class _DroppedCollector(Collector):
    def __init__(self, dropped: Callable[[], int]) -> None:
        self._dropped = dropped

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "mcpgw_telemetry_dropped",
            "Spans that could not be sent to the OTLP collector (its queue full, or the export failed).",
            value=self._dropped(),
        )


class _HeldOpenCollector(Collector):
    def __init__(self, report: Callable[[], HeldOpen], upstreams: frozenset[str]) -> None:
        self._report = report
        self._upstreams = sorted(upstreams)

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        held = self._report()
        sessions = GaugeMetricFamily(
            "mcpgw_host_sessions",
            "Open host sessions (kind: session, or group for 2026-07-28).",
            labels=["kind"],
        )
        for kind in ("session", "group"):
            sessions.add_metric([kind], held.host_sessions.get(kind, 0))
        yield sessions
        upstream_sessions = GaugeMetricFamily(
            "mcpgw_upstream_sessions", "Open upstream sessions, by upstream.", labels=["upstream"]
        )
        children = GaugeMetricFamily(
            "mcpgw_upstream_children", "Running stdio child processes, by upstream.", labels=["upstream"]
        )
        for name in self._upstreams:
            upstream_sessions.add_metric([name], held.upstream_sessions.get(name, 0))
            children.add_metric([name], held.children.get(name, 0))
        yield upstream_sessions
        yield children
        # One series per state, 1 for the one it is in (the usual shape of an enum in Prometheus:
        # `mcpgw_upstream_state{state="down"} == 1` alerts, and no state is ever missing).
        states = GaugeMetricFamily(
            "mcpgw_upstream_state",
            "Each upstream's state as /readyz reports it: 1 for the state it is in, else 0.",
            labels=["upstream", "state"],
        )
        for name in self._upstreams:
            current = held.upstream_states.get(name, "unknown")
            for state in UPSTREAM_STATES:
                states.add_metric([name, state], 1.0 if state == current else 0.0)
        yield states
        yield GaugeMetricFamily(
            "mcpgw_replicas_live",
            "Replicas sharing this one's database whose heartbeat it saw at its last check (every"
            " 5 s), itself included; 1 for a gateway alone.",
            value=held.replicas,
        )
        yield GaugeMetricFamily(
            "mcpgw_recorder_queue_depth",
            "Rows waiting for the recorder's next commit.",
            value=held.recorder_queue,
        )
