"""Every host session and 2026-07-28 group a replica holds: the registry mints ids, binds each
session to the caller that opened it, caps what one caller may hold, and reaps idle sessions."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup

from gateway.background import every, start_guarded
from gateway.cluster import Cluster, group_stream_key
from gateway.config import SessionsConfig
from gateway.core.catalogue import Kind
from gateway.core.host_session import LIST_CHANGED, HostSession
from gateway.core.shared_sessions import SharedSessions, handshake_of
from gateway.core.stateless_group import GroupKey, StatelessGroup
from gateway.credentials.broker import CredentialBroker
from gateway.errors import (
    CredentialError,
    RecordingFailed,
    SessionLimit,
)
from gateway.principal import Principal
from gateway.protocol.jsonrpc import JSONObject, notification
from gateway.recording.recorder import NullRecorder, Recorder
from gateway.upstream.connector import Connects, Handshake
from gateway.upstream.pool import SharedPool
from gateway.upstream.profiles import profile_of
from store import Binding, SessionEnd, SessionStart, StoreError, utc_now

logger = logging.getLogger(__name__)
S = TypeVar("S", bound="HostSession")
_CLIENT_NAMESPACE = uuid.UUID("0f0a3c1e-6d3b-5e8e-9a57-6d63706777c1")  # fixed: client ids must not change


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
    shared: SharedSessions | None = None  # on replicas: the sessions' rows (core/shared_sessions.py)
    _sessions: dict[str, HostSession] = field(default_factory=dict)
    _groups: dict[GroupKey, StatelessGroup] = field(default_factory=dict)
    _per_key: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    _opening: anyio.Lock = field(default_factory=anyio.Lock)
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
        # One group per key: two first requests of a group at once open it once.
        async with self._opening:
            found = self._groups.get(key)
            if found is not None and not found.closed:
                return found
            theirs = [group for k, group in self._groups.items() if k[:2] == key[:2]]
            if len(theirs) >= self.limits.groups_per_key:
                await self.end(min(theirs, key=lambda group: group.last_activity), "evicted")
            self._check_total()
            idle_s = self.limits.stateless_gap_s
            group = await self._open(
                StatelessGroup, idle_s, principal, handshake, protocol_version, group_stream_key(key)
            )
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
        self,
        kind: type[S],
        idle_s: float,
        principal: Principal,
        handshake: Handshake,
        protocol_version: str,
        group_key: str | None = None,
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
        if self.shared is not None:
            # Before any upstream is contacted: any replica can serve its next request.
            live = await self.shared.opened(
                session_id, session.record_id, principal, handshake, protocol_version, group_key
            )
            session.id, session.record_id = live.mcp_session_id, live.record_id
        client = handshake.client_info
        name, version = client.get("name"), client.get("version")
        await self.recorder.session_started(
            SessionStart(
                id=session.record_id,
                mcp_session_id=session.id,
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
        self._sessions[session.id] = session
        return session

    def held(self, session_id: str) -> HostSession | None:
        """The session-based session `session_id` if this replica holds it (for what another
        replica passes on: the caller was checked there)."""
        session = self._sessions.get(session_id)
        return None if isinstance(session, StatelessGroup) else session

    async def get(self, session_id: str, principal: Principal) -> HostSession | None:
        """The session, only if the same API key (or, key-less, the same organisation) opened it.
        On replicas, one another replica minted is built here from its row (`SessionsUnreachable`
        if the database cannot be asked)."""
        session = self._sessions.get(session_id)
        if session is None and self.shared is not None:
            session = await self._adopt(session_id, principal)
        stateless = isinstance(session, StatelessGroup)  # a group is no Mcp-Session-Id a host can use
        if session is None or stateless or not principal.same_caller(session.principal):
            return None
        return session

    async def _adopt(self, session_id: str, principal: Principal) -> HostSession | None:
        """This replica's copy of a session another one minted: its upstream sessions open as
        they are needed, under the handshake the host made there."""
        assert self.shared is not None and self.cluster is not None
        live = await self.shared.find(session_id, principal)
        held = self._sessions.get(session_id)  # another request of it may have adopted it meanwhile
        if live is None or held is not None:
            return held
        session = HostSession(
            session_id,
            principal,
            handshake_of(live),
            self.connectors,
            idle_s=self.limits.idle_s,
            broker=self.broker,
            pools=self.pools,
        )
        session.record_id = live.record_id
        session.lists_changed = self.lists_changed
        self._sessions[session_id] = session
        self._per_key[(principal.organisation_id, principal.api_key_id)] += 1
        session.join(self.cluster, session_id)
        logger.info("session %s: served here too (opened on another replica)", session_id)
        return session

    async def end(self, session: HostSession, reason: str) -> None:
        """End `session`: `reason` is deleted (by the host), idle, closed (stream gone), evicted
        (a newer group of its key took its place) or shutdown. On replicas, for all of them."""
        if not await self.release(session):
            return
        if self.shared is not None and not await self.shared.end(session.id):
            return  # another replica ended it, and recorded so
        await self._ended(session.principal.organisation_id, session.id, session.record_id, reason)

    async def release(self, session: HostSession) -> bool:
        """Drop this replica's copy of `session` (its upstream sessions close): False if it held
        none. Alone, this ends nothing: on replicas, the others may go on serving it."""
        if self._sessions.pop(session.id, None) is None:
            return False
        if isinstance(session, StatelessGroup):
            if session.key is not None:
                self._groups.pop(session.key, None)
        else:
            self._per_key[(session.principal.organisation_id, session.principal.api_key_id)] -= 1
        await session.aclose()
        if self.cluster is not None and session.link is not None:
            self.cluster.unlink(session.link.key)
        return True

    async def ended_elsewhere(self, session_id: str) -> None:
        """Another replica ended this session: drop the copy held here, if any."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.cancel_all_host_requests()
            await self.release(session)

    async def _ended(self, organisation_id: str, session_id: str, record_id: str, reason: str) -> None:
        if self.broker is not None:
            try:
                await self.broker.session_ended(organisation_id, record_id)
            except StoreError as exc:
                logger.warning("session %s: its own credentials could not be removed: %s", session_id, exc)
        try:
            await self.recorder.session_ended(SessionEnd(record_id, utc_now(), reason))
        except RecordingFailed as exc:
            logger.error("session %s ended (%s) but the record could not say so: %s", session_id, reason, exc)

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
                await session.listen.announce(notification("notifications/tools/list_changed"))

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
                    await session.listen.announce(notification(f"notifications/{kind}/list_changed"))

        async with anyio.create_task_group() as tg:
            for session in list(self._sessions.values()):
                for kind in offered:
                    session.catalogue.forget(kind)
                tg.start_soon(tell, session)

    async def upstream_list_changed(self, name: str, method: str) -> None:
        """A session no host owns (the catalogue's, or a shared pool's) says upstream `name`'s list
        changed: the shared list is listed again, and every host is told to list again."""
        kind = LIST_CHANGED.get(method)
        if kind is None:
            return
        self.lists_changed(name, kind)

        async def tell(session: HostSession) -> None:
            with anyio.move_on_after(1):  # a host whose GET stream does not read holds up no other
                await session.listen.announce(notification(method))

        async with anyio.create_task_group() as tg:
            for session in list(self._sessions.values()):
                session.catalogue.forget(kind)
                tg.start_soon(tell, session)

    async def reap(self) -> None:
        """One round of the reaper: idle sessions end (on replicas: this replica's idle copies
        are dropped, and the sessions no replica has seen for `idle_s` end), idle upstream
        sessions close. Sessions end side by side: each may wait on its upstreams closing."""
        now = time.monotonic()
        for pool in self.pools.values():
            await pool.reap(now)
        idle: list[HostSession] = []
        for session in list(self._sessions.values()):
            if session.listen.open or session.in_flight:
                # A host holding a stream open is still there (a quiet GET stream, a 2026-07-28
                # listen): its session is idle from when the last one closed, not from its last request.
                session.touch()
            if now - session.last_activity > session.idle_s:
                logger.info("session %s: idle for %.0fs; ending it", session.id, now - session.last_activity)
                idle.append(session)
            else:
                await session.reap_idle_upstreams(now)
        async with anyio.create_task_group() as tg:
            for session in idle:
                if self.shared is None:
                    tg.start_soon(self.end, session, "idle")
                else:
                    tg.start_soon(self.release, session)  # idle here; maybe not on the others
        if self.shared is not None:
            await self._reap_shared(now)

    async def _reap_shared(self, now: float) -> None:
        assert self.shared is not None
        try:
            await self.shared.seen(((s.id, s.last_activity) for s in self._sessions.values()), now)
            ended = await self.shared.idle(self.limits.idle_s, self.limits.stateless_gap_s)
        except StoreError as exc:
            logger.warning("sessions idle on every replica could not be ended this round: %s", exc)
            return
        for live in ended:
            held = self._sessions.get(live.mcp_session_id)
            if held is not None:
                await self.release(held)
            await self._ended(live.organisation_id, live.mcp_session_id, live.record_id, "idle")

    async def aclose(self) -> None:
        """End every session: the gateway is stopping. What they still serve is cancelled first, so
        it is answered and recorded as cancelled, not as a failure of the upstream closed under it.
        On replicas, the sessions go on on the others: only this replica's copies are dropped."""
        for session in list(self._sessions.values()):
            session.cancel_all_host_requests()
        for session in list(self._sessions.values()):
            if self.shared is None:
                await self.end(session, "shutdown")
            else:
                await self.release(session)


def client_id_of(name: object) -> str | None:
    """A stable id for a host application (from its clientInfo name), the same in every session.

    Hosts identify themselves only by name and version; this gives the listing API's `clientId`
    a uuid that groups one application's sessions without storing anything new.
    """
    return str(uuid.uuid5(_CLIENT_NAMESPACE, name)) if isinstance(name, str) and name else None


def start_reaper(registry: SessionRegistry, task_group: TaskGroup, interval_s: float = 15.0) -> None:
    start_guarded(task_group, "the session reaper", every, interval_s, "reaping idle sessions", registry.reap)
