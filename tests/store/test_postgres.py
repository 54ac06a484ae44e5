"""What only the PostgreSQL backend has: revocations heard across stores through LISTEN/NOTIFY, a
lost listening connection, and the same protocol surface as SQLite's."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from store import PostgresStore, SignInStore, SqliteStore, Store, open_postgres_store, utc_now
from store._pg_signin import PgSignIn
from store._signin import SignInSql
from tests.postgres import PostgresServer

TIMEOUT = 10.0


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(value)
        for name, value in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }


def test_both_backends_offer_the_same_methods_with_the_same_signatures() -> None:
    assert set(_methods(Store)) <= set(_methods(PostgresStore))
    assert {n: s for n, s in _methods(PostgresStore).items() if n in _methods(Store)} == {
        n: s for n, s in _methods(SqliteStore).items() if n in _methods(Store)
    }
    assert _methods(PgSignIn) == _methods(SignInSql) == _methods(SignInStore)


@pytest.fixture
async def two(postgres_server: PostgresServer) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two gateway processes would have."""
    name = postgres_server.create_database()
    try:
        async with (
            open_postgres_store(postgres_server.url(name)) as a,
            open_postgres_store(postgres_server.url(name)) as b,
        ):
            yield a, b
    finally:
        postgres_server.drop_database(name)


async def changed(store: PostgresStore, before: object) -> None:
    """Until the store's key generation is no longer `before` (a notice arrives on its own)."""
    with anyio.fail_after(TIMEOUT):
        while store.key_generation() == before:
            await anyio.lowlevel.checkpoint()  # the listener's callback runs on this loop


async def test_a_key_or_grant_revoked_through_one_store_changes_the_others_generation(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    org = await a.ensure_organisation("acme")
    key = await a.create_api_key(org.id)
    quiet = b.key_generation()
    await a.revoke_api_key(key.key.id)
    await changed(b, quiet)
    assert await b.find_api_key(key.secret) is None

    before = b.key_generation()
    assert not await a.signin.revoke_grant("no-such-grant", "admin", utc_now())
    await a.create_api_key(org.id)  # neither changes anything
    assert b.key_generation() == before


async def test_a_lost_listening_connection_advances_the_generation_and_is_made_again(
    two: tuple[PostgresStore, PostgresStore], postgres_server: PostgresServer
) -> None:
    a, b = two
    before = b.key_generation()
    postgres_server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
    )
    await changed(b, before)  # at once: no cached key outlives what the store can vouch for
    with anyio.fail_after(TIMEOUT):
        while not (a.listening and b.listening):
            await anyio.lowlevel.checkpoint()
    org = await a.ensure_organisation("acme")
    key = await a.create_api_key(org.id)
    again = b.key_generation()
    await a.revoke_api_key(key.key.id)
    await changed(b, again)
