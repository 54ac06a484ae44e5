"""mcpgw benchmark: the gateway against the demo upstream called directly, side by side.

    python bench/run.py [--seconds 10] [--recording both|on|off] [--out bench/results/latest.json]
    python bench/run.py --profile            # where the gateway's CPU goes (16 clients)

Starts the demo upstream (``bench/upstream.py``, i.e. ``gateway.demo`` over Streamable HTTP)
and the gateway (``python -m gateway.cli serve`` = ``mcpgw serve``, with a generated config in
a temporary directory), both on 127.0.0.1; with ``--recording both`` (the default) two
gateways, one recording every call and one with ``recording: {enabled: false}``, each on its
own database. Then, for every protocol mode (``legacy``, ``2026-07-28``) and client count
(1, 16), it runs the load generator (``bench/loadgen.py``, a separate process with N SDK
``Client`` sessions each calling ``echo`` back to back) against DIRECT (the demo's URL, tool
``echo``), GATEWAY (recording on) and GW-NOREC (recording off) (the gateways' URLs, tool
``demo__echo``), interleaved, ``--reps`` times each, and reports the median of each metric
over the repetitions: calls/s, p50/p99 latency, CPU per call of the gateway and of the
upstream (from /proc/<pid>/stat over the measured window), and the load generator's own
CPU use (near 100 % means the clients, not the servers, were the limit). It prints a table
with the gateway/direct and recording on/off ratios, writes everything as JSON to ``--out``
and checks the targets (docs/design.md, Performance).

Everything is bounded (warm-up + window per run, deadlines on start-up and on each load
generator) and every child process is stopped on exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from contextlib import closing, suppress
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _profile
from _procs import (
    Processes,
    StartupError,
    child_pid,
    free_port,
    git_describe,
    log_tail,
    stop,
    wait_for_http,
    wait_for_line,
)

BENCH = Path(__file__).resolve().parent
STARTUP_TIMEOUT_S = 60.0
LOADGEN_SLACK_S = 150.0  # connect + teardown allowance on top of warm-up + window
TIME_WAIT_S = 60.0  # Linux TCP_TIMEWAIT_LEN
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = ("legacy", "2026-07-28")
CLIENTS = (1, 16)
# Endpoint kinds: the upstream called directly, the gateway with recording on / off, and (with
# --relay) a byte-copying relay in front of the upstream: what any proxy costs on this machine.
# With --baseline, a recording gateway run from another source tree (a checkout of main, say):
# the same measurement before and after a change, in one interleaved run.
DIRECT, RECORDING, NOT_RECORDING, RELAY = "direct", "gateway", "gw-norec", "relay"
TRACED = "gw-traced"  # --tracing: recording on, and spans and metrics exported over OTLP
BASELINE = "gw-base"
# `--recording pg`: the recording gateway on SQLite and one recording on PostgreSQL (a throwaway
# server, tests/postgres.py), interleaved: what the PostgreSQL store costs per call.
ON_POSTGRES = "gw-pg"
GATEWAYS = {
    "on": (RECORDING,),
    "off": (NOT_RECORDING,),
    "both": (RECORDING, NOT_RECORDING),
    "pg": (RECORDING, ON_POSTGRES),
}
# The server's databases, once started (with --recording pg): gw-pg's, and gw-base's (with
# --baseline, the baseline gateway records on PostgreSQL too, so the two compare like for like).
_POSTGRES_URL: list[str] = []

# docs/design.md, Performance.
TARGET_THROUGHPUT_RATIO = 0.8  # gateway/direct calls/s, at 16 clients
TARGET_ADDED_P50_MS = 1.0  # gateway p50 - direct p50, at 1 client
TARGET_GATEWAY_CPU_MS = 0.6  # gateway CPU per tools/call
TARGET_RECORDING_RATIO = 0.9  # recording on/off calls/s: recording costs under 10 %
TARGET_TRACING_CPU_MS = 0.05  # gateway CPU per call, tracing on (always_on) less tracing off (issue 21)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Endpoint:
    """Where the load generator sends its calls, and which processes' CPU it reads."""

    kind: str  # direct | gateway (recording on) | gw-norec (recording off) | relay
    url: str
    tool: str
    watch: dict[str, int]  # label -> pid
    upstream_port: int  # connections to it are counted (churn)


