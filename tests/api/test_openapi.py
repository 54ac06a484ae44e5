"""`/openapi.json` documents every API route and agrees with the contract in `docs/spec/`."""

from __future__ import annotations

import re
from typing import Any

import anyio
import httpx2
import jsonschema
import pytest
import yaml
from starlette.routing import Route

from tests.api.conftest import SPEC, TIMEOUT, McpClient, new_tenant
from tests.harness import RunningGateway

SPEC_FILES = sorted(p.name for p in SPEC.glob("*.openapi.yaml"))
# The credential spec is an excerpt of a larger API: only the schemas its MCP paths use count.
_UNUSED = {"BifrostErrorExtraFields", "ModelProvider"}


# The tests that use it are async too, though they await nothing: pytest-asyncio runs async tests
# on the uvloop runner (tests/conftest.py) and sync ones on another, and a sync test asking for
# this fixture would tear down the session's gateways to switch runners.
@pytest.fixture(scope="module")
async def document(keyed: RunningGateway) -> dict[str, Any]:
    async with httpx2.AsyncClient() as http:
        response = await http.get(f"{keyed.base_url}/openapi.json")  # no key needed
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    served: dict[str, Any] = response.json()
    return served


def _resolve(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _types(schema: dict[str, Any]) -> set[str]:
    declared = schema.get("type", [])
    return {declared} if isinstance(declared, str) else set(declared)


def _narrows(ours: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether our parameter schema admits only what the contract's does: the contract names the
    parameter and its meaning, and ours says exactly what the server accepts (the contract's
    `Limit` is `[integer, string]` with a pattern, so it admits "0", which the server refuses)."""
    if not _types(ours) <= _types(spec):
        return False
    if any(field in spec and ours.get(field) != spec[field] for field in ("format", "default")):
        return False
    # A pattern constrains strings only: it must carry over only while ours still admits strings.
    return "string" not in _types(ours) or "pattern" not in spec or ours.get("pattern") == spec["pattern"]


def test_the_spec_files_are_there() -> None:
    assert SPEC_FILES == [
        "credential-sessions.openapi.yaml",
        "session-invocations.openapi.yaml",
        "sessions-list.openapi.yaml",
    ]


async def test_every_api_route_is_documented(keyed: RunningGateway, document: dict[str, Any]) -> None:
    app_paths = {r.path for r in keyed.app.rest.router.routes if isinstance(r, Route)}
    api_paths = {
        p
        for p in app_paths
        if p.startswith(
            (
                "/mcp/{organisationId}/sessions",
                "/mcp/{organisationId}/keys",
                "/mcp/{organisationId}/grants",
                "/api/",
            )
        )
        or p == "/openapi.json"
    }
    assert len(api_paths) == 11
    assert set(document["paths"]) == api_paths
    assert document["openapi"].startswith("3.1")


@pytest.mark.parametrize("spec_file", SPEC_FILES)
async def test_operations_match_the_spec(document: dict[str, Any], spec_file: str) -> None:
    spec = yaml.safe_load((SPEC / spec_file).read_text())
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            ours = document["paths"][path][method]
            spec_params = {(p["name"], p["in"]): p for p in operation.get("parameters", [])}
            our_params = {
                (p["name"], p["in"]): p for p in (_resolve(document, q) for q in ours["parameters"])
            }
            assert spec_params.keys() <= our_params.keys()
            for key, param in spec_params.items():
                assert _narrows(our_params[key]["schema"], param["schema"]), (path, method, key)
            assert set(operation["responses"]) <= set(ours["responses"])
            for status, response in operation["responses"].items():
                spec_media = response["content"]
                our_media = _resolve(document, ours["responses"][status])["content"]
                assert set(spec_media) == set(our_media)


@pytest.mark.parametrize("spec_file", SPEC_FILES)
async def test_schemas_have_every_spec_field_with_the_same_type(
    document: dict[str, Any], spec_file: str
) -> None:
    spec = yaml.safe_load((SPEC / spec_file).read_text())
    ours = document["components"]["schemas"]
    for name, schema in spec["components"]["schemas"].items():
        if name in _UNUSED:
            continue
        assert name in ours
        assert ours[name].get("required") == schema.get("required"), name
        for field, definition in schema["properties"].items():
            mine = ours[name]["properties"][field]
            for key in ("type", "format", "$ref", "pattern"):
                assert mine.get(key) == definition.get(key), (name, field, key)
            if "items" in definition:
                assert mine["items"] == definition["items"], (name, field)


async def test_every_schema_is_valid_json_schema(document: dict[str, Any]) -> None:
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


async def test_operation_ids_are_unique_and_the_credential_listing_keeps_the_spec_id(
    document: dict[str, Any],
) -> None:
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert document["paths"]["/api/mcp/sessions"]["get"]["operationId"] == "listMcpSessions"


def _query_value(raw: str) -> Any:
    """A query value as an OpenAPI client would have written it: an integer as its digits."""
    return int(raw) if re.fullmatch(r"-?[0-9]+", raw) else raw


@pytest.mark.parametrize("raw", ["0", "1", "20", "200", "201", "-1", "abc", "1.5", "", "99999999999"])
async def test_page_size_parameters_document_exactly_what_the_server_accepts(
    keyed: RunningGateway, http: httpx2.AsyncClient, document: dict[str, Any], raw: str
) -> None:
    member = await new_tenant(keyed, "limits-doc")
    admin = await new_tenant(keyed, "limits-doc", admin=True)
    session = await McpClient(http, keyed.url, member.key).open()
    listed = await http.get(f"{keyed.base_url}/mcp/{member.organisation_id}/sessions", headers=member.headers)
    session_id = next(s["id"] for s in listed.json()["data"] if s["mcpSessionId"] == session)
    org = member.organisation_id
    cases = [
        (f"/mcp/{org}/sessions", "/mcp/{organisationId}/sessions", "Limit", member),
        (
            f"/mcp/{org}/sessions/{session_id}/invocations",
            "/mcp/{organisationId}/sessions/{sessionId}/invocations",
            "Limit",
            member,
        ),
        ("/api/mcp/sessions", "/api/mcp/sessions", "limit", admin),
    ]
    for url, path, name, caller in cases:
        parameters = [_resolve(document, p) for p in document["paths"][path]["get"]["parameters"]]
        schema = next(p["schema"] for p in parameters if p["name"] == name and p["in"] == "query")
        documented = jsonschema.Draft202012Validator(schema).is_valid(_query_value(raw))
        with anyio.fail_after(TIMEOUT):
            response = await http.get(keyed.base_url + url, params={name: raw}, headers=caller.headers)
        assert response.status_code in (200, 400), response.text
        assert documented == (response.status_code == 200), (path, name, raw, schema, response.text)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("status", ""),
        ("status", "pending"),
        ("status", "bogus"),
        ("auth_mode", ""),
        ("auth_mode", "vk"),
        ("auth_mode", "VK"),
        ("kind", ""),
        ("kind", "flow"),
        ("kind", "secret"),
    ],
)
async def test_credential_filters_document_exactly_what_the_server_accepts(
    keyed: RunningGateway, http: httpx2.AsyncClient, document: dict[str, Any], name: str, raw: str
) -> None:
    admin = await new_tenant(keyed, "filters-doc", admin=True)
    parameters = [_resolve(document, p) for p in document["paths"]["/api/mcp/sessions"]["get"]["parameters"]]
    schema = next(p["schema"] for p in parameters if p["name"] == name)
    documented = jsonschema.Draft202012Validator(schema).is_valid(raw)
    with anyio.fail_after(TIMEOUT):
        response = await http.get(
            f"{keyed.base_url}/api/mcp/sessions", params={name: raw}, headers=admin.headers
        )
    assert response.status_code in (200, 400), response.text
    assert documented == (response.status_code == 200), (name, raw, schema, response.text)
