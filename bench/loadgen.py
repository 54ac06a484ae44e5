"""Load generator for bench/run.py: N concurrent SDK `Client`s calling one tool in a loop.

Runs in its own process so the clients' CPU is never inside the process being measured.
Each client is its own MCP session (``Client(url, mode=...)``). All clients connect, call the
tool for ``--warmup`` seconds, then for ``--seconds`` more; the measured window is delimited
by two snapshots of the CPU time of the processes named with ``--cpu-pid`` (read from
``/proc/<pid>/stat``), and every call that *completes* inside the window is counted, with its
latency. Everything is bounded: each call has a timeout and the whole run has a deadline.

The result is written as JSON to ``--result`` (stdout is left to the SDK's warnings).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

CLK_TCK = os.sysconf("SC_CLK_TCK")
CONNECT_BUDGET_S = 60.0  # the whole run's deadline is this + warm-up + window + teardown
TEARDOWN_BUDGET_S = 30.0


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state); comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Snapshot:
    wall: float  # time.perf_counter()
    own_cpu: float  # this process (all threads)
    cpu: dict[str, float]  # label -> CPU seconds of the watched process


def snapshot(pids: dict[str, int]) -> Snapshot:
    return Snapshot(
        time.perf_counter(), time.process_time(), {k: process_cpu_seconds(p) for k, p in pids.items()}
    )


@dataclass
class Calls:
    """Every finished call: completion time and latency (s); failures by kind."""

    done_at: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    first_failure: str | None = None

    def fail(self, at: float, kind: str, detail: str) -> None:
        self.failed_at.append(at)
        self.failures[kind] += 1
        self.first_failure = self.first_failure or f"{kind}: {detail}"[:500]


async def call_loop(client: Client, tool: str, text: str, calls: Calls, stop: anyio.Event) -> None:
    """Call `tool` back to back until `stop` is set."""
    arguments = {"text": text}
    while not stop.is_set():
        started = time.perf_counter()
        try:
            result = await client.call_tool(tool, arguments)
        except Exception as exc:  # a failed call is data, not a crash
            calls.fail(time.perf_counter(), type(exc).__name__, str(exc))
            continue
        finished = time.perf_counter()
        if result.is_error:
            calls.fail(finished, "isError", str(result.content))
        else:
            calls.done_at.append(finished)
            calls.latency.append(finished - started)


async def measure(
    warmup: float, seconds: float, pids: dict[str, int], stop: anyio.Event
) -> tuple[Snapshot, Snapshot]:
    """Sleep through the warm-up, snapshot, sleep through the window, snapshot, stop the clients."""
    await anyio.sleep(warmup)
    first = snapshot(pids)
    await anyio.sleep(seconds)
    last = snapshot(pids)
    stop.set()
    return first, last


def summarise(calls: Calls, first: Snapshot, last: Snapshot, clients: int) -> dict[str, Any]:
    """The window's calls and CPU deltas, as the JSON document run.py reads."""
    inside = [
        lat for at, lat in zip(calls.done_at, calls.latency, strict=True) if first.wall <= at < last.wall
    ]
    failed = sum(1 for at in calls.failed_at if first.wall <= at < last.wall)
    window = last.wall - first.wall
    return {
        "clients": clients,
        "window_s": window,
        "calls": len(inside),
        "calls_total": len(calls.done_at),  # warm-up included
        "latencies_ms": [round(lat * 1000, 4) for lat in inside],
        "failed_in_window": failed,
        "failures_total": dict(calls.failures),
        "first_failure": calls.first_failure,
        "cpu_s": {k: last.cpu[k] - first.cpu[k] for k in last.cpu},
        "loadgen_cpu_s": last.own_cpu - first.own_cpu,
    }


def write_result(path: str, summary: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(summary))  # once, after the window: blocking is harmless here


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pids = dict(item.split("=", 1) for item in args.cpu_pid)
    watched = {label: int(pid) for label, pid in pids.items()}
    calls = Calls()
    stop = anyio.Event()
    with anyio.fail_after(CONNECT_BUDGET_S + args.warmup + args.seconds + TEARDOWN_BUDGET_S):
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    Client(args.url, mode=args.mode, read_timeout_seconds=args.call_timeout)
                )
                for _ in range(args.clients)
            ]
            window: list[tuple[Snapshot, Snapshot]] = []

            async def timed() -> None:
                window.append(await measure(args.warmup, args.seconds, watched, stop))

            async with anyio.create_task_group() as tg:
                for client in clients:
                    tg.start_soon(call_loop, client, args.tool, args.text, calls, stop)
                tg.start_soon(timed)
            summary = summarise(calls, *window[0], args.clients)
            write_result(args.result, summary)  # before the sessions close
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--mode", required=True, help="legacy or a modern protocol version (2026-07-28)")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--call-timeout", type=float, default=10.0)
    parser.add_argument("--text", default="hello, gateway")
    parser.add_argument("--cpu-pid", action="append", default=[], metavar="LABEL=PID")
    parser.add_argument("--result", required=True, help="where to write the JSON result")
    args = parser.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("the benchmark only talks to 127.0.0.1")
    anyio.run(run, args)


if __name__ == "__main__":
    main()
