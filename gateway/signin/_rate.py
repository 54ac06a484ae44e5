"""Registrations and metadata document fetches per client address: a token bucket each (an IPv6
address counts by its /64, as failed key checks do), so one address cannot fill the database
with clients or send the gateway fetching for it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.host._throttle import bucket_of

__all__ = ["PerAddress"]

_MAX_ADDRESSES = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class PerAddress:
    def __init__(self, per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_hour  # 0: no limit
        self._rate = per_hour / 3600.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def spend(self, client: str | None) -> int | None:
        """Take one from `client`'s bucket; the seconds to wait instead, if it is empty."""
        if not self._limit:
            return None
        now = self._clock()
        key = bucket_of(client)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_ADDRESSES:  # a flood of addresses: forget the full ones
                self._buckets = {k: b for k, b in self._buckets.items() if self._level(b, now) < self._limit}
            bucket = self._buckets[key] = _Bucket(float(self._limit), now)
        level = self._level(bucket, now)
        if level < 1:
            return max(1, math.ceil((1 - level) / self._rate))
        bucket.tokens, bucket.updated = level - 1, now
        return None

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self._limit, bucket.tokens + (now - bucket.updated) * self._rate)
