"""One bad request or one faulty upstream affects that request only.

A gateway with the well-behaved demo upstream and the misbehaving `tests.fault_upstream`
(both stdio children): each test sends something hostile, or makes an upstream fail, then
checks what the host got, what was recorded, and that every other session still works.
"""

from __future__ import annotations

import itertools
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest

from tests.fault_upstream import LEAK_LINE_GOES_ON, LEAKED
from tests.harness import ROOT, RunningGateway, demo_stdio_yaml, keyless_config, serve_gateway
from tests.upstreams import serve_faulty

TIMEOUT = 20.0
ACCEPT = {"accept": "application/json, text/event-stream"}
MODERN = "2026-07-28"
_ids = itertools.count(1)


def faults_yaml(extra: str = "    timeouts: {call_s: 2}") -> str:
    """The fault upstream, per_host: its children live and end with one host session, as these tests watch."""
    return f"""
  - name: faults
    transport: stdio
    command: [python, -m, tests.fault_upstream]
    env: {{PYTHONPATH: "{ROOT}"}}
    sessions: per_host
{extra}"""


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """demo and faults over stdio, flaky over HTTP (tests.upstreams.serve_faulty), and dead: an
    HTTP upstream where nothing listens."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}/mcp"
    async with serve_faulty() as flaky_url:
        upstreams = (
            demo_stdio_yaml()
            + faults_yaml()
            + f"\n  - {{name: flaky, transport: http, url: '{flaky_url}', timeouts: {{call_s: 1}}}}"
            + f"\n  - {{name: dead, transport: http, url: '{nowhere}', timeouts: {{connect_s: 1}}}}"
        )
        config = keyless_config(tmp_path_factory.mktemp("faults"), upstreams)
        async with serve_gateway(config) as running:
            yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
        yield client


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"next": value}
    return value


def deep_json(depth: int) -> bytes:
    """`nested(depth)` as JSON text, written out directly: encoders refuse past ~254 levels."""
    return b'{"next":' * depth + b'"bottom"' + b"}" * depth


class Host:
    """A session-based host speaking raw Streamable HTTP (bodies the SDK would refuse to send)."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http, self.url = http, url
        self.session_id = ""

    async def open(self) -> Host:
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "faults", "version": "1"},
        }
        response = await self.post_json({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
        assert response.status_code == 200, response.text
        self.session_id = response.headers["mcp-session-id"]
        return self

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> httpx2.Response:
        session = {"mcp-session-id": self.session_id} if self.session_id else {}
        all_headers = {**ACCEPT, "content-type": "application/json", **session, **(headers or {})}
        with anyio.fail_after(TIMEOUT):
            return await self.http.post(self.url, content=body, headers=all_headers)

    async def post_json(self, message: dict[str, Any]) -> httpx2.Response:
        return await self.post(httpx2_json(message))

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        message = {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call"}
        response = await self.post_json({**message, "params": {"name": tool, "arguments": arguments}})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def httpx2_json(message: dict[str, Any]) -> bytes:
    import json

    return json.dumps(message).encode()


def modern_call(tool: str, arguments_json: bytes, capabilities: bytes = b'{"sampling":{}}') -> bytes:
    """A 2026-07-28 tools/call with `arguments_json` spliced in as written."""
    meta = (
        b'{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
        b'"io.modelcontextprotocol/clientCapabilities":' + capabilities + b","
        b'"io.modelcontextprotocol/clientInfo":{"name":"faults-modern","version":"1"}}'
    )
    return (
        b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":%s,"_meta":%s}}'
        % (next(_ids), tool.encode(), arguments_json, meta)
    )


def modern_headers(tool: str) -> dict[str, str]:
    return {"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": tool}


def text_of(answer: dict[str, Any]) -> str:
    text: str = answer["result"]["content"][0]["text"]
    return text


async def still_serving(gateway: RunningGateway, http: httpx2.AsyncClient, earlier: Host) -> None:
    """A session opened before the fault, a new session and a 2026 host all still get answers."""
    assert text_of(await earlier.call("demo__echo", {"text": "earlier"})) == "earlier"
    later = await Host(http, gateway.url).open()
    assert text_of(await later.call("demo__echo", {"text": "later"})) == "later"
    modern = await Host(http, gateway.url).post(
        modern_call("demo__echo", b'{"text":"modern"}', b"{}"), modern_headers("demo__echo")
    )
    assert modern.status_code == 200, modern.text
    assert modern.json()["result"]["content"][0]["text"] == "modern"
    health = await http.get(f"{gateway.base_url}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def recorded_call(database: Path, tool: str) -> sqlite3.Row:
    """The newest recorded invocation of `tool`."""
    with closing(sqlite3.connect(database)) as db:
        db.row_factory = sqlite3.Row
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM invocations WHERE tool_name = ? ORDER BY seq DESC LIMIT 1", (tool,)
        ).fetchone()
    assert row is not None, f"no recorded call of {tool}"
    return row


@pytest.mark.parametrize("capabilities", [b'{"sampling":{}}', b"{}"], ids=["can-be-asked", "cannot"])
@pytest.mark.parametrize(
    ("tool", "arguments", "code"),
    [("demo__echo", deep_json(300), -32602), ("faults__deep", b'{"depth":300}', -32001)],
    ids=["host-sends-it", "upstream-answers-it"],
)
async def test_a_2026_call_nested_300_deep_gets_an_error_and_nothing_else_breaks(
    gateway: RunningGateway,
    http: httpx2.AsyncClient,
    capabilities: bytes,
    tool: str,
    arguments: bytes,
    code: int,
) -> None:
    earlier = await Host(http, gateway.url).open()
    response = await Host(http, gateway.url).post(
        modern_call(tool, arguments, capabilities), modern_headers(tool)
    )
    assert response.headers["content-type"].startswith("application/json"), response.text
    assert response.json()["error"]["code"] == code
    assert "nested" in response.json()["error"]["message"]
    await still_serving(gateway, http, earlier)


@pytest.mark.parametrize("depth", [255, 300, 1000])
async def test_a_session_call_nested_too_deep_is_answered_recorded_and_logged_once(
    gateway: RunningGateway, http: httpx2.AsyncClient, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    host = await Host(http, gateway.url).open()
    message = b'{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"demo__echo","arguments":%s}}'
    with caplog.at_level(logging.INFO):
        response = await host.post(message % deep_json(depth))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["id"] == 41 and answer["error"]["code"] == -32602
    row = recorded_call(gateway.gateway.config.database, "demo__echo")
    assert row["request_id"] == "41" and row["outcome"] == "denied"
    assert row["arguments_truncated"] == 1
    assert len(caplog.text) < 2000, caplog.text[:2000]  # one line, not a traceback per level
    await still_serving(gateway, http, host)


async def test_a_session_call_whose_upstream_answer_is_nested_too_deep_is_an_error_recorded_as_such(
    gateway: RunningGateway, http: httpx2.AsyncClient
) -> None:
    host = await Host(http, gateway.url).open()
    answer = await host.call("faults__deep", {"depth": 300})
    assert answer["error"]["code"] == -32001 and "nested" in answer["error"]["message"]
    row = recorded_call(gateway.gateway.config.database, "faults__deep")
    assert row["outcome"] == "upstream_error"
    assert "nested" in row["result_json"]
    await still_serving(gateway, http, host)


class LogWatch(logging.Handler):
    """Collects the gateway's log records and wakes a waiter when one contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.records: list[logging.LogRecord] = []
        self.seen = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.text in record.getMessage():
            self.seen.set()

    def lines(self, containing: str) -> list[str]:
        return [m for m in (r.getMessage() for r in self.records) if containing in m]


@pytest.fixture
def log_watch() -> Iterator[Callable[[str], LogWatch]]:
    root = logging.getLogger()
    watches: list[LogWatch] = []

    def watch(text: str) -> LogWatch:
        watches.append(LogWatch(text))
        root.addHandler(watches[-1])
        return watches[-1]

    level = root.level
    root.setLevel(logging.DEBUG)
    yield watch
    root.setLevel(level)
    for handler in watches:
        root.removeHandler(handler)


async def test_what_a_stdio_upstream_writes_on_stderr_is_logged_redacted(
    gateway: RunningGateway, http: httpx2.AsyncClient, log_watch: Callable[[str], LogWatch]
) -> None:
    watch = log_watch("stderr: password=")
    host = await Host(http, gateway.url).open()
    assert text_of(await host.call("faults__leak", {"text": "leaked"})) == "leaked"
    with anyio.fail_after(TIMEOUT):
        await watch.seen.wait()
    logged = "\n".join(watch.lines("upstream faults stderr"))
    assert "[REDACTED]" in logged
    assert [secret for secret in LEAKED if secret in logged] == []
    # The whole password goes, ampersand and all, and the rest of its line stays.
    assert f"login failed: password=[REDACTED] {LEAK_LINE_GOES_ON}" in logged and "3xyz" not in logged


async def test_a_chatty_stdio_upstream_cannot_flood_the_log(
    gateway: RunningGateway, http: httpx2.AsyncClient, log_watch: Callable[[str], LogWatch]
) -> None:
    watch = log_watch("stderr line(s) not logged")
    host = await Host(http, gateway.url).open()
    assert text_of(await host.call("faults__chatter", {"lines": 1000})) == "chattered"
    await host.http.delete(host.url, headers={"mcp-session-id": host.session_id})  # the child ends
    with anyio.fail_after(TIMEOUT):
        await watch.seen.wait()
    assert len(watch.lines("stderr: chatter line")) == 50
    assert watch.lines("not logged") == [
        "upstream faults: 950 more stderr line(s) not logged (at most 50 per 10s)"
    ]


@pytest.mark.parametrize(
    ("tool", "code", "outcome"),
    [
        ("faults__crash", -32001, "upstream_error"),  # the child exits mid-call
        ("faults__hang", -32002, "timeout"),  # the child never answers (call_s 2)
        ("flaky__boom", -32001, "upstream_error"),  # HTTP 500
        ("flaky__cut", -32001, "upstream_error"),  # the connection drops mid-response
        ("flaky__trickle", -32002, "timeout"),  # keep-alive comments, never an answer (call_s 1)
    ],
)
async def test_a_failing_upstream_fails_that_call_recorded_as_such_and_nothing_else(
    gateway: RunningGateway, http: httpx2.AsyncClient, tool: str, code: int, outcome: str
) -> None:
    earlier = await Host(http, gateway.url).open()
    host = await Host(http, gateway.url).open()
    answer = await host.call(tool, {})
    assert answer["error"]["code"] == code, answer
    assert recorded_call(gateway.gateway.config.database, tool)["outcome"] == outcome
    upstream = tool.split("__")[0]
    again = "faults__echo" if upstream == "faults" else "flaky__echo"
    assert text_of(await host.call(again, {"text": "again"})) == "again"  # the same session recovers
    await still_serving(gateway, http, earlier)


async def test_garbage_on_a_stdio_upstreams_output_is_skipped_and_the_call_answered(
    gateway: RunningGateway, http: httpx2.AsyncClient, log_watch: Callable[[str], LogWatch]
) -> None:
    watch = log_watch("that is not JSON")
    host = await Host(http, gateway.url).open()
    assert text_of(await host.call("faults__garbage", {"text": "through"})) == "through"
    assert text_of(await host.call("faults__echo", {"text": "after"})) == "after"
    assert watch.seen.is_set()
    await still_serving(gateway, http, host)


async def test_an_unreachable_upstream_costs_a_host_no_more_than_its_own_tools(
    gateway: RunningGateway, http: httpx2.AsyncClient
) -> None:
    host = await Host(http, gateway.url).open()
    listed = await host.post_json({"jsonrpc": "2.0", "id": 90, "method": "tools/list"})
    # The answer comes on an event stream, after a warning naming the upstream it lacks.
    *before, final = [
        orjson.loads(line[6:]) for line in listed.text.splitlines() if line.startswith("data: ")
    ]
    warned = [m["params"]["data"]["upstream"] for m in before if m["method"] == "notifications/message"]
    assert warned == ["dead"]
    names = {tool["name"] for tool in final["result"]["tools"]}
    assert {"demo__echo", "faults__echo", "flaky__echo"} <= names
    assert not any(name.startswith("dead__") for name in names)
    answer = await host.call("dead__anything", {})
    assert "error" in answer  # answered at once, not after a hang
    await still_serving(gateway, http, host)


STRAY_CALLS = [
    # (tool, what the host gets: its text, or the error code when there is no answer left)
    ("faults__twice", "mine"),  # stdio: 100 answers under ids never sent, then two answers to the call
    ("flaky__stray_stream", "yours"),  # HTTP event stream: answers under another id, then its own
    ("flaky__stray", -32001),  # HTTP JSON body: the only answer is under another id
]


def assert_host_got_what_was_recorded(database: Path, tool: str, answer: dict[str, Any]) -> None:
    """The record holds the answer the host got (less what 2026-07-28 adds to every result: the
    serverInfo `_meta` and `resultType`)."""
    row = recorded_call(database, tool)
    assert row["request_id"] == str(answer["id"])
    got: dict[str, Any] = answer.get("result") or answer["error"]
    envelope = {"resultType", "_meta"} if "result" in answer else set()
    recorded = orjson.loads(row["result_json"])
    assert {k: v for k, v in recorded.items() if k not in envelope} == {
        k: v for k, v in got.items() if k not in envelope
    }


@pytest.mark.parametrize(("tool", "expected"), STRAY_CALLS, ids=["stdio", "http-stream", "http-json"])
async def test_an_upstream_answer_under_an_id_it_was_never_sent_never_reaches_the_host(
    gateway: RunningGateway,
    http: httpx2.AsyncClient,
    log_watch: Callable[[str], LogWatch],
    tool: str,
    expected: str | int,
) -> None:
    """An answer is the call's only if the upstream was sent its id on that session: one under an
    id of another call (another upstream's, which the host would match by id) or a second answer
    is dropped and logged once; the host gets its own answer, and the record holds just that."""
    watch = log_watch("dropped a response with id")
    host = await Host(http, gateway.url).open()
    answer = await host.call(tool, {"text": "mine"})
    assert isinstance(answer["id"], int) and answer["id"] == next(_ids) - 1  # the id it sent
    if isinstance(expected, str):
        assert text_of(answer) == expected, answer
    else:
        assert answer["error"]["code"] == expected and "flaky" in answer["error"]["message"], answer
        assert recorded_call(gateway.gateway.config.database, tool)["outcome"] == "upstream_error"
    assert_host_got_what_was_recorded(gateway.gateway.config.database, tool, answer)
    assert len(watch.lines("dropped a response with id")) == 1, watch.lines("dropped")
    await still_serving(gateway, http, host)


@pytest.mark.parametrize("capabilities", [b'{"sampling":{}}', b"{}"], ids=["can-be-asked", "cannot"])
@pytest.mark.parametrize(("tool", "expected"), STRAY_CALLS, ids=["stdio", "http-stream", "http-json"])
async def test_a_2026_host_never_gets_an_upstream_answer_under_an_id_it_was_never_sent(
    gateway: RunningGateway,
    http: httpx2.AsyncClient,
    tool: str,
    expected: str | int,
    capabilities: bytes,
) -> None:
    earlier = await Host(http, gateway.url).open()
    response = await Host(http, gateway.url).post(
        modern_call(tool, b'{"text":"mine"}', capabilities), modern_headers(tool)
    )
    messages = [orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    answers = messages or [response.json()]
    assert [m for m in answers if "method" not in m and m.get("id") != next(_ids) - 1] == []
    answer = answers[-1]
    if isinstance(expected, str):
        assert text_of(answer) == expected, answer
    else:
        assert answer["error"]["code"] == expected, answer
    assert_host_got_what_was_recorded(gateway.gateway.config.database, tool, answer)
    await still_serving(gateway, http, earlier)


async def test_a_request_id_already_in_flight_in_the_session_is_refused_and_the_first_call_answered(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    """JSON-RPC ids are the requester's to keep unique; a host that reuses one still in flight
    gets an error for the second request, and the first is answered under its id as if the
    second never came (not the second's answer, nor a wait to its timeout). A gateway of its own:
    the module's has spent its per_host children on the other tests' sessions."""
    async with serve_gateway(keyless_config(tmp_path, demo_stdio_yaml())) as gateway:
        await reused_id_refused(gateway, http)


async def reused_id_refused(gateway: RunningGateway, http: httpx2.AsyncClient) -> None:
    host = await Host(http, gateway.url).open()
    params = {"name": "demo__count_slowly", "arguments": {"steps": 100}, "_meta": {"progressToken": "p"}}
    again = {"jsonrpc": "2.0", "id": 77, "method": "tools/call"}
    headers = {**ACCEPT, "content-type": "application/json", "mcp-session-id": host.session_id}
    events: list[dict[str, Any]] = []
    with anyio.fail_after(TIMEOUT):
        body = httpx2_json({"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": params})
        async with http.stream("POST", gateway.url, content=body, headers=headers) as slow:
            async for line in slow.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(orjson.loads(line[6:]))
                if len(events) == 1:  # the first call is running: its first progress came
                    second = await host.post_json(
                        {**again, "params": {"name": "demo__echo", "arguments": {"text": "twice"}}}
                    )
                    refused = second.json()
                    assert refused["id"] == 77 and refused["error"]["code"] == -32600, refused
                    assert "already in flight" in refused["error"]["message"]

    answers = [event for event in events if "id" in event]
    assert len(answers) == 1, events[-3:]
    [answer] = answers
    assert answer["id"] == 77 and text_of(answer) == "counted 100", answer
    await still_serving(gateway, http, host)
