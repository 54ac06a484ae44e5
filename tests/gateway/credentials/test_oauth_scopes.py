"""Per-user OAuth where the upstream asks for more than one token for everything: a 2026-07-28
server that wants the token on `server/discover` too, and a server whose tools need different
scopes (step-up authorization, MCP 2025-11-25 "Scope Challenge Handling", SEP-2350).

Against the real authorization server and protected upstream of `tests.oauth`; the browser is a
plain HTTP client whose cookie jar is the person's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest

from tests.api.conftest import McpClient
from tests.connecting import confirm, connect_url, people, serve_gateway_at_own_url, text_of
from tests.harness import RunningGateway
from tests.oauth import AuthServer, ProtectedUpstream, consent, running_auth_server, serve_protected_upstream

TIMEOUT = 30.0
MODERN = "2026-07-28"


@dataclass
class World:
    gateway: RunningGateway
    auth: AuthServer
    upstream: ProtectedUpstream
    http: httpx2.AsyncClient
    alice: McpClient


@asynccontextmanager
async def world_of(
    directory: Path,
    *,
    modern_only: bool,
    tool_scopes: Mapping[str, Sequence[str]] | None = None,
    escalating: bool = False,
) -> AsyncIterator[World]:
    scopes = ("read", "write", *{scope for needed in (tool_scopes or {}).values() for scope in needed})
    async with (
        running_auth_server(scopes=sorted(set(scopes))) as auth,
        serve_protected_upstream(
            auth, modern_only=modern_only, tool_scopes=tool_scopes, escalating=escalating
        ) as upstream,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        body = f"""
auth: {{required: true}}
upstreams:
  - name: gh
    transport: http
    url: {upstream.url}
    auth: {{kind: oauth, identity: user, scopes: [read]}}
"""
        async with serve_gateway_at_own_url(directory, body) as gateway:
            users = await people(gateway, http)
            yield World(gateway, auth, upstream, http, users.alice)


class Host:
    """A host of either generation calling tools through the gateway as alice."""

    def __init__(self, world: World, generation: str) -> None:
        self.world, self.generation = world, generation
        self.session: str | None = None
        self.ids = 0

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        world = self.world
        if self.generation != MODERN:
            if self.session is None:
                self.session = await world.alice.open()
            return await world.alice.call(self.session, tool, arguments)
        self.ids += 1
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "modern-host", "version": "1"},
        }
        message = {
            "jsonrpc": "2.0",
            "id": self.ids,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": meta},
        }
        headers = {
            "accept": "application/json, text/event-stream",
            "x-api-key": world.alice.key,
            "mcp-protocol-version": MODERN,
            "mcp-method": "tools/call",
            "mcp-name": tool,
        }
        answer = await world.http.post(world.gateway.url, json=message, headers=headers)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


async def sign_in(world: World, url: str, user: str) -> dict[str, list[str]]:
    """Open a connect link, confirm, consent as `user`, land on the callback; the authorization
    request's query, as the authorization server saw it."""
    to_server = await confirm(world.http, url)
    assert to_server.status_code == 303, to_server.text
    authorize = parse_qs(urlsplit(to_server.headers["location"]).query)
    to_consent = await world.http.get(to_server.headers["location"], follow_redirects=False)
    assert to_consent.status_code == 302, to_consent.text
    back = await consent(world.http, to_consent.headers["location"], user)
    assert back.status_code == 302
    callback = await world.http.get(back.headers["location"], follow_redirects=False)
    assert callback.status_code == 200, callback.text
    return authorize


@pytest.mark.parametrize("generation", ["2025-11-25", MODERN])
async def test_a_2026_only_upstream_that_wants_a_token_everywhere_is_probed_with_the_users_token(
    tmp_path: Path, generation: str
) -> None:
    """The gateway asks such an upstream its revision (`server/discover`) with the user's token;
    before, it asked without one, took the 401 for "not a 2026-07-28 server", and its
    `initialize` was refused: a signed-in user still got an error."""
    async with world_of(tmp_path, modern_only=True) as world:
        host = Host(world, generation)
        with anyio.fail_after(TIMEOUT):
            url = connect_url(await host.call("gh__whoami", {}))
            await sign_in(world, url, "alice@example")
            assert text_of(await host.call("gh__whoami", {})) == "alice@example"
            assert text_of(await host.call("gh__echo", {"text": "hi"})) == "hi"


