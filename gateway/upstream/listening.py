"""GET (listen) streams to one Streamable HTTP upstream: a bounded pool of their own.

A handshake-era upstream session keeps a GET stream open for what the upstream sends outside a
request (list changes, resource updates, its own requests). With one upstream session per host
session (`per_host`), every host session holds such a stream for as long as it lives. On the
connections the calls use, a few hundred sessions took every connection, and from then on
each call waited for one and timed out: the upstream looked down to every host.

So listen streams get a connection pool of their own, capped at `max_listen_streams`, and
calls keep theirs (`max_connections`) whole. A session past the cap opens no stream and does
not wait for one before its first call: its calls work as before; what the upstream would
send it outside a call is lost until a stream frees up, when it takes the slot (first come,
first served). That is logged, at most once a minute per upstream.
The gateway's own sessions (the catalogue's listing session, a shared pool's: at most
`max_sessions` + 1) take no slot and keep their streams on the calls' pool: what they hear
(list changes) every host needs, and they must not queue behind host sessions.

Why not open a stream only while the host itself listens: hosts that never open a GET stream
(one-shot CLIs, most bridges) would lose the `list_changed` an upstream sends during their
calls, and sessions that do listen would still be unbounded. A cap bounds both.
"""

from __future__ import annotations

import logging
import time

import anyio

from gateway.upstream._wire import Pool

logger = logging.getLogger(__name__)

_WARN_EVERY_S = 60.0


class ListenStreams:
    """The slots and the connections of one upstream's listen streams."""

    def __init__(self, name: str, pool: Pool, cap: int) -> None:
        self.name = name
        self.pool = pool
        self.cap = cap
        self._slots = anyio.Semaphore(cap)
        self._warned_at: float | None = None

    @property
    def open(self) -> int:
        return self.cap - self._slots.value

    def try_take(self) -> bool:
        """A slot now if one is free; else False (and the degradation is logged)."""
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            self._warn_full()
            return False
        return True

    async def take(self) -> None:
        """Wait for a slot (the caller runs in the background: calls never wait on this)."""
        await self._slots.acquire()

    def give_back(self) -> None:
        self._slots.release()

    def _warn_full(self) -> None:
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < _WARN_EVERY_S:
            return
        self._warned_at = now
        logger.warning(
            "upstream %s: %d listen streams open, its max_listen_streams; sessions past it get no "
            "messages the upstream sends outside a call (list changes, resource updates) until "
            "one closes; their calls are not affected",
            self.name,
            self.cap,
        )
