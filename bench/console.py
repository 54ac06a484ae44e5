"""mcpgw console benchmark: every admin console page with 1,000,000 invocations recorded.

    python bench/console.py [--db PATH] [--samples 200]

Reuses `bench/listing.py`'s database (generated, or reused when its counts match: 100,000
sessions, 1,000,000 invocations, one session with 60,000 of them) and its gateway (auth
required, no upstreams, recording off). Signs in to the console with the data set's admin key
as a browser would (the form, its CSRF cookie, the session cookie), then times each page over
one keep-alive connection, `--samples` times after a warm-up, interleaved:

- sessions: first page; a deep page (40,000 sessions in, reached with the API's own cursors,
  which the console pages with); one key's sessions (the user filter of a user with one key);
  one client's (`Inspector`, a quarter of them), one key's and client's; a time range (`until`
  10 days back);
- the timeline of the busiest session: first page, and page 1,000 (50,000 calls in);
- keys, credentials, upstreams, host sign-ins.

The time is the HTTP round trip on loopback (what a browser waits for, the server's time and
the loopback's), beside `/healthz` on the same connection for the floor. Writes JSON to
`--out` (default `bench/results/console.json`) and checks the target: every page under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import Processes, StartupError, git_describe
from listing import Dataset, load_or_generate, start_gateway

BENCH = Path(__file__).resolve().parent
TARGET_MS = 100.0
WARMUP = 10
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def deep_cursor(http: httpx2.AsyncClient, url: str, headers: dict[str, str], pages: int) -> str:
    """The `next` cursor `pages` pages of 200 into a listing (the API's walk)."""
    cursor = ""
    for _ in range(pages):
        params = {"Limit": "200", **({"Cursor": cursor} if cursor else {})}
        body = (await http.get(url, params=params, headers=headers)).json()
        cursor = body["meta"]["cursors"]["next"]
    return cursor


async def signed_in(http: httpx2.AsyncClient, key: str) -> None:
    form = await http.get("/admin/signin")
    csrf = _CSRF.search(form.text)
    assert csrf is not None
    answer = await http.post("/admin/signin", data={"api_key": key, "csrf": csrf.group(1)})
    assert answer.status_code == 303, answer.text


async def benchmark(dataset: Dataset, base: str, samples: int) -> dict[str, dict[str, float]]:
    admin = {"x-api-key": dataset.admin_key}
    org = dataset.organisation_id
    async with httpx2.AsyncClient(base_url=base, timeout=30.0) as http:
        sessions_cursor = await deep_cursor(http, f"/mcp/{org}/sessions", admin, 200)  # 40,000 in
        calls_url = f"/mcp/{org}/sessions/{dataset.big_session_id}/invocations"
        calls_cursor = await deep_cursor(http, calls_url, admin, 250)  # 50,000 in
        await signed_in(http, dataset.admin_key)
        until = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M")
        timeline = f"/admin/sessions/{dataset.big_session_id}"
        pages = {
            "GET /healthz (floor)": ("/healthz", {}),
            "sessions, first page": ("/admin/sessions", {}),
            "sessions, 40,000 in": ("/admin/sessions", {"Cursor": sessions_cursor}),
            "sessions of one key": ("/admin/sessions", {"key": dataset.user_key_id}),
            "sessions of one client": ("/admin/sessions", {"client": "Inspector"}),
            "sessions of one key and client": (
                "/admin/sessions",
                {"key": dataset.user_key_id, "client": "Inspector"},
            ),
            "sessions until 10 days ago": ("/admin/sessions", {"until": until}),
            "timeline, first page": (timeline, {}),
            "timeline, 50,000 calls in": (timeline, {"Cursor": calls_cursor}),
            "keys": ("/admin/keys", {}),
            "credentials": ("/admin/credentials", {}),
            "upstreams": ("/admin/upstreams", {}),
            "host sign-ins": ("/admin/grants", {}),
        }
        times: dict[str, list[float]] = {name: [] for name in pages}
        for round_ in range(WARMUP + samples):
            for name, (path, params) in pages.items():
                started = time.perf_counter()
                answer = await http.get(path, params=params)
                elapsed = (time.perf_counter() - started) * 1000
                if answer.status_code != 200:
                    raise RuntimeError(f"{name}: {answer.status_code} {answer.text[:300]}")
                if round_ >= WARMUP:
                    times[name].append(elapsed)
    return {
        name: {
            "p50_ms": statistics.median(values),
            "p99_ms": statistics.quantiles(values, n=100)[98],
            "max_ms": max(values),
            "n": len(values),
        }
        for name, values in times.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=BENCH / "results" / "listing-100000x1000000.db")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "console.json")
    args = parser.parse_args()
    dataset, _ = load_or_generate(args.db, 100_000, 1_000_000)
    with tempfile.TemporaryDirectory(prefix="mcpgw-console-") as tmp, Processes() as procs:
        try:
            base = start_gateway(procs, Path(tmp), args.db)
            result = anyio.run(benchmark, dataset, base, args.samples)
        except StartupError as exc:
            print(f"console: {exc}", file=sys.stderr)
            return 2
    print(f"{'page':32} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, row in result.items():
        print(f"{name:32} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['max_ms']:8.2f}")
    slow = [name for name, row in result.items() if row["p99_ms"] >= TARGET_MS]
    verdict = "met" if not slow else "MISSED: " + ", ".join(slow)
    print(f"target: every page p99 under {TARGET_MS:.0f} ms: {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"version": git_describe(), "pages": result}, indent=2) + "\n")
    return 0 if not slow else 1


if __name__ == "__main__":
    raise SystemExit(main())
