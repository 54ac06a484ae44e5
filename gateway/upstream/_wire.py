"""A lean HTTP/1.1 client for upstream MCP traffic, the gateway's hot path.

Every `tools/call` through the gateway is one POST to an upstream. Through httpx2, httpcore2 and
anyio's socket streams that POST cost about 0.9 ms of CPU here (`bench/run.py --profile`), more
than the whole per-call budget (docs/design.md, Performance). This client keeps only what upstream MCP traffic
needs:
- keep-alive connections pooled per upstream URL (LIFO, capped, idle ones expire);
- one `write` per request (head and body together);
- responses parsed by llhttp through `httptools`, the parser uvicorn already runs for the host
  side, from an asyncio protocol, so no stream wrappers sit between the socket and the parser.
OAuth and the legacy SSE transport keep using httpx2.

Deliberately not supported, because upstream MCP traffic never needs it and each would cost
code on the hot path: redirects (an upstream is a configured URL), proxies (`HTTP_PROXY` is not
read), cookies, content codings (a server only compresses when asked), HTTP/2, `Expect:
100-continue`, request bodies streamed in pieces, pipelining (one request at a time on a
connection), and retries of a request that was sent (see below).

A request on a kept-alive connection is never retried: a POST may have reached the server
(RFC 9110 §9.2.2). Instead, an idle connection is checked for a close the event loop has not
seen yet before it is reused, as httpcore does (one `poll` with no wait).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import re
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

from gateway.errors import ConnectFailed, ConnectTimeout, ResponseTooLarge, WireError

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(r"[\r\n\0]")
_HIGH_WATER = 1 << 20  # buffered body bytes before the socket stops being read
_PARK_S = 1.0  # how long an abandoned response may take to end before its connection is closed
# What a misbehaving upstream may send before it is cut off, so it cannot exhaust the gateway.
MAX_HEADERS = 256
MAX_HEAD_BYTES = 64 * 1024
MAX_INTERIM = 8  # 1xx responses before the real one
MAX_BODY_BYTES = 16 * 1024 * 1024  # for `Response.read` (a pool's own); streams are read piece by piece


def header_block(headers: Mapping[str, str]) -> bytes:
    """`name: value` lines for a request head; refuses what would split or corrupt it."""
    lines = []
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or _UNSAFE_VALUE.search(value):
            raise WireError(f"refusing to send the header {name!r}: it is not a valid HTTP header")
        lines.append(f"{name}: {value}\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise WireError("refusing to send a header value HTTP/1.1 cannot carry (not Latin-1)") from exc


class State(enum.Enum):
    r"""Where a connection is in its life, derived from what its parser and socket have seen:

        NEW --send--> SENT --head--> RECEIVING --end--> DONE --send--> SENT ...
                                         \--abandoned--> PARKED --end--> DONE (or CLOSED after 1 s)
        any --the server closes, a malformed response, the pool closes--> CLOSED

    A DONE connection waits in the pool for the next request; it is reused only if its last
    response said keep-alive and was not close-delimited, and after `still_open` says the
    server has not closed it meanwhile.
    """

    NEW = "new"
    SENT = "sent"
    RECEIVING = "receiving"
    DONE = "done"
    PARKED = "parked"
    CLOSED = "closed"


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time (see `State`)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.idle_since = 0.0
        self.alive = True
        self._parked: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._head_bytes = 0
        self._interim = 0
        self.expecting = False  # a request was sent and its response has not ended
        self.head_done = False
        self.complete = False
        self._close_delimited = False
        self._keep_alive = False
        self.body: deque[bytes] = deque()
        self._buffered = 0
        self.error: WireError | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
            if not self.head_done:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    raise WireError(f"sent a response head over {MAX_HEAD_BYTES} bytes")
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, WireError) as exc:
            if not self.complete:  # else the fault lies past a response that is whole: keep it
                cause = exc if isinstance(exc, WireError) else exc.__context__
                if not isinstance(cause, WireError):  # the parser's own complaint
                    cause = WireError(f"sent a malformed HTTP response ({exc})")
                self._fail(cause)
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.head_done and self._close_delimited and not self.complete and exc is None:
            self.complete = True  # the body ran until the server closed: that was its end
        elif not self.complete:
            self._fail(WireError(f"the connection closed before the response ended ({exc or 'EOF'})"))
        if self._parked is not None:
            self._unpark()
            self._pool.release(self)  # not reusable now: it is counted out
        else:
            self._pool.lost(self)
        self._wake()

    # httptools callbacks (an exception raised in one fails the parse: see data_received)

    def on_message_begin(self) -> None:
        if not self.expecting:
            # Bytes after the response ended, or on an idle connection: nothing asked for them.
            raise WireError("sent data no request asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_HEADERS:
            raise WireError(f"sent a response head over {MAX_HEADERS} headers")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise WireError(f"sent over {MAX_INTERIM} interim (1xx) responses")
            self.headers = {}  # an interim response (100 Continue, 103): the real one follows
            return
        self.status = status
        self.head_done = True
        # Read now: llhttp resets its flags once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()
        self._close_delimited = (
            "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
            and status not in (204, 304)
        )
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._parked is not None:
            return  # the rest of a body nobody reads any more
        self.body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self.expecting = False
            if self._parked is not None:
                self._unpark()
                self._pool.release(self)
            self._wake()

    # used by Pool and Response

    def park(self) -> bool:
        """Let the unread rest of this response arrive without a reader, then rejoin the pool.

        An SSE response usually ends a moment after the event the gateway was waiting for; the
        caller need not wait for that end, and the connection is still worth keeping. False if
        it cannot be kept (it will not end by itself, or is already broken).
        """
        if not (self.alive and self.head_done and self._keep_alive) or self._close_delimited:
            return False
        self.body.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        self._parked = asyncio.get_running_loop().call_later(_PARK_S, self._give_up)
        self._pool.parked.add(self)
        return True

    def _unpark(self) -> None:
        if self._parked is not None:
            self._parked.cancel()
            self._parked = None
        self._pool.parked.discard(self)

    def _give_up(self) -> None:
        self._unpark()
        self.close()
        self._pool.release(self)  # closed: counted out of the pool

    def sendable(self) -> bool:
        return self.alive and self._transport is not None and not self._transport.is_closing()

    def send(self, data: bytes) -> None:
        assert self._transport is not None
        self._reset()
        if self._paused:  # left paused by a response that was not read to its end
            self._paused = False
            self._transport.resume_reading()
        self.expecting = True
        self._transport.write(data)

    def take(self) -> bytes:
        chunk = b"".join(self.body)
        self.body.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    async def wait(self) -> None:
        """Until the parser or the socket has news (head, body, end, or an error)."""
        if self.error is not None:
            raise self.error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    @property
    def state(self) -> State:
        if not self.alive:
            return State.CLOSED
        if self._parked is not None:
            return State.PARKED
        if self.complete:
            return State.DONE
        if self.head_done:
            return State.RECEIVING
        return State.SENT if self.expecting else State.NEW

    def reusable(self) -> bool:
        return self.state is State.DONE and self._keep_alive and not self._close_delimited

    def still_open(self) -> bool:
        """False if the server closed the connection, even when the event loop has not noticed."""
        if not self.alive or self._transport is None or self._transport.is_closing():
            return False
        sock = self._transport.get_extra_info("socket")
        if sock is None:
            return True
        poller = select.poll()  # not select(): it fails on descriptors past 1023
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)  # an idle connection has nothing to read unless it was closed

    def close(self) -> None:
        self.alive = False
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: WireError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Response:
    """The status and headers of an upstream response; the body is read on demand.

    `close()` must follow: it hands a finished connection back to the pool and drops one whose
    body was not read to its end.
    """

    def __init__(self, connection: _Connection, pool: Pool) -> None:
        self._connection: _Connection | None = connection
        self._pool = pool
        self.status = connection.status
        self.headers = connection.headers

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived (read or not)."""
        return self._connection is None or self._connection.complete

    async def read(self) -> bytes:
        """The whole body; `ResponseTooLarge` as soon as it (or its declared length) passes the
        pool's `max_body_bytes`: what is past the limit is never buffered."""
        limit = self._pool.max_body_bytes
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge(limit)
        chunks, size = [], 0
        while chunk := await self.chunk():
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def chunk(self) -> bytes:
        """The body received since the last call, waiting for some; b"" once it has all been read.

        A method rather than an async generator: one left unfinished (a stream read up to the
        response it carries) costs the event loop a finaliser task per call.
        """
        connection = self._connection
        while connection is not None:
            if connection.body:
                return connection.take()
            if connection.complete:
                return b""
            await connection.wait()
        return b""

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if not connection.complete and connection.park():
            return  # it rejoins the pool when the body ends
        self._pool.release(connection)


