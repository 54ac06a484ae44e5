"""Failed API key checks per client address: a token bucket each, and their log lines.

Each address (an IPv6 one by its /64, which one host can hold whole) gets a bucket of
`limit` failures that refills at `limit` per minute; a failure spends one. An address whose
bucket is empty is refused before its key is looked up, told when one failure's worth will
have refilled (Retry-After). Refusals at that point spend nothing more: they cost nothing.

Logging is once per address per interval at most: the first failure is reported at once and
later ones are counted, then reported by the next failure after the interval or by the
periodic `report` (the gateway's background task), whichever comes first. A line names the
count, the address and the time it covers; never a key, nor anything derived from one.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass

__all__ = ["FailureLimits", "bucket_of"]

LOG_INTERVAL_S = 60.0
_MAX_ADDRESSES = 10_000


@dataclass(slots=True)
class _Address:
    tokens: float
    updated: float  # monotonic
    pending: int = 0  # failures not yet in a log line
    pending_since: float = 0.0
    logged_at: float = -math.inf


class FailureLimits:
    def __init__(self, limit_per_minute: int, logger: logging.Logger) -> None:
        self._limit = limit_per_minute  # 0: count and log, never refuse
        self._rate = limit_per_minute / 60.0
        self._logger = logger
        self._addresses: dict[str, _Address] = {}

    def retry_after(self, client: str | None, now: float) -> int | None:
        """Seconds until `client` may try again, if it must wait; a refusal counts for the log."""
        if not self._limit:
            return None
        entry = self._addresses.get(bucket_of(client))
        if entry is None:
            return None
        tokens = min(self._limit, entry.tokens + (now - entry.updated) * self._rate)
        if tokens >= 1:
            return None
        self._count(bucket_of(client), entry, now)
        return max(1, math.ceil((1 - tokens) / self._rate))

    def failed(self, client: str | None, now: float) -> None:
        bucket = bucket_of(client)
        entry = self._addresses.get(bucket)
        if entry is None:
            if len(self._addresses) >= _MAX_ADDRESSES:
                self._forget_some(now)
            entry = self._addresses[bucket] = _Address(float(self._limit), now)
        if self._limit:
            entry.tokens = min(self._limit, entry.tokens + (now - entry.updated) * self._rate) - 1
            entry.updated = now
        self._count(bucket, entry, now)

    def report(self, now: float) -> None:
        """Log what is held back where the interval has passed; forget addresses at rest."""
        for bucket, entry in list(self._addresses.items()):
            if entry.pending and now - entry.logged_at >= LOG_INTERVAL_S:
                self._log(bucket, entry, now)
            elif not entry.pending and self._rested(entry, now):
                del self._addresses[bucket]

    def _count(self, bucket: str, entry: _Address, now: float) -> None:
        if not entry.pending:
            entry.pending_since = now
        entry.pending += 1
        if now - entry.logged_at >= LOG_INTERVAL_S:
            self._log(bucket, entry, now)

    def _log(self, bucket: str, entry: _Address, now: float) -> None:
        seconds = max(1, round(now - entry.pending_since))
        self._logger.warning(
            "%d failed API key authentication(s) from %s in the last %ds", entry.pending, bucket, seconds
        )
        entry.pending = 0
        entry.logged_at = now

    def _rested(self, entry: _Address, now: float) -> bool:
        full = not self._limit or entry.tokens + (now - entry.updated) * self._rate >= self._limit
        return full and now - entry.logged_at >= LOG_INTERVAL_S

    def _forget_some(self, now: float) -> None:
        """Make room: addresses at rest first, then the oldest half (a flood of new addresses)."""
        self._addresses = {b: e for b, e in self._addresses.items() if e.pending or not self._rested(e, now)}
        if len(self._addresses) >= _MAX_ADDRESSES:
            keep = list(self._addresses.items())[_MAX_ADDRESSES // 2 :]
            self._addresses = dict(keep)


def bucket_of(client: str | None) -> str:
    if client is None:
        return "(unknown address)"
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
