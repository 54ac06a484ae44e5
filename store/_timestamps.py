"""Timestamps as stored: ISO-8601 UTC text with milliseconds, e.g. ``2026-11-21T05:45:07.123Z``.

The fixed width and the ``Z`` make the text sort in time order, so indexes over it work.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_timestamp", "parse_timestamp", "utc_now"]


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
