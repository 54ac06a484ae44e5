"""mcpgw listing benchmark: session and invocation pages with 1,000,000 invocations recorded.

    python bench/listing.py [--sessions 100000] [--invocations 1000000] [--db PATH] [--samples 500]

1. Generates (or reuses) a SQLite database: the project's store creates and migrates it and
   makes the organisations and API keys; then plain sqlite3 ``executemany`` fills ``sessions``
   and ``invocations`` in large transactions. One session gets 60,000 invocations so that a
   deep invocation page exists. The keys' secrets and the counts are kept beside the database
   (``<db>.meta.json``); a rerun with the same counts reuses the file.
2. Starts the gateway (``python -m gateway.cli serve``, auth required, no upstreams, recording
   off so the retention pruner leaves the data alone) on that database.
3. For each query (sessions: first page, page 2,000, a non-admin key's first page;
   invocations of the big session: first page, page 1,000) it walks ``next`` cursors to the
   page, then times the same page ``--samples`` times in three layers, interleaved:
   - **sql**: the statements the store ran for that page, on a plain sqlite3 connection;
   - **store**: the Store methods the API handler calls, in-process (aiosqlite);
   - **http**: ``GET`` over one keep-alive connection (httpx2) with an API key.
4. Prints ``EXPLAIN QUERY PLAN`` of every statement the store ran, a table of p50/p99 per
   query and layer, checks the target (docs/design.md, Performance: p99 <= 5 ms over HTTP) and writes JSON to
   ``--out`` (default ``bench/results/listing.json``).

With ``--postgres`` the same data is also copied into a throwaway PostgreSQL server
(tests/postgres.py) with ``mcpgw migrate --from sqlite:///…``, a second gateway serves it, and
its pages are timed over HTTP too (layer ``http-pg``), interleaved with the others.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import anyio
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import ROOT, Processes, StartupError, free_port, git_describe, wait_for_http

sys.path.insert(0, str(ROOT))
from store import Seek, SqliteStore, open_sqlite_store

BENCH = Path(__file__).resolve().parent
STARTUP_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 10.0
WARMUP = 20  # untimed requests per query and layer before sampling
TARGET_P99_MS = 5.0  # docs/design.md, Performance: listing pages, first and deep
FLOOR = "GET /healthz (HTTP floor)"  # the same client and server, no handler work

SESSIONS_LIMIT = 20  # the API's defaults
INVOCATIONS_LIMIT = 50
DEEP_SESSIONS_PAGE = 2000  # 40,000 sessions in
DEEP_INVOCATIONS_PAGE = 1000  # 50,000 invocations in

# Generated data.
SEED = 20261121
SPAN_MS = 20 * 24 * 3600 * 1000  # activity over the last 20 days (retention keeps 30)
HEAVY = (60_000, 10_000, 10_000, 5_000, 5_000)  # invocations of the busiest sessions (at 1,000,000)
OTHER_ORG_SHARE = 0.05  # sessions of another organisation, which the admin key must not see
USER_SHARE = 0.05  # sessions opened by the non-admin key
ADMIN_SHARE = 0.20  # by the admin key; the rest by a handful of other keys of the organisation
TEAM_KEYS = 6
IDLE_END_MS = 30 * 60 * 1000
CHUNK = 100_000  # rows per transaction

TOOLS = (  # (host-visible name, upstream, upstream's name)
    ("github__search_issues", "github", "search_issues"),
    ("github__get_file_contents", "github", "get_file_contents"),
    ("docs__search", "docs", "search"),
    ("fs__read_file", "fs", "read_file"),
    ("demo__echo", "demo", "echo"),
)
CLIENTS = (("claude-code", "2.1.3"), ("cursor", "1.7.0"), ("Inspector", "0.17.1"), ("vscode", "1.104.0"))
PROTOCOLS = ("2025-06-18", "2025-11-25", "2026-07-28")
_PROSE = (
    "gateway session cursor index keyset page sqlite latency upstream token issue label open closed "
    "retry timeout release branch commit review merge build deploy config schema migration record "
    "invocation result error warning metric trace span header request response stream"
)
WORDS = _PROSE.split()


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions to generate (100000)")
    parser.add_argument("--invocations", type=int, default=1_000_000, help="invocations (1000000)")
    parser.add_argument("--db", type=Path, help="database (default bench/results/listing-<S>x<I>.db)")
    parser.add_argument("--samples", type=int, default=500, help="timed requests per query and layer (500)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "listing.json", help="JSON output")
    parser.add_argument(
        "--postgres", action="store_true", help="also time the pages on PostgreSQL (a copy of the same data)"
    )
    args = parser.parse_args(argv)
    if args.sessions < 1000 or args.invocations < args.sessions or args.samples < 1:
        parser.error("--sessions >= 1000, --invocations >= --sessions and --samples >= 1, please")
    if args.db is None:
        args.db = BENCH / "results" / f"listing-{args.sessions}x{args.invocations}.db"
    return args


# --------------------------------------------------------------------------- the data set


@dataclass(frozen=True)
class Dataset:
    """A generated database and what the benchmark needs to query it (kept in <db>.meta.json)."""

    path: str
    sessions: int
    invocations: int
    organisation_id: str
    admin_key: str
    admin_key_id: str
    user_key: str  # a non-admin key: sees only the sessions it opened
    user_key_id: str
    user_sessions: int
    big_session_id: str
    big_session_invocations: int
    generated_s: float
    generated_at: str


def meta_path(db: Path) -> Path:
    return Path(f"{db}.meta.json")


def database_files(db: Path) -> list[Path]:
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm"), meta_path(db)]


def load_or_generate(db: Path, sessions: int, invocations: int) -> tuple[Dataset, bool]:
    """The data set at `db` if it was generated with these counts, else a new one (True: reused)."""
    meta = meta_path(db)
    if db.exists() and not meta.exists():
        raise SystemExit(f"listing: {db} exists but was not generated by bench/listing.py; not touching it")
    if meta.exists():
        dataset = Dataset(**json.loads(meta.read_text()))
        if (dataset.sessions, dataset.invocations) == (sessions, invocations) and counts(db) == (
            sessions,
            invocations,
        ):
            return dataset, True
        print(f"{db}: generated with other counts; generating again", file=sys.stderr)
    for path in database_files(db):
        path.unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    dataset = generate(db, sessions, invocations)
    meta.write_text(json.dumps(asdict(dataset), indent=2) + "\n")  # last: marks the file complete
    return dataset, False


def counts(db: Path) -> tuple[int, int] | None:
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
            invocations = conn.execute("SELECT count(*) FROM invocations").fetchone()[0]
    except sqlite3.Error:
        return None
    return sessions, invocations


@dataclass(frozen=True)
class Tenants:
    organisation_id: str
    other_organisation_id: str
    admin: tuple[str, str]  # (key id, secret)
    user: tuple[str, str]
    team_key_ids: tuple[str, ...]
    other_key_id: str


async def create_tenants(db: Path) -> Tenants:
    """Schema, organisations and keys, through the project's store (as `mcpgw keys create` does)."""
    async with open_sqlite_store(db) as store:
        org = await store.ensure_organisation("default")
        other = await store.ensure_organisation("other")
        admin = await store.create_api_key(org.id, is_admin=True)
        user = await store.create_api_key(org.id, user_id="bench-user")
        team = [await store.create_api_key(org.id, user_id=f"team-{n}") for n in range(TEAM_KEYS)]
        stranger = await store.create_api_key(other.id, is_admin=True)
    return Tenants(
        org.id,
        other.id,
        (admin.key.id, admin.secret),
        (user.key.id, user.secret),
        tuple(k.key.id for k in team),
        stranger.key.id,
    )


