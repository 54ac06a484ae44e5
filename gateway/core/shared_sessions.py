"""Host sessions on replicas: where a session lives so that any replica serves its next request.

A session's state is of two kinds. What a replica needs to serve it at all (who opened it, what
the host said in its handshake, its id in the record) is a row in the database
(``live_sessions``), written before its first upstream is contacted. Everything else (upstream
sessions, the requests it serves, the ids of requests upstreams make of its host) is a
replica's own: a replica that gets a request for a session it does not hold builds its copy
from the row and opens its own upstream sessions, lazily, without the host re-initialising.
What must cross replicas for one session (its streams, answers, cancellations) goes through
`gateway/cluster.py`.

A replica ends a session by deleting its row (the replica whose statement deleted it records
the end, once) and tells the others, which drop their copies (`SessionEnded`). A copy idle on
one replica is only dropped there; a session is idle when no replica has seen it for
`sessions.idle_s`: each replica writes when it last saw its copies once a reaper round, and
any replica's round ends the ones nobody has seen (the DELETE gives each to one replica).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from gateway.cluster import EVERYONE, Cluster, SessionEnded
from gateway.errors import SessionsUnreachable
from gateway.principal import Principal
from gateway.protocol.jsonrpc import JSONObject
from gateway.upstream.connector import Handshake
from store import LiveSession, Store, StoreError, utc_now

__all__ = ["SharedSessions", "handshake_of"]

logger = logging.getLogger(__name__)


def _handshake_json(handshake: Handshake) -> str:
    return json.dumps(
        {
            "protocolVersion": handshake.protocol_version,
            "capabilities": handshake.capabilities,
            "clientInfo": handshake.client_info,
        },
        separators=(",", ":"),
    )


def handshake_of(live: LiveSession) -> Handshake:
    said = json.loads(live.handshake_json)
    capabilities: JSONObject = said.get("capabilities") or {}
    client_info: JSONObject = said.get("clientInfo") or {}
    return Handshake(str(said.get("protocolVersion", live.protocol_version)), capabilities, client_info)


class SharedSessions:
    """The registry's side of the `live_sessions` rows and of `SessionEnded` (module docstring)."""

    __slots__ = ("_seen_since", "cluster", "store")

    def __init__(self, store: Store, cluster: Cluster) -> None:
        self.store = store
        self.cluster = cluster
        self._seen_since = 0.0  # monotonic: copies used since then are written as seen next round

    async def opened(
        self,
        session_id: str,
        record_id: str,
        principal: Principal,
        handshake: Handshake,
        protocol_version: str,
        group_key: str | None = None,
    ) -> LiveSession:
        """Write a new session's row (a group another replica opened first: that one's row)."""
        live = LiveSession(
            mcp_session_id=session_id,
            record_id=record_id,
            organisation_id=principal.organisation_id,
            api_key_id=principal.api_key_id,
            grant_id=principal.grant_id,
            protocol_version=protocol_version,
            handshake_json=_handshake_json(handshake),
            last_seen_at=utc_now(),
            group_key=group_key,
        )
        try:
            return await self.store.open_live_session(live)
        except StoreError as exc:
            raise SessionsUnreachable(str(exc)) from exc

    async def find(self, session_id: str, principal: Principal) -> LiveSession | None:
        """The row of a session-based session another replica minted, if it is live and this
        caller's (else None: the host is told the session is not found)."""
        try:
            live = await self.store.live_session(session_id)
        except StoreError as exc:
            raise SessionsUnreachable(str(exc)) from exc
        if live is None or live.group_key is not None:
            return None
        owner = (live.organisation_id, live.api_key_id, live.grant_id)
        if owner != (principal.organisation_id, principal.api_key_id, principal.grant_id):
            return None
        return live

    async def end(self, session_id: str) -> bool:
        """Delete the session's row and tell the other replicas to drop their copies: True if
        this replica ended it (and so records the end), False if another one had."""
        try:
            ended = await self.store.end_live_session(session_id)
        except StoreError as exc:
            # The row stays: the session is ended as idle later, by this replica or another.
            logger.warning("session %s: its end could not be shared with the replicas: %s", session_id, exc)
            return False
        if ended:  # else the replica that ended it told the others
            await self.cluster.publish(EVERYONE, SessionEnded(session_id))
        return ended

    async def seen(self, used: Iterable[tuple[str, float]], now: float) -> None:
        """Write when this replica last saw the copies used (or kept open) since the last round."""
        ids = [session_id for session_id, last in used if last >= self._seen_since]
        self._seen_since = now
        if ids:
            await self.store.sessions_seen(ids, utc_now())

    async def idle(self, idle_s: float, gap_s: float) -> list[LiveSession]:
        """End the sessions (groups: after `gap_s`) no replica has seen for `idle_s`: each is
        returned to one replica alone, which records the end; the others are told to drop theirs."""
        now: datetime = utc_now()
        ended = await self.store.end_idle_sessions(
            now - timedelta(seconds=idle_s), now - timedelta(seconds=gap_s)
        )
        for live in ended:
            await self.cluster.publish(EVERYONE, SessionEnded(live.mcp_session_id))
        return ended
