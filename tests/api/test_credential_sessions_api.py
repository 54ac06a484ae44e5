"""`/api/mcp/sessions`: every refusal is the spec's BifrostError, with the status that says why."""

from __future__ import annotations

import uuid
from datetime import timedelta

import anyio
import httpx2
import pytest

from store import Binding, utc_now
from tests.api.conftest import TIMEOUT, new_tenant, spec_validator
from tests.harness import RunningGateway

ERROR = spec_validator("credential-sessions.openapi.yaml", "BifrostError")
LISTING = spec_validator("credential-sessions.openapi.yaml", "MCPSessionsListResponse")
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("method", "path", "who", "status", "code"),
    [
        ("GET", "", "nobody", 401, "unauthorized"),
        ("GET", "", "plain key", 401, "unauthorized"),
        ("GET", "?limit=0", "admin", 400, "invalid_limit"),
        ("GET", "?limit=201", "admin", 400, "invalid_limit"),
        ("GET", "?cursor=forged.cursor", "admin", 400, "invalid_cursor"),
        ("GET", "?kind=secret", "admin", 400, "invalid_filter"),
        ("POST", "", "admin", 405, "method_not_allowed"),
        ("POST", f"/{UNKNOWN}/reauth", "admin", 404, "not_found"),
        ("DELETE", f"/{UNKNOWN}", "admin", 404, "not_found"),
        ("DELETE", "/not-an-id", "admin", 404, "not_found"),
        ("GET", f"/{UNKNOWN}/reauth", "admin", 405, "method_not_allowed"),
    ],
)
async def test_refusals_use_the_spec_error_shape(
    keyed: RunningGateway, http: httpx2.AsyncClient, method: str, path: str, who: str, status: int, code: str
) -> None:
    headers = {}
    if who != "nobody":
        tenant = await new_tenant(keyed, admin=who == "admin")
        headers = tenant.headers
    with anyio.fail_after(TIMEOUT):
        response = await http.request(method, f"{keyed.base_url}/api/mcp/sessions{path}", headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    ERROR.validate(body)
    assert (body["status_code"], body["error"]["code"]) == (status, code)


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


async def test_reauth_of_a_row_whose_upstream_no_longer_takes_per_user_credentials_is_409(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    """A pending flow is not reconciled to `orphaned` like a credential, so it can outlive the
    upstream's per-user auth; re-authorising it is refused, not a 500."""
    admin = await new_tenant(keyed, "retired", admin=True)
    flow_id, now = str(uuid.uuid4()), utc_now()
    await keyed.gateway.store.credentials.create_flow(
        flow_id,
        Binding(admin.organisation_id, "demo", "vk", admin.api_key_id),  # demo takes no credentials
        "headers",
        secret={},
        oauth_client_id=None,
        now=now,
        expires_at=now + timedelta(minutes=15),
    )
    with anyio.fail_after(TIMEOUT):
        response = await http.post(
            f"{keyed.base_url}/api/mcp/sessions/{flow_id}/reauth", headers=admin.headers
        )
    assert response.status_code == 409, response.text
    body = response.json()
    ERROR.validate(body)
    assert (body["status_code"], body["error"]["code"]) == (409, "not_reauthorisable")
