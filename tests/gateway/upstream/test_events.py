"""The gateway's event-stream decoder reads what httpx2's `EventSource` reads, however chunked.

httpx2's decoder (derived from httpx-sse) is the reference: the SDK's own client reads upstream
streams with it. Each stream below is fed whole, byte by byte, and in seeded random pieces.
Compared are the events that carry data, the only ones the gateway looks at: httpx2 also
dispatches an event that has an `event:` field and no `data:`, which the HTML standard does not.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import httpx2
import pytest

from gateway.upstream.events import EventDecoder

STREAMS = {
    "one-message": b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\r\n\r\n',
    "priming-then-message": b'id: 0\nretry: 3000\ndata:\n\nid: 1\nevent: message\ndata: {"a": 1}\n\n',
    "data-lines-that-are-empty": b"data:\ndata\n\ndata: z\n\n",
    "multi-line-data": b"data: first\ndata:second\ndata:  two spaces\n\n",
    "cr-only-line-ends": b"data: a\revent: custom\rid: 7\r\rdata: b\r\r",
    "comments-and-keepalives": b": stream open\n\n: ping\ndata: x\n: inside\n\n",
    "unknown-fields-and-no-colon": b"foo: bar\ndata\nfield-without-colon\n\ndata: y\n\n",
    "id-with-nul-ignored": b"id: good\ndata: 1\n\nid: ba\x00d\ndata: 2\n\n",
    "unterminated-last-event": b"data: kept\n\ndata: dropped at the end",
    "unicode": "data: h\u00e9llo \u2603 \U0001f600\n\n".encode(),
    "empty-event-type-resets": b"event: custom\n\ndata: plain\n\n",
}


def chunkings(body: bytes) -> dict[str, list[bytes]]:
    rng = random.Random(len(body))
    pieces, at = [], 0
    while at < len(body):
        step = rng.randint(1, 7)
        pieces.append(body[at : at + step])
        at += step
    return {"whole": [body], "bytewise": [body[i : i + 1] for i in range(len(body))], "random": pieces}


async def reference(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    class Body(httpx2.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

    response = httpx2.Response(
        200,
        headers={"content-type": "text/event-stream"},
        stream=Body(),
        request=httpx2.Request("POST", "http://upstream.test/mcp"),
    )
    return [(e.event, e.data, e.id) async for e in httpx2.EventSource(response) if e.data]


def ours(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    decoder = EventDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)] + decoder.close()
    return [(e.event, e.data, e.id) for e in events if e.data]


@pytest.mark.parametrize("name", list(STREAMS))
async def test_decodes_the_same_events_as_httpx2(name: str) -> None:
    for how, chunks in chunkings(STREAMS[name]).items():
        expected = await reference(chunks)
        assert ours(chunks) == expected, how
        assert expected, "every stream here carries at least one event"


def test_a_leading_byte_order_mark_is_skipped_even_split_across_chunks() -> None:
    body = b"\xef\xbb\xbfdata: after the BOM\n\n"
    for chunks in chunkings(body).values():
        assert ours(chunks) == [("message", "after the BOM", "")]
