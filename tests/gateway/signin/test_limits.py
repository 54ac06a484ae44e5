"""Issue 23, defects 2, 4 and 5: what a stranger sends to the authorization server is bounded
before anything is kept; pending authorizations live in the store, expire by time and are
bounded per address; registration metadata is capped and answered with the scope granted; a
token request cannot change its resource; a loopback redirect URI must match but for its port;
a resource names an MCP URL of an organisation that exists, once normalised."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest

from store import utc_now
from tests.gateway.signin.browser import (
    REDIRECT_URI,
    TIMEOUT,
    Registered,
    SignInGateway,
    authorize_params,
    create_key,
    pkce,
    redeem,
    register,
    sign_in,
    signin_gateway,
)

_HIDDEN = re.compile(r'<input type="hidden" name="(request|csrf)" value="([^"]+)">')


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[SignInGateway]:
    async with signin_gateway(tmp_path, "  pending_per_address: 5\n") as running:
        yield running


def _answer(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


# -- defect 2: bounded fields, pending authorizations in the store ---------------------------------

FIELDS = [
    pytest.param("state", "s" * 1025, id="state-over-1KiB"),
    pytest.param("scope", "mcp " * 300, id="scope"),
    pytest.param("resource", "http://x/" + "r" * 3000, id="resource"),
    pytest.param("redirect_uri", REDIRECT_URI + "?" + "q" * 3000, id="redirect_uri"),
    pytest.param("code_challenge", "c" * 3000, id="code_challenge"),
    pytest.param("client_id", "https://x.example/" + "c" * 3000, id="client_id"),
]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(("field", "value"), FIELDS)
async def test_an_oversized_authorization_field_is_refused_as_invalid_request_and_nothing_is_parked(
    gateway: SignInGateway, method: str, field: str, value: str
) -> None:
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url)
            params = {**authorize_params(client.client_id, pkce()[1]), field: value}
            url = f"{gateway.base_url}/signin/authorize"
            answer = await (http.get(url, params=params) if method == "GET" else http.post(url, data=params))
    assert answer.status_code == 400, answer.text
    assert "location" not in answer.headers  # never echoed back to the client with the state
    assert answer.json()["error"] == "invalid_request"
    assert field in answer.json()["error_description"]


async def test_a_state_of_over_a_mebibyte_gets_a_clear_400_and_at_most_one_log_line(
    gateway: SignInGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url)
            caplog.clear()
            params = {**authorize_params(client.client_id, pkce()[1]), "state": "s" * (1024 * 1024 + 10)}
            answer = await http.post(f"{gateway.base_url}/signin/authorize", data=params)
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"] == "invalid_request"
    ours = [r for r in caplog.records if r.name.split(".")[0] in ("gateway", "mcp", "starlette")]
    assert len(ours) <= 1, [r.getMessage()[:200] for r in ours]
    assert not [r for r in ours if r.exc_info], "a traceback was logged"


async def test_a_pending_authorization_is_kept_in_the_store_and_expires_with_its_consent_time(
    gateway: SignInGateway,
) -> None:
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url)
            authorize = await http.get(
                f"{gateway.base_url}/signin/authorize", params=authorize_params(client.client_id, pkce()[1])
            )
    request_id = parse_qs(urlsplit(authorize.headers["location"]).query)["request"][0]
    signin = gateway.running.gateway.store.signin
    now = utc_now()
    kept = await signin.pending_authorization(request_id, now)
    assert kept is not None and kept.client_id == client.client_id
    ttl = gateway.running.gateway.config.host_sign_in.consent_ttl_s
    assert await signin.pending_authorization(request_id, now + timedelta(seconds=ttl + 1)) is None
    # Pruning forgets it once it has expired (it is no longer there for anyone).
    assert await signin.prune(now + timedelta(seconds=ttl + 1), now - timedelta(days=365)) >= 1
    assert await signin.pending_authorization(request_id, now) is None


async def test_pending_authorizations_are_bounded_per_address_and_a_normal_sign_in_goes_on_once_answered(
    gateway: SignInGateway,
) -> None:
    key = await create_key(gateway, "ada")
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url)
            answers = [
                await http.get(
                    f"{gateway.base_url}/signin/authorize",
                    params=authorize_params(client.client_id, pkce()[1]),
                )
                for _ in range(6)
            ]
            parked = [a.headers["location"] for a in answers[:5]]
            assert all("/signin/consent?request=" in location for location in parked)
            refused = _answer(answers[5].headers["location"])
            assert answers[5].headers["location"].startswith(REDIRECT_URI + "?")
            assert refused["error"] == "temporarily_unavailable" and refused["state"] == "the-state"
            # Answering one (deny) frees its place: the next sign-in from here goes through.
            page = await http.get(parked[0])
            form = dict(_HIDDEN.findall(page.text))
            denied = await http.post(f"{gateway.base_url}/signin/consent", data={**form, "decision": "deny"})
            assert _answer(denied.headers["location"])["error"] == "access_denied"
            code, verifier = await sign_in(http, gateway.base_url, client.client_id, key)
            tokens = await redeem(http, gateway.base_url, client, code, verifier)
    assert tokens.status_code == 200, tokens.text


async def test_a_consent_answered_twice_at_once_issues_one_code(gateway: SignInGateway) -> None:
    key = await create_key(gateway, "ada")
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url)
            authorize = await http.get(
                f"{gateway.base_url}/signin/authorize", params=authorize_params(client.client_id, pkce()[1])
            )
            page = await http.get(authorize.headers["location"])
            form = {**dict(_HIDDEN.findall(page.text)), "decision": "approve", "api_key": key}
            answers: list[httpx2.Response] = []

            async def approve() -> None:
                answers.append(await http.post(f"{gateway.base_url}/signin/consent", data=form))

            async with anyio.create_task_group() as tg:
                tg.start_soon(approve)
                tg.start_soon(approve)
    codes = [_answer(a.headers["location"]).get("code") for a in answers if a.status_code == 303]
    assert len([c for c in codes if c]) == 1, [a.status_code for a in answers]


# -- defect 4: registration metadata ---------------------------------------------------------------

TOO_MUCH = [
    pytest.param({"contacts": ["a" * 1_000_000]}, id="1MB-contact"),
    pytest.param({"contacts": [f"c{i}@example.com" for i in range(200)]}, id="200-contacts"),
    pytest.param({"client_uri": "https://x.example/" + "u" * 3000}, id="client_uri"),
    pytest.param({"logo_uri": "https://x.example/" + "u" * 3000}, id="logo_uri"),
    pytest.param({"scope": "s" * 5000}, id="scope"),
    pytest.param({"jwks": {"keys": [{"k": "x" * 20000}]}}, id="document-over-16KiB"),
    pytest.param({"extra_field": "x" * 20000}, id="unknown-field-over-16KiB"),
]


@pytest.mark.parametrize("metadata", TOO_MUCH)
async def test_an_oversized_registration_is_refused_and_nothing_is_kept(
    gateway: SignInGateway, metadata: dict[str, object]
) -> None:
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            answer = await http.post(
                f"{gateway.base_url}/signin/register", json={"redirect_uris": [REDIRECT_URI], **metadata}
            )
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"] == "invalid_client_metadata"
    database = gateway.running.gateway.config.database
    files = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]
    assert sum(p.stat().st_size for p in files) < 1_000_000


async def test_a_registration_is_answered_with_the_scope_granted_not_the_one_asked(
    gateway: SignInGateway,
) -> None:
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            answer = await http.post(
                f"{gateway.base_url}/signin/register",
                json={"redirect_uris": [REDIRECT_URI], "scope": "admin admin offline_access"},
            )
    assert answer.status_code == 201, answer.text
    assert answer.json()["scope"] == "mcp"
    kept = await gateway.running.gateway.store.signin.client(answer.json()["client_id"])
    assert kept is not None and kept.metadata["scope"] == "mcp"


# -- defect 5 --------------------------------------------------------------------------------------


async def _tokens_request(
    http: httpx2.AsyncClient, gateway: SignInGateway, client: Registered, data: dict[str, str]
) -> httpx2.Response:
    body = {"client_id": client.client_id, "client_secret": client.client_secret or "", **data}
    return await http.post(f"{gateway.base_url}/signin/token", data=body)


async def test_a_token_request_naming_another_resource_than_its_code_or_grant_is_invalid_target(
    gateway: SignInGateway,
) -> None:
    key = await create_key(gateway, "ada")
    org = await gateway.running.gateway.store.ensure_organisation("default")
    other = f"{gateway.url}/{org.id}"
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url)
            code, verifier = await sign_in(http, gateway.base_url, client.client_id, key)  # for /mcp
            swapped = await _tokens_request(
                http,
                gateway,
                client,
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "code_verifier": verifier,
                    "redirect_uri": REDIRECT_URI,
                    "resource": other,
                },
            )
            code, verifier = await sign_in(http, gateway.base_url, client.client_id, key)
            same = await _tokens_request(
                http,
                gateway,
                client,
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "code_verifier": verifier,
                    "redirect_uri": REDIRECT_URI,
                    "resource": gateway.url + "/",  # the same resource, as a host may spell it
                },
            )
            assert same.status_code == 200, same.text
            refresh = {"grant_type": "refresh_token", "refresh_token": same.json()["refresh_token"]}
            swapped_refresh = await _tokens_request(http, gateway, client, {**refresh, "resource": other})
            refreshed = await _tokens_request(http, gateway, client, refresh)  # not spent by the refusal
    assert swapped.status_code == 400 and swapped.json()["error"] == "invalid_target", swapped.text
    assert swapped_refresh.status_code == 400 and swapped_refresh.json()["error"] == "invalid_target"
    assert refreshed.status_code == 200, refreshed.text


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:9/callback#fragment",
        "http://127.0.0.1:4444/callback#",
        "http://attacker@127.0.0.1:9/callback",
        "http://user:pass@127.0.0.1:4444/callback",
        "https://127.0.0.1:9/callback",
    ],
)
async def test_a_loopback_redirect_uri_differing_in_more_than_its_port_is_refused_at_authorize(
    gateway: SignInGateway, redirect_uri: str
) -> None:
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url)
            params = authorize_params(client.client_id, pkce()[1], redirect_uri=redirect_uri)
            answer = await http.get(f"{gateway.base_url}/signin/authorize", params=params)
            other_port = authorize_params(
                client.client_id, pkce()[1], redirect_uri="http://127.0.0.1:4444/callback"
            )
            fine = await http.get(f"{gateway.base_url}/signin/authorize", params=other_port)
    assert answer.status_code == 400 and "location" not in answer.headers, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert fine.status_code == 302 and "/signin/consent?" in fine.headers["location"]


@pytest.mark.parametrize(
    "path",
    [
        "/mcp/%2e%2e",
        "/mcp/%2E%2E/",
        "/mcp/x/%2e%2e/%2e%2e",
        "/mcp/no-such-organisation",
        "/mcp/%00",
        "//x/mcp",
    ],
)
async def test_a_resource_is_normalised_and_an_unknown_organisation_refused_before_any_page(
    gateway: SignInGateway, path: str
) -> None:
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url)
            params = authorize_params(client.client_id, pkce()[1], resource=gateway.base_url + path)
            answer = await http.get(f"{gateway.base_url}/signin/authorize", params=params)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI + "?"), location  # to the client, not to a consent page
    assert _answer(location)["error"] == "invalid_target"


@pytest.mark.parametrize(
    ("path", "means"),
    [("/mcp/{encoded}", "/mcp/{org}"), ("/mcp/%2e%2e/mcp", "/mcp"), ("/mcp/./x/..", "/mcp")],
)
async def test_another_spelling_of_an_mcp_url_is_that_url_on_the_consent_page(
    gateway: SignInGateway, path: str, means: str
) -> None:
    org = await gateway.running.gateway.store.ensure_organisation("default")
    encoded = "".join(f"%{ord(c):02x}" if c == "-" else c for c in org.id)
    async with httpx2.AsyncClient(follow_redirects=False) as http:
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url)
            resource = gateway.base_url + path.format(encoded=encoded)
            params = authorize_params(client.client_id, pkce()[1], resource=resource)
            answer = await http.get(f"{gateway.base_url}/signin/authorize", params=params)
            page = await http.get(answer.headers["location"])
    assert page.status_code == 200, page.text
    assert f"<code>{gateway.base_url}{means.format(org=org.id)}</code>" in page.text
