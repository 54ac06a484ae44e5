"""Timestamps as stored: ISO-8601 UTC text with milliseconds, e.g. ``2026-11-21T05:45:07.123Z``.

The fixed width and the ``Z`` make the text sort in time order, so indexes over it work.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["format_timestamp", "from_unix_ms", "parse_timestamp", "to_unix_ms", "utc_now"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    """Return the current UTC time, truncated to whole milliseconds (what the store can keep)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_timestamp(moment: datetime) -> str:
    """Return ``moment`` (timezone-aware) as stored text; sub-millisecond digits are dropped."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """Return the aware UTC datetime that ``format_timestamp`` wrote as ``text``."""
    return datetime.fromisoformat(text).astimezone(UTC)


def to_unix_ms(moment: datetime) -> int:
    """Return ``moment`` (timezone-aware) as whole milliseconds since the epoch."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return (moment - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding


def from_unix_ms(ms: int) -> datetime:
    """Return the aware UTC datetime for ``ms`` milliseconds since the epoch."""
    return _EPOCH + timedelta(milliseconds=ms)
