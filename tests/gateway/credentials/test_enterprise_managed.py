"""Enterprise-managed authorization (SEP-990, `auth.kind: enterprise_managed`): the gateway
exchanges an identity assertion at a real IdP (RFC 8693) for an ID-JAG and presents it at the
upstream's authorization server (RFC 7523 JWT bearer grant); the upstream accepts only tokens
minted for its own audience. The assertion comes from `idp.assertion_file`, the source the
gateway reads it from (tests/oauth_grants.py serves both servers)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.api.conftest import McpClient
from tests.connecting import leaks, text_of
from tests.harness import keyless_config, serve_gateway
from tests.oauth import AuthServer, ProtectedUpstream, running_auth_server, serve_protected_upstream
from tests.oauth_grants import ID_JAG_TYPE, ID_TOKEN_TYPE, JWT_BEARER, Idp, MachineClient, running_idp

TIMEOUT = 30.0
SECRET = "s3cret-of-the-gateway-at-the-crm"


@dataclass
class World:
    auth: AuthServer
    idp: Idp
    upstream: ProtectedUpstream
    host: McpClient
    assertion: Path


@asynccontextmanager
async def world_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setenv("CRM_SECRET", SECRET)
    (tmp_path / "sidecar").mkdir()
    assertion = tmp_path / "sidecar" / "id-token.jwt"  # beside the database, it would count as a leak
    async with (
        running_idp(client_id="mcpgw-at-idp", jag_client_id="crm-gw") as idp,
        running_auth_server() as auth,
        serve_protected_upstream(auth) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        auth.machine_clients["crm-gw"] = MachineClient("crm-gw", "client_secret_basic", secret=SECRET)
        auth.trusted_idp = idp.trusted()
        upstreams = f"""
  - name: crm
    transport: http
    url: '{upstream.url}'
    auth:
      kind: enterprise_managed
      client_id: crm-gw
      client_secret: '${{CRM_SECRET}}'
      idp:
        token_endpoint: '{idp.token_endpoint}'
        client_id: mcpgw-at-idp
        assertion_file: '{assertion}'"""
        async with serve_gateway(keyless_config(tmp_path, upstreams)) as gateway:
            yield World(auth, idp, upstream, McpClient(http, gateway.url, ""), assertion)


async def test_the_assertion_is_exchanged_for_an_id_jag_which_gets_a_token_for_that_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with world_of(tmp_path, monkeypatch) as world:
        id_token = world.idp.id_token("alice@example.com")
        world.assertion.write_text(id_token + "\n")
        with anyio.fail_after(TIMEOUT):
            session = await world.host.open()
            assert text_of(await world.host.call(session, "crm__whoami", {})) == "alice@example.com"
            assert text_of(await world.host.call(session, "crm__echo", {"text": "hi"})) == "hi"
    [exchange] = world.idp.exchanges
    assert (exchange.subject_token_type, exchange.requested_token_type) == (ID_TOKEN_TYPE, ID_JAG_TYPE)
    assert (exchange.audience, exchange.resource) == (world.auth.issuer, world.upstream.url)
    [grant] = world.auth.machine_grants
    assert (grant.grant_type, grant.method, grant.subject) == (
        JWT_BEARER,
        "client_secret_basic",
        "alice@example.com",
    )
    token = next(t for t in world.auth.issued if t.startswith("at_"))
    assert not leaks(tmp_path, caplog.text, [SECRET, id_token, token])


async def test_the_assertion_file_is_read_again_for_the_next_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever renews the id_token writes it to the file; once the upstream refuses the token
    the gateway holds, the next exchange presents what the file holds then."""
    async with world_of(tmp_path, monkeypatch) as world:
        world.assertion.write_text(world.idp.id_token("alice@example.com"))
        with anyio.fail_after(TIMEOUT):
            session = await world.host.open()
            assert text_of(await world.host.call(session, "crm__whoami", {})) == "alice@example.com"
            world.assertion.write_text(world.idp.id_token("robot@example.com"))
            world.auth.expire_access_tokens()
            assert text_of(await world.host.call(session, "crm__whoami", {})) == "robot@example.com"
    assert [exchange.subject for exchange in world.idp.exchanges] == [
        "alice@example.com",
        "robot@example.com",
    ]


async def test_an_expired_assertion_is_refused_by_the_idp_and_the_call_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world_of(tmp_path, monkeypatch) as world:
        world.assertion.write_text(world.idp.id_token("alice@example.com", expired=True))
        with anyio.fail_after(TIMEOUT):
            session = await world.host.open()
            answer = await world.host.call(session, "crm__whoami", {})
    said = str(answer.get("error") or answer.get("result"))
    assert "crm" in said and "IdP" in said and "invalid_grant" in said, answer
    assert not world.auth.machine_grants
