"""The api package's errors: one tree in `api/errors.py`, and every refusal of its two surfaces,
one row each: status, content type and error code.

The listing surface (`/mcp/{organisationId}/sessions…`, `/openapi.json`) answers RFC 9457
`application/problem+json` with the code in `title`; the credential surface (`/api/*`) answers
the spec's BifrostError with the code in `error.code`. A store that cannot answer (503) and a
bug (500) are the two refusals not here: only a fault produces them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import anyio
import httpx2
import pytest

from store import Binding, Store, generate_api_key, utc_now
from tests.api.conftest import TIMEOUT, Tenant, new_tenant, spec_validator
from tests.exception_trees import misplaced
from tests.harness import RunningGateway, serve_gateway, write_config

PROBLEM = spec_validator("session-invocations.openapi.yaml", "ProblemDetails")
BIFROST_ERROR = spec_validator("credential-sessions.openapi.yaml", "BifrostError")
UNKNOWN = "00000000-0000-4000-8000-000000000000"

Setup = Callable[[Store, Tenant], Awaitable[str]]
"""Puts a row in the store for the caller's organisation; returns its id (the path's `{id}`)."""


async def _flow(store: Store, binding: Binding) -> str:
    flow_id, now = str(uuid.uuid4()), utc_now()
    await store.credentials.create_flow(
        flow_id,
        binding,
        "headers",
        secret={},
        oauth_client_id=None,
        now=now,
        expires_at=now + timedelta(minutes=15),
    )
    return flow_id


async def orphaned_credential(store: Store, caller: Tenant) -> str:
    credential_id = str(uuid.uuid4())
    await store.credentials.save(
        credential_id,
        Binding(caller.organisation_id, "demo", "vk", f"gone-{credential_id}"),
        kind="header",
        secret={"x-token": "t"},
        header_names=("x-token",),
        oauth_client_id=None,
        expires_at=None,
        now=utc_now(),
    )
    await store.credentials.set_status(credential_id, "orphaned")
    return credential_id


async def another_users_flow(store: Store, caller: Tenant) -> str:
    return await _flow(store, Binding(caller.organisation_id, "demo", "user", "someone-else"))


async def flow_of_an_upstream_taking_no_credentials(store: Store, caller: Tenant) -> str:
    # A pending flow is not reconciled to `orphaned` as a credential is, so it can outlive the
    # upstream's per-user auth (the demo upstream takes none).
    return await _flow(store, Binding(caller.organisation_id, "demo", "vk", caller.api_key_id))


@dataclass(frozen=True)
class Ask:
    method: str
    path: str  # `{org}`: the caller's organisation; `{id}`: the row `setup` made
    who: Literal["nobody", "unknown key", "plain key", "admin", "throttled"] = "plain key"
    setup: Setup | None = None


LISTING = "/mcp/{org}/sessions"
CREDENTIALS = "/api/mcp/sessions"
KEYS = "/mcp/{org}/keys"
ROWS: dict[str, tuple[Ask, int, str]] = {
    # The listing surface: problem+json, the code in `title`.
    "listing: no key": (Ask("GET", LISTING, "nobody"), 401, "Auth.Unauthorized"),
    "listing: unknown key": (Ask("GET", LISTING, "unknown key"), 401, "Auth.Unauthorized"),
    "listing: throttled": (Ask("GET", LISTING, "throttled"), 429, "Auth.TooManyFailures"),
    "listing: another organisation": (Ask("GET", "/mcp/elsewhere/sessions"), 404, "NotFound"),
    "listing: bad Limit": (Ask("GET", LISTING + "?Limit=0"), 400, "Pagination.InvalidLimit"),
    "listing: bad Cursor": (Ask("GET", LISTING + "?Cursor=forged.cursor"), 400, "Pagination.InvalidCursor"),
    "listing: unknown session": (Ask("GET", f"{LISTING}/{UNKNOWN}"), 404, "Mcp.SessionNotFound"),
    "listing: invocations of an unknown session": (
        Ask("GET", f"{LISTING}/{UNKNOWN}/invocations"),
        404,
        "Mcp.SessionNotFound",
    ),
    "listing: method not allowed": (Ask("POST", LISTING), 405, "MethodNotAllowed"),
    "keys: not an admin key": (Ask("GET", KEYS), 403, "Auth.Forbidden"),
    "keys: another organisation": (Ask("GET", "/mcp/elsewhere/keys", "admin"), 404, "NotFound"),
    "keys: revoke, not an admin key": (Ask("POST", KEYS + f"/{UNKNOWN}/revoke"), 403, "Auth.Forbidden"),
    "keys: revoke of an unknown key": (
        Ask("POST", KEYS + f"/{UNKNOWN}/revoke", "admin"),
        404,
        "Keys.KeyNotFound",
    ),
    "keys: method not allowed": (Ask("DELETE", KEYS, "admin"), 405, "MethodNotAllowed"),
    "keys: revoke, method not allowed": (
        Ask("GET", KEYS + f"/{UNKNOWN}/revoke", "admin"),
        405,
        "MethodNotAllowed",
    ),
    "listing: OpenAPI, method not allowed": (Ask("DELETE", "/openapi.json"), 405, "MethodNotAllowed"),
    # The credential surface: BifrostError, the code in `error.code`.
    "credentials: no key": (Ask("GET", CREDENTIALS, "nobody"), 401, "unauthorized"),
    "credentials: not an admin key": (Ask("GET", CREDENTIALS), 403, "forbidden"),
    "credentials: throttled": (Ask("GET", CREDENTIALS, "throttled"), 429, "too_many_failures"),
    "credentials: limit 0": (Ask("GET", CREDENTIALS + "?limit=0", "admin"), 400, "invalid_limit"),
    "credentials: limit 201": (Ask("GET", CREDENTIALS + "?limit=201", "admin"), 400, "invalid_limit"),
    "credentials: bad cursor": (
        Ask("GET", CREDENTIALS + "?cursor=forged.cursor", "admin"),
        400,
        "invalid_cursor",
    ),
    "credentials: bad filter": (Ask("GET", CREDENTIALS + "?kind=secret", "admin"), 400, "invalid_filter"),
    "credentials: method not allowed": (Ask("POST", CREDENTIALS, "admin"), 405, "method_not_allowed"),
    "credentials: reauth, method not allowed": (
        Ask("GET", f"{CREDENTIALS}/{UNKNOWN}/reauth", "admin"),
        405,
        "method_not_allowed",
    ),
    "credentials: reauth of an unknown row": (
        Ask("POST", f"{CREDENTIALS}/{UNKNOWN}/reauth", "admin"),
        404,
        "not_found",
    ),
    "credentials: delete of an unknown row": (
        Ask("DELETE", f"{CREDENTIALS}/{UNKNOWN}", "admin"),
        404,
        "not_found",
    ),
    "credentials: delete of a non-id": (Ask("DELETE", f"{CREDENTIALS}/not-an-id", "admin"), 404, "not_found"),
    "credentials: reauth of an orphaned row": (
        Ask("POST", CREDENTIALS + "/{id}/reauth", "admin", orphaned_credential),
        403,
        "orphaned",
    ),
    "credentials: reauth of another user's row": (
        Ask("POST", CREDENTIALS + "/{id}/reauth", "admin", another_users_flow),
        403,
        "not_bound_user",
    ),
    "credentials: reauth of a row its upstream no longer takes": (
        Ask("POST", CREDENTIALS + "/{id}/reauth", "admin", flow_of_an_upstream_taking_no_credentials),
        409,
        "not_reauthorisable",
    ),
}


@pytest.fixture(scope="module")
async def throttled(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """A gateway that allows one failed key a minute from an address."""
    config = "database: ./gw.db\nauth: {required: true, max_failures_per_minute: 1}\nupstreams: []\n"
    async with serve_gateway(write_config(tmp_path_factory.mktemp("throttled"), config)) as running:
        yield running


async def ask(
    http: httpx2.AsyncClient, keyed: RunningGateway, throttled: RunningGateway, request: Ask
) -> httpx2.Response:
    tenant = await new_tenant(keyed, "refusals", admin=request.who == "admin")
    row_id = "" if request.setup is None else await request.setup(keyed.gateway.store, tenant)
    path = request.path.format(org=tenant.organisation_id, id=row_id)
    if request.who == "throttled":
        url, headers = throttled.base_url + path, {"x-api-key": generate_api_key()}
        await http.request(request.method, url, headers=headers)  # a failure: the next is past the limit
        return await http.request(request.method, url, headers=headers)
    headers = {
        "nobody": {},
        "unknown key": {"x-api-key": generate_api_key()},
        "plain key": tenant.headers,
        "admin": tenant.headers,
    }[request.who]
    return await http.request(request.method, keyed.base_url + path, headers=headers)


@pytest.mark.parametrize(("request_", "status", "code"), ROWS.values(), ids=ROWS.keys())
async def test_each_refusal_has_its_surfaces_error_body_status_and_code(
    keyed: RunningGateway,
    throttled: RunningGateway,
    http: httpx2.AsyncClient,
    request_: Ask,
    status: int,
    code: str,
) -> None:
    with anyio.fail_after(TIMEOUT):
        response = await ask(http, keyed, throttled, request_)
    assert response.status_code == status, response.text
    body = response.json()
    if request_.path.startswith(CREDENTIALS):
        assert response.headers["content-type"] == "application/json"
        BIFROST_ERROR.validate(body)
        assert (body["status_code"], body["error"]["code"]) == (status, code)
    else:
        assert response.headers["content-type"] == "application/problem+json"
        PROBLEM.validate(body)
        assert (body["status"], body["title"]) == (status, code)
    expected_header = {401: "www-authenticate", 405: "allow", 429: "retry-after"}.get(status)
    if expected_header is not None:
        assert response.headers.get(expected_header), f"no {expected_header} header"


def test_every_exception_of_the_api_is_in_its_documented_tree() -> None:
    assert misplaced("api") == []
