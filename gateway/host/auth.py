"""Who is calling: API keys sent by hosts, turned into a `Principal`.

Keys arrive as `Authorization: Bearer mgw_...` or `x-api-key: mgw_...`. What each request costs:

- A known key is answered from memory (30 s), without a database read: the hot path. Memory is
  trusted only while the store's `key_generation()` is what it was when the key was looked up.
  A revocation changes it, in whichever process it happens (`mcpgw keys revoke` writes the same
  SQLite file and then appends to a marker file beside it, see `store/_revocations.py`), and
  checking it is a `stat()` of that file, ~1 µs where a query costs ~70 µs. So the very next
  request after `keys revoke` returns looks the key up again, and finds it revoked. The
  generation is read before a lookup and kept with its answer, so a revocation that lands while
  a lookup is in flight is caught by the following request rather than cached for 30 s.
- A key created while the gateway serves works at once: nothing known is ever negative for it.
- A bad key (unknown, revoked, malformed) costs at most one lookup per minute when it is sent
  again (a host retrying a revoked key): the digests of recent misses are kept with why each
  failed (a second query, on a miss only, tells a revoked key or an ended token from an unknown
  one, so that the 401 says which: `Refusal`), and a new key
  never has one of them (it is 256 fresh random bits). Each failure spends from the client
  address's bucket (`_auth_failures.py`, `auth.max_failures_per_minute`); an address that has
  spent it gets `AuthThrottled` (429, Retry-After) without a lookup, unless its key is one
  already known: a valid key behind the same NAT as a guesser keeps working. Failures are
  logged once per address per minute, never with the key.
- An access token a signed-in host got from the gateway's own authorization server
  (`gateway/signin/`, prefix `mga_`) is looked up in the store's sign-in tables and cached the
  same way, under the same revocation marker (revoking a grant, or the key that approved it,
  changes the generation), and never past its expiry. It stands for the approving key exactly,
  plus its grant and client; it is accepted only for the MCP URL it was issued for (RFC 8707):
  the caller says which `resource` the request is for, and anywhere else (no resource) a token
  is no credential at all.
- Last use: at most once per key per minute the time is queued, and `maintain` (a background
  task) writes what is queued in one batch, so no request waits on a write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Literal, Protocol

import anyio

from gateway.config import ToolFilter
from gateway.errors import AuthThrottled
from gateway.host._throttle import LOG_INTERVAL_S, FailureLimits
from gateway.principal import Principal
from gateway.signin.tokens import is_access_token
from store import ApiKey, SignedIn, StoreError, hash_api_key, utc_now

logger = logging.getLogger(__name__)

_CACHE_TTL_S = 30.0
_CACHE_MAX = 10_000
_MISS_TTL_S = 60.0
_MISSES_MAX = 1024
_USE_EVERY_S = 60.0
_FLUSH_DEADLINE_S = 10.0


class Refusal(StrEnum):
    """Why a credential was not accepted, as the host that sent it is told (defect 8 of issue 23:
    one text for every case sent people looking for the wrong mistake). Only the holder of the
    secret learns its state; nothing here says whether any other credential exists, and a key of
    another organisation on its URL is a 404 before any of these."""

    MISSING = "no API key or access token was sent"
    UNKNOWN_KEY = "unknown API key: check that it was copied whole"
    REVOKED_KEY = "this API key was revoked: ask an admin of its organisation for a new one"
    UNKNOWN_TOKEN = "unknown access token (revoked, or never issued here): sign in again"
    EXPIRED_TOKEN = "access token expired: refresh it or sign in again"
    REVOKED_TOKEN = (
        "access token revoked (its sign-in or the key that approved it was revoked): sign in again"
    )
    TOKEN_ELSEWHERE = "access token issued for another MCP URL: sign in to this one"
    TOKENS_NOT_ACCEPTED = "access tokens are not accepted here: send an API key"

    @property
    def names_a_token(self) -> bool:
        return self in _TOKEN_REFUSALS


_TOKEN_REFUSALS = frozenset(
    {Refusal.UNKNOWN_TOKEN, Refusal.EXPIRED_TOKEN, Refusal.REVOKED_TOKEN, Refusal.TOKEN_ELSEWHERE}
)
_TOKEN_ENDED: dict[str | None, Refusal] = {"expired": Refusal.EXPIRED_TOKEN, "revoked": Refusal.REVOKED_TOKEN}


class KeyStore(Protocol):
    """What host authentication needs of the store (`store.Store` has it all)."""

    async def find_api_key(self, secret: str) -> ApiKey | None: ...

    async def api_key_revoked(self, secret: str) -> bool: ...

    def key_generation(self) -> Hashable: ...

    async def record_key_use(self, used: Mapping[str, datetime]) -> None: ...


class TokenStore(Protocol):
    """What accepting signed-in hosts' access tokens needs of the store (`store.SignInStore` has it)."""

    async def signed_in(self, access_token: str, now: datetime) -> SignedIn | None: ...

    async def access_token_ended(
        self, access_token: str, now: datetime
    ) -> Literal["expired", "revoked"] | None: ...


