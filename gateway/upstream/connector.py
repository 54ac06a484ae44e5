"""Opening upstream sessions: one `Connector` per configured upstream.

A connector turns an `UpstreamConfig` into live `UpstreamSession`s: it starts the transport
(a stdio child, or an HTTP channel on the upstream's shared connection pool) and performs the
`initialize` handshake with the host's own client info and capabilities, so the upstream sees
the host it is really serving (it only asks for elicitation or sampling if the host can answer).

It also keeps the upstream's health (`health.py`), shared by every host session: while the
upstream is down, opening a session fails at once with the cause, and the connector alone tries
again, with a session of its own, at growing intervals; once one opens, whoever subscribed with
`on_recovered` (the session registry, which tells the hosts to list again) hears of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from typing import Any, Protocol

import anyio
import httpx2
from anyio.abc import TaskGroup
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
)

from gateway.background import log_failure, start_guarded
from gateway.config import UpstreamConfig
from gateway.errors import (
    CredentialError,
    HandshakeRefused,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from gateway.protocol.context import NO_HEADERS, Deadline
from gateway.protocol.jsonrpc import JSONObject, notification
from gateway.recording.redaction import Redactor
from gateway.telemetry.hop import upstream_version
from gateway.upstream._wire import MAX_BODY_BYTES, Pool
from gateway.upstream.channel import DISCARD, Channel, MessageSink, Unsolicited
from gateway.upstream.children import Children
from gateway.upstream.health import UpstreamHealth
from gateway.upstream.http import HeaderSource, HttpChannel
from gateway.upstream.listening import ListenStreams
from gateway.upstream.param_headers import ToolHeaders
from gateway.upstream.sse import SseChannel
from gateway.upstream.stdio import StderrLog, StdioChannel

MODERN_VERSION = "2026-07-28"
USER_AGENT = f"mcpgw/{package_version('mcpgw')}"
_REPROBE_S = 60.0
_VERIFY_VERSION = "2025-11-25"  # the newest handshake revision: any server of that era accepts it


async def _nowhere(message: JSONObject) -> None:
    return None  # a stateless channel has no stream for messages outside a request


# Ids of requests the gateway makes on its own; host ids are integers or the host's strings,
# and within one upstream session only the gateway's handshake uses this one.
_INIT_ID = "mcpgw-initialize"


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the host declared at `initialize`; passed on to every upstream it reaches."""

    protocol_version: str
    capabilities: JSONObject
    client_info: JSONObject
    shared: bool = False  # a session no one host owns (a pool's): counted and streamed as such


# The gateway's own handshake, when it checks an upstream it has no host session for.
_CHECK = Handshake(_VERIFY_VERSION, {}, {"name": "mcpgw", "version": "health check"})
# ... and for sessions no one host owns (the catalogue's listing sessions, shared pools): they
# declare no client capabilities, so a well-behaved server asks no host for sampling or input
# (a listing session for a capability profile declares that profile's: `shared_handshake`).
_SHARED_INFO = {"name": "mcpgw", "version": "shared session"}
_PROBE_INFO = {"name": "mcpgw", "version": package_version("mcpgw")}  # SEP-2575: a SHOULD
SHARED_HANDSHAKE = Handshake(_VERIFY_VERSION, {}, _SHARED_INFO, shared=True)


def shared_handshake(capabilities: JSONObject) -> Handshake:
    """The handshake of a session no host owns that declares `capabilities`."""
    return Handshake(_VERIFY_VERSION, capabilities, _SHARED_INFO, shared=True)


Recovered = Callable[[str, JSONObject], Awaitable[None]]


def _names_our_version(response: JSONObject) -> bool:
    """A -32022 (unsupported protocol version) refusal whose `supported` list has ours."""
    failure = response.get("error")
    if not isinstance(failure, dict) or failure.get("code") != UNSUPPORTED_PROTOCOL_VERSION:
        return False
    data = failure.get("data")
    supported = data.get("supported") if isinstance(data, dict) else None
    return isinstance(supported, list) and MODERN_VERSION in supported


