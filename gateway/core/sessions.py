"""Host sessions: what the gateway keeps for one `Mcp-Session-Id` it minted.

A host session owns one upstream session per upstream it has used (opened lazily), the
mapping of ids for requests upstreams send to the host (two upstreams may both use id 1, so
the host sees gateway-minted ids), and the host's GET stream. The registry mints ids, binds
each session to the API key that opened it, and reaps idle sessions and their children.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup

from gateway.background import every, start_guarded
from gateway.cluster import Cluster, SessionLink, group_stream_key, owned
from gateway.config import SessionsConfig, UpstreamConfig
from gateway.core.bridge import HostQuestions, bridged_request
from gateway.core.catalogue import Catalogue, Kind
from gateway.credentials.binding import binding_for
from gateway.credentials.broker import CredentialBroker
from gateway.errors import (
    CredentialError,
    RecordingFailed,
    RequestIdInUse,
    SessionLimit,
    UpstreamError,
    UpstreamSessionExpired,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from gateway.host.auth import Principal
from gateway.protocol.context import NO_CONTEXT, Deadline, RequestContext
from gateway.protocol.elicitation import form_defaults
from gateway.protocol.jsonrpc import JSONObject, RequestId, notification
from gateway.protocol.revisions import to_handshake_request, with_server_info
from gateway.protocol.uris import outward
from gateway.recording.recorder import NullRecorder, Recorder
from gateway.upstream.channel import MessageSink
from gateway.upstream.connector import Connects, Handshake, ModernUpstream, UpstreamSession
from gateway.upstream.http import HeaderSource
from gateway.upstream.pool import SharedPool
from gateway.upstream.profiles import Profile, profile_of
from store import Binding, SessionEnd, SessionStart, StoreError, utc_now

logger = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S", bound="HostSession")

_BUFFERED_WHILE_NO_STREAM = 256
LOCAL_REQUEST_PREFIX = "mcpgw-local-"
_REMAPPED_IDS = itertools.count(1)  # 2026 groups' request ids upstream: unique in every session
_CLIENT_NAMESPACE = uuid.UUID("0f0a3c1e-6d3b-5e8e-9a57-6d63706777c1")  # fixed: client ids must not change
_LIST_CHANGED: dict[str, Kind] = {
    "notifications/tools/list_changed": "tools",
    "notifications/prompts/list_changed": "prompts",
    "notifications/resources/list_changed": "resources",
}
_ANNOUNCEMENTS = frozenset({*_LIST_CHANGED, "notifications/resources/updated"})


@dataclass(slots=True)
class Outbound:
    upstream: UpstreamSession
    original_id: RequestId
    defaults: JSONObject | None = None  # a form elicitation's, applied to the host's answer


class OutboundRequests:
    """Requests upstreams send this session's host (elicitation, sampling, roots, ping), under
    ids the gateway mints: two upstreams may both use id 1 toward one host. The host's answer
    is taken back by the gateway's id and goes to the upstream that asked, under its own."""

    __slots__ = ("_ids", "_pending", "owner")

    def __init__(self) -> None:
        self._pending: dict[str, Outbound] = {}
        self._ids = itertools.count(1)
        self.owner: str | None = None  # on replicas: this one's id, where the answer must come back

    def add(
        self, upstream: UpstreamSession, original_id: RequestId, defaults: JSONObject | None = None
    ) -> str:
        gateway_id = owned(f"mcpgw-{next(self._ids)}", self.owner)
        self._pending[gateway_id] = Outbound(upstream, original_id, defaults)
        return gateway_id

    def take(self, gateway_id: object) -> Outbound | None:
        return self._pending.pop(gateway_id, None) if isinstance(gateway_id, str) else None

    def local_id(self) -> str:
        """An id for a request the gateway itself sends the host; its answer is dropped."""
        return f"{LOCAL_REQUEST_PREFIX}{next(self._ids)}"


