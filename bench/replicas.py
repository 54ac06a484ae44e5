"""mcpgw replicas benchmark: 1, 2 and 3 gateway replicas on one PostgreSQL behind HAProxy
(round-robin, no affinity) against the upstream called directly, side by side.

    python bench/replicas.py [--seconds 5] [--reps 3] [--clients 1,16] [--modes legacy,2026-07-28]

Starts a throwaway PostgreSQL server (tests/postgres.py), the demo upstream over Streamable
HTTP (``bench/upstream.py``), three ``mcpgw serve`` replicas on one database (the same
``secrets.key``, recording on, the upstream as an ``http`` upstream) and three HAProxy
processes (tests/loadbalancer.py's config: ``balance roundrobin``, ``/readyz`` checks) in front
of the first one, the first two and all three. Then for every protocol mode and client count it
runs the load generator (``bench/loadgen.py``: N SDK clients calling ``echo`` back to back)
against DIRECT (the upstream), GW (replica 1 without a proxy: what HAProxy adds is LB1 - GW)
and LB1, LB2, LB3, interleaved (forward order in even repetitions, reversed in odd ones), and
reports medians over the repetitions: calls/s, p50/p99, CPU per call of the replicas (all of
them, added up), of HAProxy and of the upstream, the load generator's own CPU share, and the
ratios LBn/direct and LBn/LB1 (what adding replicas buys).

The handshake-era mode (``legacy``) opens one session per client at ``initialize``; through
LB2 and LB3 its later requests reach replicas that did not mint the session, which build their
copy from its ``live_sessions`` row on the first one (gateway/core/shared_sessions.py).

Writes everything as JSON to ``--out`` (default bench/results/replicas.json). Every process
is stopped on exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))
import run as single  # noqa: E402  (bench/run.py: the upstream, the load generator, machine facts)
from _procs import Processes, StartupError, free_port, log_tail, stop, wait_for_http  # noqa: E402

from tests.loadbalancer import find_haproxy, haproxy_config  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402
from tests.replicas import new_secrets_key  # noqa: E402

REPLICAS = 3
DIRECT, GATEWAY = "direct", "gw"
KINDS = (DIRECT, GATEWAY, "lb1", "lb2", "lb3")


@dataclass(frozen=True)
class Target:
    kind: str
    url: str
    tool: str
    watch: dict[str, int]  # label -> pid, for the load generator's CPU snapshots


@dataclass(frozen=True)
class Run:
    mode: str
    clients: int
    kind: str
    rep: int
    calls: int
    failed: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    replicas_cpu_ms_per_call: float | None
    haproxy_cpu_ms_per_call: float | None
    upstream_cpu_ms_per_call: float | None
    loadgen_cpu_util: float
    first_failure: str | None


@dataclass(frozen=True)
class Summary:
    mode: str
    clients: int
    kind: str
    reps: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    replicas_cpu_ms_per_call: float | None
    haproxy_cpu_ms_per_call: float | None
    upstream_cpu_ms_per_call: float | None
    loadgen_cpu_util: float
    failed: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before each window (default 1)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each group (default 3)")
    parser.add_argument("--clients", default="1,16", help="client counts (default 1,16)")
    parser.add_argument(
        "--modes", default=",".join(single.MODES), help="protocol modes (default legacy,2026-07-28)"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "replicas.json")
    args = parser.parse_args(argv)
    args.clients = [int(n) for n in args.clients.split(",")]
    args.modes = args.modes.split(",")
    if args.seconds <= 0 or args.warmup < 0 or args.reps < 1 or min(args.clients) < 1:
        parser.error("--seconds > 0, --warmup >= 0, --reps >= 1 and client counts >= 1, please")
    return args


def start_replica(
    procs: Processes, workdir: Path, n: int, database: str, key: str, upstream: str
) -> tuple[int, str]:
    """`mcpgw serve` replica `n` on the shared database; its pid and base URL once /healthz answers."""
    port = free_port()
    config = workdir / f"replica-{n}.yaml"
    config.write_text(
        f"database: {database}\nsecrets: {{key: {key}}}\nauth: {{required: false}}\n"
        f"upstreams:\n  - name: demo\n    transport: http\n    url: {upstream}\n"
    )
    log = workdir / f"replica-{n}.log"
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    child = procs.spawn(argv, log)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(child, f"{base}/healthz", log, single.STARTUP_TIMEOUT_S)
    return child.pid, base


def start_haproxy(procs: Processes, workdir: Path, binary: str, replicas: list[str]) -> tuple[int, str]:
    """HAProxy round-robin over `replicas`; its pid and base URL once it answers through them."""
    port = free_port()
    name = f"lb{len(replicas)}"
    config = workdir / f"{name}.cfg"
    config.write_text(haproxy_config(f"127.0.0.1:{port}", replicas, check_interval_ms=2000))
    log = workdir / f"{name}.log"
    checked = subprocess.run(
        [binary, "-c", "-q", "-f", str(config)], capture_output=True, check=False, timeout=30
    )
    if checked.returncode != 0:
        raise StartupError(f"haproxy refused {config}: {checked.stderr.decode()}")
    child = procs.spawn([binary, "-db", "-f", str(config)], log)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(child, f"{base}/healthz", log, single.STARTUP_TIMEOUT_S)
    return child.pid, base


def run_load(
    procs: Processes, workdir: Path, target: Target, mode: str, clients: int, args: Any, rep: int
) -> Run:
    stem = f"{mode}-{clients}-{target.kind}-{rep}"
    result_file, log = workdir / f"{stem}.json", workdir / f"{stem}.log"
    argv = [
        sys.executable, str(BENCH / "loadgen.py"), "--url", target.url, "--tool", target.tool,
        "--mode", mode, "--clients", str(clients), "--result", str(result_file),
        "--warmup", str(args.warmup), "--seconds", str(args.seconds),
        *(f"--cpu-pid={label}={pid}" for label, pid in target.watch.items()),
    ]  # fmt: skip
    child = procs.spawn(argv, log)
    with suppress(subprocess.TimeoutExpired):
        child.wait(timeout=args.warmup + args.seconds + single.LOADGEN_SLACK_S)
    stop(child)
    if not result_file.exists():
        raise RuntimeError(f"load generator {stem} failed (code {child.returncode}):\n{log_tail(log)}")
    raw = json.loads(result_file.read_text())
    latencies = sorted(raw["latencies_ms"])
    calls, window, cpu = raw["calls"], raw["window_s"], raw["cpu_s"]

    def per_call(*labels: str) -> float | None:
        present = [cpu[label] for label in labels if label in cpu]
        return sum(present) * 1000 / calls if present and calls else None

    replicas = [label for label in target.watch if label.startswith("replica-")]
    return Run(
        mode=mode,
        clients=clients,
        kind=target.kind,
        rep=rep,
        calls=calls,
        failed=raw["failed_in_window"],
        calls_per_s=calls / window,
        p50_ms=single.percentile(latencies, 0.50),
        p99_ms=single.percentile(latencies, 0.99),
        replicas_cpu_ms_per_call=per_call(*replicas),
        haproxy_cpu_ms_per_call=per_call("haproxy"),
        upstream_cpu_ms_per_call=per_call("upstream"),
        loadgen_cpu_util=raw["loadgen_cpu_s"] / window,
        first_failure=raw["first_failure"],
    )


def summarise(runs: list[Run]) -> list[Summary]:
    groups: dict[tuple[str, int, str], list[Run]] = {}
    for one in runs:
        groups.setdefault((one.mode, one.clients, one.kind), []).append(one)
    return [
        Summary(
            mode=mode,
            clients=clients,
            kind=kind,
            reps=len(group),
            calls_per_s=statistics.median(r.calls_per_s for r in group),
            p50_ms=statistics.median(r.p50_ms for r in group),
            p99_ms=statistics.median(r.p99_ms for r in group),
            replicas_cpu_ms_per_call=single.median_or_none(r.replicas_cpu_ms_per_call for r in group),
            haproxy_cpu_ms_per_call=single.median_or_none(r.haproxy_cpu_ms_per_call for r in group),
            upstream_cpu_ms_per_call=single.median_or_none(r.upstream_cpu_ms_per_call for r in group),
            loadgen_cpu_util=statistics.median(r.loadgen_cpu_util for r in group),
            failed=sum(r.failed for r in group),
        )
        for (mode, clients, kind), group in groups.items()
    ]


def progress(one: Run) -> str:
    return f"{one.calls_per_s:8.1f} calls/s, p50 {one.p50_ms:.2f} ms, failed {one.failed}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(summaries: list[Summary]) -> str:
    rows = [
        f"{'mode':10} {'N':>3} {'target':6} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'x direct':>8} "
        f"{'x lb1':>6} {'+p50 ms':>7} {'replicas cpu':>12} {'haproxy cpu':>11} {'up cpu':>7} {'loadgen':>7} "
        f"{'failed':>6}"
    ]
    by_key = {(s.mode, s.clients, s.kind): s for s in summaries}
    for s in sorted(summaries, key=lambda s: (s.mode, s.clients, KINDS.index(s.kind))):
        direct, lb1 = by_key.get((s.mode, s.clients, DIRECT)), by_key.get((s.mode, s.clients, "lb1"))
        ratio = f"{s.calls_per_s / direct.calls_per_s:.2f}" if direct else "-"
        scale = f"{s.calls_per_s / lb1.calls_per_s:.2f}" if lb1 and s.kind.startswith("lb") else ""
        added = f"{s.p50_ms - direct.p50_ms:+.2f}" if direct and s.kind != DIRECT else ""
        rows.append(
            f"{s.mode:10} {s.clients:>3} {s.kind:6} {s.calls_per_s:8.1f} {s.p50_ms:7.2f} {s.p99_ms:7.2f} "
            f"{ratio:>8} {scale:>6} {added:>7} {_ms(s.replicas_cpu_ms_per_call):>12} "
            f"{_ms(s.haproxy_cpu_ms_per_call):>11} {_ms(s.upstream_cpu_ms_per_call):>7} "
            f"{s.loadgen_cpu_util * 100:6.0f}% {s.failed:>6}"
        )
    return "\n".join(rows)


def benchmark(args: argparse.Namespace, procs: Processes, workdir: Path) -> int:
    started = single.machine()
    haproxy = find_haproxy()
    server = PostgresServer()
    server.start()
    try:
        database = server.url(server.create_database())
        upstream, upstream_url = single.start_upstream(procs, workdir, stock=False)
        key = new_secrets_key()
        replicas = [start_replica(procs, workdir, n, database, key, upstream_url) for n in range(REPLICAS)]
        watch = {f"replica-{n}": pid for n, (pid, _) in enumerate(replicas)}
        targets = [
            Target(DIRECT, upstream_url, "echo", {"upstream": upstream.pid}),
            Target(
                GATEWAY,
                f"{replicas[0][1]}/mcp",
                "demo__echo",
                {"replica-0": replicas[0][0], "upstream": upstream.pid},
            ),
        ]
        for n in range(1, REPLICAS + 1):
            pid, base = start_haproxy(procs, workdir, haproxy, [url for _, url in replicas[:n]])
            targets.append(
                Target(
                    f"lb{n}", f"{base}/mcp", "demo__echo", {**watch, "haproxy": pid, "upstream": upstream.pid}
                )
            )
        runs: list[Run] = []
        for mode in args.modes:
            for clients in args.clients:
                for rep in range(args.reps):
                    for target in targets if rep % 2 == 0 else targets[::-1]:
                        one = run_load(procs, workdir, target, mode, clients, args, rep)
                        runs.append(one)
                        print(
                            f"  {mode:10} N={clients:<3} {target.kind:6} rep {rep}: {progress(one)}",
                            flush=True,
                        )
        summaries = summarise(runs)
        print()
        print(format_table(summaries))
        failing = sorted({(r.mode, r.kind) for r in runs if r.failed or r.first_failure})
        for mode, kind in failing:
            first = next(
                r.first_failure for r in runs if (r.mode, r.kind) == (mode, kind) and r.first_failure
            )
            print(f"  failures: {mode} through {kind}: {first}")
        single.write_json(
            args.out,
            {
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": started,
                "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "replicas": REPLICAS},
                "summary": [asdict(s) for s in summaries],
                "runs": [asdict(r) for r in runs],
            },
        )
        return 1 if failing else 0
    finally:
        procs.__exit__(None, None, None)  # the replicas go before their database
        server.destroy()


def _raise_interrupt(signum: int, frame: Any) -> Any:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupt)
    with tempfile.TemporaryDirectory(prefix="mcpgw-bench-replicas-") as tmp, Processes() as procs:
        try:
            return benchmark(args, procs, Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted; stopping child processes", file=sys.stderr)
            return 130
        except StartupError as exc:
            print(f"\nbench: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