def _refused_if_down(health: UpstreamHealth | None, config: UpstreamConfig) -> None:
    """An open session over the network is not tried while its upstream is known to be down (a
    live stdio child answers for itself: the upstream is down only for children yet to start)."""
    if health is not None and health.down and config.transport != "stdio":
        refusal = health.refusal()
        if refusal is not None:
            raise refusal


def _failed(health: UpstreamHealth | None, exc: UpstreamError) -> None:
    """Keep a failed call's cause; a call that found nothing there makes the upstream down."""
    if health is not None and not isinstance(exc, UpstreamUnauthorized):
        health.failed(exc, down=isinstance(exc, UpstreamUnreachable))


def _deadline(deadline: Deadline | None, config: UpstreamConfig) -> float:
    """The host call's deadline, or a fresh `call_s` for a request of the gateway's own."""
    return asyncio.get_running_loop().time() + config.timeouts.call_s if deadline is None else deadline.at()


@dataclass(slots=True)
class UpstreamSession:
    """One upstream session opened on behalf of one host session."""

    config: UpstreamConfig
    channel: Channel
    protocol_version: str
    capabilities: JSONObject
    server_info: JSONObject
    instructions: str | None
    last_used: float = field(default_factory=time.monotonic)
    health: UpstreamHealth | None = None  # its upstream's, shared with every other session of it

    @property
    def name(self) -> str:
        return self.config.name

    async def request(
        self, message: JSONObject, sink: MessageSink | None, deadline: Deadline | None = None
    ) -> JSONObject:
        """Send `message` and wait for its answer until `deadline` (the host call's), or for
        `timeouts.call_s` from now."""
        self.last_used = time.monotonic()
        _refused_if_down(self.health, self.config)
        upstream_version(self.protocol_version)
        try:
            # asyncio's timeout, not anyio's: this wraps every forwarded call (see wire.py).
            async with asyncio.timeout_at(_deadline(deadline, self.config)):
                response = await self.channel.request(message, sink)
        except anyio.get_cancelled_exc_class():
            await self._cancel_upstream(message, "the host cancelled the request")
            raise
        except TimeoutError:
            await self._cancel_upstream(message, f"timed out after {self.config.timeouts.call_s:g}s")
            timeout = UpstreamTimeout(self.name, f"no answer within {self.config.timeouts.call_s:g}s")
            _failed(self.health, timeout)
            raise timeout from None
        except UpstreamError as exc:
            _failed(self.health, exc)
            raise
        if self.health is not None:
            self.health.answered()
        return response

    async def announcing(self) -> None:
        """Return once what this upstream announces outside any call can reach the gateway: at
        once, but for a Streamable HTTP session, whose GET stream opens in the background."""
        if isinstance(self.channel, HttpChannel):
            await self.channel.listening.wait()

    async def _cancel_upstream(self, message: JSONObject, reason: str) -> None:
        if "id" not in message or self.channel.closed:
            return
        cancelled = notification("notifications/cancelled", {"requestId": message["id"], "reason": reason})
        # An upstream already gone has nothing left to cancel.
        with anyio.CancelScope(shield=True), anyio.move_on_after(2), contextlib.suppress(UpstreamError):
            await self.channel.notify(cancelled)


