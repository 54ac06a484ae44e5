"""Resource URIs from several upstreams: two instances of one server, each with its own
`uri_prefix`, both listed, read, subscribed to and linked to through the gateway; an upstream
without one keeps its URIs as it wrote them."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning

from tests.api.conftest import McpClient
from tests.harness import (
    RunningGateway,
    demo_stdio_yaml,
    keyless_config,
    serve_gateway,
    start_demo_http,
    stop_process,
)

TIMEOUT = 30.0


@pytest.fixture(scope="module")
async def twins(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """`a` per_host and `b` shared, so both ways an upstream's announcements travel are crossed;
    `solo` is a third instance with no uri_prefix, whose URIs would collide with theirs."""
    upstreams = demo_stdio_yaml("a", extra='    uri_prefix: "a+"\n') + demo_stdio_yaml(
        "b", sessions="shared", extra='    uri_prefix: "b+"\n'
    )
    config = keyless_config(tmp_path_factory.mktemp("twins"), upstreams)
    async with serve_gateway(config) as gateway:
        yield gateway


@pytest.fixture(scope="module")
async def single(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    config = keyless_config(tmp_path_factory.mktemp("single"), demo_stdio_yaml("demo"))
    async with serve_gateway(config) as gateway:
        yield gateway


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


async def test_two_instances_of_one_server_each_list_their_resources_under_their_own_uri_prefix(
    twins: RunningGateway, http: httpx2.AsyncClient
) -> None:
    client = McpClient(http, twins.url, "")
    with anyio.fail_after(TIMEOUT):
        session = await client.open()
        resources = (await client.request(session, "resources/list", {}))["result"]["resources"]
        templates = (await client.request(session, "resources/templates/list", {}))["result"]
    assert sorted(r["uri"] for r in resources) == ["a+demo://readme", "b+demo://readme"]
    assert sorted(t["uriTemplate"] for t in templates["resourceTemplates"]) == [
        "a+demo://greeting/{name}",
        "b+demo://greeting/{name}",
    ]


@pytest.mark.parametrize("name", ["a", "b"])
async def test_each_instances_resources_and_template_expansions_are_read_from_that_instance(
    twins: RunningGateway, http: httpx2.AsyncClient, name: str
) -> None:
    client = McpClient(http, twins.url, "")
    with anyio.fail_after(TIMEOUT):
        session = await client.open()
        readme = await client.request(session, "resources/read", {"uri": f"{name}+demo://readme"})
        greeting = await client.request(session, "resources/read", {"uri": f"{name}+demo://greeting/Ada"})
    (content,) = readme["result"]["contents"]
    assert content["uri"] == f"{name}+demo://readme"
    assert content["text"].startswith("mcpgw demo server")
    (content,) = greeting["result"]["contents"]
    assert (content["uri"], content["text"]) == (f"{name}+demo://greeting/Ada", "Hello, Ada!")
    rows = await recorded_reads(twins)
    assert (f"{name}+demo://readme", name, "demo://readme") in rows


async def recorded_reads(gateway: RunningGateway) -> set[tuple[str, str | None, str | None]]:
    """(name as the host asked, upstream, name as the upstream got it) of every recorded read:
    each is committed before its answer left the gateway."""
    with closing(sqlite3.connect(gateway.gateway.config.database)) as db:
        rows = db.execute(
            "SELECT tool_name, upstream, upstream_name FROM invocations WHERE method = 'resources/read'"
        ).fetchall()
    return {(row[0], row[1], row[2]) for row in rows}


@pytest.mark.parametrize("name", ["a", "b"])
async def test_a_tool_results_resource_link_and_embedded_resource_carry_uris_the_gateway_reads_back(
    twins: RunningGateway, http: httpx2.AsyncClient, name: str
) -> None:
    client = McpClient(http, twins.url, "")
    with anyio.fail_after(TIMEOUT):
        session = await client.open()
        answer = await client.call(session, f"{name}__readme_link", {})
        link, embedded = answer["result"]["content"]
        assert (link["type"], link["uri"]) == ("resource_link", f"{name}+demo://readme")
        assert (embedded["type"], embedded["resource"]["uri"]) == ("resource", f"{name}+demo://readme")
        read = await client.request(session, "resources/read", {"uri": link["uri"]})
    assert read["result"]["contents"][0]["text"] == embedded["resource"]["text"]


@pytest.mark.parametrize("name", ["a", "b"])
async def test_a_subscription_update_comes_back_under_the_uri_the_host_subscribed_to(
    twins: RunningGateway, name: str
) -> None:
    updated: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: object) -> None:
        if (
            isinstance(message, types.ServerNotification)
            and message.method == "notifications/resources/updated"
        ):
            updated.append(str(message.params.uri))
            arrived.set()

    exposed = f"{name}+demo://readme"
    async with Client(twins.url, mode="legacy", message_handler=on_message, cache=None) as client:
        with anyio.fail_after(TIMEOUT), pytest.warns(MCPDeprecationWarning):
            await client.subscribe_resource(exposed)
            await client.call_tool(f"{name}__touch", {"uri": "demo://readme"})
            await arrived.wait()
            await client.unsubscribe_resource(exposed)
    assert updated == [exposed]


async def test_an_upstream_without_a_uri_prefix_keeps_its_uris_as_it_wrote_them(
    single: RunningGateway, http: httpx2.AsyncClient
) -> None:
    client = McpClient(http, single.url, "")
    with anyio.fail_after(TIMEOUT):
        session = await client.open()
        resources = (await client.request(session, "resources/list", {}))["result"]["resources"]
        read = await client.request(session, "resources/read", {"uri": "demo://readme"})
        linked = await client.call(session, "demo__readme_link", {})
    assert [r["uri"] for r in resources] == ["demo://readme"]
    assert read["result"]["contents"][0]["uri"] == "demo://readme"
    assert linked["result"]["content"][0]["uri"] == "demo://readme"


@pytest.fixture(scope="module")
async def web_twins(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """Two instances of the demo over Streamable HTTP, which speak 2026-07-28 to the gateway."""
    first, first_url = await start_demo_http()
    try:
        second, second_url = await start_demo_http()
        try:
            upstreams = "".join(
                f"""
  - name: {name}
    transport: http
    url: {url}
    uri_prefix: "{name}+"
"""
                for name, url in (("a", first_url), ("b", second_url))
            )
            config = keyless_config(tmp_path_factory.mktemp("web-twins"), upstreams)
            async with serve_gateway(config) as gateway:
                yield gateway
        finally:
            await stop_process(second)
    finally:
        await stop_process(first)


@pytest.mark.parametrize("name", ["a", "b"])
async def test_a_2026_listen_gets_the_updates_of_the_uri_it_asked_for_from_that_instance(
    web_twins: RunningGateway, name: str
) -> None:
    exposed = f"{name}+demo://readme"
    events: list[str] = []
    async with Client(web_twins.url, mode="2026-07-28", cache=None) as client:
        with anyio.fail_after(TIMEOUT):
            async with client.listen(resource_subscriptions=[exposed]) as subscription:
                await client.call_tool(f"{name}__touch", {"uri": "demo://readme"})
                async for event in subscription:
                    events.append(str(getattr(event, "uri", "")))
                    break
    assert events == [exposed]
