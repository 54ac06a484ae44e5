"""What each upstream lists, fetched once and shared by every host session: the shared catalogue.

A host session's `tools/list` (prompts, resources, templates) is served from here; the router
merges, filters per key and builds the session's routing table from these lists. An upstream's
list is fetched through its pool's listing session (`upstream/pool.py`: one session per upstream,
never one per host, so listing starts no child per host session), per capability profile
(`upstream/profiles.py`): an upstream may offer some tools only to clients that can answer what
they ask (sampling, elicitation, roots), so each profile's list is fetched by a listing session
declaring that profile, once, and every host of that profile is served it (a `sessions: shared`
upstream's calls go over pool sessions of the host's profile too, where those tools exist). At
most `MAX_PROFILES` profiles per upstream are listed (`SharedPool.admit`); a host of another is
served the empty profile's list (logged once per upstream). Except:
- an upstream that needs a credential per identity (`auth` oauth or user_headers) is listed with
  that identity's credential, through the host session's own upstream session, and cached per
  credential binding: one user's list never reaches another;
- a 2026-07-28 host reaching a 2026-07-28 upstream lists it statelessly, as it calls it;
- a host session whose own (`per_host`) upstream session said its lists changed lists that
  upstream through that session from then on, uncached: the change may be its alone.

A list is listed again when its upstream says it changed (`forget`), after the upstream's
`list_ttl_s`, or the `ttlMs` a 2026-07-28 upstream sends with it, and after the upstream comes
back from being down. A list an upstream marks `cacheScope: private` is kept for the caller
(organisation and user, else API key) that listed it and never served to another.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass

import anyio

from gateway.core.host_session import HostSession
from gateway.errors import HandshakeRefused, RoutingError
from gateway.protocol.jsonrpc import JSONObject, params_of
from gateway.upstream.connector import Connects
from gateway.upstream.pool import SharedPool
from gateway.upstream.profiles import EMPTY_PROFILE, Profile, profile_of

__all__ = ["UpstreamLists"]

logger = logging.getLogger(__name__)

_MAX_PAGES = 100
_KIND_OF = {
    "tools": "tools",
    "prompts": "prompts",
    "resources": "resources",
    "resourceTemplates": "resources",
}
_METHOD_OF = {"tools": "tools/list", "prompts": "prompts/list", "resources": "resources/list",
              "resourceTemplates": "resources/templates/list"}  # fmt: skip
_Key = tuple[str, str, Hashable]  # upstream, items key ("tools", ...), (profile, identity (None: everyone))


@dataclass(frozen=True, slots=True)
class _Entry:
    items: list[JSONObject]
    expires_at: float  # monotonic


@dataclass(frozen=True, slots=True)
class _Page:
    items: list[JSONObject]
    ttl_s: float | None
    private: bool


class UpstreamLists:
    def __init__(self, connectors: Mapping[str, Connects], pools: Mapping[str, SharedPool]) -> None:
        self._connectors = connectors
        self._pools = pools
        self._entries: dict[_Key, _Entry] = {}
        self._locks: dict[_Key, anyio.Lock] = {}
        self._generations: Counter[str] = Counter()  # a fetch begun before a `forget` is not kept
        self.fetched: Counter[str] = Counter()  # lists fetched from each upstream (tests, metrics)

    def forget(self, name: str, kind: str | None = None) -> None:
        """Upstream `name`'s lists of `kind` ("tools", "prompts", "resources"; None: all) are
        listed again when next needed."""
        self._generations[name] += 1
        for key in [key for key in self._entries if key[0] == name]:
            if kind is None or _KIND_OF[key[1]] == kind:
                del self._entries[key]

    async def items(self, session: HostSession, name: str, key: str, message: JSONObject) -> list[JSONObject]:
        """What upstream `name` lists under `key` ("tools", "prompts", "resources",
        "resourceTemplates"), as `session`'s caller may see it: cached, or listed now."""
        if name in session.own_lists:  # its own upstream session said they changed: its alone
            return (await self._fetch(session, name, key, message)).items
        profile = self._profile(session, name)
        shared = (profile, self._shared_scope(session, name))
        private = (profile, _caller(session))
        found = self._fresh((name, key, private)) or self._fresh((name, key, shared))
        if found is not None:
            return found.items
        lock = self._locks.setdefault((name, key, shared), anyio.Lock())
        async with lock:  # one listing in flight per list: concurrent first listings wait for it
            found = self._fresh((name, key, private)) or self._fresh((name, key, shared))
            if found is not None:
                return found.items
            generation = self._generations[name]
            page = await self._fetch(session, name, key, message, profile)
            self.fetched[name] += 1
            ttl_s = self._connectors[name].config.list_ttl_s if page.ttl_s is None else page.ttl_s
            if generation == self._generations[name] and ttl_s > 0:
                scope = private if page.private else shared
                self._entries[(name, key, scope)] = _Entry(page.items, time.monotonic() + ttl_s)
            return page.items

    def _fresh(self, key: _Key) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at < time.monotonic():
            del self._entries[key]
            return None
        return entry

    def _profile(self, session: HostSession, name: str) -> Profile:
        """Which profile's list `session` is served of upstream `name` (its pool bounds them)."""
        pool = self._pools.get(name)
        profile = profile_of(session.handshake.capabilities)
        return profile if pool is None else pool.admit(profile)

    def _shared_scope(self, session: HostSession, name: str) -> Hashable:
        """Whose list it is: everyone's, or (per-identity credentials) the credential binding's."""
        if not self._connectors[name].config.auth.per_identity:
            return None
        return ("binding", session.binding(name))

    async def _fetch(
        self, session: HostSession, name: str, key: str, message: JSONObject, profile: Profile = EMPTY_PROFILE
    ) -> _Page:
        config = self._connectors[name].config
        pool = self._pools.get(name)
        own = (
            pool is None
            or config.auth.per_identity
            or name in session.own_lists
            or await session.modern(name) is not None
        )
        send: Callable[[JSONObject], Awaitable[JSONObject]]
        capabilities: JSONObject | None = None
        if not own:
            assert pool is not None
            try:
                capabilities = await pool.capabilities(profile)
            except HandshakeRefused:
                # A 2026-07-28-only upstream refuses the listing session's `initialize`: it is
                # reached statelessly through the session, as its calls are.
                own = True
        if own:
            capabilities = await session.capabilities(name)

            async def through_session(request: JSONObject) -> JSONObject:
                return await session.forward(name, request, None)

            send = through_session

        else:
            assert pool is not None

            async def through_pool(request: JSONObject) -> JSONObject:
                return await pool.list(request, profile)

            send = through_pool
            message = {"jsonrpc": "2.0", "id": "mcpgw-list", "method": _METHOD_OF[key]}
        if capabilities is None or _KIND_OF[key] not in capabilities:
            return _Page([], None, private=False)
        return await _all_pages(send, message, key)


