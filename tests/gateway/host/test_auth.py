"""Host authentication over a real SQLite store: revocations from another process hold on the next
request, bad keys cost a bounded number of lookups per address, failures are logged once per
interval without the key, and key use is written at most once a minute.

`CountingStore` is a spy, not a fake: every call goes to the real store, it only counts them.
`Clock` stands in for `time.monotonic` where a test needs a minute to pass; waiting out real
minutes is the only other way to produce that.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Hashable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal
from uuid import uuid4

import anyio
import pytest

from gateway.errors import AuthThrottled
from gateway.host.auth import HostAuth
from store import (
    ApiKey,
    CreatedKey,
    IssuedToken,
    SignedIn,
    SignInClient,
    SignInCode,
    SqliteStore,
    generate_api_key,
    open_sqlite_store,
    utc_now,
)

ROOT = Path(__file__).resolve().parents[3]


class CountingStore:
    """The real store, counting what host authentication asks of it."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.lookups = 0
        self.use_writes: list[dict[str, datetime]] = []

    async def find_api_key(self, secret: str) -> ApiKey | None:
        self.lookups += 1
        return await self.store.find_api_key(secret)

    async def api_key_revoked(self, secret: str) -> bool:
        return await self.store.api_key_revoked(secret)

    def key_generation(self) -> Hashable:
        return self.store.key_generation()

    async def record_key_use(self, used: Mapping[str, datetime]) -> None:
        self.use_writes.append(dict(used))
        await self.store.record_key_use(used)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "gw.db") as opened:
        yield opened


async def new_key(store: SqliteStore) -> CreatedKey:
    organisation = await store.ensure_organisation("acme")
    return await store.create_api_key(organisation.id, user_id="ada")


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def host_auth(store: CountingStore, clock: Clock | None = None, limit: int = 5) -> HostAuth:
    return HostAuth(
        store,
        required=True,
        default_organisation_id="default",
        max_failures_per_minute=limit,
        clock=clock or Clock(),
    )


_REVOKE = """
import sys, anyio
from store import open_sqlite_store

async def main() -> None:
    async with open_sqlite_store(sys.argv[1]) as store:
        await store.revoke_api_key(sys.argv[2])

anyio.run(main)
"""


async def test_a_key_revoked_by_another_process_is_refused_on_the_next_request(
    store: SqliteStore, tmp_path: Path
) -> None:
    created = await new_key(store)
    counting = CountingStore(store)
    auth = host_auth(counting)
    assert await auth.authenticate(bearer(created.secret), "10.0.0.1") is not None
    assert await auth.authenticate(bearer(created.secret), "10.0.0.1") is not None
    assert counting.lookups == 1  # the second was answered from memory

    with anyio.fail_after(30):
        await anyio.run_process(
            [sys.executable, "-c", _REVOKE, str(tmp_path / "gw.db"), created.key.id], cwd=ROOT
        )

    assert await auth.authenticate(bearer(created.secret), "10.0.0.1") is None


async def test_past_the_failure_limit_an_address_gets_retry_after_without_a_lookup(
    store: SqliteStore,
) -> None:
    good = await new_key(store)
    counting = CountingStore(store)
    auth = host_auth(counting, limit=3)
    assert await auth.authenticate(bearer(good.secret), "10.0.0.1") is not None  # remembered

    for _ in range(3):
        assert await auth.authenticate(bearer(generate_api_key()), "10.0.0.1") is None
    assert counting.lookups == 4
    for _ in range(10):
        with pytest.raises(AuthThrottled) as throttled:
            await auth.authenticate(bearer(generate_api_key()), "10.0.0.1")
        assert 1 <= throttled.value.retry_after_s <= 20  # one failure's worth of a minute
    assert counting.lookups == 4  # nothing more reached the database

    assert await auth.authenticate(bearer(good.secret), "10.0.0.1") is not None  # a known key still works
    assert await auth.authenticate(bearer(generate_api_key()), "10.0.0.2") is None  # other addresses too
    assert await auth.authenticate({}, "10.0.0.1") is None  # no key: a 401, not a failure counted


async def test_an_ipv6_client_is_limited_by_its_64_prefix(store: SqliteStore) -> None:
    auth = host_auth(CountingStore(store), limit=2)
    assert await auth.authenticate(bearer(generate_api_key()), "2001:db8:1:2::1") is None
    assert await auth.authenticate(bearer(generate_api_key()), "2001:db8:1:2::ffff") is None
    with pytest.raises(AuthThrottled):
        await auth.authenticate(bearer(generate_api_key()), "2001:db8:1:2:aaaa::7")
    assert await auth.authenticate(bearer(generate_api_key()), "2001:db8:1:3::1") is None


async def test_the_limit_recovers_as_the_minute_passes(store: SqliteStore) -> None:
    clock = Clock()
    auth = host_auth(CountingStore(store), clock, limit=3)
    for _ in range(3):
        await auth.authenticate(bearer(generate_api_key()), "10.0.0.1")
    with pytest.raises(AuthThrottled) as throttled:
        await auth.authenticate(bearer(generate_api_key()), "10.0.0.1")
    clock.now += throttled.value.retry_after_s
    assert await auth.authenticate(bearer(generate_api_key()), "10.0.0.1") is None


