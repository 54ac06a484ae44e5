"""The session/invocation listing API against real MCP traffic: contract, paging, tenancy, errors."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx2
import pytest

from tests.api.conftest import McpClient, Tenant, new_tenant, spec_validator
from tests.harness import RunningGateway

SESSIONS_SPEC = "sessions-list.openapi.yaml"
INVOCATIONS_SPEC = "session-invocations.openapi.yaml"
sessions_page = spec_validator(SESSIONS_SPEC, "PagedResponseOfMcpSessionSummaryResponse")
session_summary = spec_validator(SESSIONS_SPEC, "McpSessionSummaryResponse")
invocations_page = spec_validator(INVOCATIONS_SPEC, "PagedResponseOfMcpToolInvocationResponse")
invocation_item = spec_validator(INVOCATIONS_SPEC, "McpToolInvocationResponse")
problem_details = spec_validator(INVOCATIONS_SPEC, "ProblemDetails")


async def get(
    http: httpx2.AsyncClient, gateway: RunningGateway, path: str, tenant: Tenant, **query: Any
) -> Any:
    return await http.get(gateway.base_url + path, headers=tenant.headers, params=query)


async def record_id(
    http: httpx2.AsyncClient, gateway: RunningGateway, tenant: Tenant, mcp_session: str
) -> str:
    """The listing id of the session whose Mcp-Session-Id is `mcp_session`."""
    listed = await get(http, gateway, f"/mcp/{tenant.organisation_id}/sessions", tenant, Limit=200)
    for session in listed.json()["data"]:
        if session["mcpSessionId"] == mcp_session:
            return str(session["id"])
    raise AssertionError(f"session {mcp_session} not listed")


def assert_problem(response: httpx2.Response, status: int, title: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    problem_details.validate(body)
    assert (body["title"], body["status"]) == (title, status)
    assert body["detail"]


async def test_every_listing_response_matches_the_spec_schemas(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant = await new_tenant(keyed, "schemas")
    client = McpClient(http, keyed.url, tenant.key)
    mcp_session = await client.open()
    await client.call(mcp_session, "demo__echo", {"text": "one"})
    await client.call(mcp_session, "demo__fail", {"message": "two"})
    org = tenant.organisation_id

    listed = await get(http, keyed, f"/mcp/{org}/sessions", tenant)
    assert listed.status_code == 200
    sessions_page.validate(listed.json())
    session_id = await record_id(http, keyed, tenant, mcp_session)
    detail = await get(http, keyed, f"/mcp/{org}/sessions/{session_id}", tenant)
    assert detail.status_code == 200
    session_summary.validate(detail.json())
    for item in detail.json()["invocations"]:
        invocation_item.validate(item)
    invocations = await get(http, keyed, f"/mcp/{org}/sessions/{session_id}/invocations", tenant)
    assert invocations.status_code == 200
    invocations_page.validate(invocations.json())
    assert [i["toolName"] for i in invocations.json()["data"]] == ["demo__echo", "demo__fail"]
    assert detail.json()["invocations"] == invocations.json()["data"]


async def test_a_session_row_says_who_opened_it_and_counts_its_calls(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant = await new_tenant(keyed, "rows")
    client = McpClient(http, keyed.url, tenant.key)
    mcp_session = await client.open(name="Cursor", version="1.7", protocol="2025-06-18")
    for text in ("a", "b", "c"):
        await client.call(mcp_session, "demo__echo", {"text": text})
    await http.delete(keyed.url, headers={"x-api-key": tenant.key, "mcp-session-id": mcp_session})

    session_id = await record_id(http, keyed, tenant, mcp_session)
    session = (await get(http, keyed, f"/mcp/{tenant.organisation_id}/sessions/{session_id}", tenant)).json()
    assert session["apiKeyId"] == tenant.api_key_id
    assert (session["clientName"], session["clientVersion"]) == ("Cursor", "1.7")
    assert session["clientId"] == str(uuid.uuid5(uuid.UUID("0f0a3c1e-6d3b-5e8e-9a57-6d63706777c1"), "Cursor"))
    assert session["protocolVersion"] == "2025-06-18"
    assert session["callCount"] == 3
    assert session["lastCallAt"] >= session["startedAt"]
    assert session["endReason"] == "deleted" and session["endedAt"] is not None


async def test_stateless_requests_of_one_client_are_one_session(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant = await new_tenant(keyed, "stateless")
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "claude-ai", "version": "2026.11"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    headers = {"accept": "application/json, text/event-stream", "x-api-key": tenant.key}
    headers |= {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "demo__echo"}
    for n in range(2):
        call = {
            "jsonrpc": "2.0",
            "id": n,
            "method": "tools/call",
            "params": {"name": "demo__echo", "arguments": {"text": f"s{n}"}, "_meta": meta},
        }
        response = await http.post(keyed.url, json=call, headers=headers)
        assert response.status_code == 200, response.text

    listed = (await get(http, keyed, f"/mcp/{tenant.organisation_id}/sessions", tenant)).json()["data"]
    assert len(listed) == 1
    assert (listed[0]["clientName"], listed[0]["protocolVersion"]) == ("claude-ai", "2026-07-28")
    assert listed[0]["callCount"] == 2


async def test_a_thousand_invocations_page_forward_exactly_once_and_back_again(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant = await new_tenant(keyed, "paging")
    client = McpClient(http, keyed.url, tenant.key)
    mcp_session = await client.open()
    for n in range(1000):
        await client.call(mcp_session, "demo__echo", {"text": f"call-{n:04d}"})
    session_id = await record_id(http, keyed, tenant, mcp_session)
    path = f"/mcp/{tenant.organisation_id}/sessions/{session_id}/invocations"

    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"Limit": 70} | ({"Cursor": cursor} if cursor else {})
        page = (await get(http, keyed, path, tenant, **query)).json()
        invocations_page.validate(page)
        pages.append(page)
        cursor = page["meta"]["cursors"]["next"]
        if cursor is None:
            break
    texts = [_text_of(item) for page in pages for item in page["data"]]
    assert texts == [f"call-{n:04d}" for n in range(1000)]
    assert len(pages) == 15 and pages[0]["meta"]["cursors"]["previous"] is None
    assert all(p["meta"]["cursors"]["previous"] is not None for p in pages[1:])

    # Walking back with `previous` from the last page returns the same pages, newest first.
    back = pages[-1]
    for expected in reversed(pages[:-1]):
        back = (
            await get(http, keyed, path, tenant, Limit=70, Cursor=back["meta"]["cursors"]["previous"])
        ).json()
        assert [_text_of(i) for i in back["data"]] == [_text_of(i) for i in expected["data"]]
    assert back["meta"]["cursors"]["previous"] is None

    # `current` re-reads the page it belongs to.
    again = (
        await get(http, keyed, path, tenant, Limit=70, Cursor=pages[3]["meta"]["cursors"]["current"])
    ).json()
    assert again["data"] == pages[3]["data"]


def _text_of(item: dict[str, Any]) -> str:
    text: str = json.loads(item["argumentsJson"])["text"]
    return text


async def test_sessions_are_listed_most_recent_activity_first_across_pages(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant = await new_tenant(keyed, "activity")
    client = McpClient(http, keyed.url, tenant.key)
    opened = [await client.open(name=f"host-{n}") for n in range(5)]
    for mcp_session in [opened[2], opened[0], opened[4]]:  # each call makes its session the newest
        await client.call(mcp_session, "demo__echo", {"text": "x"})
    org = tenant.organisation_id

    seen: list[str] = []
    cursor = None
    while True:
        page = (
            await get(
                http, keyed, f"/mcp/{org}/sessions", tenant, Limit=2, **({"Cursor": cursor} if cursor else {})
            )
        ).json()
        seen += [s["clientName"] for s in page["data"]]
        cursor = page["meta"]["cursors"]["next"]
        if cursor is None:
            break
    assert seen[:3] == ["host-4", "host-0", "host-2"]
    assert sorted(seen[3:]) == ["host-1", "host-3"]


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "201", "1.5", "", "9999999999999"])
async def test_a_bad_limit_is_a_400_problem(
    keyed: RunningGateway, http: httpx2.AsyncClient, limit: str
) -> None:
    tenant = await new_tenant(keyed, "limits")
    response = await get(http, keyed, f"/mcp/{tenant.organisation_id}/sessions", tenant, Limit=limit)
    assert_problem(response, 400, "Pagination.InvalidLimit")


async def test_tampered_and_foreign_cursors_are_400_invalid_cursor(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant = await new_tenant(keyed, "cursors")
    client = McpClient(http, keyed.url, tenant.key)
    first, second = await client.open(), await client.open()
    for mcp_session in (first, second):
        for n in range(3):
            await client.call(mcp_session, "demo__echo", {"text": str(n)})
    org = tenant.organisation_id
    first_id = await record_id(http, keyed, tenant, first)
    second_id = await record_id(http, keyed, tenant, second)
    page = (await get(http, keyed, f"/mcp/{org}/sessions/{first_id}/invocations", tenant, Limit=1)).json()
    good = page["meta"]["cursors"]["next"]
    assert (
        await get(http, keyed, f"/mcp/{org}/sessions/{first_id}/invocations", tenant, Cursor=good)
    ).status_code == 200

    payload, tag = good.split(".")
    forged_payload = base64.urlsafe_b64encode(b"[1,0,0,0,0]").rstrip(b"=").decode()
    tampered = [
        f"{forged_payload}.{tag}",
        f"{payload}.{tag[:-2]}AA",
        good + "x",
        "not-a-cursor",
        "....",
        "%%%",
        "a" * 5000,
    ]
    for cursor in tampered:
        response = await get(
            http, keyed, f"/mcp/{org}/sessions/{first_id}/invocations", tenant, Cursor=cursor
        )
        assert_problem(response, 400, "Pagination.InvalidCursor")
    # Minted for another session's invocations, or for the sessions list: not valid here.
    foreign = await get(http, keyed, f"/mcp/{org}/sessions/{second_id}/invocations", tenant, Cursor=good)
    assert_problem(foreign, 400, "Pagination.InvalidCursor")
    sessions_cursor = (await get(http, keyed, f"/mcp/{org}/sessions", tenant, Limit=1)).json()["meta"][
        "cursors"
    ]["current"]
    crossed = await get(
        http, keyed, f"/mcp/{org}/sessions/{first_id}/invocations", tenant, Cursor=sessions_cursor
    )
    assert_problem(crossed, 400, "Pagination.InvalidCursor")
    # Minted for another API key of the same organisation.
    other = await new_tenant(keyed, "cursors", admin=True)
    by_admin = await get(http, keyed, f"/mcp/{org}/sessions/{first_id}/invocations", other, Cursor=good)
    assert_problem(by_admin, 400, "Pagination.InvalidCursor")


async def test_keys_see_only_their_own_sessions_admins_their_whole_organisation(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    alice, bob = await new_tenant(keyed, "tenancy-a"), await new_tenant(keyed, "tenancy-a")
    admin = await new_tenant(keyed, "tenancy-a", admin=True)
    mallory = await new_tenant(keyed, "tenancy-b", admin=True)
    alice_session = await McpClient(http, keyed.url, alice.key).open(name="alice-host")
    await McpClient(http, keyed.url, bob.key).open(name="bob-host")
    org = alice.organisation_id
    alice_id = await record_id(http, keyed, alice, alice_session)

    def names(response: httpx2.Response) -> list[str]:
        return [s["clientName"] for s in response.json()["data"]]

    assert names(await get(http, keyed, f"/mcp/{org}/sessions", alice)) == ["alice-host"]
    assert names(await get(http, keyed, f"/mcp/{org}/sessions", bob)) == ["bob-host"]
    assert sorted(names(await get(http, keyed, f"/mcp/{org}/sessions", admin))) == ["alice-host", "bob-host"]
    assert (await get(http, keyed, f"/mcp/{org}/sessions/{alice_id}", admin)).status_code == 200

    for path in (f"/mcp/{org}/sessions/{alice_id}", f"/mcp/{org}/sessions/{alice_id}/invocations"):
        assert_problem(await get(http, keyed, path, bob), 404, "Mcp.SessionNotFound")
        # Another organisation's admin, through its own organisation's URL: still not found.
        own = path.replace(org, mallory.organisation_id)
        assert_problem(await get(http, keyed, own, mallory), 404, "Mcp.SessionNotFound")
    # Another organisation's URL is not found either, whoever asks.
    assert_problem(await get(http, keyed, f"/mcp/{org}/sessions", mallory), 404, "NotFound")
    assert_problem(await get(http, keyed, f"/mcp/{org}/sessions/{alice_id}", mallory), 404, "NotFound")


# A fixed well-formed id no session has: pytest-xdist's workers must collect the same test ids.
_NO_SUCH_SESSION = "3f2a9c1e-7b4d-4e8a-9c61-0d5e2f8b7a34"


@pytest.mark.parametrize("session_id", ["not-a-uuid", _NO_SUCH_SESSION, "%20", "1" * 300])
async def test_an_unknown_session_is_404_session_not_found(
    keyed: RunningGateway, http: httpx2.AsyncClient, session_id: str
) -> None:
    tenant = await new_tenant(keyed, "unknown")
    for suffix in ("", "/invocations"):
        response = await get(
            http, keyed, f"/mcp/{tenant.organisation_id}/sessions/{session_id}{suffix}", tenant
        )
        assert_problem(response, 404, "Mcp.SessionNotFound")


async def test_a_missing_or_unknown_key_is_401(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    tenant = await new_tenant(keyed, "auth")
    url = f"{keyed.base_url}/mcp/{tenant.organisation_id}/sessions"
    missing = await http.get(url)
    assert_problem(missing, 401, "Auth.Unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_problem(await http.get(url, headers={"x-api-key": "mgw_unknown"}), 401, "Auth.Unauthorized")
    assert_problem(await http.get(url, headers={"authorization": "Basic eDp5"}), 401, "Auth.Unauthorized")


async def test_other_methods_are_a_405_problem(keyed: RunningGateway, http: httpx2.AsyncClient) -> None:
    tenant = await new_tenant(keyed, "methods")
    response = await http.post(
        f"{keyed.base_url}/mcp/{tenant.organisation_id}/sessions", headers=tenant.headers
    )
    assert_problem(response, 405, "MethodNotAllowed")
    assert response.headers["allow"] == "GET, HEAD"
