"""The paging contract of the listing API: `Limit` and `Cursor` in, `{data, meta.cursors}` out.

`current` re-reads this page (from its first row), `next` continues after its last row and
`previous` walks back from its first; `next` is null on the last page and `previous` on the
first. Each cursor is minted for one query (see `cursor.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from starlette.datastructures import QueryParams

from api.cursor import CursorCodec
from api.errors import InvalidCursor, Refused
from store import Page, Seek

__all__ = ["MAX_LIMIT", "Keyed", "page_body", "read_limit", "read_seek"]

MAX_LIMIT = 200
"""The largest `Limit` a listing accepts; larger values are a 400, not silently clamped."""

_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


class Keyed(Protocol):
    @property
    def key(self) -> tuple[int, int]: ...


T = TypeVar("T", bound=Keyed)


def read_limit(query: QueryParams, default: int) -> int:
    raw = query.get("Limit")
    if raw is None:
        return default
    value = int(raw) if _WHOLE_NUMBER.fullmatch(raw.strip()) else 0
    if not 1 <= value <= MAX_LIMIT:
        shown = raw if len(raw) <= 20 else raw[:20] + "…"
        raise Refused(
            400,
            "Pagination.InvalidLimit",
            f"Limit must be a whole number from 1 to {MAX_LIMIT}, got {shown!r}.",
        )
    return value


def read_seek(query: QueryParams, codec: CursorCodec, scope: str) -> Seek:
    raw = query.get("Cursor")
    if raw is None or raw == "":
        return Seek()
    try:
        return codec.read(scope, raw)
    except InvalidCursor as exc:
        raise Refused(400, "Pagination.InvalidCursor", "The Cursor value is invalid for this query.") from exc


def page_body(
    page: Page[T],
    *,
    codec: CursorCodec,
    scope: str,
    incoming: str | None,
    render: Callable[[T], Mapping[str, Any]],
) -> dict[str, Any]:
    rows = page.rows
    current = codec.mint(scope, Seek(rows[0].key, inclusive=True)) if rows else incoming or None
    following = codec.mint(scope, Seek(rows[-1].key)) if rows and page.more_after else None
    preceding = codec.mint(scope, Seek(rows[0].key, backward=True)) if rows and page.more_before else None
    return {
        "data": [render(row) for row in rows],
        "meta": {"cursors": {"current": current, "next": following, "previous": preceding}},
    }
