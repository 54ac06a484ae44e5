"""Bounds on what a client can make the HTTP server hold: the time to send a request, the size of its head.

uvicorn (0.54) reads requests without a deadline and, with httptools, without header limits: a
connection that never sends a byte, a head trickled a byte at a time, or a body trickled after
a large Content-Length each holds a connection, its memory and a file descriptor for as long as
the client likes, and a head may carry any number of headers of any size. Servers that face a
network bound all of these (nginx: client_header_timeout, client_body_timeout,
large_client_header_buffers; gunicorn: limit_request_line, limit_request_fields; Node:
headersTimeout, requestTimeout, maxHeaderSize). `LimitedHttpProtocol` is uvicorn's httptools
protocol with the same bounds, from the `security` section of the config:

- a request's head (request line and headers) must be complete within `header_timeout_s` of the
  connection opening or, on a kept-alive connection, of the request's first byte;
- its body must be complete within `body_timeout_s` of its head. Only reading the request is
  timed: the response (a long tool call, an SSE stream) takes as long as the app takes;
- a head has at most `max_headers` headers, whose names and values come to at most
  `max_header_bytes` (else 431), and a request target of at most `max_url_bytes` (else 414);
- a response the client stops reading (the transport's buffer over its high-water mark, so the
  app's sends wait) may stall for `write_timeout_s`: then the connection is dropped, and the
  app's sends go nowhere, so an unread answer is not held for as long as the client likes;
- at most `max_connections` connections are open at once: one more is answered 503 and closed
  as it opens (uvicorn's `limit_concurrency` answers 503 only once a head is complete, so
  connections that never send one were all kept).

It also sends a response whose length is declared in one `write`, head and body together.

The limits are applied in llhttp's callbacks; no Python code looks at the bytes. The deadlines
cost one timer per connection, not per request: the timer is re-armed lazily when it fires, so a
request only moves a float. Time during which uvicorn itself holds a request back (a pipelined
request waiting for the one before it to be answered, a body the app has not taken yet) is not
the client's, and does not count. A refused request gets a small plain-text 408, 414 or 431 with
`Connection: close` where no response is on the wire yet; otherwise the connection just closes.
Either way the gateway stops sending but reads (and drops) what the client still sends for up
to `_LINGER_S` before it closes, so the client reads what it was sent rather than a reset.
Refusals are logged at INFO, at most one line every `_LOG_EVERY_S` seconds, never with header
values.
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from gateway.config import SecurityConfig

__all__ = ["LimitedHttpProtocol", "RefusalLog", "protocol_for"]

logger = logging.getLogger(__name__)

# What the connection is waiting for. The client's clock runs in _HEAD and _BODY (and in _IDLE,
# as a backstop to uvicorn's keep-alive timer); in _APP the request is read and the app has it.
_IDLE, _HEAD, _BODY, _APP = range(4)
_LINGER_S = 2.0
_LOG_EVERY_S = 10.0
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 19\r\nconnection: close\r\n\r\nService Unavailable"
)


class _Refused(Exception):
    """Raised from a parser callback to stop llhttp once the request has been answered.

    A signal private to this module: llhttp turns it into the `HttpParserError` that
    `data_received` catches, so it never reaches anything else."""


class RefusalLog:
    """At most one INFO line per interval about refused requests, counting the ones it skipped."""

    def __init__(self, every_s: float = _LOG_EVERY_S) -> None:
        self._every_s = every_s
        self._next = float("-inf")
        self._skipped = 0

    def refused(self, now: float, client: tuple[str, int] | None, why: str) -> None:
        if now < self._next:
            self._skipped += 1
            return
        self._next = now + self._every_s
        skipped, self._skipped = self._skipped, 0
        more = f" ({skipped} more since the last such line)" if skipped else ""
        peer = f"{client[0]}:{client[1]}" if client else "a client"
        logger.info("refused a request from %s: %s%s", peer, why, more)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for reading a request and limits on its head.

    Use `protocol_for(security)` to get the class to pass to uvicorn as `http=`.
    """

    security: ClassVar[SecurityConfig] = SecurityConfig()
    refusals: ClassVar[RefusalLog] = RefusalLog()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.security
        self._head_s = limits.header_timeout_s
        self._body_s = limits.body_timeout_s
        self._idle_s = self.timeout_keep_alive + limits.header_timeout_s
        self._max_headers = limits.max_headers
        self._max_header_bytes = limits.max_header_bytes
        self._max_url_bytes = limits.max_url_bytes
        # What an unfinished head may buffer in the parser before it is refused: a head within
        # the limits, with room for the request line's and each header line's framing.
        self._max_head_bytes = limits.max_url_bytes + limits.max_header_bytes + 8 * limits.max_headers + 1024
        self._phase = _HEAD
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._messages = 0  # requests begun on this connection
        self._header_bytes = 0  # names and values of this request's headers so far
        self._head_bytes = 0  # bytes received while this request's head stayed unfinished
        self._refused = False
        self._write_s = limits.write_timeout_s
        self._write_timer: asyncio.TimerHandle | None = None

    # --- the client's clock

    def _expect(self, phase: int, within_s: float) -> None:
        self._phase = phase
        self._deadline = deadline = self.loop.time() + within_s
        timer = self._timer
        if timer is None or deadline < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._phase
        if phase == _APP or self._refused or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._held_by_server():
            self._deadline = now + (self._body_s if phase == _BODY else self._head_s)
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline
        elif phase == _IDLE:
            self.transport.close()  # what uvicorn's keep-alive timer does, had stray bytes not reset it
        elif phase == _HEAD:
            self._refuse(408, f"no complete request head within {self._head_s:g} s")
        else:
            self._refuse(408, f"request body not complete within {self._body_s:g} s")

    def _held_by_server(self) -> bool:
        """Whether uvicorn, not the client, is holding the request back: it has stopped reading
        (a body the app is slow to take), or an earlier request on the connection is still being
        answered (pipelining). That time is not the client's; the clock restarts when it ends."""
        if self.flow.read_paused or self.pipeline:
            return True
        cycle = self.cycle
        return self._phase == _HEAD and cycle is not None and not cycle.response_complete

    # --- refusing

    def _refuse(self, status: int, why: str) -> None:
        phase, cycle = self._phase, self.cycle
        self._refused = True
        self._phase = _APP
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Answer only where no response is, or will be, on the wire. While a head is read,
        # `cycle` is the previous request's (answered, unless pipelined); while a body is read,
        # it is this request's own (which the app may have begun to answer).
        if phase == _BODY:
            can_answer = not cycle.response_started and not self.pipeline
        else:
            can_answer = cycle is None or cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app reads a disconnect, and what it sends goes nowhere
            cycle.message_event.set()
        self.refusals.refused(self.loop.time(), self.client, f"{why} ({status if can_answer else 'closed'})")
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        if can_answer:
            phrase = http.HTTPStatus(status).phrase.encode()
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(phrase),
                    b"connection: close\r\n\r\n",
                    phrase,
                ]
            )
            transport.write(b"".join(content))
        transport.write_eof()
        self.flow.resume_reading()  # drain what the client still sends (see data_received)
        self._timer = self.loop.call_later(_LINGER_S, transport.close)

    # --- uvicorn's protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.security.max_connections:
            self._refused = True
            self._phase = _APP
            cap = self.security.max_connections
            self.refusals.refused(self.loop.time(), self.client, f"{cap} connections open, its limit (503)")
            transport.write(_BUSY)
            transport.close()  # after the buffered answer is sent
            return
        self._expect(_HEAD, self._head_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self._write_s, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        if self.transport.is_closing():
            return
        self.refusals.refused(
            self.loop.time(), self.client, f"response not read for {self._write_s:g} s (closed)"
        )
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app reads a disconnect, and what it sends goes nowhere
            cycle.message_event.set()
        self.transport.abort()  # closing would wait for the unread buffer to drain: it never does

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered: drop the rest, so closing sends no reset over the answer
        # uvicorn's data_received, except that a request refused inside a parser callback is
        # not also answered 400.
        self._unset_keepalive_if_required()
        in_head, message = self._phase == _HEAD, self._messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self._refused:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # The parser buffers a header until it is whole, so count what an unfinished head has
        # sent (only whole reads inside one head: never bytes of another request).
        if in_head and self._phase == _HEAD and message == self._messages:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                self._refuse(431, f"request head over {self._max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._messages += 1
        self._header_bytes = self._head_bytes = 0
        if self._phase != _HEAD:  # the first request's clock started with the connection
            self._expect(_HEAD, self._head_s)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self._max_url_bytes:
            self._refuse(414, f"request target over {self._max_url_bytes} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        self._header_bytes += len(name) + len(value)
        if len(headers) >= self._max_headers:
            self._refuse(431, f"more than {self._max_headers} headers")
            raise _Refused
        if self._header_bytes > self._max_header_bytes:
            self._refuse(431, f"headers over {self._max_header_bytes} bytes")
            raise _Refused
        # uvicorn's on_header, inline: it runs for every header of every request.
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            cycle.transport = _OneWrite(self.transport, cycle)  # type: ignore[assignment]
        self._expect(_BODY, self._body_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline:
            # The app answered before the body was in (a 401, a 413): the connection is idle now.
            self._expect(_IDLE, self._idle_s)
        else:
            self._phase = _APP

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if self._refused or self.transport.is_closing():
            return
        phase = self._phase
        if phase == _APP and not pipelined:
            self._expect(_IDLE, self._idle_s)
        elif phase in (_HEAD, _BODY):
            # The request was waiting behind this response (see `_held_by_server`): its clock
            # starts over now.
            self._expect(phase, self._head_s if phase == _HEAD else self._body_s)

    def handle_websocket_upgrade(self) -> None:
        self._phase = _APP  # the connection is the WebSocket protocol's from here
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        if self._refused:
            self.transport.close()
        else:
            super().shutdown()


class _OneWrite:
    """A response's transport: the head of a response with a declared length waits for the
    body's first bytes and leaves with them in one `write` (uvicorn writes the head, then the
    body: two system calls, and two wake-ups of the client, for every JSON response). Streams
    (no length) and HEAD responses (no body) are written as uvicorn writes them."""

    __slots__ = ("_cycle", "_head", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        elif not self._started and self._cycle.response_started:
            # The first write of a started response is its head (a 100 Continue comes before).
            self._started = True
            cycle = self._cycle
            if cycle.chunked_encoding is False and cycle.scope["method"] != "HEAD":
                self._head = data
                return
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:  # the app ended without a body: what uvicorn would have sent
            head, self._head = self._head, None
            self._transport.write(head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


def protocol_for(security: SecurityConfig) -> type[LimitedHttpProtocol]:
    """The protocol class to pass to uvicorn (`http=`), bound to these limits and its own log."""

    class BoundHttpProtocol(LimitedHttpProtocol):
        pass

    BoundHttpProtocol.security = security
    BoundHttpProtocol.refusals = RefusalLog()
    return BoundHttpProtocol
