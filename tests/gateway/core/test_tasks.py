"""The tasks extension through the gateway: a 2026-07-28 host starts a tool as a task, polls it,
answers its input requests and cancels it as it could against the upstream, by task ids that
name their upstream and their caller.

The upstream is `scripts/conformance_upstream.py` (a child process), which serves the extension
itself. Waiting for a task polls `tasks/get` at the task's own `pollIntervalMs`: that is how the
extension tells a host to wait, and every wait is under `anyio.fail_after`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp.shared.inbound import NAME_BEARING_METHODS, encode_header_value
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY

from gateway.core.tasks import TASKS_EXTENSION, SealedTask, TaskIds
from store import RecordedInvocation, Seek
from tests.harness import (
    RunningGateway,
    demo_stdio_yaml,
    keyless_config,
    serve_gateway,
    start_conformance_upstream,
    stop_process,
    write_config,
)

MODERN = "2026-07-28"
TIMEOUT = 20.0
DECLARING: dict[str, Any] = {"extensions": {TASKS_EXTENSION: {}}, "elicitation": {}}


def request(
    method: str, params: dict[str, Any], capabilities: dict[str, Any] | None = None
) -> dict[str, Any]:
    meta = {
        PROTOCOL_VERSION_META_KEY: MODERN,
        CLIENT_CAPABILITIES_META_KEY: DECLARING if capabilities is None else capabilities,
        CLIENT_INFO_META_KEY: {"name": "tasks-host", "version": "1"},
    }
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}


def headers_for(message: dict[str, Any], **extra: str) -> dict[str, str]:
    """What a 2026-07-28 host sends with `message`: `Mcp-Name` is the task id on `tasks/*`."""
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": message["method"],
    }
    params = message["params"]
    name = params.get(NAME_BEARING_METHODS.get(message["method"], "taskId"))
    if isinstance(name, str):
        headers["mcp-name"] = encode_header_value(name)
    return {**headers, **extra}


class Host:
    def __init__(self, http: httpx2.AsyncClient, url: str, key: str | None = None) -> None:
        self.http, self.url = http, url
        self.auth = {"x-api-key": key} if key else {}

    async def post(self, message: dict[str, Any], **extra: str) -> httpx2.Response:
        with anyio.fail_after(TIMEOUT):
            return await self.http.post(
                self.url, json=message, headers={**headers_for(message, **extra), **self.auth}
            )

    async def call(
        self, method: str, params: dict[str, Any], capabilities: dict[str, Any] | None = None
    ) -> Any:
        body = (await self.post(request(method, params, capabilities))).json()
        return body.get("result", body.get("error"))

    async def until(self, task_id: str, *statuses: str) -> dict[str, Any]:
        """Poll the task until its status is one of `statuses`, at the interval it asks for."""
        with anyio.fail_after(TIMEOUT):
            while True:
                task: dict[str, Any] = await self.call("tasks/get", {"taskId": task_id})
                if task.get("status") in statuses:
                    return task
                await anyio.sleep(task["pollIntervalMs"] / 1000)


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    proc, url = await start_conformance_upstream()
    try:
        yield url
    finally:
        await stop_process(proc)


def upstream_yaml(url: str) -> str:
    return f"\n  - {{name: work, transport: http, url: '{url}'}}"


@pytest.fixture
async def gateway(tmp_path: Path, upstream_url: str) -> AsyncIterator[RunningGateway]:
    async with serve_gateway(keyless_config(tmp_path, upstream_yaml(upstream_url))) as running:
        yield running


@pytest.fixture
async def host(gateway: RunningGateway) -> AsyncIterator[Host]:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        yield Host(http, gateway.url)


async def test_server_discover_offers_the_tasks_extension_when_an_upstream_does(host: Host) -> None:
    discovered = await host.call("server/discover", {})
    assert discovered["capabilities"]["extensions"] == {TASKS_EXTENSION: {}}
    assert "tasks" not in discovered["capabilities"]


async def test_server_discover_offers_no_tasks_extension_when_no_upstream_does(tmp_path: Path) -> None:
    async with (
        serve_gateway(keyless_config(tmp_path, demo_stdio_yaml())) as gateway,
        httpx2.AsyncClient(timeout=TIMEOUT) as http,
    ):
        discovered = await Host(http, gateway.url).call("server/discover", {})
    assert "extensions" not in discovered["capabilities"]


async def test_a_task_started_through_the_gateway_is_polled_to_its_inlined_result(host: Host) -> None:
    created = await host.call("tools/call", {"name": "work__slow_compute", "arguments": {"seconds": 0.2}})
    assert created["resultType"] == "task"
    assert created["taskId"].startswith("mcpgw-task.")
    assert isinstance(created["ttlMs"], int) and isinstance(created["pollIntervalMs"], int)
    assert "requestState" not in created and "result" not in created

    done = await host.until(created["taskId"], "completed", "failed", "cancelled")

    assert done["status"] == "completed"
    assert done["taskId"] == created["taskId"]
    assert done["resultType"] == "complete"
    assert done["result"]["content"][0]["text"] == "computed  in 0.2s"


async def test_a_task_that_needs_input_resumes_when_tasks_update_answers_it(host: Host) -> None:
    created = await host.call(
        "tools/call", {"name": "work__confirm_delete", "arguments": {"filename": "a.txt"}}
    )
    waiting = await host.until(created["taskId"], "input_required")
    [key] = waiting["inputRequests"]
    assert waiting["inputRequests"][key]["method"] == "elicitation/create"

    ack = await host.call(
        "tasks/update",
        {
            "taskId": created["taskId"],
            "inputResponses": {key: {"action": "accept", "content": {"confirm": True}}},
        },
    )

    assert ack == {"resultType": "complete", "_meta": ack["_meta"]}
    done = await host.until(created["taskId"], "completed")
    assert done["result"]["content"][0]["text"] == "Deleted a.txt"


async def test_a_cancelled_task_is_acknowledged_empty_and_ends_cancelled(host: Host) -> None:
    created = await host.call("tools/call", {"name": "work__slow_compute", "arguments": {"seconds": 60}})

    ack = await host.call("tasks/cancel", {"taskId": created["taskId"]})

    assert set(ack) <= {"resultType", "_meta"} and ack["resultType"] == "complete"
    assert (await host.until(created["taskId"], "cancelled"))["status"] == "cancelled"


@pytest.mark.parametrize("method", ["tasks/get", "tasks/update", "tasks/cancel"])
@pytest.mark.parametrize(
    "task_id",
    ["never-minted", "mcpgw-task.WyJ3b3JrIiwiYWJjIl0.AAAAAAAAAAAAAAAAAAAAAA", "mcpgw-task.!!!.???"],
)
async def test_a_task_id_the_gateway_never_gave_is_invalid_params(
    host: Host, method: str, task_id: str
) -> None:
    params: dict[str, Any] = {"taskId": task_id}
    if method == "tasks/update":
        params["inputResponses"] = {}
    refused = await host.call(method, params)
    assert refused == {"code": -32602, "message": f"Unknown task: {task_id}"}


async def test_a_task_the_upstream_forgot_is_the_same_unknown_task(
    host: Host, gateway: RunningGateway
) -> None:
    """A well-signed id whose upstream task does not exist: the upstream's own words (which would
    name its id) do not reach the host."""
    organisation = await gateway.gateway.store.ensure_organisation("default")
    gone = SealedTask("work", "gone")
    forged = gateway.gateway.endpoint.proxy.tasks.ids.seal((organisation.id, None), gone)
    refused = await host.call("tasks/get", {"taskId": forged})
    assert refused == {"code": -32602, "message": f"Unknown task: {forged}"}


async def test_another_keys_or_organisations_task_is_indistinguishable_from_an_unknown_one(
    tmp_path: Path, upstream_url: str
) -> None:
    config = write_config(tmp_path, f"database: ./gw.db\nupstreams:{upstream_yaml(upstream_url)}\n")
    async with serve_gateway(config) as gateway, httpx2.AsyncClient(timeout=TIMEOUT) as http:
        store = gateway.gateway.store
        organisation = await store.ensure_organisation("default")
        other_organisation = await store.ensure_organisation("other")
        owner = Host(http, gateway.url, (await store.create_api_key(organisation.id)).secret)
        colleague = Host(http, gateway.url, (await store.create_api_key(organisation.id)).secret)
        stranger = Host(http, gateway.url, (await store.create_api_key(other_organisation.id)).secret)
        created = await owner.call("tools/call", {"name": "work__slow_compute", "arguments": {"seconds": 60}})
        token = created["taskId"]

        for other in (colleague, stranger):
            for method in ("tasks/get", "tasks/cancel"):
                assert await other.call(method, {"taskId": token}) == {
                    "code": -32602,
                    "message": f"Unknown task: {token}",
                }
        assert (await owner.call("tasks/get", {"taskId": token}))["status"] == "working"
        await owner.call("tasks/cancel", {"taskId": token})


@pytest.mark.parametrize("method", ["tasks/get", "tasks/update", "tasks/cancel"])
async def test_tasks_methods_from_a_host_that_did_not_declare_the_extension_are_missing_capability(
    host: Host, method: str
) -> None:
    refused = await host.call(method, {"taskId": "gate-test", "inputResponses": {}}, capabilities={})
    assert refused["code"] == -32021
    assert refused["data"] == {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}


async def test_a_host_that_did_not_declare_the_extension_gets_the_tools_result_at_once(host: Host) -> None:
    answer = await host.call("tools/call", {"name": "work__slow_compute", "arguments": {"seconds": 0}}, {})
    assert answer["resultType"] == "complete"
    assert "taskId" not in answer
    assert answer["content"][0]["text"] == "computed  in 0s"


async def test_a_tasks_request_whose_mcp_name_is_not_its_task_id_is_a_400_header_mismatch(host: Host) -> None:
    created = await host.call("tools/call", {"name": "work__slow_compute", "arguments": {"seconds": 60}})
    message = request("tasks/get", {"taskId": created["taskId"]})

    mismatched = await host.post(message, **{"mcp-name": "some-other-task"})
    missing_headers = headers_for(message)
    del missing_headers["mcp-name"]
    with anyio.fail_after(TIMEOUT):
        missing = await host.http.post(host.url, json=message, headers=missing_headers)

    for response in (mismatched, missing):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == -32020
    assert (await host.post(message)).json()["result"]["status"] == "working"
    await host.call("tasks/cancel", {"taskId": created["taskId"]})


def test_a_task_id_opens_only_for_the_caller_it_was_sealed_for() -> None:
    ids = TaskIds(b"k" * 32)
    token = ids.seal(("org", "key"), SealedTask("work", "t-1", "row", "session"))

    assert ids.open(("org", "key"), token) == SealedTask("work", "t-1", "row", "session")
    assert ids.open(("org", "other-key"), token) is None
    assert ids.open(("other-org", "key"), token) is None
    assert TaskIds(b"j" * 32).open(("org", "key"), token) is None
    assert ids.open(("org", "key"), token[:-2] + ("AA" if not token.endswith("AA") else "BB")) is None


async def recorded_calls(gateway: RunningGateway) -> list[RecordedInvocation]:
    """Every invocation row of the gateway's record, oldest first."""
    store = gateway.gateway.store
    sessions = await store.list_sessions(None, api_key_id=None, seek=Seek(), limit=200)
    rows: list[RecordedInvocation] = []
    for session in sessions.rows:
        rows.extend((await store.list_invocations(session.id, seek=Seek(), limit=200)).rows)
    return rows