@dataclass(frozen=True)
class Run:
    """One load-generator run, reduced to numbers."""

    mode: str
    clients: int
    kind: str
    rep: int
    calls: int
    failed: int
    window_s: float
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    gateway_cpu_ms_per_call: float | None
    upstream_cpu_ms_per_call: float | None
    loadgen_cpu_util: float  # CPU seconds / wall seconds of the load generator process
    upstream_closes_per_call: float  # TCP connections to the upstream that ended, per call (churn)
    first_failure: str | None


@dataclass(frozen=True)
class Summary:
    """Medians over the repetitions of one (mode, clients, kind)."""

    mode: str
    clients: int
    kind: str
    reps: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    gateway_cpu_ms_per_call: float | None
    upstream_cpu_ms_per_call: float | None
    loadgen_cpu_util: float
    upstream_closes_per_call: float
    failed: int


@dataclass(frozen=True)
class Comparison:
    mode: str
    clients: int
    kind: str  # gateway | gw-norec
    baseline: str  # direct, or gw-norec for the cost of recording
    throughput_ratio: float  # kind calls/s / baseline calls/s
    added_p50_ms: float  # kind p50 - baseline p50
    added_p99_ms: float
    cpu_ratio: float | None = None  # kind's middle-process CPU per call / baseline's (not direct)


@dataclass(frozen=True)
class Check:
    target: str
    mode: str
    clients: int
    value: float | None
    limit: float
    passed: bool | None  # None: not measured in this invocation
    kind: str = RECORDING  # which gateway the check is about


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each window (default 2)")
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions of each direct/gateway group (default 3)"
    )
    parser.add_argument(
        "--recording",
        choices=tuple(GATEWAYS),
        default="both",
        help="gateway(s) with recording on, off, or both side by side (default both)",
    )
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="client counts (default 1,16)")
    parser.add_argument("--modes", default=",".join(MODES), help="protocol modes (default legacy,2026-07-28)")
    parser.add_argument(
        "--out", type=Path, help="JSON output (default bench/results/latest.json or profile.json)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the gateway at the largest client count"
    )
    parser.add_argument("--profiler", choices=("auto", "py-spy", "cprofile"), default="auto")
    parser.add_argument("--top", type=int, default=25, help="functions listed per profile table (default 25)")
    parser.add_argument("--stock-demo", action="store_true", help="run `python -m gateway.demo` unmodified")
    parser.add_argument(
        "--relay", action="store_true", help="also measure a byte-copying relay (bench/relay.py): the ceiling"
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also a recording gateway exporting every span (always_on) to a local OTLP receiver",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also a recording gateway run from the source tree at this path (e.g. a checkout of main)",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "gateway" / "cli").is_dir():
            parser.error(f"--baseline {args.baseline}: no gateway/cli there")
    args.clients = [int(n) for n in args.clients.split(",")]
    args.modes = args.modes.split(",")
    if args.seconds <= 0 or args.warmup < 0 or args.reps < 1 or min(args.clients) < 1:
        parser.error("--seconds > 0, --warmup >= 0, --reps >= 1 and client counts >= 1, please")
    if args.out is None:
        args.out = BENCH / "results" / ("profile.json" if args.profile else "latest.json")
    return args


# --------------------------------------------------------------------------- processes


def start_upstream(procs: Processes, workdir: Path, stock: bool) -> tuple[subprocess.Popen[bytes], str]:
    """Start the demo upstream on an ephemeral port; return it and its /mcp URL once it is READY."""
    if stock:
        argv = [sys.executable, "-m", "gateway.demo", "--http", "--host", "127.0.0.1", "--port", "0"]
    else:
        argv = [sys.executable, str(BENCH / "upstream.py"), "--port", "0"]
    log = workdir / "upstream.log"
    child = procs.spawn(argv, log)
    line = wait_for_line(child, log, "READY ", STARTUP_TIMEOUT_S)
    return child, line.split()[1]


