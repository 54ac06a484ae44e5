"""asyncpg vs psycopg 3 (with psycopg_pool) for the PostgreSQL store: the measurement behind the choice.

    python bench/pg_drivers.py [--rounds 7] [--batches 300] [--invocations 1000000]

Starts a throwaway PostgreSQL server (``tests/postgres.py``: ``initdb``/``pg_ctl`` in a temporary
directory, loopback only), makes the recording tables as migration 3 has them, and compares, on
uvloop (the gateway's loop), in interleaved rounds (ABAB, then BABA):

- **record**: group commits like ``store/_records.py`` writes them: one transaction holding a
  batch of invocation rows (inserted through their session's ``seq``) and the session counters.
  Two ways per driver: ``executemany`` (one statement per row, pipelined) and ``unnest`` (the
  whole batch as arrays in one statement). Client CPU (this process's user+system time) per
  row and wall time per commit, at batch sizes 1, 8 and 32.
- **list**: a keyset page of sessions (51 rows, newest activity first) and of one session's
  invocations (51 rows at depth) with ``--invocations`` rows recorded: p50/p99 wall per page and
  client CPU per page.

Reports the median over the rounds of each figure and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import orjson
import psycopg_pool
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.postgres import PostgresServer  # noqa: E402

SCHEMA = """
CREATE TABLE sessions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    organisation_id TEXT NOT NULL,
    api_key_id TEXT,
    last_call_at BIGINT NOT NULL,
    call_count BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_activity ON sessions(organisation_id, last_call_at);
