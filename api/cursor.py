"""Paging cursors: opaque to clients, tamper-evident, and valid only for the query that minted them.

A cursor is `<payload>.<tag>`, both base64url: the payload is the keyset position (`store.Seek`),
the tag an HMAC-SHA256 over the payload *and* the query it belongs to (route, organisation,
session, and whose sessions the caller may see). So an edited cursor, one from another
session, organisation or API key, and one signed with another database's key all fail the
same check, and the handler answers `Pagination.InvalidCursor`. The key is a random secret kept
in the database, so cursors survive restarts and work on every gateway sharing the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import orjson

from api.errors import InvalidCursor
from store import Seek

__all__ = ["CursorCodec"]

_VERSION = 1
_TAG_BYTES = 16
_MAX_CURSOR_CHARS = 200


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, query: str, payload: bytes) -> bytes:
        message = query.encode() + b"\0" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]

    def mint(self, query: str, seek: Seek) -> str:
        if seek.key is None:
            raise ValueError("a cursor needs a keyset position")
        return self.seal(query, [*seek.key, int(seek.backward), int(seek.inclusive)])

    def read(self, query: str, cursor: str) -> Seek:
        """The position in `cursor`; `InvalidCursor` unless minted by this key for `query`."""
        fields = self.open(query, cursor)
        if len(fields) != 4:
            raise InvalidCursor
        sort_value, seq, backward, inclusive = fields
        return Seek((int(sort_value), int(seq)), backward=bool(backward), inclusive=bool(inclusive))

    def seal(self, query: str, fields: list[int | str]) -> str:
        """A cursor carrying `fields` (JSON scalars), valid only for `query`."""
        payload = orjson.dumps([_VERSION, *fields])
        return f"{_b64encode(payload)}.{_b64encode(self._tag(query, payload))}"

    def open(self, query: str, cursor: str) -> list[Any]:
        """The fields `seal` put in `cursor`; `InvalidCursor` unless minted by this key for `query`."""
        if len(cursor) > _MAX_CURSOR_CHARS or cursor.count(".") != 1:
            raise InvalidCursor
        encoded_payload, encoded_tag = cursor.split(".")
        try:
            payload, tag = _b64decode(encoded_payload), _b64decode(encoded_tag)
        except (binascii.Error, ValueError) as exc:
            raise InvalidCursor from exc
        if not hmac.compare_digest(tag, self._tag(query, payload)):
            raise InvalidCursor
        fields = orjson.loads(payload)  # we signed it, so it is ours and well-formed
        if not (isinstance(fields, list) and fields and fields[0] == _VERSION):
            raise InvalidCursor
        return fields[1:]
