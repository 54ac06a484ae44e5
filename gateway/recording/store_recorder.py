"""`StoreRecorder`: the durable recorder. One writer task, group commit, retention in the background.

Every request that records puts its row on a queue and waits. The writer takes whatever is
queued, commits it as one transaction (`Store.write_records`), then wakes every waiter of that
batch: under load many calls share one commit, and no call is answered before its row is on
disk (WAL, so a `kill -9` of the gateway cannot lose it).

A batch that fails because the database is busy or unavailable is retried for a while; a batch
that fails otherwise is written row by row, so one bad row cannot take others with it. A row
that still cannot be written fails its caller with `RecordingFailed`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import orjson
from anyio.abc import TaskGroup

from gateway.background import every_once
from gateway.config import RecordingConfig
from gateway.errors import RecordingFailed
from gateway.recording.recorder import CallRecord, TaskEnded
from gateway.recording.redaction import Redactor
from store import (
    InvocationRecord,
    RecordEvent,
    SessionEnd,
    SessionStart,
    Store,
    StoreError,
    StoreUnavailable,
    StoreUnreachable,
    TaskEnd,
)

__all__ = ["RETENTION_LEASE", "StoreRecorder", "running_recorder"]

logger = logging.getLogger(__name__)

RETENTION_LEASE = "maintenance/retention"

_RETRY_FOR_S = 10.0
_WAIT_FOR_COMMIT_S = 30.0
_MAX_BATCH = 1000
_MAX_QUEUED = 100_000
_ARGUMENT_PARAMS = {"tools/call": "arguments", "prompts/get": "arguments"}


class _Pending:
    __slots__ = ("done", "error", "event")

    def __init__(self, event: RecordEvent, done: asyncio.Future[None]) -> None:
        self.event = event
        self.done = done
        self.error: str | None = None

    def settle(self, error: str | None = None) -> None:
        if not self.done.done():  # not already given up on, and its caller not cancelled
            self.error = error
            self.done.set_result(None)


class StoreRecorder:
    """Hands rows to one writer task. asyncio primitives rather than anyio's here: this runs
    for every recorded call, and anyio's resolve the running library on each use."""

    def __init__(
        self,
        store: Store,
        config: RecordingConfig,
        task_group: TaskGroup,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._on_commit = on_commit  # told how long each batch's commit took, in seconds
        self._redactor = Redactor.with_defaults(
            config.redact_keys, config.redact_patterns, config.max_payload_bytes
        )
        self._queue: deque[_Pending] = deque()
        self._queued = asyncio.Event()
        self._closed = False
        task_group.start_soon(self._write_loop)

    @property
    def queue_depth(self) -> int:
        """Rows waiting for the next commit."""
        return len(self._queue)

    async def session_started(self, start: SessionStart) -> None:
        await self._commit(start)

    async def session_ended(self, end: SessionEnd) -> None:
        await self._commit(end)

    async def record(self, call: CallRecord) -> None:
        await self._commit(self.invocation(call))

    async def task_ended(self, end: TaskEnded) -> None:
        result_json, result_truncated = self._redactor.render(end.result)
        ended_at = datetime.fromtimestamp(end.ended_at, UTC)
        await self._commit(
            TaskEnd(end.invocation_id, end.session_id, end.outcome, result_json, result_truncated, ended_at)
        )

    def invocation(self, call: CallRecord) -> InvocationRecord:
        """The row for `call`: redacted, capped, as the store keeps it."""
        field = _ARGUMENT_PARAMS.get(call.method)
        arguments = (
            call.params.get(field)
            if field is not None
            else {k: v for k, v in call.params.items() if k != "_meta"}
        )
        arguments_json, arguments_truncated = self._redactor.render(arguments)
        answer = call.response.get("result", call.response.get("error"))
        result_json, result_truncated = self._redactor.render(answer)
        return InvocationRecord(
            id=call.invocation_id or str(uuid.uuid4()),
            session_id=call.session_id,
            method=call.method,
            tool_name=call.name,
            upstream=call.upstream,
            upstream_name=call.upstream_name,
            request_id=None if call.request_id is None else orjson.dumps(call.request_id).decode(),
            arguments_json=arguments_json,
            arguments_truncated=arguments_truncated,
            result_json=result_json,
            result_truncated=result_truncated,
            success=call.outcome == "ok",
            outcome=call.outcome,
            duration_ms=round(call.duration_s * 1000),
            upstream_ms=None if call.upstream_s is None else round(call.upstream_s * 1000),
            trace_id=call.trace_id,
            created_at=datetime.fromtimestamp(call.started_at, UTC),
        )

    async def _commit(self, event: RecordEvent) -> None:
        if self._closed or len(self._queue) >= _MAX_QUEUED:
            raise RecordingFailed("the recorder is overloaded or stopped")
        loop = asyncio.get_running_loop()
        pending = _Pending(event, loop.create_future())
        self._queue.append(pending)
        self._queued.set()
        # A timer rather than asyncio.timeout, which costs three times as much per call.
        deadline = loop.call_later(
            _WAIT_FOR_COMMIT_S, pending.settle, f"no commit within {_WAIT_FOR_COMMIT_S:.0f}s"
        )
        try:
            # A caller cancelled here cancels only its own future: its row stays queued.
            await pending.done
        finally:
            deadline.cancel()
        if pending.error is not None:
            raise RecordingFailed(pending.error)

    async def _write_loop(self) -> None:
        # Shielded as a whole, so what was queued is written even when the task group around
        # is cancelled; the loop ends once close() is called (running_recorder always does).
        with anyio.CancelScope(shield=True):
            while self._queue or not self._closed:
                if not self._queue:
                    self._queued.clear()
                    await self._queued.wait()
                    continue
                await self._write([self._queue.popleft() for _ in range(min(len(self._queue), _MAX_BATCH))])

    async def _write(self, batch: Sequence[_Pending]) -> None:
        error: str | None = None
        try:
            await self._write_retrying([p.event for p in batch])
        except StoreUnavailable as exc:  # retried for a while already: row by row would not help
            logger.error("could not record %d row(s): %s", len(batch), exc)
            error = str(exc)
        except StoreError as exc:
            if len(batch) == 1:
                logger.error("could not record a %s: %s", type(batch[0].event).__name__, exc)
                error = str(exc)
            else:
                for pending in batch:  # isolate the row that fails from the rows that do not
                    await self._write([pending])
        finally:
            for pending in batch:
                pending.settle(error)

    async def _write_retrying(self, events: Sequence[RecordEvent]) -> None:
        deadline = time.monotonic() + _RETRY_FOR_S
        delay = 0.05
        while True:
            try:
                began = time.perf_counter()
                await self._store.write_records(events)
                if self._on_commit is not None:
                    self._on_commit(time.perf_counter() - began)
                return
            except StoreUnreachable:
                raise  # the server is away: refuse the calls now rather than hold them
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("recording: database unavailable (%s); retrying", exc)
            # Backing off from a busy database: a schedule, not synchronisation.
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def close(self) -> None:
        """Stop taking new rows; the writer commits what is queued, then ends."""
        self._closed = True
        self._queued.set()

    async def prune_forever(self, ran: Callable[[str], None] | None = None) -> None:
        """Apply the retention limits every `retention.interval_s`: on one replica at a time
        (the holder of the lease `RETENTION_LEASE`), as they are the same for all."""
        retention = self._config.retention
        if retention.max_age_days is None and retention.max_invocations is None:
            return
        coordination = self._store.coordination
        await every_once(coordination, RETENTION_LEASE, retention.interval_s, "retention", self._prune, ran)

    async def _prune(self) -> None:
        retention = self._config.retention
        older_than = (
            None
            if retention.max_age_days is None
            else datetime.now(UTC) - timedelta(days=retention.max_age_days)
        )
        try:
            deleted = await self._store.prune_records(
                older_than=older_than, max_invocations=retention.max_invocations
            )
            if deleted:
                logger.info("retention: deleted %d old record row(s)", deleted)
        except StoreError as exc:
            logger.warning("retention: pruning failed, will retry: %s", exc)


@asynccontextmanager
async def running_recorder(
    store: Store,
    config: RecordingConfig,
    on_commit: Callable[[float], None] | None = None,
    ran: Callable[[str], None] | None = None,
) -> AsyncIterator[StoreRecorder]:
    """A StoreRecorder with its writer and pruner running; on exit, queued rows are committed."""
    async with anyio.create_task_group() as writer:
        recorder = StoreRecorder(store, config, writer, on_commit)
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(recorder.prune_forever, ran)
                try:
                    yield recorder
                finally:
                    background.cancel_scope.cancel()
        finally:
            recorder.close()  # the writer commits what is queued, then its task ends
