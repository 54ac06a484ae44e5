"""The last hour of each upstream's calls, in minute buckets: calls, errors and latency quantiles,
for a page that shows an upstream's health (the console's upstreams page) without a query over
the record.

Each minute keeps a count per latency bucket (1-2-5 steps from 0.1 ms to 60 s), so p50 and p99
are the upper bound of the bucket the quantile falls in: within one step, and a fixed cost per
call (one bisect, three increments) however many calls there are.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["UpstreamWindow", "WindowSummary"]

_BOUNDS_MS: tuple[float, ...] = (
    *(step * 10.0**exponent for exponent in range(-1, 5) for step in (1, 2, 5)),
    math.inf,
)


@dataclass(frozen=True, slots=True)
class WindowSummary:
    calls: int
    errors: int  # outcome other than ok, as the record's `success` says
    p50_ms: float | None  # None: no calls in the window
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


class _Minute:
    __slots__ = ("buckets", "calls", "errors", "minute")

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.calls = 0
        self.errors = 0
        self.buckets = [0] * len(_BOUNDS_MS)


class UpstreamWindow:
    def __init__(self, minutes: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self._minutes = minutes
        self._clock = clock
        self._by_upstream: dict[str, deque[_Minute]] = {}

    def add(self, upstream: str, ok: bool, duration_s: float) -> None:
        minute = int(self._clock() // 60)
        minutes = self._by_upstream.get(upstream)
        if minutes is None:
            minutes = self._by_upstream[upstream] = deque(maxlen=self._minutes)
        if not minutes or minutes[-1].minute != minute:
            minutes.append(_Minute(minute))
        current = minutes[-1]
        current.calls += 1
        if not ok:
            current.errors += 1
        current.buckets[bisect.bisect_left(_BOUNDS_MS, duration_s * 1000.0)] += 1

    def summary(self, upstream: str) -> WindowSummary:
        """The last `minutes` minutes of `upstream`'s calls (the current minute included)."""
        since = int(self._clock() // 60) - self._minutes + 1
        recent = [m for m in self._by_upstream.get(upstream, ()) if m.minute >= since]
        calls = sum(m.calls for m in recent)
        errors = sum(m.errors for m in recent)
        if not calls:
            return WindowSummary(0, 0, None, None)
        counts = [sum(m.buckets[i] for m in recent) for i in range(len(_BOUNDS_MS))]
        return WindowSummary(calls, errors, _quantile(counts, calls, 0.5), _quantile(counts, calls, 0.99))


def _quantile(counts: list[int], total: int, q: float) -> float:
    rank = math.ceil(q * total)
    seen = 0
    for bound, count in zip(_BOUNDS_MS, counts, strict=True):
        seen += count
        if seen >= rank:
            return bound
    return math.inf