@dataclass(slots=True)
class ModernUpstream:
    """An upstream speaking 2026-07-28: one stateless channel, shared by every host reaching it."""

    config: UpstreamConfig
    channel: HttpChannel
    capabilities: JSONObject
    health: UpstreamHealth | None = None

    async def request(
        self,
        message: JSONObject,
        sink: MessageSink | None,
        credential: Mapping[str, str] | None = None,
        forwarded: Mapping[str, str] = NO_HEADERS,
        deadline: Deadline | None = None,
    ) -> JSONObject:
        """Send `message` with the host's `forwarded` headers (and `credential`, if any); wait
        until `deadline` (the host call's), or `timeouts.call_s` from now."""
        call_s = self.config.timeouts.call_s
        headers = forwarded
        if credential:
            headers = {**headers, **credential}
        _refused_if_down(self.health, self.config)
        upstream_version(self.channel.protocol_version)
        try:
            async with asyncio.timeout_at(_deadline(deadline, self.config)):
                response = await self.channel.request(message, sink, headers)
        except TimeoutError:
            timeout = UpstreamTimeout(self.config.name, f"no answer within {call_s:g}s")
            _failed(self.health, timeout)
            raise timeout from None
        except UpstreamError as exc:
            _failed(self.health, exc)
            raise
        if self.health is not None:
            self.health.answered()
        return response


class Connects(Protocol):
    """What a host session needs of a connector (fast tests give it one over fake channels)."""

    @property
    def config(self) -> UpstreamConfig: ...

    async def modern(self, credential: HeaderSource | None = None) -> ModernUpstream | None: ...

    async def open_session(
        self, handshake: Handshake, unsolicited: Unsolicited, credential: HeaderSource | None = None
    ) -> UpstreamSession: ...