class Pool:
    """Keep-alive connections to one upstream URL; every request goes to that URL."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        connect_s: float,
        user_agent: str,
        max_connections: int = 256,
        max_idle: int = 64,
        idle_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.max_body_bytes = max_body_bytes  # also each event of a stream (`upstream/http.py`)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._target = target
        self._connect_s = connect_s
        self._max_connections = max_connections
        self._max_idle = max_idle
        self._idle_s = idle_s
        base = {"host": parts.netloc.rpartition("@")[2], "user-agent": user_agent}
        if parts.username is not None:  # credentials in the URL: Basic auth, as httpx2 sends them
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            base["authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        self._static = {**base, **{name.lower(): value for name, value in headers.items()}}
        self._static_block = header_block(self._static)
        self._idle: list[_Connection] = []
        self.parked: set[_Connection] = set()  # see _Connection.park
        self._open = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def request(self, method: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        """Send one request and return once the response's head has arrived."""
        head = self._head(method, headers, body)
        connection = await self._acquire()
        if not connection.sendable():  # lost between being handed over and now: nothing sent yet
            self.release(connection)
            connection = await self._acquire()
        try:
            connection.send(head + body if body else head)
            while not connection.head_done:
                await connection.wait()
        except BaseException:
            connection.close()
            self.release(connection)
            raise
        return Response(connection, self)

    def _head(self, method: str, headers: Mapping[str, str], body: bytes) -> bytes:
        lowered = {name.lower(): value for name, value in headers.items()}
        if self._static.keys() & lowered.keys():
            block = header_block({**self._static, **lowered})  # a request value replaces ours
        else:
            block = self._static_block + header_block(lowered)
        length = f"content-length: {len(body)}\r\n" if body or method == "POST" else ""
        return f"{method} {self._target} HTTP/1.1\r\n".encode() + block + length.encode() + b"\r\n"

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise WireError("the connection pool is closed")
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < self._idle_s and connection.still_open():
                return connection
            self._discard(connection)
        connecting = False
        try:
            async with asyncio.timeout(self._connect_s):
                if self._open >= self._max_connections:
                    handed = await self._wait_for_slot()
                    if handed is not None:
                        return handed
                    # else a closed connection's slot was passed on: it is ours, still counted
                else:
                    self._open += 1
                connecting = True
                try:
                    return await self._connect()
                except BaseException:
                    self._free_slot()
                    raise
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {self._host}:{self._port} within {self._connect_s:g}s",
                connecting=connecting,
            ) from None

    async def _wait_for_slot(self) -> _Connection | None:
        """At the connection cap: wait for a connection handed back (or None: a slot to connect)."""
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            # Cancelled after being handed something: pass it on rather than lose it.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is not None:
                    self.release(handed)
                else:
                    self._free_slot()
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self),
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
        except TimeoutError:
            raise  # the pool's deadline, not a connection error (TimeoutError is an OSError)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"could not connect to {self._host}:{self._port} ({exc})") from exc
        return connection

    def release(self, connection: _Connection) -> None:
        """Take a connection back: reused if its response ended cleanly, else closed."""
        if self._closed or not connection.reusable():
            self._discard(connection)
            return
        connection.idle_since = time.monotonic()
        if self._wake_waiter(connection):
            return
        if len(self._idle) >= self._max_idle:
            self._discard(self._idle.pop(0))
        self._idle.append(connection)

    def lost(self, connection: _Connection) -> None:
        """The server closed a connection; one waiting in the pool is forgotten at once."""
        if connection in self._idle:
            self._idle.remove(connection)
            self._free_slot()

    def _discard(self, connection: _Connection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)
        connection.close()
        self._free_slot()

    def _free_slot(self) -> None:
        """A connection is gone: its slot goes to the first waiter, else back to the count."""
        if not self._wake_waiter(None):
            self._open -= 1

    def _wake_waiter(self, connection: _Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    async def aclose(self) -> None:
        self._closed = True
        for connection in [*self._idle, *self.parked]:
            connection.close()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(WireError("the connection pool is closed"))

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
