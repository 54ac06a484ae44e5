"""Upstream sessions that belong to no one host session: one `SharedPool` per configured upstream.

Every upstream has a pool. For a `per_host` upstream it holds only the catalogue's listing
sessions (what the upstream lists is fetched once for everybody, `core/lists.py`); for a `shared`
upstream it is also where every host session's calls go, multiplexed over at most `max_sessions`
upstream sessions (stdio: children), each opened with the gateway's own handshake when a call
needs one and closed once idle for the upstream's `idle_s`. Both are kept per capability profile
(`profiles.py`, at most MAX_PROFILES besides the empty one): a session's handshake declares its
profile's client capabilities, so the upstream lists (and serves) to it what it would to a host
of that profile, and a host's calls go to a session of its own profile.

Multiplexing keeps what one host session does apart from another's:
- request ids are replaced by ids unique in the upstream session (`mcpgw-s<n>`), and put back on
  the response; progress tokens likewise (`mcpgw-p<n>`), so progress reaches the caller whose
  token it was; a host's cancellation cancels its call, which sends `notifications/cancelled`
  under the upstream-facing id;
- a request the upstream makes of a host (sampling, elicitation, roots, ping) goes to the host
  whose call is in flight on that upstream session when exactly one host's is; otherwise nobody
  can tell whose it is, and the upstream gets a JSON-RPC error (-32600) saying to use per_host;
- `list_changed` is handed to `on_list_changed` (the catalogue forgets, every host is told);
  `resources/updated` goes only to the hosts subscribed to that URI (the upstream sees one
  subscription per URI); `logging/setLevel` sends the lowest level any host asked for, and each
  host gets only log messages at or above its own level.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from gateway.errors import UpstreamBusy, UpstreamError, UpstreamSessionExpired
from gateway.protocol.context import Deadline
from gateway.protocol.jsonrpc import (
    INVALID_REQUEST,
    LOG_LEVELS,
    JSONObject,
    error,
    meta_of,
    params_of,
    result,
)
from gateway.protocol.uris import outward
from gateway.upstream.channel import DISCARD, MessageSink
from gateway.upstream.connector import SHARED_HANDSHAKE, Connects, UpstreamSession, shared_handshake
from gateway.upstream.profiles import EMPTY_PROFILE, MAX_PROFILES, Profile, capabilities_of

__all__ = ["PoolUser", "SharedPool"]

logger = logging.getLogger(__name__)

_IDS = itertools.count(1)
_LIST_CHANGED = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
    }
)
NOT_ONE_HOST = (
    "mcpgw: this upstream session is shared by several host sessions and no single host's call "
    "is in flight on it, so the request cannot be passed to a host; configure the upstream with "
    "sessions: per_host"
)
ListChanged = Callable[[str, str], Awaitable[None]]  # (upstream, notification method)


class PoolUser(Protocol):
    """A host session, as a shared pool sees it."""

    @property
    def id(self) -> str: ...

    @property
    def log_level(self) -> str | None: ...

    async def announce(self, message: JSONObject) -> None:
        """Send a message outside any call (the host's GET stream)."""
        ...


@dataclass(frozen=True, slots=True)
class _Call:
    user: PoolUser
    progress_token: object


@dataclass(slots=True)
class _Member:
    profile: Profile = EMPTY_PROFILE  # the client capabilities its handshake declared
    session: UpstreamSession | None = None
    calls: dict[str, _Call] = field(default_factory=dict)  # by the upstream-facing id

    @property
    def live(self) -> bool:
        return self.session is not None and not self.session.channel.closed

    def hosts_in_flight(self) -> set[str]:
        return {call.user.id for call in self.calls.values()}


class SharedPool:
    def __init__(self, connector: Connects) -> None:
        self._connector = connector
        self._list_changed: list[ListChanged] = []
        self._members: list[_Member] = []
        self._lock = anyio.Lock()
        # Hosts' capability profiles this pool opens sessions for, besides the empty one: at
        # most MAX_PROFILES (`admit`), each a session or more whose handshake declares it.
        self._profiles: set[Profile] = set()
        self._too_many_logged = False
        self._users: dict[str, PoolUser] = {}
        self._subscribers: dict[str, set[str]] = {}
        self._levels: dict[str, str] = {}
        self._sent_level: str | None = None

    def on_list_changed(self, callback: ListChanged) -> None:
        """Have `callback(upstream, method)` run whenever a session of this pool says one of the
        upstream's lists changed (the lists are everybody's: its hosts share the session)."""
        self._list_changed.append(callback)

    async def list_changed(self, method: str) -> None:
        for callback in self._list_changed:
            await callback(self.name, method)

    @property
    def name(self) -> str:
        return self._connector.config.name

    @property
    def shared(self) -> bool:
        """Whether host sessions' calls go through this pool (`sessions: shared`)."""
        return self._connector.config.sessions == "shared"

    def sessions(self) -> int:
        """Upstream sessions (stdio: children) open in the pool now."""
        return sum(1 for member in self._members if member.live)

    def admit(self, profile: Profile) -> Profile:
        """The profile whose sessions (and lists) serve a host of `profile`: itself, or the empty
        one once MAX_PROFILES others are known (logged once)."""
        if profile == EMPTY_PROFILE or profile in self._profiles:
            return profile
        if len(self._profiles) < MAX_PROFILES:
            self._profiles.add(profile)
            return profile
        if not self._too_many_logged:
            self._too_many_logged = True
            logger.warning(
                "upstream %s: hosts declared more than %d sets of capabilities; hosts of other sets "
                "are served as a client declaring none",
                self.name,
                MAX_PROFILES,
            )
        return EMPTY_PROFILE

    async def capabilities(self, profile: Profile = EMPTY_PROFILE) -> JSONObject:
        """What the upstream can do, from a pool session (opened if there is none) declaring
        the client capabilities of `profile`."""
        member = await self._member(profile)
        assert member.session is not None
        return member.session.capabilities

    async def list(self, message: JSONObject, profile: Profile = EMPTY_PROFILE) -> JSONObject:
        """Send a listing request of the gateway's own (no host's progress, no host's id), as a
        client with the capabilities of `profile`."""
        member = await self._member(profile)
        assert member.session is not None
        return await member.session.request({**message, "id": f"mcpgw-s{next(_IDS)}"}, DISCARD)

    async def request(
        self,
        user: PoolUser,
        message: JSONObject,
        relay: Callable[[UpstreamSession], MessageSink],
        profile: Profile = EMPTY_PROFILE,
        deadline: Deadline | None = None,
    ) -> JSONObject:
        """Send a host's request over a pool session declaring the host's `profile` (`admit`),
        under an id (and progress token) unique in it; what the upstream sends during the call
        goes to `relay(session)`. Both tries wait until the host call's `deadline`, if it has one."""
        self._users[user.id] = user
        profile = self.admit(profile)
        try:
            return await self._request(user, message, relay, profile, deadline)
        except UpstreamSessionExpired:  # it forgot that session (HTTP 404): once more, on another
            return await self._request(user, message, relay, profile, deadline)

    async def _request(
        self,
        user: PoolUser,
        message: JSONObject,
        relay: Callable[[UpstreamSession], MessageSink],
        profile: Profile,
        deadline: Deadline | None,
    ) -> JSONObject:
        member = await self._member(profile)
        session = member.session
        assert session is not None
        call_id = f"mcpgw-s{next(_IDS)}"
        token = meta_of(message).get("progressToken")
        upward: JSONObject = {**message, "id": call_id}
        if token is not None:
            params = params_of(message)
            meta = {**meta_of(message), "progressToken": f"mcpgw-p{next(_IDS)}"}
            upward["params"] = {**params, "_meta": meta}
        member.calls[call_id] = _Call(user, token)
        try:
            response = await session.request(
                upward, _CallSink(self, member, call_id, relay(session)), deadline
            )
        except UpstreamSessionExpired:
            with anyio.CancelScope(shield=True):
                await session.channel.aclose()  # closed: `_member` opens another
            raise
        finally:
            member.calls.pop(call_id, None)
        return {**response, "id": message["id"]}

    async def subscribe(
        self,
        user: PoolUser,
        message: JSONObject,
        relay: Callable[[UpstreamSession], MessageSink],
        profile: Profile = EMPTY_PROFILE,
        deadline: Deadline | None = None,
    ) -> JSONObject:
        """resources/subscribe or unsubscribe: the upstream sees the first and the last of each URI."""
        uri = str(params_of(message).get("uri"))
        subscribers = self._subscribers.setdefault(uri, set())
        if message["method"] == "resources/subscribe":
            if not subscribers:
                response = await self.request(user, message, relay, profile, deadline)
                if "error" in response:
                    return response
            subscribers.add(user.id)
        else:
            subscribers.discard(user.id)
            if not subscribers:
                del self._subscribers[uri]
                return await self.request(user, message, relay, profile, deadline)
        return result(message["id"], {})

    async def set_level(self, user: PoolUser, level: str) -> None:
        """A host asked for log messages from `level` up: the upstream is sent the lowest level
        any of its hosts asked for (each host still gets only what it asked for)."""
        self._users[user.id] = user
        self._levels[user.id] = level
        await self._send_level()

    def leave(self, user: PoolUser) -> None:
        """A host session ended: it gets nothing more (what it subscribed to, no one is told)."""
        self._users.pop(user.id, None)
        self._levels.pop(user.id, None)
        for uri, subscribers in list(self._subscribers.items()):
            subscribers.discard(user.id)
            if not subscribers:
                del self._subscribers[uri]

    async def reap(self, now: float) -> None:
        """Close pool sessions unused for the upstream's `idle_s` (none with a call in flight)."""
        idle_s = self._connector.config.idle_s
        for member in list(self._members):
            session = member.session
            if session is None or member.calls or now - session.last_used <= idle_s:
                continue
            logger.info("upstream %s: closing an idle pooled session", self.name)
            self._members.remove(member)
            await session.channel.aclose()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for member in self._members:
                if member.session is not None:
                    await member.session.channel.aclose()
            self._members.clear()

    async def _member(self, profile: Profile = EMPTY_PROFILE) -> _Member:
        """The pool session of `profile` with the fewest calls in flight; a new one while the
        pool has room for that profile (`max_sessions` each) and each open one is busy."""
        async with self._lock:
            self._members = [member for member in self._members if member.live]
            mine = [member for member in self._members if member.profile == profile]
            best = min(mine, key=lambda member: len(member.calls), default=None)
            room = len(mine) < (self._connector.config.max_sessions if self.shared else 1)
            if best is not None and (not best.calls or not room):
                return best
            member = _Member(profile)
            handshake = (
                SHARED_HANDSHAKE if profile == EMPTY_PROFILE else shared_handshake(capabilities_of(profile))
            )
            try:
                member.session = await self._connector.open_session(handshake, self._unsolicited(member))
            except UpstreamBusy:
                if best is None:
                    raise
                return best  # the gateway's cap on children: the open ones carry on
            self._members.append(member)
            with anyio.move_on_after(self._connector.config.timeouts.connect_s):
                await member.session.announcing()  # its list changes reach the gateway from the start
            if self._sent_level is not None and "logging" in member.session.capabilities:
                await self._level_on(member.session, self._sent_level)
            return member

    def _unsolicited(self, member: _Member) -> Callable[[JSONObject], Awaitable[None]]:
        async def deliver(message: JSONObject) -> None:
            await self._deliver(member, message)

        return deliver

    async def _deliver(self, member: _Member, message: JSONObject) -> None:
        method = message.get("method")
        if not isinstance(method, str):
            return
        if "id" in message:  # a request of a host outside any call: no host it could go to
            await self._refuse(member, message)
        elif method in _LIST_CHANGED:
            await self.list_changed(method)
        elif method == "notifications/resources/updated":
            uri = params_of(message).get("uri")
            exposed = outward(self._connector.config.uri_prefix, message)  # as its hosts subscribed
            for user_id in list(self._subscribers.get(str(uri), ())):
                user = self._users.get(user_id)
                if user is not None:
                    await user.announce(exposed)
        elif method == "notifications/message":
            for user in list(self._users.values()):
                if _wants(user, message):
                    await user.announce(message)

    async def _refuse(self, member: _Member, message: JSONObject) -> None:
        if member.session is None:
            return
        try:
            await member.session.channel.respond(error(message["id"], INVALID_REQUEST, NOT_ONE_HOST))
        except UpstreamError as exc:
            logger.info("upstream %s: could not refuse its request: %s", self.name, exc)

    async def _send_level(self) -> None:
        if not self._levels:
            return
        lowest = min(self._levels.values(), key=lambda level: LOG_LEVELS.get(level, 0))
        if lowest == self._sent_level:
            return
        self._sent_level = lowest
        for member in list(self._members):
            if member.session is not None and member.live and "logging" in member.session.capabilities:
                await self._level_on(member.session, lowest)

    async def _level_on(self, session: UpstreamSession, level: str) -> None:
        message = {
            "jsonrpc": "2.0",
            "id": f"mcpgw-s{next(_IDS)}",
            "method": "logging/setLevel",
            "params": {"level": level},
        }
        try:
            await session.request(message, DISCARD)
        except UpstreamError as exc:
            logger.info("upstream %s: could not set its log level: %s", self.name, exc)


def _wants(user: PoolUser, message: JSONObject) -> bool:
    """Whether a log message is at or above the level its host asked for (none asked: all)."""
    if user.log_level is None:
        return True
    level = params_of(message).get("level")
    return LOG_LEVELS.get(str(level), 0) >= LOG_LEVELS.get(user.log_level, 0)


class _CallSink:
    """What the upstream sends during one host's call on a pool session, on its way to that host."""

    __slots__ = ("_call_id", "_member", "_pool", "_target")

    def __init__(self, pool: SharedPool, member: _Member, call_id: str, target: MessageSink) -> None:
        self._pool = pool
        self._member = member
        self._call_id = call_id
        self._target = target

    async def send(self, message: JSONObject) -> None:
        call = self._member.calls.get(self._call_id)
        if call is None:
            return
        method = message.get("method")
        if method in _LIST_CHANGED:  # said on a call's stream, but about everybody's lists
            await self._pool.list_changed(str(method))
            return
        if "id" in message:
            if len(self._member.hosts_in_flight()) != 1:
                await self._pool._refuse(self._member, message)
                return
        elif method == "notifications/progress":
            message = {**message, "params": {**params_of(message), "progressToken": call.progress_token}}
        elif method == "notifications/message" and not _wants(call.user, message):
            return
        await self._target.send(message)
