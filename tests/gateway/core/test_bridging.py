"""A host of the handshake era calling an upstream of 2026-07-28 only: where the upstream answers
`input_required`, the gateway asks the host over its session with the request(s) it names, and
retries the call with the answers and the upstream's `requestState`. The host sees what it sees
of the same server that speaks its own revision: the questions, then the result.

(The other direction, a 2026-07-28 host and a handshake-era upstream that asks mid-call, is in
the parity matrix, `tests/gateway/test_parity.py`: elicitation, sampling and roots.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from tests.harness import RunningGateway, keyless_config, serve_gateway
from tests.upstreams import asking_server, serve_mcp, serve_modern_only, serve_recorded_modern_only

TIMEOUT = 20.0


@dataclass
class Asked:
    questions: list[str] = field(default_factory=list)


def legacy_host(url: str, asked: Asked) -> Client:
    async def on_elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        asked.questions.append(f"elicit: {params.message}")
        return types.ElicitResult(action="accept", content={"name": "Grace"})

    async def on_sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        asked.questions.append(f"sample: {params.max_tokens}")
        text = types.TextContent(type="text", text="old pond / a frog jumps in / splash")
        return types.CreateMessageResult(role="assistant", content=text, model="test-model")

    async def on_roots(context: ClientRequestContext) -> types.ListRootsResult:
        asked.questions.append("roots")
        return types.ListRootsResult.model_validate({"roots": [{"uri": "file:///work/project"}]})

    return Client(
        url,
        mode="legacy",
        elicitation_callback=on_elicit,
        sampling_callback=on_sample,
        list_roots_callback=on_roots,
        cache=None,
    )


@pytest.fixture
async def direct_url() -> AsyncIterator[str]:
    async with serve_mcp(asking_server()) as url:
        yield url


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with serve_modern_only(asking_server()) as url:
        upstream = f"\n  - {{name: ask, transport: http, url: '{url}'}}"
        async with serve_gateway(keyless_config(tmp_path, upstream)) as running:
            yield running


async def _call(url: str, tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    asked = Asked()
    async with legacy_host(url, asked) as client:
        with anyio.fail_after(TIMEOUT):
            result = await client.call_tool(tool, arguments)
    return result.model_dump(mode="json", by_alias=True, exclude_none=True), asked.questions


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [("greet_user", {}), ("haiku", {"topic": "frogs"}), ("count_roots", {}), ("all_three", {})],
    ids=["elicitation", "sampling", "roots", "all-three"],
)
async def test_a_2025_host_is_asked_what_a_2026_only_upstream_needs_and_gets_its_result(
    direct_url: str, gateway: RunningGateway, tool: str, arguments: dict[str, Any]
) -> None:
    direct = await _call(direct_url, tool, arguments)
    through = await _call(gateway.url, f"ask__{tool}", arguments)
    assert through == direct
    assert direct[1]  # the host was asked, in both


async def test_a_2025_host_lists_the_tools_of_a_2026_only_upstream_before_calling_one(
    direct_url: str, gateway: RunningGateway
) -> None:
    # What every host does first: the listing goes over the gateway's shared listing session,
    # whose `initialize` the upstream refuses; it must be reached statelessly there too.
    asked = Asked()
    async with legacy_host(direct_url, asked) as client:
        with anyio.fail_after(TIMEOUT):
            direct = {tool.name for tool in (await client.list_tools()).tools}
    async with legacy_host(gateway.url, asked) as client:
        with anyio.fail_after(TIMEOUT):
            through = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("ask__haiku", {"topic": "frogs"})
    assert through == {f"ask__{name}" for name in direct} and direct
    assert not result.is_error


async def test_each_round_of_a_bridged_call_goes_up_under_a_new_id_and_the_host_gets_its_own(
    tmp_path: Path,
) -> None:
    # SEP-2322: the retry after `input_required` is a new request, so a new JSON-RPC id; the
    # host, which sent one request, is answered under the id it used.
    async with serve_recorded_modern_only(asking_server()) as (url, recording):
        upstream = f"\n  - {{name: ask, transport: http, url: '{url}'}}"
        async with serve_gateway(keyless_config(tmp_path, upstream)) as running:
            result, questions = await _call(running.url, "ask__greet_user", {})
    calls = [m for m in recording.posted if m.get("method") == "tools/call"]
    assert len(calls) == 2 and questions
    assert calls[0]["id"] != calls[1]["id"]
    assert result["content"] == [{"type": "text", "text": "Hello, Grace!"}]
