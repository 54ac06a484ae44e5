"""One `Mcp-Session-Id` the gateway minted: its upstream sessions (opened lazily, one per
upstream it has used), the ids of requests upstreams send its host, and its listen stream."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import anyio

from gateway.cluster import Cluster, SessionLink
from gateway.config import UpstreamConfig
from gateway.core.bridge import HostQuestions, bridged_request
from gateway.core.catalogue import Catalogue, Kind
from gateway.core.listen_stream import ListenStream
from gateway.core.outbound import OutboundRequests
from gateway.credentials.binding import binding_for
from gateway.credentials.broker import CredentialBroker
from gateway.errors import (
    CredentialError,
    RequestIdInUse,
    UpstreamError,
    UpstreamSessionExpired,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from gateway.principal import Principal
from gateway.protocol.context import NO_CONTEXT, Deadline, RequestContext
from gateway.protocol.elicitation import form_defaults
from gateway.protocol.jsonrpc import JSONObject, RequestId
from gateway.protocol.uris import outward
from gateway.upstream.channel import MessageSink
from gateway.upstream.connector import Connects, Handshake, ModernUpstream, UpstreamSession
from gateway.upstream.http import HeaderSource
from gateway.upstream.pool import SharedPool
from gateway.upstream.profiles import profile_of
from store import Binding

logger = logging.getLogger(__name__)
T = TypeVar("T")
LIST_CHANGED: dict[str, Kind] = {
    "notifications/tools/list_changed": "tools",
    "notifications/prompts/list_changed": "prompts",
    "notifications/resources/list_changed": "resources",
}
_ANNOUNCEMENTS = frozenset({*LIST_CHANGED, "notifications/resources/updated"})


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
        self, name: str, binding: Binding | None, *, final: bool, since: float, scope: str | None = None
    ) -> bool:
        """Tell the broker the upstream refused what was sent (it refreshes, or says the user
        must act, for more `scope` if the refusal named one); False when this session sends
        that upstream no credential of its own. For the gateway's own token, what was sent
        from monotonic time `since` on is dropped, and a retry asks for a new one."""
        if self._broker is None:
            return False
        if binding is None:
            own = self._broker.own_tokens.get(name)
            if own is None or final:
                return False
            own.rejected(since)
            return True
        await self._broker.rejected(name, binding, self._sent.pop(name, {}), final=final, scope=scope)
        return True


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
        handshake_era = not self.announces_on_listen_only
        self.listen = ListenStream(buffered=handshake_era, one_stream=handshake_era)
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
        or an upstream that speaks nothing else).

        A handshake-era session tries `initialize` first and asks `server/discover` only once
        that is refused (`_modern_instead`), not before: a dual-era server's discover answer
        (the SDK's lists 2026-07-28 alone) does not say whether it serves `initialize` too, and
        reaching such servers statelessly would bridge what now passes through as it is
        (tests/gateway/upstream/test_discover_first.py says what it broke)."""
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
        started = time.monotonic()
        try:
            return await attempt()
        except UpstreamUnauthorized as exc:
            refused = await self._credentials.rejected(
                name, self.binding(name), final=False, since=started, scope=exc.scope
            )
            if not refused:
                raise
            if name in self._upstreams:
                await self.drop_upstream(name)
        started = time.monotonic()
        try:
            return await attempt()
        except UpstreamUnauthorized as exc:
            binding = self.binding(name)
            await self._credentials.rejected(name, binding, final=True, since=started, scope=exc.scope)
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
        elif method in LIST_CHANGED:
            # The merged list changed: route from a fresh listing next time (see router.py).
            self._session.catalogue.forget(LIST_CHANGED[method])
            self._session.own_lists.add(self._upstream.name)
            # The change may be everybody's too (one server behind many sessions): the shared
            # list is listed again when next needed.
            self._session.lists_changed(self._upstream.name, LIST_CHANGED[method])
        if self._session.announces_on_listen_only and method in _ANNOUNCEMENTS:
            # 2026-07-28 announces changes on listen streams only, even those an upstream of the
            # handshake era sent on the response stream of the call that caused them.
            await self._session.listen.send(message)
            return
        await self._target.send(message)


def _ignore(name: str, kind: Kind | None) -> None:
    return None