class _Credentials:
    """Whose credential a session sends each upstream that needs one, and what it last sent
    (so the broker can tell a refused credential from one refreshed meanwhile)."""

    __slots__ = ("_bindings", "_broker", "_sent")

    def __init__(self, broker: CredentialBroker | None) -> None:
        self._broker = broker
        self._bindings: dict[str, Binding] = {}
        self._sent: dict[str, Mapping[str, str]] = {}

    def binding(self, config: UpstreamConfig, principal: Principal, record_id: str) -> Binding | None:
        if self._broker is None or not config.auth.per_identity:
            return None
        if config.name not in self._bindings:
            self._bindings[config.name] = binding_for(config, principal, record_id)
        return self._bindings[config.name]

    def source(self, name: str, binding: Binding | None) -> HeaderSource | None:
        broker = self._broker
        if binding is None or broker is None:
            return None

        async def credential() -> Mapping[str, str]:
            headers = await broker.headers(name, binding)
            self._sent[name] = headers
            return headers

        return credential

    async def rejected(
        self, name: str, binding: Binding | None, *, final: bool, scope: str | None = None
    ) -> bool:
        """Tell the broker the upstream refused what was sent (it refreshes, or says the user
        must act, for more `scope` if the refusal named one); False when this session sends
        that upstream no credential of its own."""
        if binding is None or self._broker is None:
            return False
        await self._broker.rejected(name, binding, self._sent.pop(name, {}), final=final, scope=scope)
        return True


class ListenStream:
    """Where a session's server-initiated messages go: the host's GET stream, its 2026-07-28
    listen streams, or, while none is open, a small buffer."""

    def __init__(self, *, buffered: bool = True) -> None:
        self._sinks: list[MessageSink] = []
        # 2026-07-28 listen streams promise no replay, so a stateless group keeps nothing back.
        self._buffer: deque[JSONObject] = deque(maxlen=_BUFFERED_WHILE_NO_STREAM if buffered else 0)
        self._lock = anyio.Lock()
        self._none_open = anyio.Event()
        self._none_open.set()
        # On replicas: the session's streams open on the others (gateway/cluster.py).
        self.link: SessionLink | None = None

    @property
    def open(self) -> bool:
        return bool(self._sinks)

    async def attach(self, sink: MessageSink) -> None:
        async with self._lock:
            if self._none_open.is_set():
                self._none_open = anyio.Event()
            self._sinks.append(sink)
            while self._buffer:
                await sink.send(self._buffer.popleft())
        if self.link is not None and len(self._sinks) == 1:
            await self.link.opened()  # the other replicas send here now, what they buffered first

    def detach(self, sink: MessageSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)
            if not self._sinks and self.link is not None:
                self.link.closed()
        if not self._sinks:
            self._none_open.set()

    async def deliver_here(self, message: JSONObject) -> None:
        """A message another replica sent this one's streams: to them, or buffered."""
        async with self._lock:
            if not self._sinks:
                self._buffer.append(message)
            for sink in list(self._sinks):
                await sink.send(message)

    async def flush(self, send: Callable[[JSONObject], Awaitable[None]]) -> None:
        """What was buffered, handed to a stream opened on another replica."""
        async with self._lock:
            while self._buffer:
                await send(self._buffer.popleft())

    async def closed(self) -> None:
        """Return once no stream is open."""
        await self._none_open.wait()

    async def send(self, message: JSONObject) -> None:
        async with self._lock:
            elsewhere = self.link is not None and await self.link.send(message)
            if not self._sinks and not elsewhere:
                if self.link is not None and not self._buffer:
                    self.link.buffering()
                self._buffer.append(message)
            for sink in list(self._sinks):
                await sink.send(message)


