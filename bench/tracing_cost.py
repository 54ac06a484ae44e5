"""What tracing costs per call, in process: `Tracing.serve` around a call that does nothing,
with the real OTLP export (the SDK's batch processor and this gateway's encoder) sending to
`bench/otlp_sink.py` in a child process, as `bench/run.py --tracing` does.

    python bench/tracing_cost.py [--calls 20000] [--rate 3000] [--concurrency 1,16] [--work-us 0] [--modern]

Prints, per concurrency, the CPU per call of the event loop's thread (building the spans and the
histogram points) and of the whole process once every span was sent (the export thread's
encoding and posting added), each less the same loop calling the stub untraced: what
`bench/run.py` sees as the gateway's extra CPU, without the noise of a whole gateway, an
upstream and a load generator. Bounded: `--calls` per run, and the sink is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config.values import TelemetryConfig, UpstreamConfig
from gateway.recording.recorder import CallRecord
from gateway.recording.redaction import Redactor
from gateway.telemetry.otlp import OtlpExport, otlp_settings
from gateway.telemetry.tracing import Tracing

BENCH = Path(__file__).resolve().parent
MODERN = "2026-07-28"


@dataclass
class _Handshake:
    protocol_version: str


@dataclass
class _Session:
    id: str
    handshake: _Handshake
    announces_on_listen_only: bool


@dataclass
class _Context:
    traceparent: str | None


def start_sink() -> tuple[subprocess.Popen[bytes], str]:
    sink = subprocess.Popen([sys.executable, str(BENCH / "otlp_sink.py")], stdout=subprocess.PIPE)
    assert sink.stdout is not None
    line = sink.stdout.readline().decode()
    if not line.startswith("READY "):
        sink.kill()
        raise RuntimeError(f"the sink did not start: {line!r}")
    return sink, line.split()[1]


async def run(
    tracing: Tracing,
    calls: int,
    concurrency: int,
    modern: bool,
    rate: float,
    traced: bool = True,
    work_s: float = 0.0,
) -> None:
    version = MODERN if modern else "2025-11-25"
    session = _Session("Hq3f0c1e2d", _Handshake("2025-11-25"), modern)
    context = _Context("00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01")

    async def inner(session: Any, message: dict[str, Any], sink: Any, ctx: Any) -> dict[str, Any]:
        until = time.thread_time() + work_s
        while time.thread_time() < until:  # the gateway's own work on a call, in Python
            pass
        now = time.time()
        tracing.called(
            CallRecord(
                session_id="s", method="tools/call", name="demo__echo", upstream="demo", upstream_name="echo",
                request_id=message["id"], params=message["params"], response={}, outcome="ok",
                started_at=now, duration_s=0.0004, upstream_s=0.0003,
                trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id=f"{message['id'] + 1:016x}",
                upstream_started_at=now,
            )
        )  # fmt: skip
        return {"jsonrpc": "2.0", "id": message["id"], "result": {"content": [{"type": "text", "text": "x"}]}}

    meta = {"io.modelcontextprotocol/protocolVersion": version} if modern else {}
    ids = iter(range(calls))
    began = time.perf_counter()

    async def worker() -> None:
        for request_id in ids:
            params = {"name": "demo__echo", "arguments": {"text": "x"}, "_meta": meta}
            message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            if traced:
                await tracing.serve(inner, session, message, None, context)
            else:
                await inner(session, message, None, context)
            if request_id % 32 == 0:  # at most `rate` calls a second, as a gateway could serve
                await asyncio.sleep(max(0.0, began + request_id / rate - time.perf_counter()))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def measure(
    url: str, calls: int, concurrency: int, modern: bool, rate: float, work_s: float
) -> tuple[float, float]:
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "5000"  # the SDK's default
    settings = otlp_settings(TelemetryConfig(endpoint=url, sampler="always_on"), {})
    assert settings is not None
    export = OtlpExport(settings)
    upstream = UpstreamConfig(name="demo", transport="http", prefix="demo__", url="http://127.0.0.1:9/mcp")
    tracing = Tracing(export, (upstream,), Redactor.with_defaults())
    asyncio.run(run(tracing, 200, concurrency, modern, rate))  # warm: the encoder's cache
    export.shutdown()
    export = OtlpExport(settings)
    tracing = Tracing(export, (upstream,), Redactor.with_defaults())
    thread = time.thread_time()
    # The stub call alone:
    asyncio.run(run(tracing, calls, concurrency, modern, rate, traced=False, work_s=work_s))
    untraced_ms = (time.thread_time() - thread) * 1000 / calls
    process, thread = time.process_time(), time.thread_time()
    asyncio.run(run(tracing, calls, concurrency, modern, rate, work_s=work_s))
    loop_ms = (time.thread_time() - thread) * 1000 / calls - untraced_ms
    export.shutdown()  # sends what is queued
    total_ms = (time.process_time() - process) * 1000 / calls - untraced_ms
    assert export.dropped() == 0, export.dropped()
    return loop_ms, total_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rate", type=float, default=3000.0, help="calls a second at most (default 3000)")
    parser.add_argument(
        "--work-us", type=float, default=0.0, help="CPU each call spends (a busy loop, as a gateway's is)"
    )
    parser.add_argument("--modern", action="store_true", help="2026-07-28 requests (no session)")
    args = parser.parse_args()
    sink, url = start_sink()
    try:
        for concurrency in map(int, args.concurrency.split(",")):
            work_s = args.work_us / 1e6
            loop_ms, total_ms = measure(url, args.calls, concurrency, args.modern, args.rate, work_s)
            print(
                f"concurrency {concurrency:3}: loop thread {loop_ms:.4f} ms/call, "
                f"process (export thread included) {total_ms:.4f} ms/call"
            )
    finally:
        sink.terminate()
        sink.wait(10)


if __name__ == "__main__":
    main()
