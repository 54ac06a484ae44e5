"""`/openapi.json` documents every API route and agrees with the contract in `docs/spec/`."""

from __future__ import annotations

from typing import Any

import httpx2
import jsonschema
import pytest
import yaml
from starlette.routing import Route

from tests.api.conftest import SPEC
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


def test_the_spec_files_are_there() -> None:
    assert SPEC_FILES == [
        "credential-sessions.openapi.yaml",
        "session-invocations.openapi.yaml",
        "sessions-list.openapi.yaml",
    ]


async def test_every_api_route_is_documented(keyed: RunningGateway, document: dict[str, Any]) -> None:
    app_paths = {r.path for r in keyed.app.router.routes if isinstance(r, Route)}
    api_paths = {
        p
        for p in app_paths
        if p.startswith(("/mcp/{organisationId}/sessions", "/api/")) or p == "/openapi.json"
    }
    assert len(api_paths) == 7
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
                for field in ("type", "format", "default", "pattern"):
                    assert our_params[key]["schema"].get(field) == param["schema"].get(field), (key, field)
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