class HostSession:
    """One `Mcp-Session-Id` a host holds: its upstream sessions (a host's request ids pass up
    unchanged, being unique in each), the ids of requests upstreams make of the host, the
    requests it is being served, and its GET stream (buffered while none is open)."""

    # 2026-07-28 announces list changes and resource updates on listen streams only.
    announces_on_listen_only = False

    def __init__(
        self,
        session_id: str,
        principal: Principal,
        handshake: Handshake,
        connectors: Mapping[str, Connects],
        *,
        idle_s: float,
        broker: CredentialBroker | None = None,
        pools: Mapping[str, SharedPool] | None = None,
    ) -> None:
        self.id = session_id
        self.record_id = str(uuid.uuid4())  # the session's id in the record and the listing API
        self.idle_s = idle_s  # ended after this long without a request
        self.ended = anyio.Event()
        self.principal = principal
        self.handshake = handshake
        self.profile = profile_of(handshake.capabilities)  # what pools' sessions declare for it
        self.listen = ListenStream(buffered=not self.announces_on_listen_only)
        self.last_activity = time.monotonic()
        self.log_level: str | None = None
        self.catalogue = Catalogue()  # what the router learnt of the upstreams' lists
        self.outbound = OutboundRequests()
        self.questions = HostQuestions()  # what the gateway asks the host for a 2026-only upstream
        self._modern_only: set[str] = set()  # upstreams that refused initialize but speak 2026-07-28
        self._connectors = connectors
        self._pools = pools or {}
        # Upstreams whose own session here said its lists changed: what it lists may be this
        # session's alone (per-client state), so this session lists them through that session.
        self.own_lists: set[str] = set()
        self.lists_changed: Callable[[str, Kind | None], None] = _ignore  # the shared lists' `forget`
        self._credentials = _Credentials(broker)
        self._upstreams: dict[str, UpstreamSession] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self.in_flight: dict[RequestId, UpstreamSession] = {}
        self._serving: dict[RequestId, anyio.CancelScope] = {}
        self.closed = False

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    @property
    def link(self) -> SessionLink | None:
        """On replicas: this session as the others know it (gateway/cluster.py)."""
        return self.listen.link

    def join(self, cluster: Cluster, key: str) -> None:
        """Be known to the other replicas as `key`: what the gateway mints for this session's
        host names this replica, and its streams are fed from theirs."""
        self.listen.link = cluster.link(key, self.listen)
        self.outbound.owner = self.questions.owner = cluster.instance_id

    async def announce(self, message: JSONObject) -> None:
        """Send the host a message outside any call (what a shared upstream session announces)."""
        await self.listen.send(message)

    def _shared(self, name: str) -> SharedPool | None:
        """Upstream `name`'s pool, if this session's calls go through it (`sessions: shared`)."""
        pool = self._pools.get(name)
        return pool if pool is not None and pool.shared else None

    async def set_log_level(self, level: str) -> None:
        """The host asked for log messages from `level` up: shared pools take it as one host's wish."""
        self.log_level = level
        for pool in self._pools.values():
            if pool.shared:
                await pool.set_level(self, level)

    def open_upstreams(self) -> list[UpstreamSession]:
        return list(self._upstreams.values())

    async def modern(self, name: str) -> ModernUpstream | None:
        """Upstream `name` as a 2026-07-28 server, when this session may use it so (a 2026 group,
        or an upstream that speaks nothing else)."""
        if name not in self._modern_only:
            return None
        return await self._connectors[name].modern(self._credential_source(name))

    async def _modern_instead(self, name: str) -> ModernUpstream | None:
        """After upstream `name` refused `initialize`: itself as a 2026-07-28 server, if it is one."""
        modern = await self._connectors[name].modern(self._credential_source(name))
        if modern is not None:
            logger.info("session %s: %s speaks 2026-07-28 only; reaching it statelessly", self.id, name)
            self._modern_only.add(name)
        return modern

    @contextmanager
    def serving(self, request_id: RequestId) -> Iterator[anyio.CancelScope]:
        """Serve one host request inside this: the host can cancel it (`cancel_host_request`)
        until it ends. `RequestIdInUse` if a request with this id is being served already:
        the upstream's answers would be matched by id to either call."""
        if request_id in self._serving:
            raise RequestIdInUse(request_id)
        with anyio.CancelScope() as scope:
            self._serving[request_id] = scope
            try:
                yield scope
            finally:
                self._serving.pop(request_id, None)

    async def capabilities(self, name: str) -> JSONObject:
        """What upstream `name` can do, as this session reaches it."""
        modern = await self.modern(name)
        if modern is not None:
            return modern.capabilities
        try:
            return (await self.upstream(name)).capabilities
        except UpstreamUnavailable:
            if (modern := await self._modern_instead(name)) is None:
                raise
            return modern.capabilities

    def upstream_session(self, name: str) -> UpstreamSession | None:
        """The open upstream session for `name`, if this host session has one."""
        return self._upstreams.get(name)

    async def upstream(self, name: str) -> UpstreamSession:
        """This session's upstream session for `name`, opened on first use or after a crash."""
        current = self._upstreams.get(name)
        if current is not None and not current.channel.closed:
            return current
        lock = self._locks.setdefault(name, anyio.Lock())
        async with lock:
            current = self._upstreams.get(name)
            if current is not None and not current.channel.closed:
                return current
            if current is not None:
                logger.info("session %s: upstream %s went away; reconnecting", self.id, name)
            connector = self._connectors[name]
            opened = await self._retrying_credential(
                name,
                lambda: connector.open_session(
                    self.handshake, self._unsolicited_from(name), self._credential_source(name)
                ),
            )
            self._upstreams[name] = opened
            # What the upstream announces during this first call (a list change, say) must reach
            # the gateway: a Streamable HTTP session's GET stream opens beside it, so it is awaited.
            with anyio.move_on_after(opened.config.timeouts.connect_s):
                await opened.announcing()
            if self.log_level is not None and "logging" in opened.capabilities:
                await self._replay_log_level(opened)
            return opened

    def binding(self, name: str) -> Binding | None:
        """Whose credential this session uses for upstream `name`; None if it needs none."""
        return self._credentials.binding(self._connectors[name].config, self.principal, self.record_id)

    def _credential_source(self, name: str) -> HeaderSource | None:
        return self._credentials.source(name, self.binding(name))

    async def forward(
        self, name: str, message: JSONObject, sink: MessageSink | None, context: RequestContext = NO_CONTEXT
    ) -> JSONObject:
        """Send a host request to upstream `name`, with this caller's credential if it needs one;
        whatever it takes (a second try, a new upstream session) ends at the call's one deadline."""
        deadline = Deadline(self._connectors[name].config.timeouts.call_s)
        response = await self._retrying_credential(
            name, lambda: self._forward(name, message, sink, context, deadline)
        )
        return outward(self._connectors[name].config.uri_prefix, response)

    async def _retrying_credential(self, name: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt`; if the upstream refuses the credential, have the broker refresh it (or
        say the user must act: `AuthRequired`) and run it once more on a fresh upstream session."""
        try:
            return await attempt()
        except UpstreamUnauthorized as exc:
            if not await self._credentials.rejected(name, self.binding(name), final=False, scope=exc.scope):
                raise
            if name in self._upstreams:
                await self.drop_upstream(name)
        try:
            return await attempt()
        except UpstreamUnauthorized as exc:
            await self._credentials.rejected(name, self.binding(name), final=True, scope=exc.scope)
            raise

    async def _forward(
        self,
        name: str,
        message: JSONObject,
        sink: MessageSink | None,
        context: RequestContext,
        deadline: Deadline,
    ) -> JSONObject:
        """Send a host request to upstream `name`; re-initialise once if the upstream forgot us."""
        request_id = message.get("id")
        modern = await self.modern(name)
        if modern is not None:
            # 2026 on both sides: it passes as it is, with the caller's credential if any.
            source = self._credential_source(name)
            credential = None if source is None else await source()
            return await self._modern_request(modern, message, sink, credential, context, deadline)
        original = message
        message = self._upward(message)
        pool = self._shared(name)
        if pool is not None:
            return await self._forward_shared(pool, message, sink, request_id, deadline)
        try:
            upstream = await self.upstream(name)
        except UpstreamUnavailable:
            if await self._modern_instead(name) is None:
                raise
            return await self._forward(name, original, sink, context, deadline)
        if request_id is not None:
            self.in_flight[request_id] = upstream
        try:
            try:
                response = await upstream.request(message, self.relay(upstream, sink), deadline)
            except UpstreamSessionExpired:
                await self.drop_upstream(name)
                upstream = await self._reopened(name, deadline)
                if request_id is not None:
                    self.in_flight[request_id] = upstream
                response = await upstream.request(message, self.relay(upstream, sink), deadline)
        finally:
            if request_id is not None:
                self.in_flight.pop(request_id, None)
        return self._downward(response, request_id, upstream)

    async def _modern_request(
        self,
        modern: ModernUpstream,
        message: JSONObject,
        sink: MessageSink | None,
        credential: Mapping[str, str] | None,
        context: RequestContext,
        deadline: Deadline,
    ) -> JSONObject:
        """A handshake-era host's request to a 2026-07-28-only upstream (see bridge.py)."""
        target = sink if sink is not None else self.listen
        return await bridged_request(
            modern, self.handshake, self.questions, message, target, credential, context.forwarded, deadline
        )

    async def _reopened(self, name: str, deadline: Deadline) -> UpstreamSession:
        """A new upstream session for `name` in the middle of a call: within the call's deadline."""
        try:
            async with asyncio.timeout_at(deadline.at()):
                return await self.upstream(name)
        except TimeoutError:
            text = f"no answer within {deadline.budget_s:g}s (reconnecting)"
            raise UpstreamTimeout(name, text) from None

    async def _forward_shared(
        self,
        pool: SharedPool,
        message: JSONObject,
        sink: MessageSink | None,
        request_id: object,
        deadline: Deadline,
    ) -> JSONObject:
        used: list[UpstreamSession] = []

        def relay(upstream: UpstreamSession) -> MessageSink:
            used.append(upstream)
            if isinstance(request_id, str | int):
                self.in_flight[request_id] = upstream  # not idle while it runs
            return self.relay(upstream, sink)

        try:
            if message["method"] in ("resources/subscribe", "resources/unsubscribe"):
                response = await pool.subscribe(self, message, relay, self.profile, deadline)
            else:
                response = await pool.request(self, message, relay, self.profile, deadline)
        finally:
            if isinstance(request_id, str | int):
                self.in_flight.pop(request_id, None)
        if not used:  # answered by the pool itself (a URI someone else subscribed to already)
            return response
        return self._downward(response, request_id, used[-1])

    def _upward(self, message: JSONObject) -> JSONObject:
        """A host request as its upstream session gets it."""
        return message

    def _downward(self, response: JSONObject, request_id: object, upstream: UpstreamSession) -> JSONObject:
        """An upstream's answer as the host gets it."""
        return response

    def cancel_all_host_requests(self) -> None:
        for scope in list(self._serving.values()):
            scope.cancel()

    def cancel_host_request(self, request_id: object) -> bool:
        """Stop handling a request the host cancelled; its upstream call is cancelled on the way out."""
        scope = self._serving.get(request_id) if isinstance(request_id, str | int) else None
        if scope is None:
            return False
        scope.cancel()
        return True

    def relay(self, upstream: UpstreamSession, target: MessageSink | None) -> MessageSink:
        return _Relay(self, upstream, target if target is not None else self.listen)

    def _unsolicited_from(self, name: str) -> Callable[[JSONObject], Awaitable[None]]:
        async def deliver(message: JSONObject) -> None:
            upstream = self._upstreams.get(name)
            if upstream is not None:
                await _Relay(self, upstream, self.listen).send(message)

        return deliver

    async def drop_upstream(self, name: str) -> None:
        upstream = self._upstreams.pop(name, None)
        if upstream is not None:
            await upstream.channel.aclose()

    async def reap_idle_upstreams(self, now: float) -> None:
        for name, upstream in list(self._upstreams.items()):
            if now - upstream.last_used > upstream.config.idle_s and upstream not in self.in_flight.values():
                logger.info("session %s: closing idle upstream session %s", self.id, name)
                await self.drop_upstream(name)

    async def aclose(self) -> None:
        self.closed = True
        self.ended.set()
        for pool in self._pools.values():
            pool.leave(self)
        with anyio.CancelScope(shield=True):
            for name in list(self._upstreams):
                await self.drop_upstream(name)

    async def _replay_log_level(self, upstream: UpstreamSession) -> None:
        message = {
            "jsonrpc": "2.0",
            "id": f"mcpgw-setlevel-{secrets.token_hex(4)}",
            "method": "logging/setLevel",
            "params": {"level": self.log_level},
        }
        try:
            await upstream.request(message, None)
        except (UpstreamError, CredentialError) as exc:
            logger.info("session %s: could not restore log level on %s: %s", self.id, upstream.name, exc)


class _Relay:
    """Carries what an upstream sends toward the host: ids of its requests remapped, lists refreshed."""

    __slots__ = ("_session", "_target", "_upstream")

    def __init__(self, session: HostSession, upstream: UpstreamSession, target: MessageSink) -> None:
        self._session = session
        self._upstream = upstream
        self._target = target

    async def send(self, message: JSONObject) -> None:
        method = message.get("method")
        if method is None:
            return
        message = outward(self._upstream.config.uri_prefix, message)
        if "id" in message:
            gateway_id = self._session.outbound.add(self._upstream, message["id"], form_defaults(message))
            message = {**message, "id": gateway_id}
        elif method in _LIST_CHANGED:
            # The merged list changed: route from a fresh listing next time (see router.py).
            self._session.catalogue.forget(_LIST_CHANGED[method])
            self._session.own_lists.add(self._upstream.name)
            # The change may be everybody's too (one server behind many sessions): the shared
            # list is listed again when next needed.
            self._session.lists_changed(self._upstream.name, _LIST_CHANGED[method])
        if self._session.announces_on_listen_only and method in _ANNOUNCEMENTS:
            # 2026-07-28 announces changes on listen streams only, even those an upstream of the
            # handshake era sent on the response stream of the call that caused them.
            await self._session.listen.send(message)
            return
        await self._target.send(message)


class StatelessGroup(HostSession):
    """A 2026-07-28 host's requests, grouped per (API key, client name and version).

    Its requests may come from many host processes: their ids are not unique in it, so they
    are remapped on their way to a handshake-era upstream (and converted to that revision),
    and upstreams that speak 2026-07-28 are reached statelessly instead. Nothing is buffered
    for a listen stream that is not open: the revision promises no replay."""

    announces_on_listen_only = True
    key: GroupKey | None = None  # set by the registry, which keeps its groups by it

    async def modern(self, name: str) -> ModernUpstream | None:
        return await self._connectors[name].modern(self._credential_source(name))

    async def _modern_request(
        self,
        modern: ModernUpstream,
        message: JSONObject,
        sink: MessageSink | None,
        credential: Mapping[str, str] | None,
        context: RequestContext,
        deadline: Deadline,
    ) -> JSONObject:
        # 2026 on both sides: it passes as it is.
        return await modern.request(message, sink, credential, context.forwarded, deadline)

    def _upward(self, message: JSONObject) -> JSONObject:
        message = to_handshake_request(message)
        if "id" in message:
            message = {**message, "id": f"mcpgw-r{next(_REMAPPED_IDS)}"}
        return message

    def _downward(self, response: JSONObject, request_id: object, upstream: UpstreamSession) -> JSONObject:
        if request_id is None:
            return response
        return with_server_info({**response, "id": request_id}, upstream.server_info)


# organisation, API key, grant, client name, version, capability profile
GroupKey = tuple[str, str | None, str | None, str, str, Profile]


@dataclass(slots=True)
class SessionRegistry:
    """Every open host session and 2026-07-28 group, with the caps on how many a caller may make
    the gateway hold (`SessionLimit` past them; a key's least recently used group gives way)."""

    connectors: Mapping[str, Connects]
    limits: SessionsConfig
    recorder: Recorder = field(default_factory=NullRecorder)
    broker: CredentialBroker | None = None
    pools: Mapping[str, SharedPool] = field(default_factory=dict)  # one per upstream (upstream/pool.py)
    # The shared lists' `forget(upstream, kind)` (core/lists.py): kind None is every list.
    lists_changed: Callable[[str, Kind | None], None] = field(default=lambda name, kind: None)
    cluster: Cluster | None = None  # on replicas (a shared store): how the others are reached
    _sessions: dict[str, HostSession] = field(default_factory=dict)
    _groups: dict[GroupKey, StatelessGroup] = field(default_factory=dict)
    _per_key: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    _listening: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    _in_flight: dict[tuple[str, str | None], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[HostSession]:
        """Live sessions, oldest first."""
        return list(self._sessions.values())

    async def create(self, principal: Principal, handshake: Handshake, protocol_version: str) -> HostSession:
        """Open a session, recorded before it is returned; `RecordingFailed` if it cannot be,
        `SessionLimit` if the caller or the gateway holds as many as it may."""
        caller = (principal.organisation_id, principal.api_key_id)
        if self._per_key[caller] >= self.limits.max_per_key:
            held = self._per_key[caller]
            raise SessionLimit(
                429, f"this API key has {held} open sessions, its limit: end one (DELETE) first"
            )
        self._check_total()
        session = await self._open(HostSession, self.limits.idle_s, principal, handshake, protocol_version)
        self._per_key[caller] += 1
        if self.cluster is not None:
            session.join(self.cluster, session.id)
        return session

    def begin_request(self, principal: Principal) -> tuple[str, str | None]:
        """Count one more host request of the caller in flight, and return what `end_request`
        takes (in a `finally`): `SessionLimit` (429) at once when its key (or sign-in grant;
        key-less: the gateway) has `max_requests_in_flight_per_key` already. Each holds its
        request, and the answer on its way, in memory; without a cap one key could hold any
        number. A dict of ints, no lock: this runs on every request."""
        caller = (principal.organisation_id, principal.api_key_id or principal.grant_id)
        held = self._in_flight.get(caller, 0)
        if held >= self.limits.max_requests_in_flight_per_key:
            raise SessionLimit(
                429,
                f"this API key has {held} requests in flight, its limit "
                "(max_requests_in_flight_per_key): wait for one to be answered",
            )
        self._in_flight[caller] = held + 1
        return caller

    def end_request(self, caller: tuple[str, str | None]) -> None:
        held = self._in_flight[caller] - 1
        if held:
            self._in_flight[caller] = held
        else:
            del self._in_flight[caller]

    def requests_in_flight(self, who: str | None) -> int:
        """The requests in flight of one API key (or sign-in grant; None: key-less)."""
        return sum(n for (_, caller), n in self._in_flight.items() if caller == who)

    @contextmanager
    def listening(self, principal: Principal) -> Iterator[None]:
        """Hold one of the caller's 2026-07-28 listen streams while inside: `SessionLimit` (429)
        at once when its key holds `max_listen_streams_per_key` already. A group's streams are
        not otherwise bounded (a key may open any number on one group), and each holds memory
        and a listen slot of every HTTP upstream it reaches."""
        caller = (principal.organisation_id, principal.api_key_id)
        cap = self.limits.max_listen_streams_per_key
        if self._listening[caller] >= cap:
            raise SessionLimit(
                429,
                f"this API key has {cap} listen streams open, its limit (max_listen_streams_per_key): "
                "close one first",
            )
        self._listening[caller] += 1
        try:
            yield
        finally:
            self._listening[caller] -= 1
            if not self._listening[caller]:
                del self._listening[caller]

    async def group(
        self, principal: Principal, handshake: Handshake, protocol_version: str
    ) -> StatelessGroup:
        """The 2026-07-28 group of this key, client (name and version) and capability profile,
        opened (and recorded) if there is none; past the key's `groups_per_key`, its least
        recently used group ends."""
        info = handshake.client_info
        name, version = str(info.get("name", "")), str(info.get("version", ""))
        # A signed-in host's grants are kept apart: each is a sign-in of its own, revoked alone.
        # Capabilities come with each request: a group's upstream sessions declare its first
        # request's, so requests declaring others (another profile) make a group of their own.
        profile = profile_of(handshake.capabilities)
        key = (principal.organisation_id, principal.api_key_id, principal.grant_id, name, version, profile)
        found = self._groups.get(key)
        if found is not None and not found.closed:
            return found
        theirs = [group for k, group in self._groups.items() if k[:2] == key[:2]]
        if len(theirs) >= self.limits.groups_per_key:
            await self.end(min(theirs, key=lambda group: group.last_activity), "evicted")
        self._check_total()
        idle_s = self.limits.stateless_gap_s
        group = await self._open(StatelessGroup, idle_s, principal, handshake, protocol_version)
        group.key = key
        self._groups[key] = group
        if self.cluster is not None:
            group.join(self.cluster, group_stream_key(key))
        return group

    def _check_total(self) -> None:
        if len(self._sessions) >= self.limits.max_total:
            held = len(self._sessions)
            raise SessionLimit(503, f"the gateway holds {held} sessions, its limit: try again later")

    async def _open(
        self, kind: type[S], idle_s: float, principal: Principal, handshake: Handshake, protocol_version: str
    ) -> S:
        session_id = secrets.token_urlsafe(24)
        session = kind(
            session_id,
            principal,
            handshake,
            self.connectors,
            idle_s=idle_s,
            broker=self.broker,
            pools=self.pools,
        )
        session.lists_changed = self.lists_changed
        client = handshake.client_info
        name, version = client.get("name"), client.get("version")
        await self.recorder.session_started(
            SessionStart(
                id=session.record_id,
                mcp_session_id=session_id,
                organisation_id=principal.organisation_id,
                api_key_id=principal.api_key_id,
                # A signed-in host's registered client; else one derived from the name it gives.
                client_id=principal.client_id or client_id_of(name),
                client_name=name if isinstance(name, str) else None,
                client_version=version if isinstance(version, str) else None,
                protocol_version=protocol_version,
                started_at=utc_now(),
            )
        )
        self._sessions[session_id] = session
        return session

    def held(self, session_id: str) -> HostSession | None:
        """The session-based session `session_id` if this replica holds it (for what another
        replica passes on: the caller was checked there)."""
        session = self._sessions.get(session_id)
        return None if isinstance(session, StatelessGroup) else session

    def get(self, session_id: str, principal: Principal) -> HostSession | None:
        """The session, only if the same API key (or, key-less, the same organisation) opened it."""
        session = self._sessions.get(session_id)
        stateless = isinstance(session, StatelessGroup)  # a group is no Mcp-Session-Id a host can use
        if session is None or stateless or not principal.same_caller(session.principal):
            return None
        return session

    async def end(self, session: HostSession, reason: str) -> None:
        """End `session`: `reason` is deleted (by the host), idle, closed (stream gone), evicted
        (a newer group of its key took its place) or shutdown."""
        if self._sessions.pop(session.id, None) is None:
            return
        if isinstance(session, StatelessGroup):
            if session.key is not None:
                self._groups.pop(session.key, None)
        else:
            self._per_key[(session.principal.organisation_id, session.principal.api_key_id)] -= 1
        await session.aclose()
        if self.cluster is not None and session.link is not None:
            self.cluster.unlink(session.link.key)
        if self.broker is not None:
            try:
                await self.broker.session_ended(session.principal.organisation_id, session.record_id)
            except StoreError as exc:
                logger.warning("session %s: its own credentials could not be removed: %s", session.id, exc)
        try:
            await self.recorder.session_ended(SessionEnd(session.record_id, utc_now(), reason))
        except RecordingFailed as exc:
            logger.error("session %s ended (%s) but the record could not say so: %s", session.id, reason, exc)

    async def connected(self, binding: Binding) -> None:
        """A binding just got its credential: its sessions' tool lists change (the connect tool
        gives way to the upstream's own), so tell their hosts to list again."""
        for session in list(self._sessions.values()):
            try:
                same = session.binding(binding.upstream) == binding
            except CredentialError:
                same = False  # this session cannot hold a credential for it at all
            if same:
                session.catalogue.forget()
                await session.listen.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})

    async def upstream_recovered(self, name: str, capabilities: JSONObject) -> None:
        """Upstream `name` answers again after being down: every session's lists lacked what it
        offers, so each forgets them and its host is told to list again."""
        kinds: tuple[Kind, ...] = ("tools", "prompts", "resources")
        self.lists_changed(name, None)
        # Nothing known of what it offers (it refused the check's credential): its tools at least.
        offered = [kind for kind in kinds if kind in capabilities] or ["tools"]

        async def tell(session: HostSession) -> None:
            with anyio.move_on_after(1):  # a host whose GET stream does not read holds up no other
                for kind in offered:
                    await session.listen.send(notification(f"notifications/{kind}/list_changed"))

        async with anyio.create_task_group() as tg:
            for session in list(self._sessions.values()):
                for kind in offered:
                    session.catalogue.forget(kind)
                tg.start_soon(tell, session)

    async def upstream_list_changed(self, name: str, method: str) -> None:
        """A session no host owns (the catalogue's, or a shared pool's) says upstream `name`'s list
        changed: the shared list is listed again, and every host is told to list again."""
        kind = _LIST_CHANGED.get(method)
        if kind is None:
            return
        self.lists_changed(name, kind)

        async def tell(session: HostSession) -> None:
            with anyio.move_on_after(1):  # a host whose GET stream does not read holds up no other
                await session.listen.send(notification(method))

        async with anyio.create_task_group() as tg:
            for session in list(self._sessions.values()):
                session.catalogue.forget(kind)
                tg.start_soon(tell, session)

    async def reap(self) -> None:
        now = time.monotonic()
        for pool in self.pools.values():
            await pool.reap(now)
        for session in list(self._sessions.values()):
            if session.listen.open:
                # A host holding a stream open is still there (a quiet GET stream, a 2026-07-28
                # listen): its session is idle from when the last one closed, not from its last request.
                session.touch()
            if now - session.last_activity > session.idle_s and not session.in_flight:
                logger.info("session %s: idle for %.0fs; ending it", session.id, now - session.last_activity)
                await self.end(session, "idle")
            else:
                await session.reap_idle_upstreams(now)

    async def aclose(self) -> None:
        """End every session: the gateway is stopping. What they still serve is cancelled first, so
        it is answered and recorded as cancelled, not as a failure of the upstream closed under it."""
        for session in list(self._sessions.values()):
            session.cancel_all_host_requests()
        for session in list(self._sessions.values()):
            await self.end(session, "shutdown")


def _ignore(name: str, kind: Kind | None) -> None:
    return None


def client_id_of(name: object) -> str | None:
    """A stable id for a host application (from its clientInfo name), the same in every session.

    Hosts identify themselves only by name and version; this gives the listing API's `clientId`
    a uuid that groups one application's sessions without storing anything new.
    """
    return str(uuid.uuid5(_CLIENT_NAMESPACE, name)) if isinstance(name, str) and name else None


def start_reaper(registry: SessionRegistry, task_group: TaskGroup, interval_s: float = 15.0) -> None:
    start_guarded(task_group, "the session reaper", every, interval_s, "reaping idle sessions", registry.reap)