@dataclass(frozen=True, slots=True)
class _Known:
    principal: Principal
    good_until: float  # monotonic
    generation: Hashable  # the store's key generation before the lookup


class HostAuth:
    def __init__(
        self,
        store: KeyStore,
        *,
        required: bool,
        default_organisation_id: str,
        max_failures_per_minute: int = 20,
        clock: Callable[[], float] = time.monotonic,
        tokens: TokenStore | None = None,
    ) -> None:
        self._store = store
        self._tokens = tokens  # None: host sign-in is off, no access token is accepted
        self._required = required
        self._anonymous = Principal(default_organisation_id, None, None, False)
        self._clock = clock
        self._known: dict[str, _Known] = {}
        self._misses: dict[str, tuple[float, Refusal]] = {}  # digest -> (monotonic expiry, why)
        self._failures = FailureLimits(max_failures_per_minute, logger)
        self._use_due: dict[str, float] = {}  # key id -> monotonic time its use is next written
        self._used: dict[str, datetime] = {}
        self._used_event = anyio.Event()
        self._flush_lock = anyio.Lock()

    @property
    def required(self) -> bool:
        return self._required

    async def authenticate(
        self, headers: Mapping[str, str], client: str | None = None, resource: str | None = None
    ) -> Principal | None:
        """The caller's principal; None when a key is missing (and required) or not good.

        `client` is the caller's address, by which failures are limited: past the limit this
        raises `AuthThrottled` rather than look the key up. `resource` is the MCP URL the request
        is for, where a signed-in host's access token may be accepted (one bound to it only).
        """
        found = await self.admit(headers, client, resource)
        return None if isinstance(found, Refusal) else found

    async def admit(
        self, headers: Mapping[str, str], client: str | None = None, resource: str | None = None
    ) -> Principal | Refusal:
        """As `authenticate`, but a refusal says why, for the caller who holds the credential."""
        secret = key_from_headers(headers)
        if secret is None:
            return Refusal.MISSING if self._required else self._anonymous
        digest = hash_api_key(secret)
        now = self._clock()
        generation = self._store.key_generation()
        known = self._known.get(digest)
        if known is not None and known.good_until > now and known.generation == generation:
            return self._accepted(known.principal, resource, now)
        wait = self._failures.retry_after(client, now)
        if wait is not None:
            raise AuthThrottled(wait)
        missed = self._misses.get(digest)
        if missed is not None and missed[0] > now:
            self._failures.failed(client, now)
            return missed[1]
        found = await self._look_up(secret, now)
        if isinstance(found, Refusal):
            self._remember_miss(digest, found, now)
            self._failures.failed(client, now)
            return found
        principal, good_until = found
        if len(self._known) >= _CACHE_MAX:
            self._known.clear()
        self._known[digest] = _Known(principal, good_until, generation)
        return self._accepted(principal, resource, now)

    def _accepted(self, principal: Principal, resource: str | None, now: float) -> Principal | Refusal:
        # A key is good on every URL of its organisation; a token only for the MCP URL it was
        # issued for (RFC 8707), so nowhere that names none (the APIs, the legacy SSE paths).
        if principal.grant_id is not None and principal.resource != resource:
            return Refusal.TOKEN_ELSEWHERE if resource is not None else Refusal.TOKENS_NOT_ACCEPTED
        self._note_use(principal, now)
        return principal

    async def _look_up(self, secret: str, now: float) -> tuple[Principal, float] | Refusal:
        if is_access_token(secret):
            if self._tokens is None:
                return Refusal.TOKENS_NOT_ACCEPTED
            found = await self._signed_in(secret, now)
            if found is not None:
                return found
            ended = await self._tokens.access_token_ended(secret, utc_now())
            return _TOKEN_ENDED.get(ended, Refusal.UNKNOWN_TOKEN)
        key = await self._store.find_api_key(secret)
        if key is not None:
            return principal_of(key), now + _CACHE_TTL_S
        return Refusal.REVOKED_KEY if await self._store.api_key_revoked(secret) else Refusal.UNKNOWN_KEY

    async def _signed_in(self, token: str, now: float) -> tuple[Principal, float] | None:
        if self._tokens is None:
            return None
        wall = utc_now()
        signed_in = await self._tokens.signed_in(token, wall)
        if signed_in is None:
            return None
        grant = signed_in.grant
        principal = replace(
            principal_of(signed_in.key),
            grant_id=grant.id,
            client_id=grant.client_row_id,
            resource=grant.resource,
        )
        left_s = (signed_in.expires_at - wall).total_seconds()
        return principal, now + min(_CACHE_TTL_S, left_s)

    def _remember_miss(self, digest: str, refusal: Refusal, now: float) -> None:
        if len(self._misses) >= _MISSES_MAX:
            self._misses = {d: miss for d, miss in self._misses.items() if miss[0] > now}
            if len(self._misses) >= _MISSES_MAX:
                self._misses.clear()
        self._misses[digest] = (now + _MISS_TTL_S, refusal)

    def _note_use(self, principal: Principal, now: float) -> None:
        key_id = principal.api_key_id
        if key_id is None or self._use_due.get(key_id, 0.0) > now:
            return
        if len(self._use_due) >= _CACHE_MAX:
            self._use_due.clear()
        self._use_due[key_id] = now + _USE_EVERY_S
        self._used[key_id] = utc_now()
        self._used_event.set()

    async def flush_usage(self) -> None:
        """Write the key use queued so far (a failure is logged: last use is best effort)."""
        async with self._flush_lock:
            used, self._used = self._used, {}
            if not used:
                return
            try:
                with anyio.fail_after(_FLUSH_DEADLINE_S):
                    await self._store.record_key_use(used)
            except (StoreError, TimeoutError) as exc:
                logger.warning("API keys: last use of %d key(s) not recorded: %s", len(used), exc)

    def report_failures(self) -> None:
        """Log the failures held back where their interval has passed."""
        self._failures.report(self._clock())

    async def maintain(self) -> None:
        """For the gateway's life: write key use as it is queued, report failures each interval."""
        next_report = self._clock() + LOG_INTERVAL_S
        while True:
            # A schedule, not synchronisation: wake for queued use, or when a report is due.
            with anyio.move_on_after(max(0.0, next_report - self._clock())):
                await self._used_event.wait()
            if self._used_event.is_set():
                self._used_event = anyio.Event()
                await self.flush_usage()
            if self._clock() >= next_report:
                self.report_failures()
                next_report = self._clock() + LOG_INTERVAL_S


def principal_of(key: ApiKey) -> Principal:
    """What a host that authenticates with `key` (or with a token it approved) acts as."""
    return Principal(
        key.organisation_id, key.id, key.user_id, key.is_admin, ToolFilter(key.tools_allow, key.tools_deny)
    )


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None
