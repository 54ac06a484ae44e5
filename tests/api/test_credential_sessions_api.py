"""`/api/mcp/sessions`: tenancy and paging (its refusals are pinned in `test_errors.py`)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import anyio
import httpx2

from store import Binding, utc_now
from tests.api.conftest import TIMEOUT, new_tenant, spec_validator
from tests.harness import RunningGateway

LISTING = spec_validator("credential-sessions.openapi.yaml", "MCPSessionsListResponse")


async def test_an_admin_of_another_organisation_sees_nothing(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    admin = await new_tenant(keyed, "elsewhere", admin=True)
    with anyio.fail_after(TIMEOUT):
        response = await http.get(f"{keyed.base_url}/api/mcp/sessions", headers=admin.headers)
    assert response.status_code == 200
    LISTING.validate(response.json())
    assert response.json() == {"sessions": [], "next_cursor": None}


async def test_rows_page_newest_first_with_an_opaque_cursor(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    admin = await new_tenant(keyed, "paging", admin=True)
    store = keyed.gateway.store
    now = utc_now()
    for i in range(5):
        binding = Binding(admin.organisation_id, "demo", "vk", f"key-{i}")
        created, expires = now + timedelta(milliseconds=i), now + timedelta(minutes=15)
        await store.credentials.create_flow(
            str(uuid.uuid4()),
            binding,
            "headers",
            secret={},
            oauth_client_id=None,
            now=created,
            expires_at=expires,
        )
    seen: list[str] = []
    cursor: str | None = None
    with anyio.fail_after(TIMEOUT):
        for _ in range(3):
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (
                await http.get(f"{keyed.base_url}/api/mcp/sessions", params=params, headers=admin.headers)
            ).json()
            LISTING.validate(page)
            seen += [row["virtual_key"]["id"] for row in page["sessions"]]
            cursor = page["next_cursor"]
        other = await new_tenant(keyed, "paging-other", admin=True)
        stolen = await http.get(
            f"{keyed.base_url}/api/mcp/sessions", params={"cursor": cursor or "x"}, headers=other.headers
        )
    assert seen == [f"key-{i}" for i in reversed(range(5))] and cursor is None
    assert stolen.status_code == 400  # a cursor works only for the query that minted it
