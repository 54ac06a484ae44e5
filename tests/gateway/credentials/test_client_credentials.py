"""The gateway's own token for a machine-to-machine upstream (`auth.kind: client_credentials`),
against a real authorization server with hand-registered clients (`tests.oauth_grants`) and an
upstream that accepts only tokens minted for its own audience."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from joserfc.jwk import ECKey

from gateway.upstream.connector import Connector
from tests.api.conftest import McpClient
from tests.connecting import leaks, text_of
from tests.harness import RunningGateway, keyless_config, serve_gateway
from tests.oauth import AuthServer, ProtectedUpstream, running_auth_server, serve_protected_upstream
from tests.oauth_grants import CLIENT_CREDENTIALS, MachineClient

TIMEOUT = 30.0
SECRET = "s3cret-of-the-reports-service"


@dataclass
class World:
    gateway: RunningGateway
    auth: AuthServer
    upstream: ProtectedUpstream
    host: McpClient


@asynccontextmanager
async def world_of(
    tmp_path: Path, auth_yaml: str, auth: AuthServer, *, modern_only: bool = False, extra: str = ""
) -> AsyncIterator[World]:
    async with (
        serve_protected_upstream(auth, modern_only=modern_only) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        upstreams = (
            f"\n  - {{name: reports, transport: http, url: '{upstream.url}', {extra}auth: {auth_yaml}}}"
        )
        async with serve_gateway(keyless_config(tmp_path, upstreams)) as gateway:
            yield World(gateway, auth, upstream, McpClient(http, gateway.url, ""))


def secret_client(auth: AuthServer, method: Any = "client_secret_basic") -> None:
    auth.machine_clients["reports-gw"] = MachineClient("reports-gw", method, secret=SECRET)


async def test_a_client_secret_basic_token_is_asked_for_once_and_sent_on_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Discovered from the upstream's 401 (no token endpoint configured), the secret from the
    environment; two host sessions, three calls, one token request naming the upstream as
    resource; neither the secret nor the token in the log or the database."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("REPORTS_SECRET", SECRET)
    async with running_auth_server() as auth:
        secret_client(auth)
        auth_yaml = "{kind: client_credentials, client_id: reports-gw, client_secret: '${REPORTS_SECRET}'}"
        async with world_of(tmp_path, auth_yaml, auth) as world:
            with anyio.fail_after(TIMEOUT):
                first, second = await world.host.open(), await world.host.open()
                assert text_of(await world.host.call(first, "reports__whoami", {})) == "reports-gw"
                assert text_of(await world.host.call(second, "reports__whoami", {})) == "reports-gw"
                assert text_of(await world.host.call(first, "reports__echo", {"text": "hi"})) == "hi"
    [grant] = auth.machine_grants
    assert (grant.grant_type, grant.method, grant.resource) == (
        CLIENT_CREDENTIALS,
        "client_secret_basic",
        world.upstream.url,
    )
    [token] = [t for t in auth.issued if t.startswith("at_")]
    assert f"Bearer {token}" in world.upstream.seen_authorizations
    assert not leaks(tmp_path, caplog.text, [SECRET, token])


async def test_client_secret_post_goes_to_the_configured_token_endpoint_with_the_configured_scope(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With token_endpoint given nothing is discovered; a shared upstream session carries the
    gateway's token as well as a host's own session would."""
    monkeypatch.setenv("REPORTS_SECRET", SECRET)
    async with running_auth_server() as auth:
        secret_client(auth, "client_secret_post")
        auth_yaml = (
            "{kind: client_credentials, client_id: reports-gw, client_secret: '${REPORTS_SECRET}', "
            f"token_endpoint: '{auth.token_endpoint}', token_endpoint_auth_method: client_secret_post, "
            "scopes: [read]}"
        )
        async with world_of(tmp_path, auth_yaml, auth, extra="sessions: shared, ") as world:
            with anyio.fail_after(TIMEOUT):
                session = await world.host.open()
                assert text_of(await world.host.call(session, "reports__whoami", {})) == "reports-gw"
    [grant] = auth.machine_grants
    assert (grant.method, grant.scope, grant.resource) == ("client_secret_post", "read", world.upstream.url)


