"""Opening upstream sessions: one `Connector` per configured upstream.

A connector turns an `UpstreamConfig` into live `UpstreamSession`s: it starts the transport
(a stdio child, or an HTTP channel on the upstream's shared connection pool) and performs the
`initialize` handshake with the host's own client info and capabilities, so the upstream sees
the host it is really serving (it only asks for elicitation or sampling if the host can answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from typing import Any, Protocol

import anyio
import httpx2
from anyio.abc import TaskGroup
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.protocol.context import NO_HEADERS
from gateway.protocol.jsonrpc import JSONObject, notification
from gateway.recording.redaction import Redactor
from gateway.upstream._wire import Pool
from gateway.upstream.channel import DISCARD, Channel, MessageSink, Unsolicited
from gateway.upstream.http import HeaderSource, HttpChannel
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

    @property
    def name(self) -> str:
        return self.config.name

    async def request(self, message: JSONObject, sink: MessageSink | None) -> JSONObject:
        self.last_used = time.monotonic()
        try:
            # asyncio's timeout, not anyio's: this wraps every forwarded call (see wire.py).
            async with asyncio.timeout(self.config.timeouts.call_s):
                return await self.channel.request(message, sink)
        except anyio.get_cancelled_exc_class():
            await self._cancel_upstream(message, "the host cancelled the request")
            raise
        except TimeoutError:
            await self._cancel_upstream(message, f"timed out after {self.config.timeouts.call_s:g}s")
            raise UpstreamTimeout(self.name, f"no answer within {self.config.timeouts.call_s:g}s") from None

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

    async def request(
        self,
        message: JSONObject,
        sink: MessageSink | None,
        credential: Mapping[str, str] | None = None,
        forwarded: Mapping[str, str] = NO_HEADERS,
    ) -> JSONObject:
        """Send `message` with the host's `forwarded` headers (and `credential`, if any)."""
        call_s = self.config.timeouts.call_s
        headers = forwarded
        if credential:
            headers = {**headers, **credential}
        try:
            async with asyncio.timeout(call_s):
                return await self.channel.request(message, sink, headers)
        except TimeoutError:
            raise UpstreamTimeout(self.config.name, f"no answer within {call_s:g}s") from None


class Connects(Protocol):
    """What a host session needs of a connector (fast tests give it one over fake channels)."""

    @property
    def config(self) -> UpstreamConfig: ...

    async def modern(self) -> ModernUpstream | None: ...

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
    ) -> None:
        self.config = config
        self._log_redactor = log_redactor or Redactor.with_defaults()
        self._task_group = task_group
        self._pool = pool
        self._sse_client = sse_client
        self._modern: ModernUpstream | None = None
        self._probed_at: float | None = None
        self._probe_lock = anyio.Lock()

    async def modern(self) -> ModernUpstream | None:
        """This upstream as a 2026-07-28 server, if it is one (asked once with server/discover)."""
        if self._pool is None:
            return None
        if self._fresh_probe():
            return self._modern
        async with self._probe_lock:
            if not self._fresh_probe():
                self._modern = await self._discover(self._pool)
                self._probed_at = time.monotonic()
        return self._modern

    def _fresh_probe(self) -> bool:
        # A "no" is asked again now and then: the upstream may be upgraded, or was only down.
        if self._probed_at is None:
            return False
        return self._modern is not None or time.monotonic() - self._probed_at < _REPROBE_S

    async def _discover(self, pool: Pool) -> ModernUpstream | None:
        channel = HttpChannel(self.name, pool, _nowhere, modern_version=MODERN_VERSION)
        meta = {PROTOCOL_VERSION_META_KEY: MODERN_VERSION, CLIENT_CAPABILITIES_META_KEY: {}}
        probe = {
            "jsonrpc": "2.0",
            "id": "mcpgw-discover",
            "method": "server/discover",
            "params": {"_meta": meta},
        }
        try:
            with anyio.fail_after(self.config.timeouts.connect_s):
                response = await channel.request(probe, DISCARD)
        except (UpstreamError, TimeoutError):
            return None
        result = response.get("result")
        if not isinstance(result, dict) or MODERN_VERSION not in (result.get("supportedVersions") or []):
            return None
        return ModernUpstream(self.config, channel, result.get("capabilities") or {})

    @property
    def name(self) -> str:
        return self.config.name

    async def open_session(
        self, handshake: Handshake, unsolicited: Unsolicited, credential: HeaderSource | None = None
    ) -> UpstreamSession:
        config = self.config
        try:
            with anyio.fail_after(config.timeouts.connect_s):
                channel = await self._open_channel(unsolicited, credential)
                try:
                    response = await channel.request(self._initialize(handshake), DISCARD)
                    if "error" in response:
                        raise UpstreamUnavailable(
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
        if isinstance(channel, HttpChannel):
            channel.start_listening(self._task_group)
        return UpstreamSession(
            config=config,
            channel=channel,
            protocol_version=version,
            capabilities=result.get("capabilities") or {},
            server_info=result.get("serverInfo") or {},
            instructions=result.get("instructions"),
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

    async def _open_channel(self, unsolicited: Unsolicited, credential: HeaderSource | None) -> Channel:
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
            )
        if config.transport == "http":
            assert self._pool is not None
            return HttpChannel(config.name, self._pool, unsolicited, extra_headers=credential)
        assert self._sse_client is not None and config.url is not None
        return await SseChannel.start(
            config.name, self._sse_client, config.url, unsolicited, self._task_group
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


def pool_for(config: UpstreamConfig) -> Pool:
    """The connection pool every session of one Streamable HTTP upstream shares."""
    assert config.url is not None
    return Pool(
        config.url,
        {**config.headers, **config.auth.static_headers},
        connect_s=config.timeouts.connect_s,
        user_agent=USER_AGENT,
        ssl_context=httpx2.create_ssl_context(),
    )


def sse_client_for(config: UpstreamConfig) -> httpx2.AsyncClient:
    """The client a legacy HTTP+SSE upstream's sessions share."""
    timeout = httpx2.Timeout(
        connect=config.timeouts.connect_s, read=None, write=30.0, pool=config.timeouts.connect_s
    )
    limits = httpx2.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0)
    headers = {**config.headers, **config.auth.static_headers, "user-agent": USER_AGENT}
    return httpx2.AsyncClient(headers=headers, timeout=timeout, limits=limits)
