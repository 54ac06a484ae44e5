""" "Everyone, do this now and tell me": a round trip to every live process on the database.

A revocation must hold on every replica from the host's next request, through any replica, once
the admin has been answered. The revocation's own NOTIFY (``_pg_revocations.py``) reaches the
other replicas a few milliseconds after its commit, and nothing says when; so the process that
revoked also asks every live process to drop what it has cached (advance its key generation)
and waits, bounded, until each says it has. What a process caches is then re-read from the
database, which holds the committed revocation, whichever notice came first.

A process that does not answer within the bound (a replica killed a moment ago, whose heartbeat
has not lapsed yet) is named in the answer: it serves nothing meanwhile, or hears the
revocation's own notice when it does.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from .coordination import Coordination

__all__ = ["Confirmations"]


class Confirmations:
    """Have every other live process run `act` and say so, on `name`'s two topics."""

    def __init__(self, coordination: Coordination, name: str, act: Callable[[], None]) -> None:
        self._coordination = coordination
        self._act = act
        self._asking = f"mcpgw.confirm.{name}"
        self._answers = f"mcpgw.confirmed.{name}."
        self._waiting: dict[str, tuple[set[str], anyio.Event]] = {}
        coordination.subscribe(self._asking, self._asked)
        coordination.subscribe(self._answers + coordination.instance_id, self._answered)

    async def everyone(self, timeout_s: float) -> frozenset[str]:
        """Ask every other live process; the ones that had not answered within `timeout_s`."""
        me = self._coordination.instance_id
        others = await self._coordination.live_instances() - {me}
        if not others:
            return frozenset()
        call = secrets.token_hex(8)
        done = anyio.Event()
        self._waiting[call] = (set(others), done)
        try:
            await self._coordination.publish(self._asking, {"call": call, "from": me})
            with anyio.move_on_after(timeout_s):
                await done.wait()
            return frozenset(self._waiting[call][0])
        finally:
            del self._waiting[call]

    async def _asked(self, payload: Mapping[str, Any]) -> None:
        asker = payload.get("from")
        if not isinstance(asker, str) or asker == self._coordination.instance_id:
            return
        self._act()
        answer = {"call": payload.get("call"), "by": self._coordination.instance_id}
        await self._coordination.publish(self._answers + asker, answer)

    async def _answered(self, payload: Mapping[str, Any]) -> None:
        waiting = self._waiting.get(str(payload.get("call")))
        if waiting is None:
            return  # answered after the asker stopped waiting
        missing, done = waiting
        missing.discard(str(payload.get("by")))
        if not missing:
            done.set()
