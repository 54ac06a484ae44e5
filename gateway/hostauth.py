"""Who is calling: API keys sent by hosts, turned into a `Principal`.

Keys arrive as `Authorization: Bearer mgw_...` or `x-api-key: mgw_...`. Found keys are cached
briefly so the hot path does no database read per call; misses are never cached, so a key
created by `mcpgw keys create` while the gateway serves works at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.config import ToolFilter
from store import ApiKey, Store, hash_api_key

_CACHE_TTL_S = 30.0
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    organisation_id: str
    api_key_id: str | None  # None only in key-less local mode
    user_id: str | None
    is_admin: bool
    tools: ToolFilter = field(default_factory=ToolFilter)  # the key's narrowing, over host-visible names

    def same_caller(self, other: Principal) -> bool:
        return self.organisation_id == other.organisation_id and self.api_key_id == other.api_key_id


class HostAuth:
    def __init__(self, store: Store, *, required: bool, default_organisation_id: str) -> None:
        self._store = store
        self._required = required
        self._anonymous = Principal(default_organisation_id, None, None, False)
        self._cache: dict[str, tuple[float, ApiKey]] = {}

    @property
    def required(self) -> bool:
        return self._required

    async def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The caller's principal; None when a key is missing (and required) or unknown."""
        secret = key_from_headers(headers)
        if secret is None:
            return None if self._required else self._anonymous
        key = await self._lookup(secret)
        if key is None:
            return None
        return Principal(
            key.organisation_id,
            key.id,
            key.user_id,
            key.is_admin,
            ToolFilter(key.tools_allow, key.tools_deny),
        )

    async def _lookup(self, secret: str) -> ApiKey | None:
        digest = hash_api_key(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self._store.find_api_key(secret)
        if key is not None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (now + _CACHE_TTL_S, key)
        return key


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None
