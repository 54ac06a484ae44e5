"""Every stdio child the gateway runs, counted per upstream against the caps on them.

A host session in `per_host` mode starts a child of each stdio upstream it calls; without a cap a
client opening sessions in a loop would fork the machine to death. `Children` is shared by every
connector: it admits a start only while the upstream's own `max_children` and the gateway's
`sessions.max_children` leave room (counting starts under way, so concurrent starts cannot pass a
cap), and answers "how many run now" cheaply, for metrics and tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import UpstreamBusy
from gateway.upstream.channel import Channel

__all__ = ["Children"]


class Children:
    def __init__(self, max_total: int) -> None:
        self.max_total = max_total
        self._running: dict[str, list[Channel]] = {}
        self._starting: Counter[str] = Counter()

    def count(self, name: str | None = None) -> int:
        """Children running (and starting) now: of upstream `name`, or of all upstreams."""
        names = list({*self._running, *self._starting}) if name is None else [name]
        return sum(len(self._live(each)) + self._starting[each] for each in names)

    @contextmanager
    def starting(self, name: str, cap: int | None) -> Iterator[None]:
        """Room for one more child of `name` while it starts: `UpstreamBusy` past either cap
        (`cap` None: the upstream has no cap of its own, as in shared mode, where its pool is)."""
        if cap is not None and self.count(name) >= cap:
            raise UpstreamBusy(
                name, f"{cap} processes of it are running, its limit (max_children): try again later"
            )
        if self.count() >= self.max_total:
            raise UpstreamBusy(
                name,
                f"the gateway runs {self.max_total} upstream processes, its limit "
                "(sessions.max_children): try again later",
            )
        self._starting[name] += 1
        try:
            yield
        finally:
            self._starting[name] -= 1

    def track(self, name: str, channel: Channel) -> None:
        self._running.setdefault(name, []).append(channel)

    def _live(self, name: str) -> list[Channel]:
        running = [channel for channel in self._running.get(name, []) if not channel.closed]
        self._running[name] = running
        return running
