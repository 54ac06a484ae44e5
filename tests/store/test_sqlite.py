import logging
import re
import sqlite3
import stat
import sys
import threading
import uuid
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from store import (
    KeyNotFound,
    OrganisationNotFound,
    SqliteStore,
    Store,
    StoreUnavailable,
    generate_api_key,
    hash_api_key,
    open_sqlite_store,
)


def _query(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql`` read with a plain sqlite3 connection, closed afterwards."""
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute(sql).fetchall()


def _read_all(db_path: Path) -> bytes:
    """The bytes of the database and any WAL/shared-memory files beside it."""
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    """This file is the SQLite backend's own: its file, its connections, its marker."""
    return sqlite_store


async def test_sqlite_store_satisfies_the_store_protocol(store: SqliteStore) -> None:
    as_protocol: Store = store  # checked by mypy

    assert as_protocol is store


async def test_ensure_organisation_is_idempotent(store: SqliteStore) -> None:
    first = await store.ensure_organisation("acme")
    second = await store.ensure_organisation("acme")
    other = await store.ensure_organisation("globex")

    assert first == second
    assert other.id != first.id
    assert uuid.UUID(first.id).version == 4
    assert first.created_at.tzinfo is UTC


async def test_organisation_is_got_by_id_and_unknown_id_gives_none(store: SqliteStore) -> None:
    organisation = await store.ensure_organisation("acme")

    assert await store.get_organisation(organisation.id) == organisation
    assert await store.get_organisation(str(uuid.uuid4())) is None


async def test_created_key_is_found_by_its_secret(store: SqliteStore) -> None:
    organisation = await store.ensure_organisation("acme")

    created = await store.create_api_key(organisation.id, user_id="user-1", is_admin=True)
    found = await store.find_api_key(created.secret)

    assert found == created.key
    assert found.organisation_id == organisation.id
    assert found.user_id == "user-1"
    assert found.is_admin is True
    assert found.revoked_at is None
    assert found.prefix == created.secret[:10]
    assert re.fullmatch(r"mgw_[A-Za-z0-9_-]{43}", created.secret)
    assert uuid.UUID(found.id).version == 4


async def test_key_defaults_to_no_user_and_not_admin(store: SqliteStore) -> None:
    organisation = await store.ensure_organisation("acme")

    created = await store.create_api_key(organisation.id)

    assert created.key.user_id is None
    assert created.key.is_admin is False
    assert await store.find_api_key(created.secret) == created.key


async def test_unknown_or_revoked_key_is_not_found(store: SqliteStore) -> None:
    organisation = await store.ensure_organisation("acme")
    created = await store.create_api_key(organisation.id)
    await store.revoke_api_key(created.key.id)

    assert await store.find_api_key(created.secret) is None
    assert await store.find_api_key(generate_api_key()) is None
    for malformed in ("", "not-a-key", "mgw_", created.key.prefix, hash_api_key(created.secret)):
        assert await store.find_api_key(malformed) is None


async def test_revoking_one_key_leaves_the_others_usable(store: SqliteStore) -> None:
    organisation = await store.ensure_organisation("acme")
    revoked = await store.create_api_key(organisation.id)
    kept = await store.create_api_key(organisation.id)

    await store.revoke_api_key(revoked.key.id)

    assert await store.find_api_key(kept.secret) == kept.key


async def test_revoking_twice_keeps_the_first_revocation(store: SqliteStore, db_path: Path) -> None:
    organisation = await store.ensure_organisation("acme")
    created = await store.create_api_key(organisation.id)
    await store.revoke_api_key(created.key.id)
    first = _query(db_path, "SELECT revoked_at FROM api_keys")

    await store.revoke_api_key(created.key.id)

    assert _query(db_path, "SELECT revoked_at FROM api_keys") == first


async def test_revoking_an_unknown_key_raises_key_not_found(store: SqliteStore) -> None:
    with pytest.raises(KeyNotFound):
        await store.revoke_api_key(str(uuid.uuid4()))


async def test_key_for_an_unknown_organisation_raises_organisation_not_found(
    store: SqliteStore,
) -> None:
    with pytest.raises(OrganisationNotFound) as caught:
        await store.create_api_key(str(uuid.uuid4()))

    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)