async def test_private_key_jwt_signs_a_fresh_assertion_for_the_issuer_each_time_it_asks(
    tmp_path: Path,
) -> None:
    """The token's answer says it expires at once, so each call asks again: every assertion is
    accepted (aud the issuer, iss and sub the client) and none is a replay of another."""
    key = ECKey.generate_key("P-256")
    key_file = tmp_path / "reports-gw.pem"
    key_file.write_bytes(key.as_pem(private=True))
    async with running_auth_server() as auth:
        auth.machine_clients["reports-gw"] = MachineClient("reports-gw", "private_key_jwt", public_key=key)
        auth.machine_expires_in = 0
        auth_yaml = f"{{kind: client_credentials, client_id: reports-gw, private_key_file: '{key_file}'}}"
        async with world_of(tmp_path, auth_yaml, auth) as world:
            with anyio.fail_after(TIMEOUT):
                session = await world.host.open()
                for _ in range(2):
                    assert text_of(await world.host.call(session, "reports__whoami", {})) == "reports-gw"
    methods = {grant.method for grant in auth.machine_grants}
    jtis = [grant.jti for grant in auth.machine_grants]
    assert methods == {"private_key_jwt"} and len(jtis) >= 2 and len(set(jtis)) == len(jtis)


async def test_a_token_the_upstream_refuses_is_dropped_and_asked_for_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server expires its tokens early (the gateway still thinks them good): the next call
    is refused with 401, the gateway asks for a new token and the call goes through."""
    monkeypatch.setenv("REPORTS_SECRET", SECRET)
    async with running_auth_server() as auth:
        secret_client(auth)
        auth_yaml = "{kind: client_credentials, client_id: reports-gw, client_secret: '${REPORTS_SECRET}'}"
        async with world_of(tmp_path, auth_yaml, auth) as world:
            with anyio.fail_after(TIMEOUT):
                session = await world.host.open()
                assert text_of(await world.host.call(session, "reports__whoami", {})) == "reports-gw"
                auth.expire_access_tokens()
                assert text_of(await world.host.call(session, "reports__echo", {"text": "again"})) == "again"
    assert len(auth.machine_grants) == 2


async def test_a_2026_upstream_is_probed_with_the_gateways_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that speaks 2026-07-28 only to a request with a token: server/discover
    carries the gateway's own token, so the upstream is reached statelessly."""
    monkeypatch.setenv("REPORTS_SECRET", SECRET)
    async with running_auth_server() as auth:
        secret_client(auth)
        auth_yaml = "{kind: client_credentials, client_id: reports-gw, client_secret: '${REPORTS_SECRET}'}"
        async with world_of(tmp_path, auth_yaml, auth, modern_only=True) as world:
            with anyio.fail_after(TIMEOUT):
                session = await world.host.open()
                assert text_of(await world.host.call(session, "reports__whoami", {})) == "reports-gw"
    assert len(auth.machine_grants) == 1


async def test_a_refused_client_is_a_clear_error_naming_the_upstream_and_the_secret_is_not_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("REPORTS_SECRET", "not-the-secret")
    async with running_auth_server() as auth:
        secret_client(auth)
        auth_yaml = "{kind: client_credentials, client_id: reports-gw, client_secret: '${REPORTS_SECRET}'}"
        async with world_of(tmp_path, auth_yaml, auth) as world:
            with anyio.fail_after(TIMEOUT):
                session = await world.host.open()
                answer = await world.host.call(session, "reports__whoami", {})
    error = answer.get("error") or {}
    result = answer.get("result") or {}
    said = str(error.get("message", "")) + str(error.get("data", "")) + str(result.get("content", ""))
    assert "reports" in said and "invalid_client" in said, answer
    assert not auth.machine_grants
    assert not leaks(tmp_path, caplog.text, ["not-the-secret"])


async def test_a_required_upstream_whose_token_is_refused_is_down_in_readyz_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPORTS_SECRET", "not-the-secret")
    async with running_auth_server() as auth:
        secret_client(auth)
        auth_yaml = "{kind: client_credentials, client_id: reports-gw, client_secret: '${REPORTS_SECRET}'}"
        async with world_of(tmp_path, auth_yaml, auth, extra="required: true, ") as world:
            connector = world.gateway.gateway.registry.connectors["reports"]
            assert isinstance(connector, Connector)
            with anyio.fail_after(TIMEOUT):
                await connector.health.tried.wait()  # the start-up check has ended
                ready = await world.host.http.get(f"{world.gateway.base_url}/readyz")
    assert ready.status_code == 503
    reports = ready.json()["upstreams"]["reports"]
    assert reports["state"] == "down" and "invalid_client" in reports["last_error"], reports