async def _all_pages(
    send: Callable[[JSONObject], Awaitable[JSONObject]], message: JSONObject, key: str
) -> _Page:
    params = {k: v for k, v in params_of(message).items() if k != "cursor"}
    items: list[JSONObject] = []
    ttl_s: float | None = None
    private = False
    for _ in range(_MAX_PAGES):
        response = await send({**message, "params": params})
        result = response.get("result")
        if not isinstance(result, dict):
            error = response.get("error") or {}
            raise RoutingError(f"{message['method']} failed: {error.get('message', 'no result')}")
        items.extend(item for item in result.get(key, []) if isinstance(item, dict))
        ttl_ms = result.get("ttlMs")
        if isinstance(ttl_ms, int | float) and not isinstance(ttl_ms, bool) and ttl_ms >= 0:
            ttl_s = ttl_ms / 1000 if ttl_s is None else min(ttl_s, ttl_ms / 1000)
        private = private or result.get("cacheScope") == "private"
        cursor = result.get("nextCursor")
        if not cursor:
            break
        params = {**params, "cursor": cursor}
    return _Page(items, ttl_s, private)


def _caller(session: HostSession) -> Hashable:
    """Whose a `private` list is: the user, else the API key, of one organisation."""
    principal = session.principal
    who = principal.user_id or principal.api_key_id
    return ("caller", principal.organisation_id, who if who is not None else session.id)
