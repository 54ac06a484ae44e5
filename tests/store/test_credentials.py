"""Credentials at rest: one per binding, sealed, listed with flows beside them, rotated in place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from store import (
    Binding,
    CredentialFilter,
    KeyFile,
    Sealer,
    Store,
    add_current_key,
    load_or_create_keyring,
    utc_now,
)
from tests.store.conftest import BACKENDS, backend_store

SECRET = "tok-5f1e0c9a-do-not-store-in-clear"


@pytest.fixture(params=BACKENDS)
async def sealed_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    load_or_create_keyring(tmp_path / "keys")
    async with backend_store(request, tmp_path / "gw.db", Sealer(KeyFile(tmp_path / "keys"))) as store:
        yield store


def files_holding(directory: Path, text: str) -> list[str]:
    return [file.name for file in directory.iterdir() if text.encode() in file.read_bytes()]


async def binding(store: Store, subject: str = "alice", upstream: str = "gh") -> Binding:
    org = await store.ensure_organisation("default")
    return Binding(org.id, upstream, "user", subject)


async def save_token(store: Store, where: Binding, token: str = SECRET) -> str:
    row_id = str(uuid4())
    await store.credentials.save(
        row_id,
        where,
        kind="token",
        secret={"access_token": token, "refresh_token": "r-" + token},
        header_names=(),
        oauth_client_id=None,
        expires_at=utc_now() + timedelta(hours=1),
        now=utc_now(),
    )
    return row_id


async def test_a_credential_opens_for_its_binding_and_is_not_in_the_file_in_clear(
    sealed_store: Store, tmp_path: Path
) -> None:
    alice = await binding(sealed_store)
    await save_token(sealed_store, alice)
    found = await sealed_store.credentials.credential_for(alice)
    assert found is not None and found.secret["access_token"] == SECRET and found.status == "active"
    assert await sealed_store.credentials.credential_for(await binding(sealed_store, "bob")) is None
    assert files_holding(tmp_path, SECRET) == []


async def test_saving_again_replaces_the_binding_credential_and_keeps_its_id(
    sealed_store: Store,
) -> None:
    alice = await binding(sealed_store)
    first = await save_token(sealed_store, alice)
    await sealed_store.credentials.set_status(first, "needs_reauth")
    await save_token(sealed_store, alice, "second-token")
    found = await sealed_store.credentials.credential_for(alice)
    assert found is not None
    assert (found.id, found.status, found.secret["access_token"]) == (first, "active", "second-token")


async def test_the_listing_shows_a_flow_only_while_its_binding_has_no_credential(
    sealed_store: Store,
) -> None:
    alice, bob = await binding(sealed_store), await binding(sealed_store, "bob")
    now = utc_now()
    for who in (alice, alice, bob):
        await sealed_store.credentials.create_flow(
            str(uuid4()), who, "oauth", secret={"state": str(uuid4())}, oauth_client_id=None,
            now=now, expires_at=now + timedelta(minutes=15),
        )  # fmt: skip
    rows = await sealed_store.credentials.listing(
        alice.organisation_id, CredentialFilter(), None, 50, utc_now()
    )
    assert sorted((r.kind, r.binding.subject) for r in rows) == [("flow", "alice"), ("flow", "bob")]
    await save_token(sealed_store, alice)
    rows = await sealed_store.credentials.listing(
        alice.organisation_id, CredentialFilter(), None, 50, utc_now()
    )
    assert sorted((r.kind, r.binding.subject, r.status) for r in rows) == [
        ("flow", "bob", "pending"),
        ("token", "alice", "active"),
    ]
    only_tokens = CredentialFilter(kind="token")
    rows = await sealed_store.credentials.listing(alice.organisation_id, only_tokens, None, 50, utc_now())
    assert [r.binding.subject for r in rows] == ["alice"]


async def test_a_flow_is_claimed_once_and_not_after_it_expires(sealed_store: Store) -> None:
    alice = await binding(sealed_store)
    now = utc_now()
    live, old = str(uuid4()), str(uuid4())
    await sealed_store.credentials.create_flow(
        live,
        alice,
        "oauth",
        secret={"state": "s1"},
        oauth_client_id=None,
        now=now,
        expires_at=now + timedelta(1),
    )
    await sealed_store.credentials.create_flow(
        old, alice, "oauth", secret={"state": "s2"}, oauth_client_id=None, now=now, expires_at=now
    )
    found = await sealed_store.credentials.flow_by_state("s1")
    assert found is not None and found.id == live and found.secret["state"] == "s1"
    assert await sealed_store.credentials.claim_flow(live, utc_now())
    assert not await sealed_store.credentials.claim_flow(live, utc_now())
    assert not await sealed_store.credentials.claim_flow(old, utc_now() + timedelta(milliseconds=1))


async def test_deleting_a_credential_removes_the_pending_flows_of_its_binding(
    sealed_store: Store,
) -> None:
    alice = await binding(sealed_store)
    now = utc_now()
    flow = str(uuid4())
    await sealed_store.credentials.create_flow(
        flow, alice, "headers", secret={}, oauth_client_id=None, now=now, expires_at=now + timedelta(1)
    )
    row = await save_token(sealed_store, alice)
    other_org = await sealed_store.ensure_organisation("other")
    assert not await sealed_store.credentials.delete(other_org.id, row)  # another tenant's row: unknown
    assert await sealed_store.credentials.delete(alice.organisation_id, row)
    assert await sealed_store.credentials.credential_for(alice) is None
    assert await sealed_store.credentials.flow(flow) is None


async def test_rotation_reseals_every_secret_under_the_new_key_while_the_store_is_open(
    sealed_store: Store, tmp_path: Path
) -> None:
    alice = await binding(sealed_store)
    await save_token(sealed_store, alice)
    (old_id,) = await sealed_store.credentials.key_ids_in_use()
    new = add_current_key(tmp_path / "keys")  # as `mcpgw secrets rotate` does, beside the open store
    assert await sealed_store.credentials.reseal() == 1
    assert await sealed_store.credentials.key_ids_in_use() == {new.current} != {old_id}
    found = await sealed_store.credentials.credential_for(alice)
    assert found is not None and found.secret["access_token"] == SECRET
