"""Decoding `text/event-stream` bodies: the HTML standard's "interpreting an event stream".

Upstreams of the handshake era answer most POSTs with a one-event SSE stream, so this runs once
per call. httpx2's `EventSource` decodes the same format but only from an `httpx2.Response`
(charset sniffing, text decoders and header objects per response): about 60 µs a call here,
a tenth of the gateway's CPU budget, against a few µs for this. `tests/gateway/upstream/test_events.py`
checks that both decoders read the same events from the same bytes, however they are chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import ResponseTooLarge

_BOM = b"\xef\xbb\xbf"
MAX_LINE_BYTES = 16 * 1024 * 1024  # one message per event: as much as a whole response may be


@dataclass(frozen=True, slots=True)
class Event:
    data: str
    event: str = "message"
    id: str = ""


class EventDecoder:
    """Feed it body chunks as they arrive; it returns the events each chunk completes."""

    def __init__(self, max_event_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_event_bytes  # one event's data: `ResponseTooLarge` past it
        self._size = 0
        self._pending = b""  # an unfinished line, carried to the next chunk
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._retry_ms: int | None = None

    @property
    def last_event_id(self) -> str:
        """The stream's last event ID ("" if none was sent): what a reconnection names."""
        return self._last_id

    @property
    def retry_ms(self) -> int | None:
        """The reconnection time the stream last set with `retry`, if it did."""
        return self._retry_ms

    def reconnected(self) -> None:
        """The stream goes on over a new connection: what the old one left unfinished is
        dropped, the last event ID and reconnection time are kept (as an EventSource keeps them)."""
        self._pending, self._started = b"", False
        self._data, self._event, self._size = [], "", 0

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._pending + chunk
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._pending = buffer
                return []
            self._started = True
            buffer = buffer.removeprefix(_BOM)
        # A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
        held = buffer.endswith(b"\r")
        if held:
            buffer = buffer[:-1]
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._pending = lines.pop() + (b"\r" if held else b"")
        if len(self._pending) > self._max:
            raise ResponseTooLarge(self._max)
        events = []
        for line in lines:
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[Event]:
        """The body ended: a CR held back was a line end after all."""
        return self.feed(b"\n") if self._pending.endswith(b"\r") else []

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (keep-alives, priming)
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value)
            if self._size > self._max:
                raise ResponseTooLarge(self._max)
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry_ms = int(value)
        # Unknown fields are ignored.
        return None

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data, self._event, self._size = [], "", 0
        if not data:
            return None
        return Event("\n".join(data), event or "message", self._last_id)
