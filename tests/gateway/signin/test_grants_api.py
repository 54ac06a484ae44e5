"""The admin API over host sign-ins: `GET /mcp/{organisationId}/grants` lists who signed in with
which client, `POST .../grants/{grantId}/revoke` ends one, effective on its tokens' very next
request. Admin keys only (403 for any other); another organisation's sign-ins answer 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.gateway.signin.browser import (
    TIMEOUT,
    SignInGateway,
    create_key,
    mcp_status,
    redeem,
    register,
    sign_in,
    signin_gateway,
)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[SignInGateway]:
    async with signin_gateway(tmp_path) as running:
        yield running


async def signed_in(gateway: SignInGateway, http: httpx2.AsyncClient, user_key: str) -> dict[str, Any]:
    """A host registers and a person approves it with `user_key`: the token response."""
    client = await register(http, gateway.base_url, client_name="Grants test host")
    code, verifier = await sign_in(http, gateway.base_url, client.client_id, user_key)
    tokens = await redeem(http, gateway.base_url, client, code, verifier)
    assert tokens.status_code == 200, tokens.text
    answer: dict[str, Any] = tokens.json()
    return answer


async def test_an_admin_lists_sign_ins_and_a_revoked_one_stops_working_at_once(
    gateway: SignInGateway,
) -> None:
    store = gateway.running.gateway.store
    organisation = await store.ensure_organisation("default")
    admin = {"x-api-key": await create_key(gateway, "root", admin=True)}
    grants_url = f"{gateway.base_url}/mcp/{organisation.id}/grants"
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            tokens = await signed_in(gateway, http, await create_key(gateway, "ada"))
            working = await mcp_status(http, gateway, tokens["access_token"])
            listed = await http.get(grants_url, headers=admin)
            [row] = listed.json()["data"]
            revoked = await http.post(f"{grants_url}/{row['grantId']}/revoke", headers=admin)
            refused = await mcp_status(http, gateway, tokens["access_token"])
            again = await http.post(f"{grants_url}/{row['grantId']}/revoke", headers=admin)
    assert working == 200 and listed.status_code == 200, listed.text
    assert (row["userId"], row["clientName"], row["resource"], row["revokedAt"]) == (
        "ada",
        "Grants test host",
        gateway.url,
        None,
    )
    assert tokens["access_token"] not in listed.text and tokens["refresh_token"] not in listed.text
    assert revoked.status_code == 200 and revoked.json()["revokedReason"] == "revoked"
    assert refused == 401
    assert again.status_code == 200 and again.json()["revokedAt"] == revoked.json()["revokedAt"]


async def test_sign_ins_are_an_admins_business_and_another_organisations_are_not_found(
    gateway: SignInGateway,
) -> None:
    store = gateway.running.gateway.store
    organisation = await store.ensure_organisation("default")
    other = await store.ensure_organisation("elsewhere")
    outsider = {"x-api-key": (await store.create_api_key(other.id, is_admin=True)).secret}
    plain = {"x-api-key": await create_key(gateway, "bo")}
    grants_url = f"{gateway.base_url}/mcp/{organisation.id}/grants"
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        with anyio.fail_after(TIMEOUT):
            tokens = await signed_in(gateway, http, await create_key(gateway, "ada"))
            [grant] = await store.signin.grants(organisation.id)
            not_admin = await http.get(grants_url, headers=plain)
            foreign_list = await http.get(grants_url, headers=outsider)
            foreign_revoke = await http.post(
                f"{gateway.base_url}/mcp/{other.id}/grants/{grant.id}/revoke", headers=outsider
            )
            still = await mcp_status(http, gateway, tokens["access_token"])
    assert not_admin.status_code == 403 and not_admin.json()["title"] == "Auth.Forbidden"
    assert foreign_list.status_code == 404 and foreign_list.json()["title"] == "NotFound"
    assert foreign_revoke.status_code == 404 and foreign_revoke.json()["title"] == "Grants.GrantNotFound"
    assert still == 200