async def test_secret_is_not_in_the_database_file(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        organisation = await store.ensure_organisation("acme")
        created = await store.create_api_key(organisation.id)

    stored = _read_all(db_path)

    assert created.secret.encode() not in stored
    assert created.secret[len(created.key.prefix) :].encode() not in stored
    assert hash_api_key(created.secret).encode() in stored
    assert created.key.prefix.encode() in stored


async def test_timestamps_are_stored_as_utc_text_with_milliseconds(store: SqliteStore, db_path: Path) -> None:
    organisation = await store.ensure_organisation("acme")
    created = await store.create_api_key(organisation.id)
    await store.revoke_api_key(created.key.id)

    rows = _query(
        db_path,
        "SELECT created_at FROM organisations UNION ALL SELECT created_at FROM api_keys"
        " UNION ALL SELECT revoked_at FROM api_keys",
    )

    assert len(rows) == 3
    for (text,) in rows:
        assert isinstance(text, str)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)


async def test_key_created_by_another_connection_is_found_at_once(store: SqliteStore, db_path: Path) -> None:
    organisation = await store.ensure_organisation("acme")
    async with open_sqlite_store(db_path) as other:
        created = await other.create_api_key(organisation.id)

        assert await store.find_api_key(created.secret) == created.key

        await other.revoke_api_key(created.key.id)
        assert await store.find_api_key(created.secret) is None


async def test_key_inserted_after_a_miss_of_its_secret_is_found(store: SqliteStore, db_path: Path) -> None:
    organisation = await store.ensure_organisation("acme")
    secret = generate_api_key()
    assert await store.find_api_key(secret) is None

    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute(
            "INSERT INTO api_keys (id, organisation_id, user_id, is_admin, key_hash, prefix,"
            " created_at) VALUES (?, ?, NULL, 0, ?, ?, '2026-11-21T05:45:07.123Z')",
            (str(uuid.uuid4()), organisation.id, hash_api_key(secret), secret[:10]),
        )

    found = await store.find_api_key(secret)
    assert found is not None
    assert found.organisation_id == organisation.id


_CREATE_KEY_IN_ANOTHER_PROCESS = """
import sys, anyio
from store import open_sqlite_store

async def main() -> None:
    async with open_sqlite_store(sys.argv[1]) as store:
        created = await store.create_api_key(sys.argv[2])
    print(created.secret)

anyio.run(main)
"""


async def test_key_created_by_another_process_is_found_at_once(store: SqliteStore, db_path: Path) -> None:
    organisation = await store.ensure_organisation("acme")
    assert await store.find_api_key(generate_api_key()) is None

    with anyio.fail_after(30):
        result = await anyio.run_process(
            [sys.executable, "-c", _CREATE_KEY_IN_ANOTHER_PROCESS, str(db_path), organisation.id],
            cwd=Path(__file__).parents[2],
        )
    secret = result.stdout.decode().strip()

    found = await store.find_api_key(secret)
    assert found is not None
    assert found.organisation_id == organisation.id


async def test_two_stores_opening_a_new_file_at_once_both_work(db_path: Path) -> None:
    names: list[str] = []

    async def open_and_use(name: str) -> None:
        async with open_sqlite_store(db_path) as store:
            organisation = await store.ensure_organisation("shared")
            await store.create_api_key(organisation.id)
            names.append(organisation.id)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for name in "abcdefgh":
                tg.start_soon(open_and_use, name)

    assert len(names) == 8
    assert len(set(names)) == 1


