"""Per-user OAuth toward an upstream with the gateway's replicas behind one public URL: a
connect flow spread over three replicas, one refresh per credential however many replicas race
for it, and a credential deleted through one replica no longer sent by another. The real
authorization server of tests/oauth.py (rotating refresh tokens) and its protected upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from gateway.credentials.broker import CREDENTIAL_CHANGED
from store import open_postgres_store
from tests.api.conftest import McpClient
from tests.connecting import connect_url, form_of, text_of
from tests.gateway.replicas.steering import Steer, shared_public_url
from tests.harness import RunningGateway
from tests.oauth import AuthServer, ProtectedUpstream, consent, running_auth_server, serve_protected_upstream
from tests.replicas import replica_configs, serve_replicas

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0
WITHOUT_A_SECOND_REFRESH_S = 2.0


@dataclass
class Replicas:
    replicas: list[RunningGateway]
    auth: AuthServer
    upstream: ProtectedUpstream
    browser: httpx2.AsyncClient  # a person's browser, in front of the replicas' public URL
    steer: Steer
    http: httpx2.AsyncClient  # hosts' and admins' client, to one replica's own URL at a time
    alice_key: str
    admin: dict[str, str]  # an admin key bound to alice

    def alice(self, replica: int) -> McpClient:
        return McpClient(self.http, self.replicas[replica].url, self.alice_key)

    def api(self, replica: int) -> str:
        return f"{self.replicas[replica].base_url}/api/mcp/sessions"

    async def credentials(self, replica: int) -> list[dict[str, Any]]:
        listed = await self.http.get(self.api(replica), headers=self.admin)
        assert listed.status_code == 200, listed.text
        rows: list[dict[str, Any]] = listed.json()["sessions"]
        return rows


def gh_yaml(url: str) -> str:
    return f"""
  - name: gh
    transport: http
    url: {url}
    auth: {{kind: oauth, identity: user, scopes: [read]}}"""


@asynccontextmanager
async def oauth_replicas(tmp_path: Path, postgres_url: str, count: int) -> AsyncIterator[Replicas]:
    held, public_url = shared_public_url()
    with held:
        async with running_auth_server() as auth, serve_protected_upstream(auth) as upstream:
            configs = replica_configs(
                tmp_path,
                postgres_url,
                gh_yaml(upstream.url),
                replicas=count,
                extra_yaml=f"public_url: {public_url}\nauth: {{required: true}}\n",
            )
            async with open_postgres_store(postgres_url) as store:
                org = await store.ensure_organisation("default")
                alice = await store.create_api_key(org.id, user_id="alice")
                admin = await store.create_api_key(org.id, is_admin=True, user_id="alice")
            async with serve_replicas(configs) as replicas:
                steer = Steer(public_url, [r.base_url for r in replicas])
                async with (
                    httpx2.AsyncClient(transport=steer, timeout=TIMEOUT) as browser,
                    httpx2.AsyncClient(timeout=TIMEOUT) as http,
                ):
                    yield Replicas(
                        replicas, auth, upstream, browser, steer, http, alice.secret,
                        {"authorization": f"Bearer {admin.secret}"},
                    )  # fmt: skip


async def connect(world: Replicas, url: str, *, page: int, confirm: int, callback: int) -> httpx2.Response:
    """Open the connect link on replica `page`, confirm on `confirm`, consent at the
    authorization server as alice, and come back to the callback on replica `callback`."""
    world.steer.to = page
    shown = await world.browser.get(url, follow_redirects=False)
    assert shown.status_code == 200, shown.text
    world.steer.to = confirm
    form = form_of(shown)
    action = httpx2.URL(url).join(httpx2.URL(form.action).raw_path.decode())  # at the public URL
    to_server = await world.browser.post(action, data=form.hidden, follow_redirects=False)
    assert to_server.status_code == 303, to_server.text
    to_consent = await world.browser.get(to_server.headers["location"], follow_redirects=False)
    assert to_consent.status_code == 302, to_consent.text
    back = await consent(world.browser, to_consent.headers["location"], "alice@example")
    assert back.status_code == 302, back.text
    world.steer.to = callback
    return await world.browser.get(back.headers["location"], follow_redirects=False)


async def test_a_connect_link_made_on_one_replica_is_confirmed_on_another_and_completed_on_a_third(
    tmp_path: Path, postgres_url: str
) -> None:
    async with oauth_replicas(tmp_path, postgres_url, 3) as world:
        with anyio.fail_after(TIMEOUT):
            on_a = world.alice(0)
            url = connect_url(await on_a.call(await on_a.open(), "gh__whoami", {}))
            done = await connect(world, url, page=0, confirm=1, callback=2)
            assert done.status_code == 200, done.text
            assert world.steer.sent == [0, 1, 2]
            for replica in range(3):
                alice = world.alice(replica)
                assert text_of(await alice.call(await alice.open(), "gh__whoami", {})) == "alice@example"
            replay = await world.browser.get(str(done.request.url), follow_redirects=False)
            assert replay.status_code == 400  # the state was claimed once, whichever replica


async def test_two_replicas_racing_to_refresh_one_credential_refresh_it_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """Both replicas hold alice's access token; it expires at the server. Replica A's refresh is
    held at the authorization server while replica B finds the token refused too: B must wait for
    A's refresh and use its tokens. Refresh tokens rotate, so a second refresh with the one A
    spent would be refused, and the credential would wrongly need reauthorisation."""
    async with oauth_replicas(tmp_path, postgres_url, 2) as world:
        with anyio.fail_after(TIMEOUT):
            on_a, on_b = world.alice(0), world.alice(1)
            session_a = await on_a.open()
            url = connect_url(await on_a.call(session_a, "gh__whoami", {}))
            assert (await connect(world, url, page=0, confirm=0, callback=0)).status_code == 200
            session_b = await on_b.open()
            for client, session in ((on_a, session_a), (on_b, session_b)):
                assert text_of(await client.call(session, "gh__whoami", {})) == "alice@example"

            world.auth.expire_access_tokens()
            world.auth.hold_refreshes = held = anyio.Event()
            answers: dict[str, Any] = {}

            async def call(name: str, client: McpClient, session: str) -> None:
                answers[name] = await client.call(session, "gh__whoami", {})

            async with anyio.create_task_group() as group:
                group.start_soon(call, "a", on_a, session_a)
                await until(lambda: world.auth.refresh_requests == 1)
                group.start_soon(call, "b", on_b, session_b)
                # B gets its 401 and asks to refresh: it must not reach the server meanwhile.
                with anyio.move_on_after(WITHOUT_A_SECOND_REFRESH_S):
                    await until(lambda: world.auth.refresh_requests > 1)
                held.set()
        assert world.auth.refresh_requests == 1
        assert world.auth.refreshes == 1
        assert [text_of(answers[name]) for name in ("a", "b")] == ["alice@example"] * 2
        [row] = await world.credentials(1)
        assert row["status"] == "active"


async def test_a_credential_deleted_through_one_replica_is_not_sent_by_another(
    tmp_path: Path, postgres_url: str
) -> None:
    """Replica B has alice's headers in memory; she deletes the credential through replica A. Once
    B has heard of it (NOTIFY: a notice is asynchronous, so the test waits for B to hear it
    rather than race it), B's very next call for her asks her to connect again rather than call
    as her with what it had cached (for 30 s)."""
    async with oauth_replicas(tmp_path, postgres_url, 2) as world:
        with anyio.fail_after(TIMEOUT):
            on_a, on_b = world.alice(0), world.alice(1)
            url = connect_url(await on_a.call(await on_a.open(), "gh__whoami", {}))
            assert (await connect(world, url, page=0, confirm=0, callback=0)).status_code == 200
            session_b = await on_b.open()
            assert text_of(await on_b.call(session_b, "gh__whoami", {})) == "alice@example"
            [row] = await world.credentials(0)
            heard = anyio.Event()

            async def hear(payload: Mapping[str, Any]) -> None:
                heard.set()  # after the broker's own handler, subscribed before it

            world.replicas[1].gateway.store.coordination.subscribe(CREDENTIAL_CHANGED, hear)
            deleted = await world.http.delete(f"{world.api(0)}/{row['id']}", headers=world.admin)
            assert deleted.status_code == 204, deleted.text
            await heard.wait()
            assert connect_url(await on_b.call(session_b, "gh__whoami", {}))


async def test_a_connection_made_through_one_replica_changes_the_tools_listed_on_another(
    tmp_path: Path, postgres_url: str
) -> None:
    """Alice's session on B lists the upstream's tools before she connects (only what a call
    needs to ask her to), and listens on its GET stream; she connects through A. B tells her
    host that the tools changed, and lists the upstream's own tools, as A does."""
    async with oauth_replicas(tmp_path, postgres_url, 2) as world:
        with anyio.fail_after(TIMEOUT):
            on_a, on_b = world.alice(0), world.alice(1)
            session_a, session_b = await on_a.open(), await on_b.open()
            before = await tool_names(on_b, session_b)
            url = connect_url(await on_a.call(session_a, "gh__whoami", {}))
            heard = anyio.Event()

            async def hear(payload: Mapping[str, Any]) -> None:
                heard.set()

            world.replicas[1].gateway.store.coordination.subscribe(CREDENTIAL_CHANGED, hear)
            stream_headers = {**on_b._headers(session_b), "accept": "text/event-stream"}
            async with world.http.stream("GET", on_b.url, headers=stream_headers) as stream:
                assert stream.status_code == 200
                assert (await connect(world, url, page=0, confirm=0, callback=0)).status_code == 200
                async for line in stream.aiter_lines():
                    if line.startswith("data:") and "notifications/tools/list_changed" in line:
                        break
            await heard.wait()
            on_a_now = await tool_names(on_a, session_a)
            assert {"gh__whoami", "gh__echo"} <= on_a_now and on_a_now != before
            assert await tool_names(on_b, session_b) == on_a_now


async def tool_names(client: McpClient, session: str) -> set[str]:
    listed = await client.request(session, "tools/list", {})
    return {tool["name"] for tool in listed["result"]["tools"]}


async def until(predicate: Any) -> None:
    """Poll what the authorization server counts: it has no event a test can wait on."""
    while not predicate():  # noqa: ASYNC110
        await anyio.sleep(0.01)