@pytest.mark.parametrize("modern_only", [False, True], ids=["handshake-upstream", "2026-only-upstream"])
async def test_a_call_refused_for_insufficient_scope_asks_the_user_for_that_scope_too(
    tmp_path: Path, modern_only: bool
) -> None:
    """A 403 `insufficient_scope` naming `write` leads to a connect link whose authorization asks
    for `read write` (what was granted and what was challenged, SEP-2350), not `read` again;
    after it, both tools work. Before, the gateway refreshed, then asked for `read` again."""
    async with world_of(tmp_path, modern_only=modern_only, tool_scopes={"echo": ["write"]}) as world:
        host = Host(world, "2025-11-25")
        with anyio.fail_after(TIMEOUT):
            first = await sign_in(world, connect_url(await host.call("gh__whoami", {})), "alice@example")
            assert first["scope"] == ["read"]
            assert text_of(await host.call("gh__whoami", {})) == "alice@example"

            refused = await host.call("gh__echo", {"text": "hi"})
            assert "write" in refused["result"]["content"][0]["text"]
            second = await sign_in(world, connect_url(refused), "alice@example")
            assert second["scope"] == ["read write"]

            assert text_of(await host.call("gh__echo", {"text": "hi"})) == "hi"
            assert text_of(await host.call("gh__whoami", {})) == "alice@example"
            assert world.auth.refreshes == 0  # a refresh cannot widen a token: none was tried


async def test_a_scope_challenge_for_a_scope_asked_for_already_fails_the_call_instead_of_looping(
    tmp_path: Path,
) -> None:
    """When the authorization server does not grant the scope a step-up asked for, the upstream
    challenges again for it: asking once more would send the person through sign-in after
    sign-in. The gateway's own limit: a scope is asked for once; a challenge that adds nothing
    to what the last sign-in asked for fails the call, saying why."""
    async with world_of(tmp_path, modern_only=False, tool_scopes={"echo": ["write"]}) as world:
        world.auth.withheld = ("write",)
        host = Host(world, "2025-11-25")
        with anyio.fail_after(TIMEOUT):
            await sign_in(world, connect_url(await host.call("gh__whoami", {})), "alice@example")
            link = connect_url(await host.call("gh__echo", {"text": "hi"}))
            assert (await sign_in(world, link, "alice@example"))["scope"] == ["read write"]
            again = (await host.call("gh__echo", {"text": "hi"}))["result"]
            assert again["isError"] is True and "mcpgw/connect" not in (again.get("_meta") or {})
            assert "signing in again would not change that" in again["content"][0]["text"]
            assert text_of(await host.call("gh__whoami", {})) == "alice@example"


async def test_an_upstream_that_asks_for_more_after_every_sign_in_is_given_three_sign_ins_at_most(
    tmp_path: Path,
) -> None:
    """An upstream whose challenges name one scope more after each sign-in (each one new, so
    the check above never fires) would send the person through sign-in after sign-in. The
    gateway's own limit: three sign-ins in a row for one credential within 15 minutes (the
    first and two step-ups); the call after them fails, saying why, with no link. Before, every
    challenge brought another link."""
    ladder = {"echo": ["s1", "s2", "s3", "s4"]}
    async with world_of(tmp_path, modern_only=False, tool_scopes=ladder, escalating=True) as world:
        host = Host(world, "2025-11-25")
        with anyio.fail_after(TIMEOUT):
            asked = [await sign_in(world, connect_url(await host.call("gh__whoami", {})), "alice@example")]
            for _ in range(2):
                asked.append(
                    await sign_in(
                        world, connect_url(await host.call("gh__echo", {"text": "hi"})), "alice@example"
                    )
                )
            assert [a["scope"] for a in asked] == [["read"], ["read s1"], ["read s1 s2"]]
            again = (await host.call("gh__echo", {"text": "hi"}))["result"]
            assert again["isError"] is True and "mcpgw/connect" not in (again.get("_meta") or {})
            assert "3 sign-ins" in again["content"][0]["text"]
            assert text_of(await host.call("gh__whoami", {})) == "alice@example"  # the token still works