class Connector:
    def __init__(
        self,
        config: UpstreamConfig,
        task_group: TaskGroup,
        pool: Pool | None = None,
        sse_client: httpx2.AsyncClient | None = None,
        log_redactor: Redactor | None = None,
        children: Children | None = None,
        listen_streams: ListenStreams | None = None,
        max_response_bytes: int = MAX_BODY_BYTES,
        own_credential: HeaderSource | None = None,
    ) -> None:
        self.config = config
        # The gateway's own token (client credentials, enterprise-managed): sent on every request
        # no caller's credential replaces, the catalogue's, a shared pool's and checks included.
        self._own = own_credential
        self._max_response_bytes = max_response_bytes  # a stdio child's longest line
        self.listen_streams = listen_streams
        self.children = children or Children(max_total=1_000_000)
        self._log_redactor = log_redactor or Redactor.with_defaults()
        self._task_group = task_group
        self._pool = pool
        self._sse_client = sse_client
        self._modern: ModernUpstream | None = None
        self.tool_headers = ToolHeaders(config.name)  # learned from any of its channels' listings
        self._probed_at: float | None = None
        self._probe_lock = anyio.Lock()
        self.health = UpstreamHealth(config, self._log_redactor, on_down=self._retry_soon, on_up=self._back)
        self._recovered: list[Recovered] = []
        self._retrying = False

    def on_recovered(self, callback: Recovered) -> None:
        """Have `callback(name, capabilities)` run (in the background) whenever this upstream,
        having been down, answers again."""
        self._recovered.append(callback)

    async def modern(self, credential: HeaderSource | None = None) -> ModernUpstream | None:
        """This upstream as a 2026-07-28 server, if it is one (asked once with server/discover,
        carrying `credential` when the caller has one: an upstream that wants a token for every
        request wants it there too). A probe refused with 401/403 is an answer about the
        credential, not the revision: it is not kept, and with a `credential` it is raised
        (`UpstreamUnauthorized`) for the caller's credential handling."""
        if self._pool is None:
            return None
        if self._fresh_probe() or self.health.down:  # down: what was known, until it is back
            return self._modern
        async with self._probe_lock:
            if not self._fresh_probe():
                self.health.attempting()
                try:
                    self._modern = await self._discover(self._pool, credential)
                except UpstreamUnreachable as exc:
                    self.health.failed(exc, down=True)
                    return None  # asked again once it is back
                except UpstreamUnauthorized:
                    self.health.reached({})  # it answered: only the credential was refused
                    if credential is not None or self._own is not None:
                        raise
                    return None  # no credential to ask with: whoever has one asks again
                finally:
                    self.health.settled()
                self._probed_at = time.monotonic()
                if self._modern is not None:
                    self.health.reached(self._modern.capabilities)
        return self._modern

    def _fresh_probe(self) -> bool:
        # A "no" is asked again now and then: the upstream may be upgraded, or was only down.
        if self._probed_at is None:
            return False
        return self._modern is not None or time.monotonic() - self._probed_at < _REPROBE_S

    async def _discover(self, pool: Pool, credential: HeaderSource | None = None) -> ModernUpstream | None:
        headers = None if credential is None else await credential()
        channel = HttpChannel(
            self.name,
            pool,
            _nowhere,
            extra_headers=self._own,
            modern_version=MODERN_VERSION,
            listen_streams=self.listen_streams,
            tool_headers=self.tool_headers,
        )
        meta = {
            PROTOCOL_VERSION_META_KEY: MODERN_VERSION,
            CLIENT_CAPABILITIES_META_KEY: {},
            CLIENT_INFO_META_KEY: _PROBE_INFO,
        }
        probe: JSONObject = {"jsonrpc": "2.0", "method": "server/discover", "params": {"_meta": meta}}
        response: JSONObject = {}
        for attempt in (1, 2):
            try:
                with anyio.fail_after(self.config.timeouts.connect_s):
                    response = await channel.request(
                        {**probe, "id": f"mcpgw-discover-{attempt}"}, DISCARD, headers
                    )
            except (UpstreamUnreachable, UpstreamUnauthorized):
                raise  # nothing there, or a refused credential: no answer about its revision either
            except (UpstreamError, TimeoutError):
                return None
            if not _names_our_version(response):
                break
            # -32022 naming the version just asked for (SEP-2575): the refusal was not about
            # it, and the upstream says it serves it; asked once more, under a new id.
        result = response.get("result")
        if not isinstance(result, dict) or MODERN_VERSION not in (result.get("supportedVersions") or []):
            return None
        return ModernUpstream(self.config, channel, result.get("capabilities") or {}, self.health)

    @property
    def name(self) -> str:
        return self.config.name

    async def open_session(
        self, handshake: Handshake, unsolicited: Unsolicited, credential: HeaderSource | None = None
    ) -> UpstreamSession:
        """A new upstream session for a host session; at once `UpstreamUnavailable` (naming the
        cause) while the upstream is down."""
        refusal = self.health.refusal()
        if refusal is not None:
            raise refusal
        if self.config.transport != "stdio":
            return await self._opening(handshake, unsolicited, credential)
        # A pool's sessions (opened with the shared handshake) are capped by its max_sessions;
        # host sessions' own by max_children; the gateway's cap holds for every child.
        own = not handshake.shared
        with self.children.starting(self.name, self.config.max_children, own=own):
            session = await self._opening(handshake, unsolicited, credential)
        self.children.track(self.name, session.channel, own=own)
        return session

    async def check(self) -> None:
        """Try to reach the upstream now, with a session of the gateway's own closed at once; what
        comes of it is in `health`. For required upstreams at start-up, and while one is down.
        Without the gateway's own token (its token endpoint refused or cannot be reached) the
        upstream cannot be used: down, with the reason, and tried again later like any other."""
        self.health.attempting()
        try:
            await self._checking()
        except CredentialError as exc:
            self.health.failed(UpstreamUnavailable(self.name, str(exc)), down=True)
        finally:
            self.health.settled()

    async def _checking(self) -> None:
        if self._pool is not None:  # a 2026-07-28 server may answer no `initialize`
            try:
                modern = await self._discover(self._pool)
            except UpstreamUnreachable as exc:
                self.health.failed(exc, down=True)
                return
            except UpstreamUnauthorized:
                # Up, but it wants a credential the gateway has none of its own for: the
                # first caller with one learns its revision (modern()).
                self.health.reached({})
                return
            self._modern, self._probed_at = modern, time.monotonic()
            if modern is not None:
                self.health.reached(modern.capabilities)
                return
        try:
            session = await self._opening(_CHECK, _nowhere, None, listen=False)
        except UpstreamError:
            return  # kept in `health`
        with anyio.CancelScope(shield=True):
            await session.channel.aclose()

    def check_soon(self) -> None:
        start_guarded(self._task_group, f"upstream {self.name}: checking it", self.check)

    async def _opening(
        self,
        handshake: Handshake,
        unsolicited: Unsolicited,
        credential: HeaderSource | None,
        *,
        listen: bool = True,
    ) -> UpstreamSession:
        """Open a session, and keep what it says of the upstream's health."""
        self.health.attempting()
        try:
            session = await self._open(handshake, unsolicited, credential, listen)
            self.health.reached(session.capabilities)
            return session
        except UpstreamUnauthorized:
            self.health.reached({})  # it answered: only the credential was refused
            raise
        except HandshakeRefused as exc:
            # It answered: not down, and a 2026-07-28-only server is reached statelessly (modern()).
            self.health.answered()
            self.health.failed(exc, down=False)
            raise
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            self.health.failed(exc, down=True)
            raise
        finally:
            self.health.settled()

    def _retry_soon(self) -> None:
        if not self._retrying:
            self._retrying = True
            start_guarded(self._task_group, f"upstream {self.name}: trying it again", self._retry)

    async def _retry(self) -> None:
        """While the upstream is down, check it at the intervals its health sets (they grow)."""
        try:
            while self.health.down:
                await anyio.sleep(self.health.retry_in())  # a schedule, not synchronisation
                if not self.health.down:
                    break
                try:
                    await self.check()
                except Exception as exc:  # a failure of the check itself must not end the retries
                    log_failure(f"upstream {self.name}: checking it", exc)
                    self.health.failed(UpstreamUnavailable(self.name, f"the check failed: {exc}"), down=True)
        finally:
            self._retrying = False

    def _back(self, capabilities: JSONObject) -> None:
        """The upstream answers again: a "no" to server/discover may have been its absence."""
        if self._modern is None:
            self._probed_at = None
        for callback in self._recovered:
            start_guarded(self._task_group, f"upstream {self.name}: telling hosts it is back", callback,
                          self.name, capabilities)  # fmt: skip

    async def _open(
        self, handshake: Handshake, unsolicited: Unsolicited, credential: HeaderSource | None, listen: bool
    ) -> UpstreamSession:
        config = self.config
        try:
            with anyio.fail_after(config.timeouts.connect_s):
                # Sessions no host owns (the catalogue's listing session, a shared pool's, at most
                # max_sessions + 1) keep their GET streams on the calls' pool: they hear the list
                # changes every host is told of, and must not queue behind host sessions' streams.
                own = not handshake.shared
                channel = await self._open_channel(unsolicited, credential, own_listen_slot=own)
                try:
                    response = await channel.request(self._initialize(handshake), DISCARD)
                    if "error" in response:
                        raise HandshakeRefused(
                            config.name, f"refused initialize: {response['error'].get('message')}"
                        )
                    result: dict[str, Any] = response.get("result") or {}
                    version = str(result.get("protocolVersion") or handshake.protocol_version)
                    if isinstance(channel, HttpChannel):
                        channel.set_protocol_version(version)
                    await channel.notify(notification("notifications/initialized"))
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await channel.aclose()
                    raise
        except TimeoutError:
            raise UpstreamTimeout(
                config.name, f"no handshake within {config.timeouts.connect_s:g}s"
            ) from None
        if isinstance(channel, HttpChannel) and listen:
            channel.start_listening(self._task_group)
        return UpstreamSession(
            config=config,
            channel=channel,
            protocol_version=version,
            capabilities=result.get("capabilities") or {},
            server_info=result.get("serverInfo") or {},
            instructions=result.get("instructions"),
            health=self.health,
        )

    async def verify(self, credential: Mapping[str, str]) -> None:
        """Check `credential` with one `initialize`: `UpstreamUnauthorized` if it is refused."""

        async def headers() -> Mapping[str, str]:
            return credential

        assert self._pool is not None
        channel = HttpChannel(self.name, self._pool, _nowhere, extra_headers=headers)
        handshake = Handshake(_VERIFY_VERSION, {}, {"name": "mcpgw", "version": "credential check"})
        try:
            with anyio.fail_after(self.config.timeouts.connect_s):
                response = await channel.request(self._initialize(handshake), DISCARD)
        except TimeoutError:
            raise UpstreamTimeout(
                self.name, f"no answer within {self.config.timeouts.connect_s:g}s"
            ) from None
        finally:
            with anyio.CancelScope(shield=True):
                await channel.aclose()
        if "error" in response:
            raise UpstreamUnavailable(self.name, f"refused initialize: {response['error'].get('message')}")

    async def _open_channel(
        self, unsolicited: Unsolicited, credential: HeaderSource | None, *, own_listen_slot: bool = True
    ) -> Channel:
        config = self.config
        if config.transport == "stdio":
            return await StdioChannel.start(
                config.name,
                config.command,
                config.env,
                config.cwd,
                unsolicited,
                self._task_group,
                StderrLog(config.name, self._log_redactor),
                max_line_bytes=self._max_response_bytes,
            )
        if config.transport == "http":
            assert self._pool is not None
            return HttpChannel(
                config.name,
                self._pool,
                unsolicited,
                extra_headers=credential or self._own,
                listen_streams=self.listen_streams if own_listen_slot else None,
                tool_headers=self.tool_headers,
            )
        assert self._sse_client is not None and config.url is not None
        return await SseChannel.start(
            config.name,
            self._sse_client,
            config.url,
            unsolicited,
            self._task_group,
            max_event_bytes=self._max_response_bytes,
        )

    @staticmethod
    def _initialize(handshake: Handshake) -> JSONObject:
        return {
            "jsonrpc": "2.0",
            "id": _INIT_ID,
            "method": "initialize",
            "params": {
                "protocolVersion": handshake.protocol_version,
                "capabilities": handshake.capabilities,
                "clientInfo": _upstream_client_info(handshake.client_info),
            },
        }


