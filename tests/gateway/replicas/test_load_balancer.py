"""Two replicas on one PostgreSQL database behind a real HAProxy (round-robin, no affinity),
as an operator runs them: what hosts see through it, and the README's "Replicas" section as
written. HAProxy comes from the OS packages (tests/loadbalancer.py installs it as root, or the
tests are skipped saying why)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from store import Seek, open_postgres_store
from tests.gateway.cli.commands import free_port, run_mcpgw, serving
from tests.harness import ROOT, RunningGateway, base_url_of, demo_stdio_yaml, listening_socket, serve_gateway
from tests.loadbalancer import LoadBalancerUnavailable, find_haproxy, run_haproxy, serve_behind_haproxy
from tests.postgres import PostgresServer
from tests.replicas import new_secrets_key, replica_configs, serve_replicas

pytestmark = pytest.mark.anyio

TIMEOUT = 60.0
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
MODERN = "2026-07-28"


@pytest.fixture(scope="module", autouse=True)
def haproxy() -> Iterator[str]:
    try:
        yield find_haproxy()
    except LoadBalancerUnavailable as exc:
        pytest.skip(str(exc))


def modern_call(n: int, client: str = "lb") -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": client, "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = {"name": "demo__echo", "arguments": {"text": f"hi {n}"}, "_meta": meta}
    return {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}


MODERN_HEADERS = {
    **ACCEPT,
    "mcp-protocol-version": MODERN,
    "mcp-method": "tools/call",
    "mcp-name": "demo__echo",
}


def answer_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer in a response, whether sent as JSON or as the last SSE `data:` line."""
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        answer: dict[str, Any] = json.loads(data[-1])
    else:
        answer = response.json()
    return answer


def echoed(answer: dict[str, Any]) -> str:
    assert "result" in answer, answer
    text: str = answer["result"]["content"][0]["text"]
    return text


