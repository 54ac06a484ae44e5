"""Many host sessions on one gateway: what they cost in memory, processes and file descriptors.

    python bench/sessions.py [--sessions 200] [--stdio 2] [--calls 200]
                             [--mode shared|per_host] [--max-children N] [--web-mode per_host|shared]

Starts the demo upstream over Streamable HTTP (``bench/upstream.py``) and the gateway with a
config of ``--stdio`` stdio upstreams (``gateway.demo`` children, named ``s1``, ``s2``, ...)
and the HTTP one (``web``). Then it opens ``--sessions`` host sessions of the 2025 revision
the way a host does (``initialize``, ``notifications/initialized``, ``tools/list``, one
``tools/call`` to each upstream), ``--at-once`` (16) at a time, and leaves them open, as hosts that never
send DELETE do. It reads, before and after:

- the gateway's proportional set size (PSS, from ``/proc/<pid>/smaps_rollup``: shared pages
  counted once across processes, unlike RSS) and its open file descriptors;
- how many processes descend from the gateway, and their PSS in all;

and then the latency of ``tools/call`` and ``tools/list`` on the open sessions (``--calls``
each, one at a time, sessions taken in turn), and what is left after every session is
DELETEd. Figures printed per idle session divide the growth by the session count.

``--mode`` is the stdio upstreams' ``sessions`` (shared: a pool of ``max_sessions`` children for
every host session; per_host: a child per host session), ``--max-children`` their cap in
per_host mode (calls past it fail with the gateway's -32001 error, counted and the first shown,
with the index of the first session refused); ``--web-mode`` the HTTP upstream's ``sessions``.
A ``tools/list`` is also timed on a fresh session, served from the shared catalogue.

Everything runs on 127.0.0.1 with deadlines; every child process is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import Processes, free_port, wait_for_http, wait_for_line

STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
OPENING_AT_ONCE = 16
PROTOCOL_VERSION = "2025-11-25"


@dataclass(frozen=True)
class Footprint:
    gateway_pss_mb: float
    gateway_fds: int
    children: int
    children_pss_mb: float

    @property
    def total_pss_mb(self) -> float:
        return self.gateway_pss_mb + self.children_pss_mb


def pss_mb(pid: int) -> float:
    """Proportional set size of `pid` in MB, 0 if it has gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def footprint(pid: int) -> Footprint:
    below = descendants(pid)
    return Footprint(
        gateway_pss_mb=pss_mb(pid),
        gateway_fds=len(list(Path(f"/proc/{pid}/fd").iterdir())),
        children=len(below),
        children_pss_mb=sum(pss_mb(child) for child in below),
    )


def write_config(workdir: Path, port: int, args: argparse.Namespace, upstream_url: str) -> Path:
    lines = [
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        "database: ./sessions.db",
        "auth: {required: false}",
        "sessions: {max_per_key: 100000, max_total: 100000, max_children: 100000}",
        "upstreams:",
    ]
    for index in range(1, args.stdio + 1):
        lines += [
            f"  - name: s{index}",
            "    transport: stdio",
            f"    command: [{sys.executable}, -m, gateway.demo]",
            f"    sessions: {args.mode}",
            f"    max_children: {args.max_children}",
        ]
    lines += [
        "  - name: web",
        "    transport: http",
        f"    url: {upstream_url}",
        f"    sessions: {args.web_mode}",
    ]
    config = workdir / "gateway.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


