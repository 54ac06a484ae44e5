"""Hosts that sign in, at rest: codes redeemed once, tokens that stand for the approving key until
they expire or their grant (or key) is revoked, refresh tokens that rotate and betray their reuse,
and nothing secret kept in clear."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from store import (
    CreatedKey,
    IssuedToken,
    PendingSignIn,
    SignInClient,
    SignInCode,
    Store,
    utc_now,
)
from tests.store.conftest import BACKENDS, backend_store

RESOURCE = "https://gw.example.com/mcp"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with backend_store(request, tmp_path / "gw.db") as opened:
        yield opened


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


async def registered(store: Store, now: datetime, secret_hash: str | None = None) -> SignInClient:
    client = SignInClient(
        id=str(uuid4()),
        client_id=str(uuid4()),
        kind="registered",
        metadata={"client_name": "Host", "redirect_uris": ["https://host.example/cb"]},
        secret_hash=secret_hash,
        created_at=now,
    )
    return await store.signin.save_client(client)


async def approved(store: Store, client: SignInClient, key: CreatedKey, now: datetime) -> str:
    code = new_secret("mgc_")
    what = SignInCode(
        client_id=client.client_id,
        client_row_id=client.id,
        client_name="Host",
        redirect_uri="https://host.example/cb",
        code_challenge="challenge",
        resource=RESOURCE,
        scope="mcp",
        organisation_id=key.key.organisation_id,
        api_key_id=key.key.id,
        expires_at=now + timedelta(seconds=60),
    )
    await store.signin.issue_code(code, what, now)
    return code


async def user_key(store: Store) -> CreatedKey:
    org = await store.ensure_organisation("acme")
    return await store.create_api_key(org.id, user_id="ada", tools_allow=["demo__*"], tools_deny=["demo__rm"])


async def signed_in(
    store: Store, now: datetime, access_s: int = 3600, refresh_days: int = 30
) -> tuple[str, str, str, CreatedKey, SignInClient]:
    """A grant with its first tokens: (grant id, access token, refresh token, key, client)."""
    key = await user_key(store)
    client = await registered(store, now)
    code = await approved(store, client, key, now)
    assert await store.signin.redeem_code(code, now) is not None
    grant_id, access, refresh = str(uuid4()), new_secret("mga_"), new_secret("mgr_")
    await store.signin.open_grant(
        code,
        grant_id,
        IssuedToken(access, now + timedelta(seconds=access_s)),
        IssuedToken(refresh, now + timedelta(days=refresh_days)),
        now,
    )
    return grant_id, access, refresh, key, client


async def test_a_code_is_redeemed_once_and_a_replay_revokes_the_grant_it_opened(store: Store) -> None:
    now = utc_now()
    key = await user_key(store)
    client = await registered(store, now)
    code = await approved(store, client, key, now)
    first = await store.signin.redeem_code(code, now)
    assert first is not None and (first.api_key_id, first.resource, first.client_row_id) == (
        key.key.id,
        RESOURCE,
        client.id,
    )
    access = new_secret("mga_")
    await store.signin.open_grant(code, "g1", IssuedToken(access, now + timedelta(hours=1)), None, now)
    assert await store.signin.signed_in(access, now) is not None

    generation = store.key_generation()
    assert await store.signin.redeem_code(code, now) is None
    assert await store.signin.signed_in(access, now) is None
    assert store.key_generation() != generation  # every cache is told
    [grant] = await store.signin.grants(key.key.organisation_id)
    assert grant.revoked_reason == "code_replayed"
    assert await store.signin.redeem_code(new_secret("mgc_"), now) is None


async def test_an_access_token_stands_for_its_key_until_it_expires(store: Store) -> None:
    now = utc_now()
    grant_id, access, _, key, client = await signed_in(store, now, access_s=60)
    found = await store.signin.signed_in(access, now + timedelta(seconds=59))
    assert found is not None
    assert (found.key.id, found.key.user_id, found.key.tools_allow, found.key.tools_deny) == (
        key.key.id,
        "ada",
        ("demo__*",),
        ("demo__rm",),
    )
    assert (found.grant.id, found.grant.client_row_id, found.grant.resource) == (
        grant_id,
        client.id,
        RESOURCE,
    )
    assert await store.signin.signed_in(access, now + timedelta(seconds=60)) is None
    assert await store.signin.signed_in(new_secret("mga_"), now) is None
    # What a refused host is told: its token expired, or the gateway never issued it.
    assert await store.signin.access_token_ended(access, now + timedelta(seconds=60)) == "expired"
    assert await store.signin.access_token_ended(new_secret("mga_"), now) is None


async def test_revoking_the_grant_or_its_key_ends_its_tokens_at_once(store: Store) -> None:
    now = utc_now()
    grant_id, access, refresh, key, _ = await signed_in(store, now)
    generation = store.key_generation()
    assert await store.signin.revoke_grant(grant_id, "revoked", now)
    assert store.key_generation() != generation
    assert await store.signin.signed_in(access, now) is None
    assert await store.signin.access_token_ended(access, now) is None  # its tokens are gone
    assert await store.signin.refreshable(refresh, now) is None
    assert not await store.signin.revoke_grant(grant_id, "revoked", now)

    second, access, refresh, key, _ = await signed_in(store, now)
    await store.revoke_api_key(key.key.id)
    assert await store.signin.signed_in(access, now) is None
    assert await store.signin.access_token_ended(access, now) == "revoked"
    assert await store.api_key_revoked(key.secret)
    assert not await store.api_key_revoked(new_secret("mgw_"))
    assert await store.signin.refreshable(refresh, now) is None
    listed = await store.signin.grants(key.key.organisation_id)
    assert {g.id: g.revoked_reason for g in listed} == {grant_id: "revoked", second: "api_key_revoked"}


async def test_a_refresh_token_rotates_once_and_its_reuse_revokes_the_whole_family(
    store: Store,
) -> None:
    now = utc_now()
    grant_id, first_access, refresh, _, _ = await signed_in(store, now)
    assert await store.signin.refreshable(refresh, now) is not None
    access, rotated = new_secret("mga_"), new_secret("mgr_")
    later = now + timedelta(minutes=5)
    assert await store.signin.rotate(
        refresh,
        IssuedToken(access, later + timedelta(hours=1)),
        IssuedToken(rotated, later + timedelta(days=30)),
        later,
    )
    assert await store.signin.signed_in(access, later) is not None
    assert await store.signin.refreshable(rotated, later) is not None

    generation = store.key_generation()
    assert await store.signin.refreshable(refresh, later) is None  # replayed: the family goes
    assert store.key_generation() != generation
    for token in (first_access, access):
        assert await store.signin.signed_in(token, later) is None
    assert await store.signin.refreshable(rotated, later) is None
    grant = await store.signin.grant_of(first_access)
    assert grant is None  # its tokens went with it
    [listed] = [g for g in await store.signin.grants((await store.ensure_organisation("acme")).id)]
    assert (listed.id, listed.revoked_reason) == (grant_id, "refresh_token_reused")


async def test_two_rotations_of_one_refresh_token_cannot_both_succeed(store: Store) -> None:
    now = utc_now()
    _, _, refresh, _, _ = await signed_in(store, now)

    def pair() -> tuple[IssuedToken, IssuedToken]:
        return IssuedToken(new_secret("mga_"), now + timedelta(hours=1)), IssuedToken(
            new_secret("mgr_"), now + timedelta(days=1)
        )

    assert await store.signin.rotate(refresh, *pair(), now)
    assert not await store.signin.rotate(refresh, *pair(), now)


def files_holding(directory: Path, text: str) -> list[str]:
    return [file.name for file in directory.iterdir() if text.encode() in file.read_bytes()]


async def test_no_code_or_token_is_kept_in_clear(store: Store, tmp_path: Path) -> None:
    now = utc_now()
    key = await user_key(store)
    client = await registered(store, now)
    code = await approved(store, client, key, now)
    await store.signin.redeem_code(code, now)
    access, refresh = new_secret("mga_"), new_secret("mgr_")
    await store.signin.open_grant(
        code,
        "g",
        IssuedToken(access, now + timedelta(hours=1)),
        IssuedToken(refresh, now + timedelta(days=1)),
        now,
    )
    for value in (code, access, refresh):
        assert files_holding(tmp_path, value) == []


async def test_pruning_forgets_unused_clients_and_dead_grants_and_keeps_live_ones(store: Store) -> None:
    now = utc_now()
    idle = await registered(store, now - timedelta(days=40))
    grant_id, access, _, key, in_use = await signed_in(
        store, now - timedelta(days=40), access_s=60, refresh_days=60
    )
    assert await store.signin.prune(now, unused_before=now - timedelta(days=30)) > 0
    assert await store.signin.client(idle.client_id) is None
    assert await store.signin.client(in_use.client_id) is not None  # its grant still holds a refresh token
    assert [g.id for g in await store.signin.grants(key.key.organisation_id)] == [grant_id]
    assert await store.signin.signed_in(access, now) is None

    later = now + timedelta(days=21)  # every token has expired: the grant and its client go too
    await store.signin.prune(later, unused_before=later - timedelta(days=30))
    assert await store.signin.grants(key.key.organisation_id) == []
    assert await store.signin.client(in_use.client_id) is None


async def test_a_metadata_documents_client_is_refreshed_in_place(store: Store) -> None:
    now = utc_now()
    url = "https://host.example/client.json"
    first = SignInClient(str(uuid4()), url, "document", {"client_name": "A"}, None, now, None, now)
    saved = await store.signin.save_client(first)
    again = SignInClient(str(uuid4()), url, "document", {"client_name": "B"}, None, now, None, now)
    refreshed = await store.signin.save_client(again)
    assert (refreshed.id, refreshed.metadata["client_name"]) == (saved.id, "B")


def _pending(address: str, expires_at: datetime) -> PendingSignIn:
    request = {"params": {"state": "s"}, "csrf": secrets.token_urlsafe(8)}
    return PendingSignIn(secrets.token_urlsafe(24), address, "client", request, expires_at)


async def test_authorization_requests_are_kept_until_they_expire_and_bounded_per_address(
    store: Store,
) -> None:
    now = utc_now()
    signin = store.signin
    kept = [_pending("192.0.2.1", now + timedelta(minutes=10)) for _ in range(3)]
    assert [await signin.park_authorization(p, 3, now) for p in kept] == [True, True, True]
    assert not await signin.park_authorization(_pending("192.0.2.1", now + timedelta(minutes=10)), 3, now)
    assert await signin.park_authorization(_pending("192.0.2.2", now + timedelta(minutes=10)), 3, now)
    read = await signin.pending_authorization(kept[0].id, now)
    assert read == kept[0]
    # Expired ones no longer count, nor are they found.
    later = now + timedelta(minutes=11)
    assert await signin.pending_authorization(kept[0].id, later) is None
    assert await signin.park_authorization(_pending("192.0.2.1", later + timedelta(minutes=10)), 3, later)
    assert await signin.prune(later, now - timedelta(days=1)) == 4


async def test_an_authorization_request_ends_once(store: Store) -> None:
    now = utc_now()
    pending = _pending("192.0.2.1", now + timedelta(minutes=10))
    assert await store.signin.park_authorization(pending, 10, now)
    assert [await store.signin.end_authorization(pending.id) for _ in range(2)] == [True, False]
    assert await store.signin.pending_authorization(pending.id, now) is None
