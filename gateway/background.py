"""Tasks the gateway runs beside requests, in task groups that outlive any one request.

An exception escaping a task of an anyio task group cancels the whole group. The gateway's main
group holds every stdio child, upstream event stream, suspended 2026-07-28 call and maintenance
loop, so one bad message or one faulty upstream would end all of them (and every session with
them). Everything started there goes through `start_guarded`: an exception that escapes is
logged in one line (with its traceback at DEBUG only: a deeply recursive one can run to
hundreds of kilobytes) and ends that task alone. Periodic work runs through `every`, which
also survives a failed round; work that must happen once across the replicas on one database
(pruning) through `every_once`, which runs a round only while this replica holds the task's
lease (`Coordination.hold_lease`): one replica does it, and another takes over once the
holder's lease lapses (it stopped, or lost the database).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVarTuple

import anyio
from anyio.abc import TaskGroup

from store.coordination import Coordination

__all__ = ["LEASE_ROUNDS", "every", "every_once", "log_failure", "start_guarded"]

logger = logging.getLogger(__name__)
Args = TypeVarTuple("Args")
LEASE_ROUNDS = 3.0
"""A task's lease outlives its holder's last renewal by this many rounds: a holder late by a round
or two keeps it; one that is gone for good is replaced within about that many rounds."""


def log_failure(what: str, exc: BaseException) -> None:
    """One line for an unexpected exception; the traceback too when DEBUG is on."""
    logger.error(
        "%s failed: %s: %s",
        what,
        type(exc).__name__,
        str(exc)[:200],
        exc_info=logger.isEnabledFor(logging.DEBUG),
    )


def start_guarded(
    task_group: TaskGroup, what: str, func: Callable[[*Args], Awaitable[object]], *args: *Args
) -> None:
    """Start `func(*args)` in `task_group`; an exception it raises ends it alone, logged as `what`."""

    async def guarded() -> None:
        try:
            await func(*args)
        except Exception as exc:
            log_failure(what, exc)

    task_group.start_soon(guarded, name=what)


async def every(interval_s: float, what: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` now and then every `interval_s`, forever; a round that fails is logged and the
    next one runs on schedule."""
    while True:
        try:
            await step()
        except Exception as exc:
            log_failure(what, exc)
        await anyio.sleep(interval_s)  # a schedule, not synchronisation


async def every_once(
    coordination: Coordination,
    lease: str,
    interval_s: float,
    what: str,
    step: Callable[[], Awaitable[object]],
    ran: Callable[[str], None] | None = None,
) -> None:
    """As `every`, but each round runs `step` only if this process holds (takes or renews) the
    lease `lease`; `ran(lease)` is told of each round that did. A round where the database cannot
    be asked is skipped, as one where another process holds the lease."""
    ttl_s = interval_s * LEASE_ROUNDS
    while True:
        try:
            if await coordination.hold_lease(lease, ttl_s):
                if ran is not None:
                    ran(lease)
                await step()
        except Exception as exc:
            log_failure(what, exc)
        await anyio.sleep(interval_s)  # a schedule, not synchronisation