@pytest.mark.parametrize(
    ("tool", "arguments", "cancel", "outcome", "recorded"),
    [
        ("work__slow_compute", {"seconds": 0.2}, False, "ok", "computed  in 0.2s"),
        ("work__failing_job", {}, False, "tool_error", "failing_job failed"),
        ("work__protocol_error_job", {}, False, "upstream_error", "protocol_error_job broke down"),
        ("work__slow_compute", {"seconds": 60}, True, "cancelled", '"status":"cancelled"'),
    ],
)
async def test_a_task_is_one_invocation_row_finished_when_the_gateway_sees_it_end(
    host: Host,
    gateway: RunningGateway,
    tool: str,
    arguments: dict[str, Any],
    cancel: bool,
    outcome: str,
    recorded: str,
) -> None:
    created = await host.call("tools/call", {"name": tool, "arguments": arguments})
    [started] = await recorded_calls(gateway)
    assert (started.method, started.tool_name, started.outcome, started.success) == (
        "tools/call",
        tool,
        "task_pending",
        False,
    )
    assert created["taskId"] in (started.result_json or "")

    if cancel:
        await host.call("tasks/cancel", {"taskId": created["taskId"]})
    await host.until(created["taskId"], "completed", "failed", "cancelled")

    [finished] = await recorded_calls(gateway)  # still one row: the tasks/* requests add none
    assert finished.id == started.id
    assert finished.outcome == outcome
    assert finished.success is (outcome == "ok")
    assert recorded in (finished.result_json or "")
    if not cancel:
        assert finished.duration_ms >= 100  # to the end of the task, not to its creation