async def test_database_is_in_wal_mode(store: SqliteStore, db_path: Path) -> None:
    assert _query(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_unopenable_path_raises_store_unavailable_and_leaves_no_thread(
    tmp_path: Path,
) -> None:
    before = set(threading.enumerate())

    with pytest.raises(StoreUnavailable) as caught:
        async with open_sqlite_store(tmp_path / "missing" / "mcpgw.db"):
            pass

    assert isinstance(caught.value.__cause__, sqlite3.Error)
    started = set(threading.enumerate()) - before
    assert not [t for t in started if "_connection_worker_thread" in t.name]


async def test_the_database_and_the_files_beside_it_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    async with open_sqlite_store(path) as store:
        await store.ensure_organisation("acme")  # a write: the WAL and shared memory exist now
        beside = [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
        modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in beside if file.exists()}
    assert set(modes) == {"gw.db", "gw.db-wal", "gw.db-shm"}
    assert modes == dict.fromkeys(modes, 0o600)


async def test_a_database_readable_by_others_is_tightened_when_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gw.db"
    async with open_sqlite_store(path):
        pass
    path.chmod(0o644)
    async with open_sqlite_store(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "now by its owner only" in caplog.text


async def test_statements_and_their_parameters_never_reach_the_log_even_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_sqlite_store(tmp_path / "gw.db") as store:
        organisation = await store.ensure_organisation("acme")
        created = await store.create_api_key(organisation.id)
        assert await store.find_api_key(created.secret) is not None
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiosqlite")] == []
    assert hash_api_key(created.secret) not in caplog.text


async def test_an_organisations_keys_are_listed_oldest_first_revoked_ones_too(store: SqliteStore) -> None:
    acme = await store.ensure_organisation("acme")
    globex = await store.ensure_organisation("globex")
    first = await store.create_api_key(acme.id, user_id="ada", is_admin=True, tools_deny=["demo__fail"])
    second = await store.create_api_key(acme.id)
    await store.create_api_key(globex.id)
    await store.revoke_api_key(second.key.id)

    listed = await store.list_api_keys(acme.id)

    assert [key.id for key in listed] == [first.key.id, second.key.id]
    assert listed[0] == first.key
    assert listed[1].revoked_at is not None and listed[1].last_used_at is None
    assert await store.find_organisation("acme") == acme
    assert await store.find_organisation("initech") is None


async def test_recorded_key_use_keeps_the_latest_time(store: SqliteStore) -> None:
    organisation = await store.ensure_organisation("acme")
    created = await store.create_api_key(organisation.id)
    earlier = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    later = earlier + timedelta(minutes=1)

    await store.record_key_use({created.key.id: later, str(uuid.uuid4()): later})  # an unknown id: ignored
    await store.record_key_use({created.key.id: earlier})  # a batch that arrives late

    [listed] = await store.list_api_keys(organisation.id)
    assert listed.last_used_at == later


async def test_a_revocation_in_another_process_changes_the_key_generation_and_nothing_else_does(
    store: SqliteStore, db_path: Path
) -> None:
    organisation = await store.ensure_organisation("acme")
    created = await store.create_api_key(organisation.id)
    before = store.key_generation()
    await store.create_api_key(organisation.id)
    await store.record_key_use({created.key.id: datetime.now(UTC)})
    assert store.key_generation() == before

    with anyio.fail_after(30):
        await anyio.run_process(
            [sys.executable, "-c", _REVOKE_KEY_IN_ANOTHER_PROCESS, str(db_path), created.key.id],
            cwd=Path(__file__).parents[2],
        )

    after = store.key_generation()
    assert after != before
    async with open_sqlite_store(db_path) as other:
        await other.revoke_api_key(created.key.id)  # already revoked: a no-op, yet still signalled
        assert store.key_generation() != after


_REVOKE_KEY_IN_ANOTHER_PROCESS = """
import sys, anyio
from store import open_sqlite_store

async def main() -> None:
    async with open_sqlite_store(sys.argv[1]) as store:
        await store.revoke_api_key(sys.argv[2])

anyio.run(main)
"""


async def test_the_revocation_marker_beside_the_database_is_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    async with open_sqlite_store(tmp_path / "gw.db") as store:
        organisation = await store.ensure_organisation("acme")
        await store.revoke_api_key((await store.create_api_key(organisation.id)).key.id)
    assert stat.S_IMODE((tmp_path / "gw.db-revoked").stat().st_mode) == 0o600
