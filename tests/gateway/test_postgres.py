"""The gateway on PostgreSQL, as an operator runs it: `mcpgw serve`, `mcpgw migrate` and
`mcpgw keys revoke` as processes of their own beside a running gateway, on the test server."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import anyio
import httpx2
import pytest

from store import (
    Binding,
    FixedKeys,
    InvocationRecord,
    Keyring,
    Sealer,
    Seek,
    SessionStart,
    key_id_for,
    open_postgres_store,
    open_sqlite_store,
    utc_now,
)
from store.migrations import SCHEMA_VERSION
from tests.gateway.cli.commands import run_mcpgw
from tests.gateway.signin.browser import redeem, register, sign_in
from tests.harness import ROOT, base_url_of, demo_stdio_yaml, listening_socket, serve_gateway, write_config
from tests.postgres import PostgresServer

TIMEOUT = 20.0
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
ACCEPT = {"accept": "application/json, text/event-stream"}


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    yield name
    postgres_server.drop_database(name)


def pg_config(directory: Path, url: str, extra: str = "") -> Path:
    return write_config(
        directory,
        f"database: {url}\nsecrets: {{key: {new_key()}}}\nauth: {{required: true}}\n{extra}"
        f"upstreams:{demo_stdio_yaml()}\n",
    )


async def test_migrate_creates_the_schema_and_serve_refuses_a_newer_one_naming_its_version(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    config = pg_config(tmp_path, postgres_server.url(database))
    code, out, err = await run_mcpgw("migrate", "--config", str(config))
    assert code == 0, err
    assert json.loads(out) == {"database": postgres_server.url(database, password=False).replace(
        "mcpgw_test@", "mcpgw_test:***@"), "schemaVersion": SCHEMA_VERSION}  # fmt: skip
    assert postgres_server.password not in out + err

    postgres_server.psql(f"UPDATE mcpgw_schema SET version = {SCHEMA_VERSION + 1}", database)
    code, out, err = await run_mcpgw("serve", "--config", str(config), "--port", "0")
    assert code == 1
    [line] = err.strip().splitlines()
    assert f"schema is version {SCHEMA_VERSION + 1}" in line and f"knows ({SCHEMA_VERSION})" in line


async def test_serve_without_the_sealing_key_says_how_to_make_one(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, f"database: {postgres_server.url(database)}\nupstreams: []\n")
    code, _, err = await run_mcpgw("serve", "--config", str(config), "--port", "0")
    assert code == 2
    assert "secrets.key" in err and "mcpgw secrets new-key" in err


async def test_serve_with_an_unreachable_server_or_a_wrong_password_is_one_line_and_a_failure(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    wrong = postgres_server.url(database).replace(postgres_server.password, "not-the-password")
    for url, why in ((wrong, "password authentication failed"), ("postgresql://x@127.0.0.1:1/db", "reach")):
        config = pg_config(tmp_path, url)
        code, _, err = await run_mcpgw("serve", "--config", str(config), "--port", "0")
        assert code == 1
        [line] = err.strip().splitlines()
        assert why in line and "not-the-password" not in line


async def test_a_key_revoked_by_another_process_is_refused_on_the_very_next_request(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    url = postgres_server.url(database)
    config = pg_config(tmp_path, url)
    async with open_postgres_store(url) as store:
        org = await store.ensure_organisation("default")
        created = await store.create_api_key(org.id)
    async with serve_gateway(config) as running, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        headers = {**ACCEPT, "x-api-key": created.secret}
        for _ in range(3):  # known, then answered from the gateway's memory
            assert (await http.post(f"{running.url}", json=INIT, headers=headers)).status_code == 200
        code, _, err = await run_mcpgw("keys", "revoke", created.key.id, "--config", str(config))
        assert code == 0, err
        refused = await http.post(f"{running.url}", json=INIT, headers=headers)
        assert refused.status_code == 401
        assert "revoked" in refused.text


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, to stop and start again."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


async def test_while_the_database_is_away_calls_are_refused_at_once_and_work_again_once_it_is_back(
    own_server: PostgresServer, tmp_path: Path
) -> None:
    url = own_server.url(own_server.create_database())
    config = write_config(
        tmp_path,
        f"database: {url}\nsecrets: {{key: {new_key()}}}\nauth: {{required: false}}\n"
        f"upstreams:{demo_stdio_yaml()}\n",
    )
    async with serve_gateway(config) as running, httpx2.AsyncClient(timeout=TIMEOUT, headers=ACCEPT) as http:
        opened = await http.post(running.url, json=INIT)
        http.headers["mcp-session-id"] = opened.headers["mcp-session-id"]

        async def echo(n: int) -> dict[str, object]:
            body = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                    "params": {"name": "demo__echo", "arguments": {"text": f"t{n}"}}}  # fmt: skip
            response = await http.post(running.url, json=body)
            assert response.status_code == 200, response.text
            answer: dict[str, object] = response.json()
            return answer

        assert "result" in await echo(1)
        own_server.stop()
        with anyio.fail_after(3):  # at once: no wait for a server that is not there
            for n in range(2, 5):
                refused = await echo(n)
                assert "result" not in refused
                assert "record is unavailable" in json.dumps(refused["error"])
            ready = await http.get(f"{running.base_url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"]["writable"] is False and ready.json()["database"]["error"]

        own_server.start()  # on the same port
        with anyio.fail_after(10):  # the pool and the recorder's connection reconnect by themselves
            n = 5
            while "result" not in (answer := await echo(n)):
                assert "record is unavailable" in json.dumps(answer["error"])
                n += 1
                await anyio.sleep(0.1)  # a retry schedule: each attempt is a real call
        assert (await http.get(f"{running.base_url}/readyz")).status_code == 200


async def test_migrate_from_sqlite_copies_everything_and_the_same_keys_pages_and_secrets_work(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    key = new_key()
    keys = FixedKeys(Keyring({key_id_for(raw := base64.urlsafe_b64decode(key + "=")): raw}, key_id_for(raw)))
    sqlite_file = tmp_path / "old.db"
    async with open_sqlite_store(sqlite_file, sealer=Sealer(keys)) as old:
        org = await old.ensure_organisation("acme")
        created = await old.create_api_key(org.id, user_id="ada")
        session = SessionStart(
            str(uuid4()), "mcp-1", org.id, created.key.id, None, "host", "1", "2025-11-25", utc_now()
        )
        calls = [
            InvocationRecord(
                str(uuid4()),
                session.id,
                "tools/call",
                f"t{n}",
                "up",
                "t",
                str(n),
                "{}",
                False,
                "{}",
                False,
                True,
                "ok",
                1,
                1,
                None,
                utc_now(),
            )
            for n in range(3)
        ]
        await old.write_records([session, *calls])
        where = Binding(org.id, "gh", "user", "ada")
        await old.credentials.save(
            "cred-1",
            where,
            kind="token",
            secret={"access_token": "s3cret"},
            header_names=(),
            oauth_client_id=None,
            expires_at=None,
            now=utc_now(),
        )
        before = await old.list_invocations(session.id, seek=Seek(), limit=2)
        sessions_before = await old.list_sessions(org.id, api_key_id=None, seek=Seek(), limit=10)

    url = postgres_server.url(database)
    config = write_config(tmp_path, f"database: {url}\nsecrets: {{key: {key}}}\nupstreams: []\n")
    code, out, err = await run_mcpgw("migrate", "--config", str(config), "--from", f"sqlite:///{sqlite_file}")
    assert code == 0, err
    assert json.loads(out)["copied"]["invocations"] == 3

    async with open_postgres_store(url, sealer=Sealer(keys)) as new:
        found = await new.find_api_key(created.secret)
        assert found is not None and found.user_id == "ada"
        assert await new.list_invocations(session.id, seek=Seek(), limit=2) == before
        assert await new.list_sessions(org.id, api_key_id=None, seek=Seek(), limit=10) == sessions_before
        credential = await new.credentials.credential_for(where)
        assert credential is not None and credential.secret == {"access_token": "s3cret"}
        await new.write_records([dataclasses.replace(calls[0], id=str(uuid4()))])  # numbering goes on
        page = await new.list_invocations(session.id, seek=Seek(), limit=10)
        assert len(page.rows) == 4

    code, _, err = await run_mcpgw("migrate", "--config", str(config), "--from", f"sqlite:///{sqlite_file}")
    assert code == 1 and "empty" in err  # never into a database that holds a gateway already


def readme_postgres_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## PostgreSQL\n", 1)[1].split("\n## ", 1)[0]


async def test_the_readme_postgresql_section_works_as_written(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's role and database, its config and its `mcpgw migrate`, on the test server
    (its address for db.internal, and no TLS: the test server has no certificate)."""
    section = readme_postgres_section()
    [create] = re.findall(r'^psql (-c ".*")$', section, re.M)
    for sql in re.findall(r'-c "([^"]*)"', create):
        postgres_server.psql(sql)
    try:
        [example] = re.findall(r"```yaml\n(.*?)```", section, re.S)
        example = example.replace("db.internal:5432", f"127.0.0.1:{postgres_server.port}")
        example = example.replace("sslmode=require", "sslmode=disable")
        config = write_config(tmp_path, example + "upstreams: []\n")
        monkeypatch.setenv("MCPGW_DB_PASSWORD", "change-me")
        monkeypatch.setenv("MCPGW_SECRETS_KEY", new_key())
        code, out, err = await run_mcpgw("migrate", "--config", str(config))
        assert code == 0, err
        shown = json.loads(out)
        assert shown["schemaVersion"] == SCHEMA_VERSION and "change-me" not in out
        assert f'"schemaVersion": {SCHEMA_VERSION}}}' in section  # the README shows this version
    finally:
        postgres_server.psql("DROP DATABASE IF EXISTS mcpgw WITH (FORCE)")
        postgres_server.psql("DROP ROLE IF EXISTS mcpgw")