def start_sink(procs: Processes, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start bench/otlp_sink.py; return it and its base URL once it is READY."""
    log = workdir / "otlp-sink.log"
    child = procs.spawn([sys.executable, str(BENCH / "otlp_sink.py")], log)
    line = wait_for_line(child, log, "READY ", STARTUP_TIMEOUT_S)
    return child, line.split()[1]


def start_relay(procs: Processes, workdir: Path, upstream_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start bench/relay.py in front of the upstream; return it and its /mcp URL once it is READY."""
    log = workdir / "relay.log"
    child = procs.spawn([sys.executable, str(BENCH / "relay.py"), "--upstream", upstream_url], log)
    line = wait_for_line(child, log, "READY ", STARTUP_TIMEOUT_S)
    return child, line.split()[1]


def port_of(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None, url
    return port


def write_config(workdir: Path, kind: str, upstream_url: str, port: int, otlp_url: str | None = None) -> Path:
    """`<kind>.yaml`, with its own database `<kind>.db`; recording off for the gw-norec kind,
    telemetry to `otlp_url` (every span sampled) for the gw-traced one."""
    config = workdir / f"{kind}.yaml"
    telemetry = f"telemetry: {{endpoint: {otlp_url}, sampler: always_on}}\n" if kind == TRACED else ""
    config.write_text(
        telemetry
        + f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        + (
            f"database: {_POSTGRES_URL[kind == BASELINE]}\nsecrets: {{key: {'A' * 43}}}\n"
            if kind == ON_POSTGRES or (kind == BASELINE and _POSTGRES_URL)
            else f"database: ./{kind}.db\n"
        )
        + "auth: {required: false}\n"
        f"recording: {{enabled: {str(kind != NOT_RECORDING).lower()}}}\n"
        "upstreams:\n"
        "  - name: demo\n"
        "    transport: http\n"
        f"    url: {upstream_url}\n"
    )
    return config


@dataclass(frozen=True)
class GatewayProcess:
    kind: str  # gateway (recording on) | gw-norec (recording off)
    child: subprocess.Popen[bytes]  # the gateway, or the profiler running it
    pid: int  # the gateway's own pid (for /proc CPU)
    url: str
    log: Path
    database: Path


def start_gateway(
    procs: Processes,
    workdir: Path,
    upstream_url: str,
    kind: str = RECORDING,
    profiler: str | None = None,
    profile_out: Path | None = None,
    otlp_url: str | None = None,
    source: Path | None = None,
) -> GatewayProcess:
    """Start `mcpgw serve` (optionally under a profiler, or from the source tree `source`) and
    wait until its /healthz answers."""
    port = free_port()
    config = write_config(workdir, kind, upstream_url, port, otlp_url)
    module_argv = ["gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    if profiler is None:
        argv = [sys.executable, "-m", *module_argv]
    else:
        assert profile_out is not None
        argv = _profile.wrap(profiler, module_argv, profile_out)
    log = workdir / f"gateway-{port}.log"
    if source is None:
        child = procs.spawn(argv, log)
    else:  # `python -m` puts its working directory first on the path, before PYTHONPATH
        child = procs.spawn(argv, log, env={"PYTHONPATH": str(source)}, cwd=source)
    pid = child_pid(child.pid, STARTUP_TIMEOUT_S) if profiler == "py-spy" else child.pid
    base = f"http://127.0.0.1:{port}"
    wait_for_http(child, f"{base}/healthz", log, STARTUP_TIMEOUT_S)
    return GatewayProcess(kind, child, pid, f"{base}/mcp", log, workdir / f"{kind}.db")


def stop_profiled_gateway(gateway: GatewayProcess) -> None:
    """SIGINT the gateway itself so it shuts down cleanly and the profiler writes its output.

    Not SIGTERM: uvicorn re-raises the signal it stopped for, and a default SIGTERM kills
    the process before cProfile writes; SIGINT becomes KeyboardInterrupt, which lets it.
    """
    try:
        os.kill(gateway.pid, signal.SIGINT)
        gateway.child.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    stop(gateway.child)


def ensure_alive(child: subprocess.Popen[bytes], name: str, log: Path) -> None:
    if child.poll() is not None:
        raise StartupError(f"the {name} exited (code {child.returncode}):\n{log_tail(log)}")


# --------------------------------------------------------------------------- one run


def run_load(
    procs: Processes,
    workdir: Path,
    endpoint: Endpoint,
    mode: str,
    clients: int,
    args: argparse.Namespace,
    rep: int,
) -> Run:
    """One load-generator process against `endpoint`; its numbers as a `Run`."""
    stem = f"{mode}-{clients}-{endpoint.kind}-{rep}"
    result_file, log = workdir / f"{stem}.json", workdir / f"{stem}.log"
    argv = [
        sys.executable, str(BENCH / "loadgen.py"), "--url", endpoint.url, "--tool", endpoint.tool,
        "--mode", mode, "--clients", str(clients), "--result", str(result_file),
        "--warmup", str(args.warmup), "--seconds", str(args.seconds),
        *(f"--cpu-pid={label}={pid}" for label, pid in endpoint.watch.items()),
    ]  # fmt: skip
    started = time.monotonic()
    child = procs.spawn(argv, log)
    with suppress(subprocess.TimeoutExpired):
        child.wait(timeout=args.warmup + args.seconds + LOADGEN_SLACK_S)
    stop(child)
    if not result_file.exists():
        raise RuntimeError(f"load generator {stem} failed (code {child.returncode}):\n{log_tail(log)}")
    if child.returncode != 0:
        print(
            f"  note: load generator {stem} exited {child.returncode} after writing its result",
            file=sys.stderr,
        )
    closed = closed_connections(endpoint.upstream_port, time.monotonic() - started)
    return to_run(json.loads(result_file.read_text()), mode, clients, endpoint.kind, rep, closed)


def closed_connections(port: int, within_s: float) -> int:
    """TCP connections to or from `port` that entered TIME_WAIT in the last `within_s` seconds.

    Whichever side closes a connection first keeps it in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN);
    /proc/net/tcp shows the time left, so the young ones are the connections closed by this run.
    Counting them shows connection churn: a client that reuses its connections closes none.
    """
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, timer = fields[1], fields[2], fields[3], fields[5]
        if state != "06" or port not in (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)):
            continue
        left_s = int(timer.split(":")[1], 16) / CLK_TCK
        count += left_s > TIME_WAIT_S - within_s
    return count


def to_run(raw: dict[str, Any], mode: str, clients: int, kind: str, rep: int, closed: int) -> Run:
    latencies = sorted(raw["latencies_ms"])
    calls, window = raw["calls"], raw["window_s"]
    cpu = raw["cpu_s"]

    def per_call(label: str) -> float | None:
        return cpu[label] * 1000 / calls if label in cpu and calls else None

    return Run(
        mode=mode,
        clients=clients,
        kind=kind,
        rep=rep,
        calls=calls,
        failed=raw["failed_in_window"],
        window_s=window,
        calls_per_s=calls / window,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        mean_ms=statistics.fmean(latencies) if latencies else float("nan"),
        gateway_cpu_ms_per_call=per_call("gateway"),
        upstream_cpu_ms_per_call=per_call("upstream"),
        loadgen_cpu_util=raw["loadgen_cpu_s"] / window,
        upstream_closes_per_call=closed / max(1, raw["calls_total"]),
        first_failure=raw["first_failure"],
    )


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --------------------------------------------------------------------------- the matrix


def run_matrix(
    procs: Processes,
    workdir: Path,
    args: argparse.Namespace,
    upstream: subprocess.Popen[bytes],
    upstream_url: str,
) -> tuple[list[Run], dict[str, Any]]:
    """All modes x client counts x reps, direct and the gateway(s) interleaved: forward order in
    even reps, reversed in odd ones (ABBA with two endpoints, ABC CBA with three)."""
    gateways = [start_gateway(procs, workdir, upstream_url, kind) for kind in GATEWAYS[args.recording]]
    if args.tracing:
        _sink, sink_url = start_sink(procs, workdir)
        gateways.append(start_gateway(procs, workdir, upstream_url, TRACED, otlp_url=sink_url))
    if args.baseline is not None:
        gateways.append(start_gateway(procs, workdir, upstream_url, BASELINE, source=args.baseline))
    port = port_of(upstream_url)
    endpoints = [Endpoint(DIRECT, upstream_url, "echo", {"upstream": upstream.pid}, port)]
    if args.relay:  # its CPU shows in the gateway column: it is the process in the middle
        relay, relay_url = start_relay(procs, workdir, upstream_url)
        endpoints.append(
            Endpoint(RELAY, relay_url, "echo", {"gateway": relay.pid, "upstream": upstream.pid}, port)
        )
    for gateway in gateways:
        watch = {"gateway": gateway.pid, "upstream": upstream.pid}
        endpoints.append(Endpoint(gateway.kind, gateway.url, "demo__echo", watch, port))
    runs: list[Run] = []
    total = len(args.modes) * len(args.clients) * args.reps * len(endpoints)
    for mode in args.modes:
        for clients in args.clients:
            for rep in range(args.reps):
                for endpoint in endpoints if rep % 2 == 0 else endpoints[::-1]:
                    run = run_load(procs, workdir, endpoint, mode, clients, args, rep)
                    runs.append(run)
                    print(f"[{len(runs):2}/{total}] {progress_line(run)}", file=sys.stderr, flush=True)
                    for gateway in gateways:
                        ensure_alive(gateway.child, gateway.kind, gateway.log)
                    ensure_alive(upstream, "upstream", workdir / "upstream.log")
    return runs, {g.kind: recording_state(g.database, g.kind != NOT_RECORDING) for g in gateways}


def progress_line(run: Run) -> str:
    cpu = f" gw {run.gateway_cpu_ms_per_call:.3f} ms/call" if run.gateway_cpu_ms_per_call is not None else ""
    failed = f" FAILED {run.failed}: {run.first_failure}" if run.failed or run.first_failure else ""
    return (
        f"{run.mode:10} N={run.clients:<3} {run.kind:8} rep {run.rep}: {run.calls_per_s:8.1f} calls/s "
        f"p50 {run.p50_ms:6.2f} p99 {run.p99_ms:6.2f} ms{cpu}{failed}"
    )


def recording_state(database: Path, enabled: bool) -> dict[str, Any]:
    """Whether the gateway recorded the calls: the rows of its `invocations` and `sessions` tables.

    `as_configured` is False when a gateway configured to record has no invocation rows, or
    one configured not to record has some.
    """
    state: dict[str, Any] = {"enabled": enabled}
    if not database.exists() and _POSTGRES_URL:
        return {**state, "as_configured": None, "detail": "on PostgreSQL (not read here)"}
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as conn:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table in ("invocations", "sessions"):
                if table in names:
                    state[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error as exc:
        return {**state, "as_configured": None, "detail": f"could not read {database.name}: {exc}"}
    if "invocations" not in state:
        return {**state, "as_configured": False, "detail": f"no invocations table in {database.name}"}
    return {**state, "as_configured": (state["invocations"] > 0) == enabled}


# --------------------------------------------------------------------------- reduction


def summarise(runs: list[Run]) -> list[Summary]:
    groups: dict[tuple[str, int, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.mode, run.clients, run.kind), []).append(run)
    return [
        Summary(
            mode=mode,
            clients=clients,
            kind=kind,
            reps=len(group),
            calls_per_s=statistics.median(r.calls_per_s for r in group),
            p50_ms=statistics.median(r.p50_ms for r in group),
            p99_ms=statistics.median(r.p99_ms for r in group),
            gateway_cpu_ms_per_call=median_or_none(r.gateway_cpu_ms_per_call for r in group),
            upstream_cpu_ms_per_call=median_or_none(r.upstream_cpu_ms_per_call for r in group),
            loadgen_cpu_util=statistics.median(r.loadgen_cpu_util for r in group),
            upstream_closes_per_call=statistics.median(r.upstream_closes_per_call for r in group),
            failed=sum(r.failed for r in group),
        )
        for (mode, clients, kind), group in groups.items()
    ]


def median_or_none(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# (kind, baseline): the relay and each gateway against direct, and recording on against off.
# With --tracing: the traced gateway against direct, and against the same gateway untraced.
PAIRS = (
    (RELAY, DIRECT),
    (BASELINE, DIRECT),
    (NOT_RECORDING, DIRECT),
    (RECORDING, DIRECT),
    (RECORDING, NOT_RECORDING),
    (RECORDING, RELAY),
    (RECORDING, BASELINE),
    (ON_POSTGRES, BASELINE),
    (TRACED, DIRECT),
    (TRACED, RECORDING),
    (ON_POSTGRES, DIRECT),
    (ON_POSTGRES, RECORDING),
)


def compare(summaries: list[Summary]) -> list[Comparison]:
    by_key = {(s.mode, s.clients, s.kind): s for s in summaries}
    comparisons = []
    for mode, clients in sorted({(s.mode, s.clients) for s in summaries}):
        for kind, baseline in PAIRS:
            measured, base = by_key.get((mode, clients, kind)), by_key.get((mode, clients, baseline))
            if measured is None or base is None:
                continue
            comparisons.append(
                Comparison(
                    mode=mode,
                    clients=clients,
                    kind=kind,
                    baseline=baseline,
                    throughput_ratio=measured.calls_per_s / base.calls_per_s,
                    added_p50_ms=measured.p50_ms - base.p50_ms,
                    added_p99_ms=measured.p99_ms - base.p99_ms,
                    cpu_ratio=_ratio(measured.gateway_cpu_ms_per_call, base.gateway_cpu_ms_per_call),
                )
            )
    return comparisons


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def check_targets(
    summaries: list[Summary], comparisons: list[Comparison], modes: list[str], clients: list[int]
) -> list[Check]:
    """The section 8 targets, for the gateway with recording on; the CPU one for every gateway."""
    by_key = {(c.mode, c.clients, c.kind, c.baseline): c for c in comparisons}
    checks = []
    for mode in modes:
        at16, at1 = by_key.get((mode, 16, RECORDING, DIRECT)), by_key.get((mode, 1, RECORDING, DIRECT))
        ratio = at16.throughput_ratio if at16 else None
        added = at1.added_p50_ms if at1 else None
        limit = TARGET_THROUGHPUT_RATIO
        checks.append(Check("throughput ratio >= 0.8", mode, 16, ratio, limit, _at_least(ratio, limit)))
        limit = TARGET_ADDED_P50_MS
        checks.append(Check("added p50 <= 1 ms", mode, 1, added, limit, _at_most(added, limit)))
        for n in clients:
            cost = by_key.get((mode, n, RECORDING, NOT_RECORDING))
            ratio = cost.throughput_ratio if cost else None
            limit = TARGET_RECORDING_RATIO
            checks.append(Check("recording on/off >= 0.9", mode, n, ratio, limit, _at_least(ratio, limit)))
    by_kind = {(s.mode, s.clients, s.kind): s for s in summaries}
    for (mode, n, kind), traced in sorted(by_kind.items()):
        untraced = by_kind.get((mode, n, RECORDING))
        if kind != TRACED or untraced is None:
            continue
        on, off = traced.gateway_cpu_ms_per_call, untraced.gateway_cpu_ms_per_call
        added = None if on is None or off is None else on - off
        limit = TARGET_TRACING_CPU_MS
        target = "tracing CPU added <= 0.05 ms"
        checks.append(Check(target, mode, n, added, limit, _at_most(added, limit), TRACED))
    for s in summaries:
        if s.kind in (RECORDING, NOT_RECORDING, TRACED):
            cpu = s.gateway_cpu_ms_per_call
            limit = TARGET_GATEWAY_CPU_MS
            target = "gateway CPU <= 0.6 ms/call"
            checks.append(Check(target, s.mode, s.clients, cpu, limit, _at_most(cpu, limit), s.kind))
    return checks


def _at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


# --------------------------------------------------------------------------- output


def format_table(summaries: list[Summary], comparisons: list[Comparison]) -> str:
    rows = [
        f"{'mode':10} {'N':>3} {'target':8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'gw cpu ms/call':>14} {'up cpu ms/call':>14} {'loadgen cpu':>11} {'up conns/call':>13} "
        f"{'failed':>6}"
    ]
    ratios: dict[tuple[str, int, str], list[Comparison]] = {}
    for c in comparisons:
        ratios.setdefault((c.mode, c.clients, c.kind), []).append(c)
    order = {DIRECT: 0, RELAY: 1, BASELINE: 2, NOT_RECORDING: 3, RECORDING: 4, TRACED: 5, ON_POSTGRES: 6}
    for s in sorted(summaries, key=lambda s: (s.mode, s.clients, order[s.kind])):
        gw = f"{s.gateway_cpu_ms_per_call:.3f}" if s.gateway_cpu_ms_per_call is not None else "-"
        up = f"{s.upstream_cpu_ms_per_call:.3f}" if s.upstream_cpu_ms_per_call is not None else "-"
        rows.append(
            f"{s.mode:10} {s.clients:>3} {s.kind:8} {s.calls_per_s:9.1f} {s.p50_ms:8.2f} {s.p99_ms:8.2f} "
            f"{gw:>14} {up:>14} {s.loadgen_cpu_util * 100:10.0f}% "
            f"{s.upstream_closes_per_call:13.2f} {s.failed:>6}"
        )
        for c in ratios.get((s.mode, s.clients, s.kind), []):
            what = _ON_OFF.get((c.kind, c.baseline), f"{c.kind}/{c.baseline}")
            cpu = "" if c.cpu_ratio is None else f", cpu/call x{c.cpu_ratio:.2f}"
            rows.append(
                f"{'':15}-> {what} throughput {c.throughput_ratio:.2f}, "
                f"added p50 {c.added_p50_ms:+.2f} ms, added p99 {c.added_p99_ms:+.2f} ms{cpu}"
            )
    return "\n".join(rows)


_ON_OFF = {(RECORDING, NOT_RECORDING): "recording on/off", (TRACED, RECORDING): "tracing on/off"}


def format_checks(checks: list[Check]) -> str:
    rows = []
    for c in checks:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[c.passed]
        value = "not measured" if c.value is None else f"{c.value:.3f}"
        rows.append(f"  {verdict}  {c.target:28} {c.kind:8} {c.mode:10} N={c.clients:<3} {value}")
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "mcp_sdk": package_version("mcp"),
        "mcpgw": package_version("mcpgw"),
        "git": git_describe(),
    }


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "seconds": args.seconds,
        "warmup": args.warmup,
        "reps": args.reps,
        "clients": args.clients,
        "modes": args.modes,
        "recording": args.recording,
        "relay": args.relay,
        "tracing": args.tracing,
        "upstream": "python -m gateway.demo (stock)"
        if args.stock_demo
        else "bench/upstream.py (gateway.demo app)",
        "statistic": "median over reps; p50/p99 are nearest-rank per run",
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {path}")


# --------------------------------------------------------------------------- modes of this script


def benchmark(args: argparse.Namespace, procs: Processes, workdir: Path) -> int:
    if args.recording == "pg":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.postgres import PostgresServer

        server = PostgresServer()
        server.start()
        try:
            for _ in range(1 + (args.baseline is not None)):
                _POSTGRES_URL.append(server.url(server.create_database()))
            return _benchmark(args, procs, workdir)
        finally:
            procs.__exit__(None, None, None)  # the gateways go before their database
            server.destroy()
    return _benchmark(args, procs, workdir)


def _benchmark(args: argparse.Namespace, procs: Processes, workdir: Path) -> int:
    started = machine()
    upstream, upstream_url = start_upstream(procs, workdir, args.stock_demo)
    runs, recording = run_matrix(procs, workdir, args, upstream, upstream_url)
    summaries = summarise(runs)
    comparisons = compare(summaries)
    checks = check_targets(summaries, comparisons, args.modes, args.clients)
    print()
    print(format_table(summaries, comparisons))
    print("\nrecording (rows in each gateway's database at the end):")
    for kind, state in recording.items():
        rows = f"{state.get('invocations', '?')} invocations, {state.get('sessions', '?')} sessions"
        note = "" if state["as_configured"] else f"   <-- not as configured {state.get('detail', '')}"
        print(f"  {kind:8} recording {'on ' if state['enabled'] else 'off'}: {rows}{note}")
    print(f"targets (docs/design.md, Performance), nproc={started['nproc']}:")
    print(format_checks(checks))
    write_json(
        args.out,
        {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": started,
            "settings": settings(args),
            "recording": recording,
            "targets": [asdict(c) for c in checks],
            "comparisons": [asdict(c) for c in comparisons],
            "summary": [asdict(s) for s in summaries],
            "runs": [asdict(r) for r in runs],
        },
    )
    return 1 if any(r.failed or r.first_failure for r in runs) else 0


def profile(args: argparse.Namespace, procs: Processes, workdir: Path) -> int:
    """Per mode: a fresh gateway under the profiler, one run at the largest client count, top functions."""
    profiler = _profile.pick_profiler(args.profiler)
    clients = max(args.clients)
    upstream, upstream_url = start_upstream(procs, workdir, args.stock_demo)
    document: dict[str, Any] = {
        "machine": machine(),
        "settings": settings(args),
        "profiler": profiler,
        "modes": {},
    }
    for mode in args.modes:
        output = args.out.parent / f"profile-{mode}.{'raw.txt' if profiler == 'py-spy' else 'prof'}"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.unlink(missing_ok=True)
        kind = NOT_RECORDING if args.recording == "off" else RECORDING
        sink_url = None
        if args.tracing:  # the traced gateway, exporting to a local receiver, is the one profiled
            kind = TRACED
            _sink, sink_url = start_sink(procs, workdir)
        gateway = start_gateway(procs, workdir, upstream_url, kind, profiler, output, otlp_url=sink_url)
        watch = {"gateway": gateway.pid, "upstream": upstream.pid}
        endpoint = Endpoint(kind, gateway.url, "demo__echo", watch, port_of(upstream_url))
        run = run_load(procs, workdir, endpoint, mode, clients, args, rep=0)
        stop_profiled_gateway(gateway)
        print(f"\n=== {mode}, {clients} clients, gateway under {profiler}: {progress_line(run)}")
        if not output.exists():
            raise RuntimeError(f"{profiler} wrote no profile:\n{log_tail(gateway.log)}")
        ranked, samples = _profile.rank(profiler, output)
        unit = "samples" if profiler == "py-spy" else "calls"
        print(f"profile: {output} ({samples} {unit}); ms/call = share x measured gateway CPU/call (inflated)")
        for by in ("self", "total"):
            print(f"\ntop {args.top} by {by}:")
            print(_profile.format_top(ranked, by, args.top, run.gateway_cpu_ms_per_call))
        print("\nself time by package:")
        print(_profile.format_packages(ranked, 15, run.gateway_cpu_ms_per_call))
        document["modes"][mode] = {
            "run": asdict(run),
            "profile_file": str(output),
            "samples": samples,
            "top_self": [asdict(r) for r in _profile.top(ranked, "self", args.top)],
            "top_total": [asdict(r) for r in _profile.top(ranked, "total", args.top)],
            "self_by_package": dict(_profile.by_package(ranked)),
        }
    write_json(args.out, document)
    return 0


def _raise_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job may have it ignored
        signal.signal(signum, _raise_interrupt)
    with tempfile.TemporaryDirectory(prefix="mcpgw-bench-") as tmp, Processes() as procs:
        try:
            return (profile if args.profile else benchmark)(args, procs, Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted; stopping child processes", file=sys.stderr)
            return 130
        except StartupError as exc:
            print(f"\nbench: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