def _upstream_client_info(info: JSONObject) -> JSONObject:
    """The host's client info, with the name and version a handshake-era `initialize` requires:
    a 2026-07-28 host may send none (it is optional there), and such an upstream would refuse
    the session, leaving the host with no tools at all."""
    name, version = info.get("name"), info.get("version")
    if isinstance(name, str) and isinstance(version, str):
        return info
    return {
        **info,
        "name": name if isinstance(name, str) else "unknown",
        "version": version if isinstance(version, str) else "unknown",
    }


def pool_for(
    config: UpstreamConfig, *, listening: bool = False, max_response_bytes: int = MAX_BODY_BYTES
) -> Pool:
    """The connection pool the calls of every session of one Streamable HTTP upstream share;
    with `listening`, the one their GET streams share (see `listening.py`). No answer read
    through it may pass `max_response_bytes` (`security.max_upstream_response_bytes`)."""
    assert config.url is not None
    cap = config.max_listen_streams if listening else config.max_connections
    return Pool(
        config.url,
        {**config.headers, **config.auth.static_headers},
        connect_s=config.timeouts.connect_s,
        user_agent=USER_AGENT,
        max_connections=cap,
        max_idle=min(cap, 64),
        ssl_context=httpx2.create_ssl_context(),
        max_body_bytes=max_response_bytes,
    )


def sse_client_for(config: UpstreamConfig) -> httpx2.AsyncClient:
    """The client a legacy HTTP+SSE upstream's sessions share."""
    timeout = httpx2.Timeout(
        connect=config.timeouts.connect_s, read=None, write=30.0, pool=config.timeouts.connect_s
    )
    limits = httpx2.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0)
    headers = {**config.headers, **config.auth.static_headers, "user-agent": USER_AGENT}
    return httpx2.AsyncClient(headers=headers, timeout=timeout, limits=limits)