async def calls_served(http: httpx2.AsyncClient, replica: RunningGateway) -> float:
    """How many calls this replica answered, from its own `/metrics`."""
    text = (await http.get(f"{replica.base_url}/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "mcpgw_calls"
        for sample in family.samples
        if sample.name == "mcpgw_calls_total"
    )


async def recorded(database_url: str) -> list[tuple[int, str | None]]:
    """Each recorded session's call count and end reason."""
    async with open_postgres_store(database_url) as store:
        page = await store.list_sessions(None, api_key_id=None, seek=Seek(), limit=50)
    return [(row.call_count, row.end_reason) for row in page.rows]


def configs(tmp_path: Path, postgres_url: str, replicas: int = 2) -> list[Path]:
    return replica_configs(
        tmp_path,
        postgres_url,
        demo_stdio_yaml(sessions="shared"),
        replicas=replicas,
        extra_yaml="auth: {required: false}\n",
    )


async def test_a_2026_host_through_haproxy_is_answered_by_both_replicas_in_turn(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        serve_replicas(configs(tmp_path, postgres_url)) as replicas,
        serve_behind_haproxy([r.base_url for r in replicas]) as proxy,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            for n in range(6):
                answer = answer_of(await http.post(proxy.url, json=modern_call(n), headers=MODERN_HEADERS))
                assert echoed(answer) == f"hi {n}"
            served = [await calls_served(http, replica) for replica in replicas]
    assert served == [3.0, 3.0], served  # round-robin: no affinity, each replica every other call


async def test_a_2026_host_through_haproxy_is_recorded_as_one_session_whichever_replica_answers(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        serve_replicas(configs(tmp_path, postgres_url)) as replicas,
        serve_behind_haproxy([r.base_url for r in replicas]) as proxy,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            for n in range(6):
                answer_of(await http.post(proxy.url, json=modern_call(n), headers=MODERN_HEADERS))
            assert await recorded(postgres_url) == [(6, None)]


async def test_a_2026_host_sees_no_failure_while_a_replica_is_restarted(
    tmp_path: Path, postgres_url: str
) -> None:
    """One step of a rolling restart: replica-0 stopped and started again on its port while the
    host calls on through HAProxy, which sends what it would have sent to the stopped replica to
    the other one (`option redispatch` on a refused connection; its `/readyz` check then takes it
    out until it answers again)."""
    paths = configs(tmp_path, postgres_url)
    sockets = [listening_socket() for _ in paths]
    port = sockets[0].getsockname()[1]
    urls = [base_url_of(sock) for sock in sockets]
    done = 0

    async def calls(http: httpx2.AsyncClient, url: str, count: int) -> None:
        nonlocal done
        for _ in range(count):
            done += 1
            answer = answer_of(await http.post(url, json=modern_call(done), headers=MODERN_HEADERS))
            assert echoed(answer) == f"hi {done}"

    async with (
        serve_gateway(paths[1], sockets[1]),
        serve_behind_haproxy(urls) as proxy,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            async with serve_gateway(paths[0], sockets[0]):
                await calls(http, proxy.url, 4)
            await calls(http, proxy.url, 4)  # replica-0 is down
            async with serve_gateway(paths[0], socket_on(port)) as again:
                # Back in rotation once its /readyz check passes: the host's calls go on meanwhile.
                while await calls_served(http, again) == 0:
                    await calls(http, proxy.url, 1)
                await calls(http, proxy.url, 4)
    assert done >= 13


def socket_on(port: int) -> socket.socket:
    """A listening loopback socket on `port` again, for a replica restarted where it was."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def initialize(n: int = 1) -> dict[str, Any]:
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "lb", "version": "1"},
    }
    return {"jsonrpc": "2.0", "id": n, "method": "initialize", "params": params}


def call(n: int) -> dict[str, Any]:
    params = {"name": "demo__echo", "arguments": {"text": f"hi {n}"}}
    return {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}


async def test_a_2025_session_through_haproxy_is_served_by_both_replicas_without_a_new_handshake(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        serve_replicas(configs(tmp_path, postgres_url)) as replicas,
        serve_behind_haproxy([r.base_url for r in replicas]) as proxy,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            opened = await http.post(proxy.url, json=initialize(), headers=ACCEPT)
            assert answer_of(opened)["result"]["protocolVersion"] == "2025-11-25"
            session = {**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"],
                       "mcp-protocol-version": "2025-11-25"}  # fmt: skip
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(proxy.url, json=initialized, headers=session)).status_code == 202
            for n in range(2, 8):
                assert (
                    echoed(answer_of(await http.post(proxy.url, json=call(n), headers=session))) == f"hi {n}"
                )
            served = [await calls_served(http, replica) for replica in replicas]
            assert (await http.delete(proxy.url, headers=session)).status_code in (200, 204)
    assert served == [3.0, 3.0], served
    assert await recorded(postgres_url) == [(6, "deleted")]


# The README's "Replicas" section, as written.


def readme_replicas_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Replicas\n", 1)[1].split("\n## ", 1)[0]


async def test_the_readme_replicas_section_works_as_written(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its config (the test server for db.internal, no TLS), `mcpgw migrate`, the two `mcpgw
    serve` commands (on free ports for 8081 and 8082) and its haproxy.cfg (HAProxy on an
    ephemeral port for 8080): a 2026-07-28 host's calls through it reach both replicas."""
    section = readme_replicas_section()
    [example] = re.findall(r"```yaml\n(.*?)```", section, re.S)
    database = postgres_url.rsplit("/", 1)[1]
    example = example.replace("db.internal:5432/mcpgw", f"127.0.0.1:{postgres_server.port}/{database}")
    example = example.replace("mcpgw:${MCPGW_DB_PASSWORD}@", "mcpgw_test:${MCPGW_DB_PASSWORD}@")
    example = example.replace("sslmode=require", "sslmode=disable")
    config = tmp_path / "config.yaml"
    config.write_text(
        example + "auth: {required: false}\nupstreams:" + demo_stdio_yaml(sessions="shared") + "\n"
    )
    monkeypatch.setenv("MCPGW_DB_PASSWORD", postgres_server.password)
    monkeypatch.setenv("MCPGW_SECRETS_KEY", new_secrets_key())
    commands = re.findall(r"^(mcpgw .*?)(?:\s+#.*)?$", section, re.M)
    assert commands[0] == "mcpgw migrate --config config.yaml", commands
    code, _, err = await run_mcpgw("migrate", "--config", str(config))
    assert code == 0, err
    serves = [command for command in commands if command.startswith("mcpgw serve ")]
    assert serves == [f"mcpgw serve --config config.yaml --port {port}" for port in (8081, 8082)], commands
    [haproxy_cfg] = re.findall(r"```haproxy\n(.*?)```", section, re.S)
    assert re.search(r"^\s+balance roundrobin\b", haproxy_cfg, re.M)
    assert "cookie" not in haproxy_cfg and "stick" not in haproxy_cfg  # no affinity of any kind
    ports = [free_port(), free_port()]
    frontend = listening_socket()
    haproxy_cfg = haproxy_cfg.replace("bind 127.0.0.1:8080", f"bind fd@{frontend.fileno()}")
    haproxy_cfg = haproxy_cfg.replace("127.0.0.1:8081", f"127.0.0.1:{ports[0]}")
    haproxy_cfg = haproxy_cfg.replace("127.0.0.1:8082", f"127.0.0.1:{ports[1]}")
    async with (
        serving(config, ports[0]) as first,
        serving(config, ports[1]) as second,
        run_haproxy(haproxy_cfg, frontend) as proxy,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            for served in (first, second):
                ready = await http.get(f"{served.base_url}/readyz")
                assert ready.json()["status"] == "ready", ready.text
            for n in range(4):
                answer = answer_of(await http.post(proxy.url, json=modern_call(n), headers=MODERN_HEADERS))
                assert echoed(answer) == f"hi {n}"
            counts = []
            for served in (first, second):
                metrics = (await http.get(f"{served.base_url}/metrics")).text
                counts.append(sum(float(line.split()[-1]) for line in metrics.splitlines()
                                  if line.startswith("mcpgw_calls_total{")))  # fmt: skip
    assert counts == [2.0, 2.0], counts