async def test_a_sign_in_revoked_by_another_process_is_refused_on_the_very_next_request(
    postgres_server: PostgresServer, database: str, tmp_path: Path
) -> None:
    """`mcpgw grants revoke` in a process of its own: the running gateway hears of it over
    NOTIFY, so the host's access token, answered from memory until then, is refused at once."""
    url = postgres_server.url(database)
    sock = listening_socket()
    base_url = base_url_of(sock)
    config = pg_config(tmp_path, url, f"public_url: {base_url}\nhost_sign_in: {{enabled: true}}\n")
    async with open_postgres_store(url) as store:
        org = await store.ensure_organisation("default")
        created = await store.create_api_key(org.id, user_id="ada")
    async with serve_gateway(config, sock) as running, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, base_url, client_name="Claude")
            code, verifier = await sign_in(http, base_url, client.client_id, created.secret)
            access = (await redeem(http, base_url, client, code, verifier)).json()["access_token"]
            headers = {**ACCEPT, "authorization": f"Bearer {access}"}
            for _ in range(3):  # known, then answered from the gateway's memory
                assert (await http.post(running.url, json=INIT, headers=headers)).status_code == 200
        async with open_postgres_store(url) as store:
            [grant] = await store.signin.grants(org.id)
        code_, _, err = await run_mcpgw("grants", "revoke", grant.id, "--config", str(config))
        assert code_ == 0, err
        with anyio.fail_after(TIMEOUT):
            refused = await http.post(running.url, json=INIT, headers=headers)
        assert refused.status_code == 401
        assert "access token" in refused.json()["error"]["message"]
