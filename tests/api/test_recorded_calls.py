"""What the record says about each call equals what the host sent and got back, call by call.

Covers every outcome a host can see (result, isError, JSON-RPC error, timeout, cancellation),
the other recorded methods, W3C trace context, redaction and the size cap.
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from gateway.recording import store_recorder as writer
from tests.api.conftest import ACCEPT, McpClient, Tenant, new_tenant
from tests.harness import RunningGateway

HOST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HOST_PARENT = f"00-{HOST_TRACE}-00f067aa0ba902b7-01"


async def recorded(http: httpx2.AsyncClient, gateway: RunningGateway, tenant: Tenant) -> list[dict[str, Any]]:
    """Every invocation of the tenant's only session, oldest first."""
    org = tenant.organisation_id
    sessions = (await http.get(f"{gateway.base_url}/mcp/{org}/sessions", headers=tenant.headers)).json()[
        "data"
    ]
    assert len(sessions) == 1
    url = f"{gateway.base_url}/mcp/{org}/sessions/{sessions[0]['id']}/invocations"
    page = (await http.get(url, headers=tenant.headers, params={"Limit": 200})).json()
    calls: list[dict[str, Any]] = page["data"]
    return calls


async def fresh(keyed: RunningGateway, http: httpx2.AsyncClient, name: str) -> tuple[Tenant, McpClient, str]:
    tenant = await new_tenant(keyed, name)
    client = McpClient(http, keyed.url, tenant.key)
    return tenant, client, await client.open()


def answer_of(response: dict[str, Any]) -> Any:
    return response["result"] if "result" in response else response["error"]


async def test_each_outcome_is_recorded_as_the_host_saw_it(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant, client, session = await fresh(keyed, http, "outcomes")
    sent: list[tuple[str, dict[str, Any]]] = [
        ("demo__echo", {"text": "hello", "nested": {"list": [1, 2.5, None, True]}}),
        ("demo__fail", {"message": "it broke"}),
        ("demo__structured", {"a": 6, "b": 7}),
        ("demo__no_such_tool", {"x": 1}),
        ("demo__wait", {"seconds": 30}),  # over the upstream's 2 s call timeout
    ]
    answers = [await client.call(session, tool, arguments) for tool, arguments in sent]
    assert answers[3]["error"]["code"] == -32602 and answers[4]["error"]["code"] == -32002

    calls = await recorded(http, keyed, tenant)
    assert [c["toolName"] for c in calls] == [tool for tool, _ in sent]
    assert [c["outcome"] for c in calls] == ["ok", "tool_error", "ok", "denied", "timeout"]
    assert [c["success"] for c in calls] == [True, False, True, False, False]
    for call, (_, arguments), answer in zip(calls, sent, answers, strict=True):
        assert json.loads(call["argumentsJson"]) == arguments
        assert json.loads(call["resultJson"]) == answer_of(answer)
        assert json.loads(call["jsonRpcId"]) == answer["id"]
        assert call["method"] == "tools/call"
        assert re.fullmatch(r"[0-9a-f]{32}", call["traceId"])
    assert [(c["upstream"], c["upstreamToolName"]) for c in calls[:3]] == [
        ("demo", "echo"),
        ("demo", "fail"),
        ("demo", "structured"),
    ]
    assert (calls[3]["upstream"], calls[3]["upstreamToolName"]) == (None, None)
    assert calls[4]["durationMs"] >= 2000 and calls[4]["upstreamMs"] >= 2000
    assert all(c["durationMs"] >= (c["upstreamMs"] or 0) for c in calls)


async def test_a_cancelled_call_is_recorded_as_cancelled(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant, _client, session = await fresh(keyed, http, "cancelled")
    headers = {**ACCEPT, "x-api-key": tenant.key, "mcp-session-id": session}
    params = {"name": "demo__count_slowly", "arguments": {"steps": 1000}, "_meta": {"progressToken": "p"}}
    call = {"jsonrpc": "2.0", "id": "slow-1", "method": "tools/call", "params": params}
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "slow-1"}}
    events: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        async with http.stream("POST", keyed.url, json=call, headers=headers) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                events.append(json.loads(line[5:]))
                if len(events) == 1:  # the first progress: the call is running upstream
                    await http.post(keyed.url, json=cancel, headers=headers)
    assert events[0]["method"] == "notifications/progress"
    answered = events[-1]
    assert answered["error"]["code"] == -32800

    [recorded_call] = await recorded(http, keyed, tenant)
    assert (recorded_call["outcome"], recorded_call["success"]) == ("cancelled", False)
    assert json.loads(recorded_call["resultJson"]) == answered["error"]
    assert json.loads(recorded_call["jsonRpcId"]) == "slow-1"


