"""An upstream that moves to another authorization server (SEP-2352): its protected resource
metadata names the new one, and it refuses the old one's tokens. The gateway discovers again
when the upstream refuses a token, registers with the new server (RFC 7591) and sends the
person there; it never shows the new server the old one's client id or refresh token. Before,
discovery was cached for an hour: the connect link went to the old server, whose tokens the
upstream refused.

Against two real authorization servers and a real protected upstream (`tests.oauth`); the
browser is a plain HTTP client whose cookie jar is the person's."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2

from tests.connecting import confirm, connect_url, people, serve_gateway_at_own_url, text_of
from tests.oauth import consent, running_auth_server, serve_migrating_upstream

TIMEOUT = 30.0


async def sign_in(http: httpx2.AsyncClient, url: str, user: str) -> str:
    """Open a connect link, confirm, consent as `user`, land on the callback; the URL of the
    authorization request the gateway sent the browser to."""
    to_server = await confirm(http, url)
    assert to_server.status_code == 303, to_server.text
    authorize = to_server.headers["location"]
    to_consent = await http.get(authorize, follow_redirects=False)
    assert to_consent.status_code == 302, to_consent.text
    back = await consent(http, to_consent.headers["location"], user)
    assert back.status_code == 302
    callback = await http.get(back.headers["location"], follow_redirects=False)
    assert callback.status_code == 200, callback.text
    return authorize


async def test_a_new_authorization_server_is_discovered_and_registered_with_after_a_refusal(
    tmp_path: Path,
) -> None:
    async with (
        running_auth_server() as first,
        running_auth_server() as second,
        serve_migrating_upstream(first, second) as upstream,
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
        async with serve_gateway_at_own_url(tmp_path, body) as gateway:
            alice = (await people(gateway, http)).alice
            with anyio.fail_after(TIMEOUT):
                session = await alice.open()
                went = await sign_in(
                    http, connect_url(await alice.call(session, "gh__whoami", {})), "alice@example"
                )
                assert went.startswith(f"{first.issuer}/")
                assert text_of(await alice.call(session, "gh__whoami", {})) == "alice@example"

                upstream.migrate()
                refused = await alice.call(session, "gh__whoami", {})
                went = await sign_in(http, connect_url(refused), "alice@example")
                assert went.startswith(f"{second.issuer}/"), went
                assert text_of(await alice.call(session, "gh__whoami", {})) == "alice@example"
    assert (first.registrations, second.registrations) == (1, 1)
    assert not set(first.clients) & set(second.clients)
    assert not set(first.issued) & {token.token for token in second.access_tokens.values()}
    assert second.refresh_requests == 0  # the first server's refresh token was not tried there
