"""A keyed gateway (demo upstream over stdio, recording on) and a raw MCP-over-HTTP client.

The listing API is exercised through real MCP traffic: each test opens sessions and makes
calls through the gateway, then reads the record back over HTTP.
"""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest
import yaml

from tests.harness import ROOT, RunningGateway, demo_stdio_yaml, serve_gateway, write_config
from tests.postgres import PostgresServer

TIMEOUT = 20.0
SPEC = ROOT / "docs" / "spec"  # the listing contracts, kept in the repository
ACCEPT = {"accept": "application/json, text/event-stream"}


def spec_validator(file: str, schema: str) -> jsonschema.protocols.Validator:
    """A validator for `#/components/schemas/<schema>` of a spec file, loaded as it is."""
    document = yaml.safe_load((SPEC / file).read_text())
    root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())


@dataclass
class Tenant:
    organisation_id: str
    key: str
    api_key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


class McpClient:
    """Just enough Streamable HTTP to open sessions and make calls, JSON responses only."""

    def __init__(self, http: httpx2.AsyncClient, url: str, key: str) -> None:
        self.http, self.url, self.key = http, url, key
        self._ids = itertools.count(1)

    async def open(self, name: str = "tests", version: str = "1", protocol: str = "2025-11-25") -> str:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": protocol,
                "capabilities": {},
                "clientInfo": {"name": name, "version": version},
            },
        }
        response = await self.http.post(self.url, json=init, headers={**ACCEPT, "x-api-key": self.key})
        assert response.status_code == 200, response.text
        session_id = response.headers["mcp-session-id"]
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await self.http.post(self.url, json=initialized, headers=self._headers(session_id))
        return session_id

    def _headers(self, session_id: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**ACCEPT, "x-api-key": self.key, "mcp-session-id": session_id, **(extra or {})}

    async def request(
        self, session_id: str, method: str, params: dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        response = await self.http.post(self.url, json=message, headers=self._headers(session_id, headers))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def call(self, session_id: str, tool: str, arguments: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return await self.request(session_id, "tools/call", {"name": tool, "arguments": arguments}, **kw)


@pytest.fixture(scope="package", params=["sqlite", "postgres"])
async def keyed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    """The keyed gateway on each backend: a SQLite file, and a database on the test PostgreSQL
    server (then with the sealing key from the config, as PostgreSQL needs)."""
    database = "./gw.db"
    name: str | None = None
    server: PostgresServer | None = None
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        name = server.create_database()
        database = (
            f"{server.url(name)}\nsecrets: {{key: {base64.urlsafe_b64encode(os.urandom(32)).decode()}}}"
        )
    config = write_config(
        tmp_path_factory.mktemp("api"),
        f"""
database: {database}
auth: {{required: true}}
upstreams:{demo_stdio_yaml(extra="    timeouts: {call_s: 2}")}
""",
    )
    try:
        async with serve_gateway(config) as running:
            yield running
    finally:
        if server is not None and name is not None:
            server.drop_database(name)


def sqlite_only(gateway: RunningGateway) -> None:
    """Skip a test of what only the SQLite backend has (its file, its write lock)."""
    if gateway.gateway.config.postgres is not None:
        pytest.skip("about the SQLite backend's own file")


@pytest.fixture(scope="package")
def database(keyed: RunningGateway) -> Path:
    sqlite_only(keyed)
    return keyed.gateway.config.database


async def new_tenant(
    gateway: RunningGateway, organisation: str = "default", *, admin: bool = False
) -> Tenant:
    store = gateway.gateway.store
    org = await store.ensure_organisation(organisation)
    created = await store.create_api_key(org.id, is_admin=admin)
    return Tenant(org.id, created.secret, created.key.id)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client
