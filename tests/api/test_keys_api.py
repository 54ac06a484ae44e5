"""The admin API over API keys: `GET /mcp/{organisationId}/keys` lists an organisation's keys,
`POST /mcp/{organisationId}/keys/{apiKeyId}/revoke` revokes one, effective on the key's very next
request. Admin keys only (403 for any other key); another organisation's keys answer 404."""

from __future__ import annotations

import anyio
import httpx2

from tests.api.conftest import TIMEOUT, McpClient, Tenant, new_tenant
from tests.api.test_sessions_api import assert_problem
from tests.harness import RunningGateway


async def test_an_admin_lists_its_organisations_keys_and_never_a_secret(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    admin = await new_tenant(keyed, "keys-listed", admin=True)
    store = keyed.gateway.store
    bound = await store.create_api_key(admin.organisation_id, user_id="alice", tools_deny=["demo__wait"])
    other = await new_tenant(keyed, "keys-listed-elsewhere")
    with anyio.fail_after(TIMEOUT):
        response = await http.get(f"{keyed.base_url}/mcp/{admin.organisation_id}/keys", headers=admin.headers)
    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    assert [row["apiKeyId"] for row in rows] == [admin.api_key_id, bound.key.id]  # oldest first
    alice = rows[1]
    assert (alice["userId"], alice["admin"], alice["toolsDeny"], alice["revokedAt"]) == (
        "alice",
        False,
        ["demo__wait"],
        None,
    )
    assert alice["prefix"] == bound.key.prefix and alice["createdAt"]
    assert rows[0]["admin"] is True
    assert bound.secret not in response.text and admin.key not in response.text
    assert other.api_key_id not in response.text


async def test_a_key_revoked_over_the_api_is_refused_on_its_very_next_request(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    admin = await new_tenant(keyed, "keys-revoked", admin=True)
    created = await keyed.gateway.store.create_api_key(admin.organisation_id)
    client = McpClient(http, keyed.url, created.secret)
    with anyio.fail_after(TIMEOUT):
        session = await client.open()  # the gateway now holds the key in memory
        await client.call(session, "demo__echo", {"text": "before"})
        keys = f"{keyed.base_url}/mcp/{admin.organisation_id}/keys"
        revoked = await http.post(f"{keys}/{created.key.id}/revoke", headers=admin.headers)
        refused = await http.post(
            keyed.url,
            json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
            headers={
                "accept": "application/json, text/event-stream",
                "x-api-key": created.secret,
                "mcp-session-id": session,
            },
        )
        listed = await http.get(keys, headers=admin.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["apiKeyId"] == created.key.id and revoked.json()["revokedAt"]
    assert refused.status_code == 401
    [row] = [row for row in listed.json()["data"] if row["apiKeyId"] == created.key.id]
    assert row["revokedAt"] == revoked.json()["revokedAt"]


async def test_another_organisations_keys_answer_404_and_stay_usable(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    theirs = await new_tenant(keyed, "keys-theirs", admin=True)
    mine = await new_tenant(keyed, "keys-mine", admin=True)
    base = keyed.base_url
    with anyio.fail_after(TIMEOUT):
        listing = await http.get(f"{base}/mcp/{theirs.organisation_id}/keys", headers=mine.headers)
        in_their_path = await http.post(
            f"{base}/mcp/{theirs.organisation_id}/keys/{theirs.api_key_id}/revoke", headers=mine.headers
        )
        in_my_path = await http.post(
            f"{base}/mcp/{mine.organisation_id}/keys/{theirs.api_key_id}/revoke", headers=mine.headers
        )
        mine_keys = f"{base}/mcp/{mine.organisation_id}/keys"
        unknown = await http.post(f"{mine_keys}/not-a-key/revoke", headers=mine.headers)
        still = await http.get(f"{base}/mcp/{theirs.organisation_id}/keys", headers=theirs.headers)
    assert_problem(listing, 404, "NotFound")
    assert_problem(in_their_path, 404, "NotFound")
    assert_problem(in_my_path, 404, "Keys.KeyNotFound")
    assert_problem(unknown, 404, "Keys.KeyNotFound")
    assert still.status_code == 200
    assert [row["revokedAt"] for row in still.json()["data"]] == [None]


async def test_a_key_that_is_not_an_admins_gets_403_on_admin_routes(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    """Authenticated, not allowed: 403, where an unknown key gets 401."""
    plain: Tenant = await new_tenant(keyed, "keys-plain")
    base, org = keyed.base_url, plain.organisation_id
    with anyio.fail_after(TIMEOUT):
        listing = await http.get(f"{base}/mcp/{org}/keys", headers=plain.headers)
        revoke = await http.post(f"{base}/mcp/{org}/keys/{plain.api_key_id}/revoke", headers=plain.headers)
        credentials = await http.get(f"{base}/api/mcp/sessions", headers=plain.headers)
        unknown = await http.get(f"{base}/mcp/{org}/keys", headers={"x-api-key": "mgw_unknown"})
    assert_problem(listing, 403, "Auth.Forbidden")
    assert_problem(revoke, 403, "Auth.Forbidden")
    assert credentials.status_code == 403, credentials.text
    assert credentials.json()["error"]["code"] == "forbidden"
    assert_problem(unknown, 401, "Auth.Unauthorized")
    assert "www-authenticate" not in listing.headers  # nothing to send differently: it is the key