@dataclass
class PlannedSession:
    id: str
    organisation_id: str
    api_key_id: str
    started_at: int
    calls: list[int] = field(default_factory=list)  # created_at of each invocation, ascending


def uuid4_from(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def plan_sessions(
    rng: random.Random, tenants: Tenants, sessions: int, invocations: int
) -> list[PlannedSession]:
    """Who owns each session and when each of its invocations happened; sorted by start."""
    now = int(time.time() * 1000)
    scale = min(1.0, invocations / 1_000_000)
    heavy = [max(1, int(n * scale)) for n in HEAVY]
    org, user_id = tenants.organisation_id, tenants.user[0]
    owners = (tenants.admin[0], *tenants.team_key_ids)
    planned = []
    for n in range(sessions):
        if n < len(heavy):  # the busiest sessions: the non-admin key's (the admin sees them too)
            owner = (org, user_id)
        else:
            r = rng.random()
            if r < OTHER_ORG_SHARE:
                owner = (tenants.other_organisation_id, tenants.other_key_id)
            elif r < OTHER_ORG_SHARE + USER_SHARE:
                owner = (org, user_id)
            elif r < OTHER_ORG_SHARE + USER_SHARE + ADMIN_SHARE:
                owner = (org, tenants.admin[0])
            else:
                owner = (org, rng.choice(owners[1:]))
        planned.append(PlannedSession(uuid4_from(rng), owner[0], owner[1], 0))
    # The rest of the invocations over the other sessions, skewed: most sessions have a few
    # calls, some have hundreds, some none.
    rest = planned[len(heavy) :]
    weights = [rng.lognormvariate(0, 1.2) for _ in rest]
    per_session = [0] * len(rest)
    for index in rng.choices(range(len(rest)), weights=weights, k=invocations - sum(heavy)):
        per_session[index] += 1
    for session, calls in zip(planned, heavy + per_session, strict=True):
        gap_ms = rng.uniform(2_000, 60_000) if calls < 10_000 else rng.uniform(5_000, 15_000)
        duration = min(SPAN_MS - 3_600_000, max(1_000, int(calls * gap_ms)))
        session.started_at = now - duration - rng.randrange(SPAN_MS - duration)
        session.calls = sorted(session.started_at + rng.randrange(duration) for _ in range(calls))
    planned.sort(key=lambda s: s.started_at)
    return planned


def payload_pools(rng: random.Random) -> tuple[list[list[str]], list[list[str]]]:
    """Per tool, 32 arguments and 32 results JSON texts of a few hundred bytes each."""

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    arguments, results = [], []
    for _ in TOOLS:
        arguments.append(
            [
                json.dumps(
                    {
                        "query": text(5, 25),
                        "repo": "acme/widgets",
                        "path": f"src/{rng.choice(WORDS)}/{rng.choice(WORDS)}.py",
                        "labels": [rng.choice(WORDS) for _ in range(rng.randint(0, 4))],
                        "limit": rng.choice((10, 20, 50)),
                    }
                )
                for _ in range(32)
            ]
        )
        results.append(
            [
                json.dumps({"content": [{"type": "text", "text": text(30, 80)}], "isError": False})
                for _ in range(32)
            ]
        )
    return arguments, results


def session_row(seq: int, s: PlannedSession, rng: random.Random, now: int) -> tuple[object, ...]:
    last_call = s.calls[-1] if s.calls else s.started_at
    ended_at, reason = None, None
    if last_call < now - IDLE_END_MS:
        ended_at, reason = (last_call + IDLE_END_MS, "idle") if rng.random() < 0.9 else (last_call, "deleted")
    client = rng.choice(CLIENTS)
    return (
        seq,
        s.id,
        uuid.UUID(int=rng.getrandbits(128)).hex,
        s.organisation_id,
        s.api_key_id,
        f"client-{rng.randrange(50)}",
        client[0],
        client[1],
        rng.choice(PROTOCOLS),
        s.started_at,
        last_call,
        len(s.calls),
        ended_at,
        reason,
    )


_INSERT_SESSION = (
    "INSERT INTO sessions (seq, id, mcp_session_id, organisation_id, api_key_id, client_id, client_name,"
    " client_version, protocol_version, started_at, last_call_at, call_count, ended_at, end_reason)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_INVOCATION = (
    "INSERT INTO invocations (id, session_seq, method, tool_name, upstream, upstream_name, request_id,"
    " arguments_json, arguments_truncated, result_json, result_truncated, success, outcome, duration_ms,"
    " upstream_ms, trace_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def generate(db: Path, sessions: int, invocations: int) -> Dataset:
    started = time.perf_counter()
    tenants = anyio.run(create_tenants, db)
    rng = random.Random(SEED)
    planned = plan_sessions(rng, tenants, sessions, invocations)
    arguments, results = payload_pools(rng)
    now = int(time.time() * 1000)
    print(f"planned {sessions} sessions in {time.perf_counter() - started:.1f} s; inserting", file=sys.stderr)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        # Generator only: no durability needed (the meta file, written last, marks completion).
        conn.execute("PRAGMA journal_mode = MEMORY")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -524288")  # 512 MiB: the index inserts stay in memory
        conn.execute("BEGIN")
        conn.executemany(_INSERT_SESSION, (session_row(n + 1, s, rng, now) for n, s in enumerate(planned)))
        conn.execute("COMMIT")
        # Invocations in time order across sessions, as the recorder commits them: a session's
        # calls are spread over the table, not stored side by side.
        shift = sessions.bit_length()
        order = sorted(t << shift | seq for seq, s in enumerate(planned, 1) for t in s.calls)
        request_ids = [0] * (sessions + 1)
        for begin in range(0, len(order), CHUNK):
            rows = []
            for packed in order[begin : begin + CHUNK]:
                created, seq = packed >> shift, packed & ((1 << shift) - 1)
                request_ids[seq] += 1
                rows.append(invocation_row(rng, seq, created, request_ids[seq], arguments, results))
            conn.execute("BEGIN")
            conn.executemany(_INSERT_INVOCATION, rows)
            conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")  # what the gateway runs on
    big = max(planned, key=lambda s: len(s.calls))
    return Dataset(
        path=str(db),
        sessions=sessions,
        invocations=invocations,
        organisation_id=tenants.organisation_id,
        admin_key=tenants.admin[1],
        admin_key_id=tenants.admin[0],
        user_key=tenants.user[1],
        user_key_id=tenants.user[0],
        user_sessions=sum(s.api_key_id == tenants.user[0] for s in planned),
        big_session_id=big.id,
        big_session_invocations=len(big.calls),
        generated_s=round(time.perf_counter() - started, 1),
        generated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def invocation_row(
    rng: random.Random,
    seq: int,
    created: int,
    request_id: int,
    arguments: list[list[str]],
    results: list[list[str]],
) -> tuple[object, ...]:
    tool = rng.randrange(len(TOOLS))
    name, upstream, upstream_name = TOOLS[tool]
    method = "tools/call"
    if rng.random() < 0.05:  # a resource: its URI is the name on both sides
        method, upstream, name = "resources/read", "docs", f"docs://guides/{rng.randrange(200)}"
        upstream_name = name
    r = rng.random()
    outcome, success = ("ok", 1) if r < 0.94 else ("tool_error", 0)
    result: str | None = rng.choice(results[tool])
    if r >= 0.97:
        outcome, result = ("upstream_error" if r < 0.99 else "timeout"), None
    duration = int(rng.expovariate(1 / 120)) + 2
    return (
        uuid4_from(rng),
        seq,
        method,
        name,
        upstream,
        upstream_name,
        str(request_id),
        rng.choice(arguments[tool]),
        0,
        result,
        0,
        success,
        outcome,
        duration,
        max(0, duration - rng.randrange(4)),
        f"{rng.getrandbits(128):032x}",
        created,
    )


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Query:
    name: str
    caller: str  # admin | user
    listing: str  # sessions | invocations
    limit: int
    page: int  # 1 = first page; N = reached by following `next` N - 1 times


@dataclass(frozen=True)
class Timing:
    query: str
    layer: str  # sql | store | http | walk-store | walk-http
    samples: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    rows: int
    bytes: int | None  # HTTP response body


def queries(dataset: Dataset) -> list[Query]:
    admin_sessions = round(dataset.sessions * (1 - OTHER_ORG_SHARE))  # roughly: only for clamping
    deep_sessions = min(DEEP_SESSIONS_PAGE, max(2, admin_sessions // SESSIONS_LIMIT - 1))
    deep_calls = min(DEEP_INVOCATIONS_PAGE, max(2, dataset.big_session_invocations // INVOCATIONS_LIMIT - 1))
    return [
        Query("sessions, first page", "admin", "sessions", SESSIONS_LIMIT, 1),
        Query(f"sessions, page {deep_sessions}", "admin", "sessions", SESSIONS_LIMIT, deep_sessions),
        Query("sessions, first page, non-admin key", "user", "sessions", SESSIONS_LIMIT, 1),
        Query("invocations, first page", "admin", "invocations", INVOCATIONS_LIMIT, 1),
        Query(f"invocations, page {deep_calls}", "admin", "invocations", INVOCATIONS_LIMIT, deep_calls),
    ]


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def timing(query: str, layer: str, seconds: list[float], rows: int, size: int | None) -> Timing:
    ms = sorted(s * 1000 for s in seconds)
    return Timing(
        query,
        layer,
        len(ms),
        round(percentile(ms, 0.50), 3),
        round(percentile(ms, 0.99), 3),
        round(statistics.fmean(ms), 3),
        round(ms[-1], 3),
        rows,
        size,
    )


class Layers:
    """The three ways to a page: its SQL on a plain sqlite3 connection, the Store, and HTTP."""

    def __init__(
        self,
        dataset: Dataset,
        store: SqliteStore,
        http: httpx2.Client,
        sql: sqlite3.Connection,
        http_pg: httpx2.Client | None = None,
    ):
        self.dataset = dataset
        self.store = store
        self.http = http
        self.sql = sql
        self.http_pg = http_pg  # a gateway on PostgreSQL serving a copy of the same data

    def _caller(self, query: Query) -> tuple[str, str | None]:
        if query.caller == "admin":
            return self.dataset.admin_key, None
        return self.dataset.user_key, self.dataset.user_key_id

    def url(self, query: Query) -> str:
        base = f"/mcp/{self.dataset.organisation_id}/sessions"
        return base if query.listing == "sessions" else f"{base}/{self.dataset.big_session_id}/invocations"

    async def store_page(self, query: Query, seek: Seek) -> tuple[int, tuple[int, int] | None, bool]:
        """What the API handler asks the store for; returns (rows, last key, more after)."""
        org, (_, key_id) = self.dataset.organisation_id, self._caller(query)
        if query.listing == "sessions":
            page: Any = await self.store.list_sessions(org, api_key_id=key_id, seek=seek, limit=query.limit)
        else:
            session_id = self.dataset.big_session_id
            found = await self.store.get_session(org, session_id, api_key_id=key_id)
            assert found is not None, session_id
            page = await self.store.list_invocations(session_id, seek=seek, limit=query.limit)
        last = page.rows[-1].key if page.rows else None
        return len(page.rows), last, page.more_after

    def http_page(
        self, query: Query, cursor: str | None, http: httpx2.Client | None = None
    ) -> httpx2.Response:
        # Blocking on purpose: nothing else runs on this event loop, and the sync client adds
        # the least client-side time to what is measured.
        secret, _ = self._caller(query)
        params = {"Limit": str(query.limit), **({"Cursor": cursor} if cursor else {})}
        headers = {"authorization": f"Bearer {secret}"}
        response = (http or self.http).get(self.url(query), params=params, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"GET {response.url}: {response.status_code} {response.text[:300]}")
        return response

    def health(self) -> httpx2.Response:
        response = self.http.get("/healthz")
        response.raise_for_status()
        return response

    async def walk_store(self, query: Query) -> tuple[Seek, list[float]]:
        """Follow the walk to `query.page` through the store; the Seek of that page, and page times."""
        seek, times = Seek(), []
        for _ in range(query.page - 1):
            t0 = time.perf_counter()
            _, last, more = await self.store_page(query, seek)
            times.append(time.perf_counter() - t0)
            assert last is not None and more, f"{query.name}: the walk ended early"
            seek = Seek(last)
        return seek, times

    def walk_http(self, query: Query, http: httpx2.Client | None = None) -> tuple[str | None, list[float]]:
        cursor, times = None, []
        for _ in range(query.page - 1):
            t0 = time.perf_counter()
            response = self.http_page(query, cursor, http)
            times.append(time.perf_counter() - t0)
            cursor = response.json()["meta"]["cursors"]["next"]
            assert cursor, f"{query.name}: the walk ended early"
        return cursor, times

    async def traced(self, query: Query, seek: Seek) -> list[str]:
        """The SQL the store runs for this page, with its parameters inlined (sqlite3's trace)."""
        conn = self.store._conn  # the store's statement connection (private; a benchmark may look)
        seen: list[str] = []
        await conn.set_trace_callback(seen.append)
        try:
            await self.store_page(query, seek)
        finally:
            await conn.set_trace_callback(None)  # type: ignore[arg-type]  # None turns it off
        return seen

    def run_sql(self, statements: list[str]) -> int:
        rows = 0
        for sql in statements:
            rows += len(self.sql.execute(sql).fetchall())
        return rows


@dataclass
class Prepared:
    query: Query
    seek: Seek
    cursor: str | None
    statements: list[str]
    walks: list[Timing]
    cursor_pg: str | None = None  # the same page's cursor on the PostgreSQL gateway (its own secret)


async def prepare(layers: Layers, query: Query) -> Prepared:
    seek, store_walk = await layers.walk_store(query)
    cursor, http_walk = layers.walk_http(query)
    walks = []
    if store_walk:
        walks.append(timing(query.name, "walk-store", store_walk, query.limit, None))
        walks.append(timing(query.name, "walk-http", http_walk, query.limit, None))
    statements = await layers.traced(query, seek)
    # The same page in every layer: compare the first row's id.
    http_first = layers.http_page(query, cursor).json()["data"][0]["id"]
    sql_rows = [layers.sql.execute(s).fetchall() for s in statements]
    page_rows = max(sql_rows, key=len)
    if http_first not in {row[0] for row in page_rows}:
        raise RuntimeError(f"{query.name}: HTTP and the store are not on the same page")
    cursor_pg = None
    if layers.http_pg is not None:
        cursor_pg, _ = layers.walk_http(query, layers.http_pg)
        pg_first = layers.http_page(query, cursor_pg, layers.http_pg).json()["data"][0]["id"]
        if pg_first != http_first:
            raise RuntimeError(f"{query.name}: PostgreSQL's page is not SQLite's")
    return Prepared(query, seek, cursor, statements, walks, cursor_pg)


async def measure(layers: Layers, prepared: list[Prepared], samples: int) -> list[Timing]:
    """Every (query, layer) `samples` times, round-robin, so noise spreads evenly over them."""
    probes: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [(FLOOR, "http", _sync(layers.health))]
    for p in prepared:
        probes.append((p.query.name, "sql", _sync(layers.run_sql, p.statements)))
        probes.append((p.query.name, "store", _bind(layers.store_page, p.query, p.seek)))
        probes.append((p.query.name, "http", _sync(layers.http_page, p.query, p.cursor)))
        if layers.http_pg is not None:
            probes.append(
                (p.query.name, "http-pg", _sync(layers.http_page, p.query, p.cursor_pg, layers.http_pg))
            )
    times: dict[tuple[str, str], list[float]] = {(q, layer): [] for q, layer, _ in probes}
    last: dict[tuple[str, str], Any] = {}
    for n in range(WARMUP + samples):
        for name, layer, probe in probes:
            t0 = time.perf_counter()
            result = await probe()
            elapsed = time.perf_counter() - t0
            if n >= WARMUP:
                times[(name, layer)].append(elapsed)
            last[(name, layer)] = result
    timings = []
    for (name, layer), seconds in times.items():
        result = last[(name, layer)]
        if layer.startswith("http"):
            rows, size = len(result.json().get("data", ())), len(result.content)
        else:
            rows, size = (result if layer == "sql" else result[0]), None
        timings.append(timing(name, layer, seconds, rows, size))
    return timings


def _sync(fn: Callable[..., Any], *args: Any) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return fn(*args)

    return call


def _bind(fn: Callable[..., Awaitable[Any]], *args: Any) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await fn(*args)

    return call


# --------------------------------------------------------------------------- query plans


@dataclass(frozen=True)
class Plan:
    query: str
    sql: str
    plan: list[str]
    flagged: list[str]  # temp b-trees and full table scans


def explain(conn: sqlite3.Connection, prepared: list[Prepared]) -> list[Plan]:
    plans, seen = [], set()
    for p in prepared:
        for sql in p.statements:
            shape = sql.split(" WHERE ")[0] + " WHERE …" if " WHERE " in sql else sql
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            lines = [detail for _, _, _, detail in rows]
            if (shape, tuple(lines)) in seen:
                continue
            seen.add((shape, tuple(lines)))
            flagged = [
                line
                for line in lines
                if "TEMP B-TREE" in line or (line.startswith("SCAN ") and "USING" not in line)
            ]
            plans.append(Plan(p.query.name, sql, lines, flagged))
    return plans


def format_plans(plans: list[Plan]) -> str:
    out = []
    for plan in plans:
        out.append(f"-- {plan.query}\n{plan.sql}")
        out.extend(f"   {line}" + ("   <-- !" if line in plan.flagged else "") for line in plan.plan)
    return "\n".join(out)


# --------------------------------------------------------------------------- the gateway


def write_config(workdir: Path, db: Path | str, port: int, name: str = "gateway") -> Path:
    config = workdir / f"{name}.yaml"
    database = db if isinstance(db, str) else db.resolve()
    secrets = f"secrets: {{key: {'A' * 43}}}\n" if isinstance(db, str) else ""
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"database: {database}\n{secrets}"
        "auth: {required: true}\n"
        "upstreams: []\n"
        # Off: this benchmark only reads, and the retention pruner would scan (or trim) the data.
        "recording: {enabled: false}\n"
    )
    return config


def start_gateway(procs: Processes, workdir: Path, db: Path | str, name: str = "gateway") -> str:
    port = free_port()
    config = write_config(workdir, db, port, name)
    log = workdir / f"{name}.log"
    child = procs.spawn([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)], log)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(child, f"{base}/healthz", log, STARTUP_TIMEOUT_S)
    return base


def copy_to_postgres(cleanup: ExitStack, workdir: Path, db: Path) -> str:
    """A throwaway PostgreSQL server (destroyed by `cleanup`) holding a copy of `db`, made as an
    operator moves over (`mcpgw migrate --from sqlite:///…`); its database URL."""
    from tests.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    cleanup.callback(server.destroy)
    url = server.url(server.create_database())
    config = write_config(workdir, url, free_port(), "migrate")
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "migrate",
            "--config",
            str(config),
            "--from",
            f"sqlite:///{db.resolve()}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"copied {db} into PostgreSQL in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return url


# --------------------------------------------------------------------------- output


def format_table(timings: list[Timing]) -> str:
    rows = [
        f"{'query':40} {'layer':10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8} "
        f"{'rows':>5} {'KiB':>6} {'n':>5}"
    ]
    layer_order = {"sql": 0, "store": 1, "http": 2, "http-pg": 3, "walk-store": 4, "walk-http": 5}
    floor = next((t.p50_ms for t in timings if t.query == FLOOR), math.nan)
    by_query: dict[str, list[Timing]] = {}
    for t in timings:
        by_query.setdefault(t.query, []).append(t)
    for name, group in by_query.items():
        for t in sorted(group, key=lambda t: layer_order[t.layer]):
            size = f"{t.bytes / 1024:6.1f}" if t.bytes is not None else f"{'-':>6}"
            rows.append(
                f"{name:40} {t.layer:10} {t.p50_ms:8.2f} {t.p99_ms:8.2f} {t.mean_ms:8.2f} {t.max_ms:8.2f} "
                f"{t.rows:5} {size} {t.samples:5}"
            )
            name = ""
        layers = {t.layer: t for t in group}
        if {"sql", "store", "http"} <= layers.keys():
            sql, store, http = layers["sql"], layers["store"], layers["http"]
            rows.append(
                f"{'':40} -> p50: SQL {sql.p50_ms:.2f}, store adds {store.p50_ms - sql.p50_ms:+.2f}, "
                f"HTTP adds {http.p50_ms - store.p50_ms:+.2f} ms (the floor: {floor:.2f})"
            )
    return "\n".join(rows)


def check(timings: list[Timing]) -> list[dict[str, Any]]:
    return [
        {
            "target": f"p99 <= {TARGET_P99_MS:g} ms over {t.layer.upper()}",
            "query": t.query,
            "value": t.p99_ms,
            "passed": t.p99_ms <= TARGET_P99_MS,
        }
        for t in timings
        if t.layer.startswith("http") and t.query != FLOOR
    ]


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "git": git_describe(),
    }


# --------------------------------------------------------------------------- main


async def benchmark(
    args: argparse.Namespace, dataset: Dataset, base_url: str, base_url_pg: str | None = None
) -> dict[str, Any]:
    db = Path(dataset.path)
    limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
    with (
        httpx2.Client(base_url=base_url, timeout=HTTP_TIMEOUT_S, limits=limits, trust_env=False) as http,
        httpx2.Client(
            base_url=base_url_pg or base_url, timeout=HTTP_TIMEOUT_S, limits=limits, trust_env=False
        ) as http_pg,
        closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)) as sql,
    ):
        async with open_sqlite_store(db) as store:
            layers = Layers(dataset, store, http, sql, http_pg if base_url_pg else None)
            prepared = []
            for query in queries(dataset):
                print(f"walking to {query.name} ...", file=sys.stderr, flush=True)
                prepared.append(await prepare(layers, query))
            plans = explain(sql, prepared)
            print(f"timing {args.samples} samples per query and layer ...", file=sys.stderr, flush=True)
            gc.collect()
            timings = await measure(layers, prepared, args.samples)
    walks = [w for p in prepared for w in p.walks]
    return {"plans": plans, "timings": timings, "walks": walks}


def _raise_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupt)
    started = machine()
    dataset, reused = load_or_generate(args.db, args.sessions, args.invocations)
    size = sum(p.stat().st_size for p in database_files(args.db)[:3] if p.exists())
    how = "reused (generated earlier in" if reused else "generated in"
    print(
        f"database {args.db}: {dataset.sessions} sessions, {dataset.invocations} invocations, "
        f"{size / 2**20:.0f} MiB; {how} {dataset.generated_s:.1f} s{')' if reused else ''}\n"
        f"big session {dataset.big_session_id}: {dataset.big_session_invocations} invocations; "
        f"non-admin key owns {dataset.user_sessions} sessions"
    )
    # The gateways stop (procs) before their PostgreSQL server goes (cleanup).
    with (
        ExitStack() as cleanup,
        tempfile.TemporaryDirectory(prefix="mcpgw-listing-") as tmp,
        Processes() as procs,
    ):
        try:
            base_url = start_gateway(procs, Path(tmp), args.db)
            if args.postgres:
                base_url_pg = start_gateway(
                    procs, Path(tmp), copy_to_postgres(cleanup, Path(tmp), args.db), "gw-pg"
                )
                result = anyio.run(benchmark, args, dataset, base_url, base_url_pg)
            else:
                result = anyio.run(benchmark, args, dataset, base_url)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping the gateway", file=sys.stderr)
            return 130
        except StartupError as exc:
            print(f"\nlisting: {exc}", file=sys.stderr)
            return 2
    timings: list[Timing] = result["timings"] + result["walks"]
    plans: list[Plan] = result["plans"]
    checks = check(result["timings"])
    print("\nEXPLAIN QUERY PLAN of the statements the store ran (parameters inlined):")
    print(format_plans(plans))
    flagged = [p for p in plans if p.flagged]
    if flagged:
        print(f"\n{len(flagged)} statement(s) with a temp b-tree or a full table scan")
    else:
        print("\nno temp b-trees, no full table scans")
    print(f"\n{args.samples} samples per row (walk rows: every page on the way to the deep page)")
    print(format_table(timings))
    load = ", ".join(f"{x:.2f}" for x in started["loadavg_at_start"])
    print(f"\nload average (1, 5, 15 min) at start {load}; at end {os.getloadavg()[0]:.2f}")
    print(f"targets (docs/design.md, Performance), nproc={started['nproc']}:")
    for c in checks:
        print(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['target']:24} {c['query']:40} {c['value']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**started, "loadavg_at_end": os.getloadavg()},
        "settings": {
            "samples": args.samples,
            "warmup": WARMUP,
            "statistic": "nearest-rank p50/p99 over the samples; layers interleaved round-robin",
        },
        "database": {
            "path": str(args.db),
            "bytes": size,
            "reused": reused,
            **{k: v for k, v in asdict(dataset).items() if not k.endswith("_key") and k != "path"},
        },
        "targets": checks,
        "plans": [asdict(p) for p in plans],
        "timings": [asdict(t) for t in timings],
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