async def test_a_refused_key_presented_again_costs_no_lookup(store: SqliteStore) -> None:
    created = await new_key(store)
    await store.revoke_api_key(created.key.id)
    counting = CountingStore(store)
    auth = host_auth(counting, limit=100)
    for _ in range(20):
        assert await auth.authenticate(bearer(created.secret), "10.0.0.1") is None
    assert counting.lookups == 1


async def test_failures_are_logged_once_per_interval_with_count_and_address_never_the_key(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.host.auth")
    clock = Clock()
    auth = host_auth(CountingStore(store), clock, limit=1000)
    secrets = [generate_api_key() for _ in range(12)]
    for secret in secrets[:5]:
        await auth.authenticate(bearer(secret), "10.0.0.1")
        clock.now += 1
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.host.auth"]
    assert len(lines) == 1 and "1 failed" in lines[0] and "10.0.0.1" in lines[0]

    clock.now += 60  # the interval has passed: the next failure reports the ones held back
    for secret in secrets[5:]:
        await auth.authenticate(bearer(secret), "10.0.0.1")
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.host.auth"]
    assert len(lines) == 2 and "5 failed" in lines[1] and "10.0.0.1" in lines[1]

    clock.now += 60  # what was held back since is reported by the periodic sweep
    auth.report_failures()
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.host.auth"]
    assert len(lines) == 3 and "6 failed" in lines[2] and "10.0.0.1" in lines[2]
    for secret in secrets:
        assert secret not in caplog.text and secret[4:12] not in caplog.text


async def test_key_use_is_written_at_most_once_a_minute_per_key(store: SqliteStore) -> None:
    created = await new_key(store)
    counting = CountingStore(store)
    clock = Clock()
    auth = host_auth(counting, clock)
    for _ in range(50):
        assert await auth.authenticate(bearer(created.secret), "10.0.0.1") is not None
        clock.now += 0.5
    await auth.flush_usage()

    assert len(counting.use_writes) == 1 and list(counting.use_writes[0]) == [created.key.id]
    [listed] = await store.list_api_keys(created.key.organisation_id)
    assert listed.last_used_at is not None

    clock.now += 60
    await auth.authenticate(bearer(created.secret), "10.0.0.1")
    await auth.flush_usage()
    assert len(counting.use_writes) == 2


class CountingSignIns:
    """The real store's sign-in tables, counting the access-token lookups."""

    def __init__(self, store: SqliteStore) -> None:
        self.signin = store.signin
        self.lookups = 0

    async def signed_in(self, access_token: str, now: datetime) -> SignedIn | None:
        self.lookups += 1
        return await self.signin.signed_in(access_token, now)

    async def access_token_ended(
        self, access_token: str, now: datetime
    ) -> Literal["expired", "revoked"] | None:
        return await self.signin.access_token_ended(access_token, now)


async def signed_in_token(store: SqliteStore, created: CreatedKey, resource: str) -> tuple[str, str]:
    """A grant approved with `created`, as the authorization server opens one: (its access token,
    the grant's id)."""
    now = utc_now()
    client = await store.signin.save_client(
        SignInClient(
            str(uuid4()), str(uuid4()), "registered", {"redirect_uris": ["https://h.example/cb"]}, None, now
        )
    )
    code = "mgc_" + uuid4().hex
    what = SignInCode(
        client.client_id, client.id, "Host", "https://h.example/cb", "c" * 43, resource, "mcp",
        created.key.organisation_id, created.key.id, now + timedelta(minutes=1),
    )  # fmt: skip
    await store.signin.issue_code(code, what, now)
    assert await store.signin.redeem_code(code, now) is not None
    access = IssuedToken("mga_" + uuid4().hex, now + timedelta(hours=1))
    await store.signin.open_grant(code, "grant-1", access, None, now)
    return access.secret, "grant-1"


async def test_a_signed_in_hosts_token_is_the_approving_key_cached_until_its_grant_is_revoked(
    store: SqliteStore,
) -> None:
    created = await new_key(store)
    resource = "https://gw.example.com/mcp"
    token, grant_id = await signed_in_token(store, created, resource)
    tokens = CountingSignIns(store)
    auth = HostAuth(CountingStore(store), required=True, default_organisation_id="default", tokens=tokens)
    first = await auth.authenticate(bearer(token), "10.0.0.1", resource)
    again = await auth.authenticate(bearer(token), "10.0.0.1", resource)
    assert first is not None and first == again
    assert (first.api_key_id, first.user_id, first.grant_id) == (created.key.id, "ada", grant_id)
    assert tokens.lookups == 1  # the hot path: answered from memory
    # Bound to its MCP URL: nowhere else, and not where no token is accepted (the listing API).
    assert await auth.authenticate(bearer(token), "10.0.0.1", resource + "/other-org") is None
    assert await auth.authenticate(bearer(token), "10.0.0.1") is None

    assert await store.signin.revoke_grant(grant_id, "revoked", utc_now())
    assert await auth.authenticate(bearer(token), "10.0.0.1", resource) is None
