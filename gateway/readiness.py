"""`GET /readyz`: whether the gateway can serve now, and the state of each upstream, as JSON.

Ready (200) means: the gateway is running, its database takes writes, and every upstream the
config marks `required: true` is up. An upstream that is not required never makes the gateway
unready: while it is down hosts get the other upstreams' tools and a warning naming it. Every
upstream's state is shown either way (`gateway/upstream/health.py`: unknown, starting, up or
down, its last error, when it last answered). `GET /healthz` says only that the process is alive.

The database check is an empty transaction under the write lock: it writes nothing, and fails
when the file cannot be written or another writer holds the lock for longer than the check
waits. One check runs at a time however many probes ask; each waits for it at most
`DATABASE_WAIT_S`, so a locked database cannot pile checks up behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from gateway.background import start_guarded
from gateway.protocol.jsonrpc import JSONObject
from gateway.upstream.health import UpstreamHealth
from store import Store, StoreError

__all__ = ["DATABASE_WAIT_S", "Readiness"]

DATABASE_WAIT_S = 2.0


@dataclass(slots=True)
class _DatabaseCheck:
    store: Store
    task_group: TaskGroup
    _done: anyio.Event | None = None  # the check in flight, if any
    _problem: str | None = None  # what the last finished check found (None: writable)

    async def problem(self) -> str | None:
        """None if the database took a write just now, else what is wrong."""
        done = self._done
        if done is None:
            done = self._done = anyio.Event()
            start_guarded(self.task_group, "checking the database", self._check, done)
        with anyio.move_on_after(DATABASE_WAIT_S):
            await done.wait()
            return self._problem
        return f"no write lock within {DATABASE_WAIT_S:g}s"

    async def _check(self, done: anyio.Event) -> None:
        self._problem = "the check failed"  # unless it finishes
        try:
            await self.store.write_records([])  # an empty group commit: the lock, and nothing else
            self._problem = None
        except StoreError as exc:
            self._problem = str(exc)[:500] or type(exc).__name__
        finally:
            self._done = None
            done.set()


@dataclass(slots=True)
class Readiness:
    store: Store
    upstreams: Mapping[str, UpstreamHealth]  # in the config's order
    task_group: TaskGroup
    _database: _DatabaseCheck = field(init=False)

    def __post_init__(self) -> None:
        self._database = _DatabaseCheck(self.store, self.task_group)

    async def report(self) -> tuple[int, JSONObject]:
        """The HTTP status and body of `/readyz` for a running gateway."""
        problem = await self._database.problem()
        database: JSONObject = (
            {"writable": True} if problem is None else {"writable": False, "error": problem}
        )
        upstreams = {name: health.report() for name, health in self.upstreams.items()}
        ready = problem is None and all(h.state == "up" for h in self.upstreams.values() if h.required)
        body = {"status": "ready" if ready else "not_ready", "database": database, "upstreams": upstreams}
        return (200 if ready else 503), body