async def test_a_task_never_polled_to_its_end_stays_recorded_as_pending(
    host: Host, gateway: RunningGateway
) -> None:
    created = await host.call("tools/call", {"name": "work__slow_compute", "arguments": {"seconds": 60}})
    assert (await host.call("tasks/get", {"taskId": created["taskId"]}))["status"] == "working"

    [row] = await recorded_calls(gateway)

    assert (row.outcome, row.success) == ("task_pending", False)
    await host.call("tasks/cancel", {"taskId": created["taskId"]})


class HandshakeHost:
    """A host of the handshake era (2025-11-25), over raw HTTP with its `Mcp-Session-Id`."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http, self.url = http, url
        self.headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
        self.ids = iter(range(1, 1000))

    async def open(self, capabilities: dict[str, Any]) -> dict[str, Any]:
        params = {"protocolVersion": "2025-11-25", "capabilities": capabilities, "clientInfo": HANDSHAKE_HOST}
        message = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
        with anyio.fail_after(TIMEOUT):
            response = await self.http.post(self.url, json=message, headers=self.headers)
            self.headers["mcp-session-id"] = response.headers["mcp-session-id"]
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await self.http.post(self.url, json=initialized, headers=self.headers)
        answer: dict[str, Any] = _final(response)["result"]
        return answer

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        message = {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params}
        with anyio.fail_after(TIMEOUT):
            body = _final(await self.http.post(self.url, json=message, headers=self.headers))
        return body.get("result", body.get("error"))

    async def until(self, task_id: str, *statuses: str) -> dict[str, Any]:
        with anyio.fail_after(TIMEOUT):
            while True:
                task: dict[str, Any] = await self.call("tasks/get", {"taskId": task_id})
                if task.get("status") in statuses:
                    return task
                await anyio.sleep(task["pollIntervalMs"] / 1000)


HANDSHAKE_HOST = {"name": "handshake-host", "version": "1"}


def _final(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in an answer, whether sent as JSON or as an event stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        messages = [orjson.loads(event) for event in events if event]
        return next(m for m in reversed(messages) if "id" in m and "method" not in m)
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize(
    "capabilities", [{}, {"extensions": {TASKS_EXTENSION: {}}}], ids=["plain", "declaring"]
)
async def test_a_2025_host_gets_a_task_capable_tools_result_at_once_and_a_task_only_tool_refused(
    gateway: RunningGateway, capabilities: dict[str, Any]
) -> None:
    """What a handshake-era host sees of a task-capable tool: its result, as from any tool (the
    extension is of 2026-07-28, so the gateway does not offer it and the upstream makes no task,
    whatever the host declared); a tool that can only run as a task is refused with -32021,
    naming the extension, and so is `tasks/get`."""
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        host = HandshakeHost(http, gateway.url)
        initialized = await host.open(capabilities)
        at_once = await host.call("tools/call", {"name": "work__slow_compute", "arguments": {"seconds": 0}})
        refused = await host.call("tools/call", {"name": "work__failing_job", "arguments": {}})
        polled = await host.call("tasks/get", {"taskId": "anything"})

    assert "extensions" not in initialized["capabilities"]
    assert "taskId" not in at_once and at_once["content"][0]["text"] == "computed  in 0s"
    assert refused["code"] == -32021
    assert refused["data"]["requiredCapabilities"]["extensions"] == {TASKS_EXTENSION: {}}
    assert polled["code"] == -32021