CREATE TABLE invocations (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL,
    session_seq BIGINT NOT NULL REFERENCES sessions(seq) ON DELETE CASCADE,
    method TEXT NOT NULL,
    tool_name TEXT NOT NULL,
    upstream TEXT,
    request_id TEXT,
    arguments_json TEXT,
    result_json TEXT,
    success BOOLEAN NOT NULL,
    outcome TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    trace_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX invocations_by_session ON invocations(session_seq, created_at);
CREATE FUNCTION record_calls(session_id TEXT, calls TEXT) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE written BIGINT;
BEGIN
    INSERT INTO invocations (session_seq, id, method, tool_name, upstream, request_id, arguments_json,
                             result_json, success, outcome, duration_ms, trace_id, created_at)
    SELECT s.seq, r.id, r.method, r.tool_name, r.upstream, r.request_id, r.arguments_json,
           r.result_json, r.success, r.outcome, r.duration_ms, r.trace_id, r.created_at
    FROM jsonb_to_recordset(calls::jsonb) AS r(id TEXT, method TEXT, tool_name TEXT, upstream TEXT,
         request_id TEXT, arguments_json TEXT, result_json TEXT, success BOOLEAN, outcome TEXT,
         duration_ms BIGINT, trace_id TEXT, created_at BIGINT)
    JOIN sessions s ON s.id = session_id;
    GET DIAGNOSTICS written = ROW_COUNT;
    UPDATE sessions SET call_count = call_count + written,
        last_call_at = GREATEST(last_call_at, (SELECT max((c->>'created_at')::BIGINT)
                                               FROM jsonb_array_elements(calls::jsonb) AS c))
    WHERE id = session_id;
    RETURN written;
END $$;
"""
COLUMNS = "id, method, tool_name, upstream, request_id, arguments_json, result_json, success, outcome," \
    " duration_ms, trace_id, created_at"  # fmt: skip
INSERT_MANY = {
    "asyncpg": f"INSERT INTO invocations (session_seq, {COLUMNS}) SELECT seq, $2, $3, $4, $5, $6, $7, $8,"
    " $9, $10, $11, $12, $13 FROM sessions WHERE id = $1",
    "psycopg": f"INSERT INTO invocations (session_seq, {COLUMNS}) SELECT seq, %s, %s, %s, %s, %s, %s, %s,"
    " %s, %s, %s, %s, %s FROM sessions WHERE id = %s",
}
TYPES = ("text", "text", "text", "text", "text", "text", "text", "bool", "text", "int8", "text", "int8")
_UNNEST_ARGS = ", ".join(f"${i + 2}::{t}[]" for i, t in enumerate(TYPES))
INSERT_UNNEST = {
    "asyncpg": f"INSERT INTO invocations (session_seq, {COLUMNS}) SELECT s.seq, r.* FROM"
    f" unnest({_UNNEST_ARGS}) AS r JOIN sessions s ON s.id = $1",
}
COUNT = {
    "asyncpg": "UPDATE sessions SET call_count = call_count + $1, last_call_at = GREATEST(last_call_at, $2)"
    " WHERE id = $3",
    "psycopg": "UPDATE sessions SET call_count = call_count + %s, last_call_at = GREATEST(last_call_at, %s)"
    " WHERE id = %s",
}
SESSIONS_PAGE = (
    "SELECT id, organisation_id, api_key_id, last_call_at, call_count, seq FROM sessions"
    " WHERE organisation_id = {0} AND (last_call_at, seq) < ({1}, {2})"
    " ORDER BY last_call_at DESC, seq DESC LIMIT 51"
)
CALLS_PAGE = (
    f"SELECT {COLUMNS}, seq FROM invocations WHERE session_seq = {{0}} AND (created_at, seq) > ({{1}}, {{2}})"
    " ORDER BY created_at, seq LIMIT 51"
)


def _psycopg_unnest() -> str:
    args = ", ".join(f"%s::{t}[]" for t in TYPES)
    return (
        f"INSERT INTO invocations (session_seq, {COLUMNS}) SELECT s.seq, r.* FROM"
        f" unnest({args}) AS r JOIN sessions s ON s.id = %s"
    )


INSERT_UNNEST["psycopg"] = _psycopg_unnest()


def _row(n: int) -> tuple[Any, ...]:
    return (str(uuid.uuid4()), "tools/call", "demo__echo", "demo", str(n), '{"text":"hello"}',
            '{"content":[{"type":"text","text":"hello"}]}', True, "ok", 3, uuid.uuid4().hex,
            int(time.time() * 1000))  # fmt: skip


_NAMES = COLUMNS.split(", ")


def as_json(rows: list[tuple[Any, ...]]) -> str:
    return orjson.dumps([dict(zip(_NAMES, row, strict=True)) for row in rows]).decode()


class Driver(Protocol):
    name: str

    async def record(self, session: str, rows: list[tuple[Any, ...]], unnest: bool | None) -> None: ...
    async def page(self, sql: str, args: tuple[Any, ...]) -> list[Any]: ...
    async def close(self) -> None: ...


class Asyncpg(Driver):
    name = "asyncpg"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(self, session: str, rows: list[tuple[Any, ...]], unnest: bool | None) -> None:
        if unnest is None:
            async with self.pool.acquire() as conn:
                await conn.execute("SELECT record_calls($1, $2)", session, as_json(rows))
            return
        async with self.pool.acquire() as conn, conn.transaction():
            if unnest:
                await conn.execute(
                    INSERT_UNNEST["asyncpg"], session, *(list(c) for c in zip(*rows, strict=True))
                )
            else:
                await conn.executemany(INSERT_MANY["asyncpg"], [(session, *row) for row in rows])
            await conn.execute(COUNT["asyncpg"], len(rows), rows[-1][-1], session)

    async def page(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(sql.format("$1", "$2", "$3"), *args))

    async def close(self) -> None:
        await self.pool.close()


class Psycopg(Driver):
    name = "psycopg"

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool) -> None:
        self.pool = pool

    async def record(self, session: str, rows: list[tuple[Any, ...]], unnest: bool | None) -> None:
        if unnest is None:
            async with self.pool.connection() as conn:
                await conn.execute("SELECT record_calls(%s, %s)", (session, as_json(rows)))
            return
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if unnest:
                await cur.execute(
                    INSERT_UNNEST["psycopg"], (*(list(c) for c in zip(*rows, strict=True)), session)
                )
            else:
                await cur.executemany(INSERT_MANY["psycopg"], [(*row, session) for row in rows])
            await cur.execute(COUNT["psycopg"], (len(rows), rows[-1][-1], session))

    async def page(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(sql.format("%s", "%s", "%s"), args)
            return await cur.fetchall()

    async def close(self) -> None:
        await self.pool.close()


async def _no_reset(conn: asyncpg.Connection) -> None:
    pass


async def open_drivers(url: str) -> list[Driver]:
    # No reset query on release (asyncpg's default costs a round trip per use): the store leaves
    # no session state behind, and psycopg_pool runs none either.
    apg = await asyncpg.create_pool(url, min_size=2, max_size=4, reset=_no_reset)
    ppool = psycopg_pool.AsyncConnectionPool(
        url, min_size=2, max_size=4, open=False, kwargs={"autocommit": True, "prepare_threshold": 0}
    )
    await ppool.open(wait=True)
    return [Asyncpg(apg), Psycopg(ppool)]


async def timed(op: Callable[[], Awaitable[Any]], n: int) -> tuple[float, list[float]]:
    """(client CPU seconds per op, wall seconds of each op)."""
    walls = []
    cpu0 = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        await op()
        walls.append(time.perf_counter() - t)
    return (time.process_time() - cpu0) / n, walls


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def seed(url: str, sessions: int, invocations: int) -> tuple[int, int, int]:
    """Fill the tables with COPY; (organisation's newest last_call_at, the big session's seq, its depth)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
        now = int(time.time() * 1000)
        await conn.copy_records_to_table(
            "sessions",
            records=[(str(uuid.uuid4()), f"org{i % 10}", None, now - i, 0) for i in range(sessions)],
            columns=["id", "organisation_id", "api_key_id", "last_call_at", "call_count"],
        )
        seqs = [r[0] for r in await conn.fetch("SELECT seq FROM sessions ORDER BY seq")]
        big = seqs[0]
        chunk = 100_000
        for start in range(0, invocations, chunk):
            records = [
                (big if i % 16 == 0 else seqs[i % len(seqs)], *_row(i)[:11], now - invocations + i)
                for i in range(start, min(invocations, start + chunk))
            ]
            await conn.copy_records_to_table(
                "invocations", records=records, columns=["session_seq", *COLUMNS.split(", ")]
            )
        await conn.execute("ANALYZE")
        depth = await conn.fetchval("SELECT count(*) / 2 FROM invocations WHERE session_seq = $1", big)
        return now, big, int(depth)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = PostgresServer()
    server.start()
    try:
        url = server.url(server.create_database())
        now, big, depth = await seed(url, args.sessions, args.invocations)
        drivers = await open_drivers(url)
        for d in drivers:  # one session row per driver and size: no lock shared between them
            for size in args.sizes:
                await d.page(
                    "INSERT INTO sessions (id, organisation_id, last_call_at)"
                    " VALUES ({0}, {1}, {2}) RETURNING seq",
                    (f"{d.name}-{size}", "bench", now),
                )
        async with drivers[0].pool.acquire() as conn:  # type: ignore[attr-defined]
            mid = await conn.fetchrow(
                "SELECT created_at, seq FROM invocations WHERE session_seq = $1 ORDER BY created_at, seq"
                " OFFSET $2 LIMIT 1", big, depth)  # fmt: skip
            smid = await conn.fetchrow(
                "SELECT last_call_at, seq FROM sessions WHERE organisation_id = 'org3'"
                " ORDER BY last_call_at DESC, seq DESC OFFSET $1 LIMIT 1", args.sessions // 20)  # fmt: skip
        samples: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            samples.setdefault(key, []).append(value)

        counter = iter(range(10**9))
        for rnd in range(args.rounds):
            order = drivers if rnd % 2 == 0 else list(reversed(drivers))
            for d in order + list(reversed(order)):
                for size in args.sizes:
                    for unnest in (False, True, None):
                        way = {False: "executemany", True: "unnest", None: "function"}[unnest]

                        async def rec(d: Driver = d, size: int = size, unnest: bool | None = unnest) -> None:
                            await d.record(
                                f"{d.name}-{size}", [_row(next(counter)) for _ in range(size)], unnest
                            )

                        cpu, walls = await timed(rec, args.batches)
                        add(f"record {way} x{size} {d.name} cpu_us_per_row", cpu / size * 1e6)
                        add(f"record {way} x{size} {d.name} wall_ms_p50", pct(walls, 0.5) * 1e3)
                for label, sql, key in (
                    ("sessions page deep", SESSIONS_PAGE, ("org3", smid[0], smid[1])),
                    ("calls page deep", CALLS_PAGE, (big, mid[0], mid[1])),
                ):

                    async def page(d: Driver = d, sql: str = sql, key: tuple[Any, ...] = key) -> None:
                        rows = await d.page(sql, key)
                        assert rows

                    cpu, walls = await timed(page, args.pages)
                    add(f"{label} {d.name} cpu_us", cpu * 1e6)
                    add(f"{label} {d.name} wall_ms_p50", pct(walls, 0.5) * 1e3)
                    add(f"{label} {d.name} wall_ms_p99", pct(walls, 0.99) * 1e3)
        for d in drivers:
            await d.close()
        return {key: round(statistics.median(values), 3) for key, values in sorted(samples.items())}
    finally:
        server.destroy()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200, help="commits per size, way and round")
    parser.add_argument("--pages", type=int, default=300, help="pages per query and round")
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--invocations", type=int, default=1_000_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pg_drivers.json")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    result = uvloop.run(main(arguments))
    for key, value in result.items():
        print(f"{key:60} {value:10.3f}")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2))