class HostSession:
    """One host's session, spoken in raw JSON-RPC over HTTP (lighter than an SDK client, so a
    thousand of them fit in the benchmark process)."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.id: str | None = None
        self._next = 0

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next, "method": method}
        if params is not None:
            message["params"] = params
        response = await self.http.post(self.url, json=message, headers=self._headers())
        response.raise_for_status()
        if self.id is None:
            self.id = response.headers.get("mcp-session-id")
        body = _json_from(response)
        if "error" in body:
            raise RuntimeError(f"{method}: {body['error']}")
        result: dict[str, Any] = body["result"]
        return result

    async def notify(self, method: str) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        (await self.http.post(self.url, json=message, headers=self._headers())).raise_for_status()

    async def delete(self) -> None:
        await self.http.delete(self.url, headers=self._headers())

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": PROTOCOL_VERSION}
        if self.id is not None:
            headers["mcp-session-id"] = self.id
        return headers


def _json_from(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in a JSON body or in the last `data:` line of an SSE body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        parsed: dict[str, Any] = json.loads(data[-1])
        return parsed
    loaded: dict[str, Any] = response.json()
    return loaded


async def open_session(
    http: httpx2.AsyncClient,
    url: str,
    tools: list[str],
    failures: list[str],
    index: int = 0,
    refused: list[int] | None = None,
) -> HostSession:
    """A session as a host opens one; a failed call is kept in `failures`, not raised (what fails
    under load is part of the result)."""
    session = HostSession(http, url)
    await session.request(
        "initialize",
        {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bench-sessions", "version": "1"},
        },
    )
    await session.notify("notifications/initialized")
    await session.request("tools/list")
    for tool in tools:
        try:
            await session.request("tools/call", {"name": tool, "arguments": {"text": "hi"}})
        except RuntimeError as exc:
            failures.append(str(exc))
            if refused is not None:
                refused.append(index)
    return session


async def timed(action: Any) -> float:
    started = time.perf_counter()
    await action
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    tools = [f"s{index}__echo" for index in range(1, args.stdio + 1)] + ["web__echo"]
    limits = httpx2.Limits(max_connections=args.at_once * 2, max_keepalive_connections=args.at_once * 2)
    async with httpx2.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        # One session first, so that what every process costs once (imports, pools) is in the
        # baseline and the growth is what sessions add.
        failures: list[str] = []
        refused: list[int] = []
        first = await open_session(http, url, tools, failures, 1, refused)
        before = footprint(pid)
        gate = asyncio.Semaphore(args.at_once)

        async def opened(index: int) -> HostSession:
            async with gate:
                return await open_session(http, url, tools, failures, index, refused)

        started = time.perf_counter()
        rest = await asyncio.gather(*(opened(index) for index in range(2, args.sessions + 1)))
        sessions = [first, *rest]
        opening_s = time.perf_counter() - started
        after = footprint(pid)

        # A session that has listed nothing yet: its tools/list comes from the shared catalogue.
        fresh_list_ms = []
        for _ in range(min(args.calls, 50)):
            fresh = HostSession(http, url)
            client_info = {"name": "bench-fresh", "version": "1"}
            handshake = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": client_info}
            await fresh.request("initialize", handshake)
            fresh_list_ms.append(await timed(fresh.request("tools/list")))
            await fresh.delete()

        call_ms = [
            await timed(
                sessions[i % len(sessions)].request(
                    "tools/call", {"name": tools[-1], "arguments": {"text": "x"}}
                )
            )
            for i in range(args.calls)
        ]
        list_ms = [await timed(sessions[i % len(sessions)].request("tools/list")) for i in range(args.calls)]

        await asyncio.gather(*(session.delete() for session in sessions))
        released = footprint(pid)

    added = args.sessions - 1
    return {
        "sessions": args.sessions,
        "stdio_upstreams": args.stdio,
        "opening_s": round(opening_s, 2),
        "at_once": args.at_once,
        "mode": args.mode,
        "web_mode": args.web_mode,
        "max_children": args.max_children,
        "failed_calls": len(failures),
        "first_failure": failures[0] if failures else None,
        "first_refused_session": min(refused) if refused else None,
        "sessions_refused": len(set(refused)),
        "before": asdict(before),
        "after": asdict(after),
        "released": asdict(released),
        "per_session_gateway_kb": round((after.gateway_pss_mb - before.gateway_pss_mb) * 1024 / added, 1),
        "per_session_total_kb": round((after.total_pss_mb - before.total_pss_mb) * 1024 / added, 1),
        "children_per_session": round((after.children - before.children) / added, 2),
        "call_p50_ms": round(statistics.median(call_ms), 2),
        "call_p99_ms": round(percentile(call_ms, 0.99), 2),
        "list_p50_ms": round(statistics.median(list_ms), 2),
        "list_p99_ms": round(percentile(list_ms, 0.99), 2),
        "fresh_list_p50_ms": round(statistics.median(fresh_list_ms), 2),
        "fresh_list_p99_ms": round(percentile(fresh_list_ms, 0.99), 2),
    }


def report(result: dict[str, Any]) -> None:
    after, before, released = result["after"], result["before"], result["released"]
    print(
        f"{result['sessions']} host sessions, {result['stdio_upstreams']} stdio upstreams ({result['mode']},"
        f" max_children {result['max_children']}) + 1 HTTP upstream ({result['web_mode']})"
    )
    print(f"  opened in {result['opening_s']} s, {result['at_once']} at a time")
    if result["failed_calls"]:
        print(f"  {result['failed_calls']} calls failed while opening; the first: {result['first_failure']}")
        print(
            f"  {result['sessions_refused']} sessions had a call refused; the first was session"
            f" {result['first_refused_session']}"
        )
    for label, seen in (("1 session", before), ("all open", after), ("all deleted", released)):
        total = seen["gateway_pss_mb"] + seen["children_pss_mb"]
        print(
            f"  {label:<12} gateway {seen['gateway_pss_mb']:7.1f} MB, {seen['gateway_fds']:5d} fds;"
            f" {seen['children']:4d} children {seen['children_pss_mb']:8.1f} MB; total {total:8.1f} MB"
        )
    print(
        f"  per idle session: gateway {result['per_session_gateway_kb']} KB, with children"
        f" {result['per_session_total_kb']} KB, {result['children_per_session']} children"
    )
    print(f"  tools/call p50 {result['call_p50_ms']} ms p99 {result['call_p99_ms']} ms (HTTP upstream)")
    print(f"  tools/list p50 {result['list_p50_ms']} ms p99 {result['list_p99_ms']} ms")
    print(
        f"  tools/list on a fresh session (catalogue) p50 {result['fresh_list_p50_ms']} ms"
        f" p99 {result['fresh_list_p99_ms']} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--stdio", type=int, default=2, help="stdio upstreams (gateway.demo children)")
    parser.add_argument("--at-once", type=int, default=OPENING_AT_ONCE, help="sessions opened concurrently")
    parser.add_argument("--calls", type=int, default=200, help="tools/call and tools/list to time")
    parser.add_argument("--mode", choices=["shared", "per_host"], default="shared", help="stdio upstreams")
    parser.add_argument("--max-children", type=int, default=50, help="stdio upstreams, per_host mode")
    parser.add_argument(
        "--web-mode", choices=["shared", "per_host"], default="per_host", help="HTTP upstream"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sessions.json")
    args = parser.parse_args()
    if args.sessions < 2:
        parser.error("--sessions must be at least 2")
    with tempfile.TemporaryDirectory(prefix="mcpgw-sessions-") as tmp, Processes() as procs:
        workdir = Path(tmp)
        upstream_log = workdir / "upstream.log"
        upstream = procs.spawn([sys.executable, str(Path(__file__).parent / "upstream.py")], upstream_log)
        upstream_url = wait_for_line(upstream, upstream_log, "READY", STARTUP_TIMEOUT_S).split()[1]
        port = free_port()
        config = write_config(workdir, port, args, upstream_url)
        log = workdir / "gateway.log"
        gateway = procs.spawn([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)], log)
        wait_for_http(gateway, f"http://127.0.0.1:{port}/healthz", log, STARTUP_TIMEOUT_S)
        result = asyncio.run(measure(f"http://127.0.0.1:{port}/mcp", gateway.pid, args))
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {args.out}")


if __name__ == "__main__":
    main()
