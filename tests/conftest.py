"""Shared fixtures: the demo upstream over HTTP and SSE, and key-less gateways in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import anyio.to_thread
import pytest
import uvloop

from tests.fuzz.world import TALLY
from tests.harness import (
    RunningGateway,
    demo_stdio_yaml,
    keyless_config,
    serve_gateway,
    start_demo_http,
    stop_process,
)
from tests.node import install
from tests.packages import start_installing
from tests.postgres import PostgresServer, PostgresUnavailable


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    """uvloop, the loop `mcpgw serve` runs on (uvicorn picks it), so the tests exercise the
    transports and timing users get rather than the standard library's."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup` (scripts/test), the tests that share a costly fixture run on one
    worker: each module's (many start a gateway, an upstream or a provider once per module, which
    a module spread over both workers starts twice), and the fuzz suite's as one, whose
    package-scoped gateway (`fuzz_world`) is seconds to set up and whose memory bound covers the
    whole package."""
    if not config.pluginmanager.hasplugin("xdist") or config.getoption("dist", "no") != "loadgroup":
        return  # the group is added to each test's id: only where a scheduler reads it
    tests = config.rootpath / "tests"
    fuzz = tests / "fuzz"
    for item in items:
        group = "fuzz" if item.path.is_relative_to(fuzz) else item.path.relative_to(tests).as_posix()
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)  # once the items are final (deselected, -k): only what they need
def pytest_collection_finish(session: pytest.Session) -> None:
    """Install the OS packages the collected tests need (tests/packages.py) in the background, from
    now on, rather than in the first test that needs each (chromium alone is minutes on a clean
    machine). Every pytest-xdist worker collects every item; the second waits on the apt lock and
    finds them installed."""
    if not session.config.option.collectonly:
        start_installing(session.items)


@pytest.hookimpl(trylast=True)  # after the fixtures are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: the controller prints
        session.config.workeroutput["fuzz_tally"] = TALLY.to_wire()


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, on the controller
def pytest_testnodedown(node: Any, error: object) -> None:
    wire = getattr(node, "workeroutput", {}).get("fuzz_tally")
    if wire is not None:
        TALLY.add(wire)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fuzz suite's counts (requests, 5xx, hangs, RSS), whichever worker ran it."""
    if TALLY.requests or TALLY.schemathesis_cases:
        terminalreporter.write_line(TALLY.summary())


@pytest.fixture(scope="session")
async def demo_http_url() -> AsyncIterator[str]:
    proc, url = await start_demo_http()
    yield url
    await stop_process(proc)


@pytest.fixture(scope="session")
async def demo_sse_url() -> AsyncIterator[str]:
    proc, url = await start_demo_http("--sse")
    yield url
    await stop_process(proc)


@pytest.fixture(scope="session")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """The demo over stdio (`demo__`) and a third-party server from PyPI (`time__`)."""
    upstreams = (
        demo_stdio_yaml()
        + """
  - name: time
    transport: stdio
    command: [python, -m, mcp_server_time, --local-timezone, UTC]"""
    )
    async with serve_gateway(keyless_config(tmp_path_factory.mktemp("gateway"), upstreams)) as running:
        yield running


@pytest.fixture(scope="session")
async def web_gateway(
    demo_http_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    """The demo over Streamable HTTP (`web__`). One demo process serves every session, and a tool
    one client adds is announced to that client alone: the gateway's shared lists of it are not
    kept (list_ttl_s near 0), so what it lists is always what a client connected directly sees."""
    upstreams = (
        f"\n  - {{name: web, transport: http, url: '{demo_http_url}', timeouts: {{call_s: 5}},"
        " list_ttl_s: 0.000001}"
    )
    async with serve_gateway(keyless_config(tmp_path_factory.mktemp("web"), upstreams)) as running:
        yield running


@pytest.fixture(scope="session")
async def sse_gateway(
    demo_sse_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    """The demo over the legacy HTTP+SSE transport (`old__`); its lists not kept, as `web_gateway`'s."""
    upstreams = f"\n  - {{name: old, transport: sse, url: '{demo_sse_url}', list_ttl_s: 0.000001}}"
    async with serve_gateway(keyless_config(tmp_path_factory.mktemp("sse"), upstreams)) as running:
        yield running


@pytest.fixture(scope="session")
async def node_modules() -> None:
    """`tests/node/node_modules` as its lockfile says (`npm ci` when it is not, once per run):
    what a test that starts a Node program (`tests.node.run_node`) asks for first."""
    await anyio.to_thread.run_sync(install)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (tests/postgres.py), started once per test session; skipped, with
    the reason, where the machine has none and none could be installed."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A `postgresql://` URL (password in it) to a new, empty database of its own, dropped after."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