async def test_resources_prompts_and_completions_are_recorded_with_their_method(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant, client, session = await fresh(keyed, http, "methods-recorded")
    read = await client.request(session, "resources/read", {"uri": "demo://readme"})
    prompt = await client.request(
        session, "prompts/get", {"name": "demo__greet", "arguments": {"name": "Ada"}}
    )
    ref = {"type": "ref/prompt", "name": "demo__greet"}
    complete = await client.request(
        session, "completion/complete", {"ref": ref, "argument": {"name": "name", "value": "A"}}
    )

    calls = await recorded(http, keyed, tenant)
    assert [(c["method"], c["toolName"]) for c in calls] == [
        ("resources/read", "demo://readme"),
        ("prompts/get", "demo__greet"),
        ("completion/complete", "demo__greet"),
    ]
    assert json.loads(calls[0]["argumentsJson"]) == {"uri": "demo://readme"}
    assert json.loads(calls[1]["argumentsJson"]) == {"name": "Ada"}
    assert json.loads(calls[2]["argumentsJson"])["argument"] == {"name": "name", "value": "A"}
    for call, answer in zip(calls, (read, prompt, complete), strict=True):
        assert json.loads(call["resultJson"]) == answer["result"]


async def test_the_hosts_trace_continues_and_the_upstream_gets_a_child_span(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant, client, session = await fresh(keyed, http, "tracing")
    params = {"name": "demo__traceparent", "arguments": {}}
    via_meta = await client.request(session, "tools/call", {**params, "_meta": {"traceparent": HOST_PARENT}})
    header_trace = "0af7651916cd43dd8448eb211c80319c"
    via_header = await client.call(
        session, "demo__traceparent", {}, headers={"traceparent": f"00-{header_trace}-b7ad6b7169203331-01"}
    )
    fresh_trace = await client.call(session, "demo__traceparent", {})
    malformed = await client.request(session, "tools/call", {**params, "_meta": {"traceparent": "00-zz-01"}})

    seen_upstream = [
        r["result"]["content"][0]["text"] for r in (via_meta, via_header, fresh_trace, malformed)
    ]
    calls = await recorded(http, keyed, tenant)
    for upstream_parent, call in zip(seen_upstream, calls, strict=True):
        version, trace_id, span_id, _flags = upstream_parent.split("-")
        assert (version, trace_id) == ("00", call["traceId"])
        assert span_id != "00f067aa0ba902b7" and len(span_id) == 16
    assert calls[0]["traceId"] == HOST_TRACE
    assert calls[1]["traceId"] == header_trace
    assert len({calls[2]["traceId"], calls[3]["traceId"], HOST_TRACE, header_trace}) == 4


async def test_secrets_in_arguments_never_reach_the_database_file(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant, client, session = await fresh(keyed, http, "redaction")
    secrets = {
        "password": "hunter2-correct-horse",
        "apiKey": "plain-api-key-value-7781",
        "headers": {"Authorization": "Bearer abcdefghijklmnop0123456789"},
        "note": "my key is sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345 ok",
        "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "max_tokens": 512,
    }
    answer = await client.call(session, "demo__echo", {"text": json.dumps(secrets)})
    assert "hunter2-correct-horse" in answer["result"]["content"][0]["text"]  # the host still gets it all
    await client.call(session, "demo__echo", {"text": "after", "token": "tok-9f8e7d6c5b4a"})

    [first, second] = await recorded(http, keyed, tenant)
    stored = first["argumentsJson"] + first["resultJson"] + second["argumentsJson"]
    assert "[REDACTED]" in stored and "max_tokens" in first["argumentsJson"]
    if keyed.gateway.config.postgres is not None:
        return  # what the API shows is checked above; the server's files are its own
    database = keyed.gateway.config.database
    raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for needle in (
        "hunter2-correct-horse",
        "abcdefghijklmnop0123456789",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        "dozjgNryP4J3jVmNHl0w5N",
        "tok-9f8e7d6c5b4a",
    ):
        assert needle.encode() not in raw, needle


async def test_ampersand_passwords_pass_keys_and_header_pairs_never_reach_the_record(
    keyed: RunningGateway, http: httpx2.AsyncClient
) -> None:
    tenant, client, session = await fresh(keyed, http, "redaction-gaps")
    line = "login failed: password=Tr0ub4dor&3xyz for ada, retrying in 5s"
    arguments = {
        "text": line,
        "pass": "plain-pass-value-5521",
        "headers": [["X-Api-Key", "header-pair-value-8813"], ["Accept", "application/json"]],
    }
    answer = await client.call(session, "demo__echo", arguments)
    assert answer["result"]["content"][0]["text"] == line  # the host still gets it all

    [call] = await recorded(http, keyed, tenant)
    kept = "login failed: password=[REDACTED] for ada, retrying in 5s"
    assert json.loads(call["argumentsJson"]) == {
        "text": kept,
        "pass": "[REDACTED]",
        "headers": [["X-Api-Key", "[REDACTED]"], ["Accept", "application/json"]],
    }
    assert json.loads(call["resultJson"])["content"][0]["text"] == kept
    database = keyed.gateway.config.database
    raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for needle in ("Tr0ub4dor", "&3xyz", "plain-pass-value-5521", "header-pair-value-8813"):
        assert needle.encode() not in raw, needle


@pytest.mark.parametrize("size", [70_000, 200_000])
async def test_large_arguments_are_stored_capped_and_flagged(
    keyed: RunningGateway, http: httpx2.AsyncClient, size: int
) -> None:
    tenant, client, session = await fresh(keyed, http, f"cap-{size}")
    answer = await client.call(session, "demo__echo", {"text": "é" * size})
    assert answer["result"]["content"][0]["text"] == "é" * size

    [call] = await recorded(http, keyed, tenant)
    assert call["argumentsTruncated"] and call["resultTruncated"]
    assert len(call["argumentsJson"].encode()) <= 64 * 1024
    assert call["argumentsJson"].startswith('{"text":"éé')


async def test_a_call_whose_row_cannot_be_committed_in_time_is_answered_with_an_error(
    keyed: RunningGateway, database: Path, http: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, client, session = await fresh(keyed, http, "unrecordable")
    monkeypatch.setattr(writer, "_WAIT_FOR_COMMIT_S", 0.5)  # instead of 30 s
    with closing(sqlite3.connect(database, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # the database stays locked past the deadline
        try:
            with anyio.fail_after(10):
                refused = await client.call(session, "demo__echo", {"text": "first"})
        finally:
            other.execute("COMMIT")
    assert refused["error"]["code"] == -32603
    assert "first" not in json.dumps(refused)  # the upstream's answer did not get out

    answered = await client.call(session, "demo__echo", {"text": "second"})
    assert answered["result"]["content"] == [{"type": "text", "text": "second"}]
    # The first row is written once the lock goes (recorded but unanswered is allowed).
    calls = await recorded(http, keyed, tenant)
    assert [json.loads(c["argumentsJson"])["text"] for c in calls] == ["first", "second"]
