"""Every stdio child the gateway runs, counted per upstream against the caps on them.

A host session in `per_host` mode starts a child of each stdio upstream it calls; without a cap a
client opening sessions in a loop would fork the machine to death. `Children` is shared by every
connector: it admits a start only while the upstream's own `max_children` (host sessions' own
children; the pool's, bounded by `max_sessions`, are not counted against it) and the gateway's
`sessions.max_children` (every child) leave room, counting starts under way, so concurrent starts
cannot pass a cap; and it answers "how many run now" cheaply, for metrics and tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import UpstreamBusy
from gateway.upstream.channel import Channel

__all__ = ["Children"]

_Kind = tuple[str, bool]  # upstream, a host session's own child (else a pool's)


class Children:
    def __init__(self, max_total: int) -> None:
        self.max_total = max_total
        self._running: dict[_Kind, list[Channel]] = {}
        self._starting: Counter[_Kind] = Counter()

    def count(self, name: str | None = None, *, own: bool | None = None) -> int:
        """Children running (and starting) now: of upstream `name` (None: of all upstreams), host
        sessions' own (`own` True), the pools' (False) or both (None)."""
        kinds = [kind for kind in {*self._running, *self._starting} if name is None or kind[0] == name]
        return sum(
            len(self._live(kind)) + self._starting[kind] for kind in kinds if own is None or kind[1] == own
        )

    @contextmanager
    def starting(self, name: str, cap: int | None, *, own: bool) -> Iterator[None]:
        """Room for one more child of `name` while it starts: `UpstreamBusy` past either cap
        (`cap`, on host sessions' `own` children of the upstream; None: no cap of its own)."""
        if cap is not None and own and self.count(name, own=True) >= cap:
            raise UpstreamBusy(
                name,
                f"{cap} host sessions have a process of it running, its limit (max_children): "
                "try again later",
            )
        if self.count() >= self.max_total:
            raise UpstreamBusy(
                name,
                f"the gateway runs {self.max_total} upstream processes, its limit "
                "(sessions.max_children): try again later",
            )
        self._starting[(name, own)] += 1
        try:
            yield
        finally:
            self._starting[(name, own)] -= 1

    def track(self, name: str, channel: Channel, *, own: bool) -> None:
        self._running.setdefault((name, own), []).append(channel)

    def _live(self, kind: _Kind) -> list[Channel]:
        running = [channel for channel in self._running.get(kind, []) if not channel.closed]
        self._running[kind] = running
        return running
