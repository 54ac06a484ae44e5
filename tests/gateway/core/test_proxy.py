"""The proxy core's own rules, over fake upstream channels (tests/gateway/core/fakes.py)."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest

from gateway.config import ToolFilter
from gateway.core.proxy import Proxy
from gateway.core.router import Router
from gateway.principal import Principal
from gateway.protocol.context import NO_CONTEXT, RequestContext
from gateway.protocol.jsonrpc import JSONObject
from tests.gateway.core.fakes import FakeUpstream, ListRecorder, echo, host_session, never, text

_ids = itertools.count(1)


def proxy_for(*upstreams: FakeUpstream) -> tuple[Proxy, ListRecorder]:
    recorder = ListRecorder()
    return Proxy(Router([u.config for u in upstreams]), recorder), recorder


def request(method: str, **params: Any) -> JSONObject:
    return {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params}


async def call(
    proxy: Proxy,
    session: Any,
    name: str,
    context: RequestContext = NO_CONTEXT,
    sink: Any = None,
    **arguments: Any,
) -> JSONObject:
    return await proxy.answer(session, request("tools/call", name=name, arguments=arguments), sink, context)


async def listed(proxy: Proxy, session: Any) -> list[str]:
    answer = await proxy.answer(session, request("tools/list"), None, NO_CONTEXT)
    return [tool["name"] for tool in answer["result"]["tools"]]


async def test_tools_are_listed_under_their_upstreams_prefix_and_routed_back_by_it() -> None:
    books, films = FakeUpstream("books"), FakeUpstream("films", prefix="")
    proxy, _ = proxy_for(books, films)
    session = host_session({"books": books, "films": films})
    assert await listed(proxy, session) == ["books__echo", "echo"]
    answer = await proxy.answer(
        session, request("tools/call", name="books__echo", arguments={"text": "hi"}), None, NO_CONTEXT
    )
    assert answer["result"] == text("hi")
    assert books.received[-1]["params"]["name"] == "echo" and not films.received[1:]


async def test_a_name_two_upstreams_claim_is_refused_not_guessed() -> None:
    left, right = FakeUpstream("left", prefix=""), FakeUpstream("right", prefix="")
    proxy, _ = proxy_for(left, right)
    session = host_session({"left": left, "right": right})
    assert await listed(proxy, session) == []
    answer = await call(proxy, session, "echo")
    assert answer["error"]["code"] == -32602 and "'left'" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("upstream_filter", "key_filter"),
    [(ToolFilter(deny=("secret",)), ToolFilter()), (ToolFilter(), ToolFilter(deny=("demo__secret",)))],
    ids=["the-upstream-denies-it", "the-key-denies-it"],
)
async def test_a_filtered_tool_is_neither_listed_nor_callable(
    upstream_filter: ToolFilter, key_filter: ToolFilter
) -> None:
    demo = FakeUpstream("demo", tools={"echo": echo, "secret": echo}, filter=upstream_filter)
    proxy, recorder = proxy_for(demo)
    session = host_session({"demo": demo}, Principal("org", "key", None, False, key_filter))
    assert await listed(proxy, session) == ["demo__echo"]
    answer = await proxy.answer(
        session, request("tools/call", name="demo__secret", arguments={}), None, NO_CONTEXT
    )
    assert "Unknown tool" in answer["error"]["message"]
    assert [m for m in demo.received if m.get("params", {}).get("name") == "secret"] == []
    assert [(c.name, c.outcome) for c in recorder.calls] == [("demo__secret", "denied")]


async def test_each_call_is_recorded_with_its_outcome_and_the_hosts_trace() -> None:
    async def failing(arguments: JSONObject, sink: Any) -> JSONObject:
        return {**text("no"), "isError": True}

    demo = FakeUpstream("demo", tools={"echo": echo, "fail": failing})
    proxy, recorder = proxy_for(demo)
    session = host_session({"demo": demo})
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    context = RequestContext(traceparent=f"00-{trace}-00f067aa0ba902b7-01")
    await proxy.answer(
        session, request("tools/call", name="demo__echo", arguments={"text": "a"}), None, context
    )
    await proxy.answer(session, request("tools/call", name="demo__fail", arguments={}), None, NO_CONTEXT)
    assert [(c.upstream, c.upstream_name, c.outcome) for c in recorder.calls] == [
        ("demo", "echo", "ok"),
        ("demo", "fail", "tool_error"),
    ]
    assert recorder.calls[0].trace_id == trace
    sent = demo.received[-2]["params"]["_meta"]["traceparent"]
    assert sent.split("-")[1] == trace  # the upstream gets a child span of the host's trace


async def test_a_request_the_host_cancels_is_answered_minus_32800_and_recorded_cancelled() -> None:
    demo = FakeUpstream("demo", tools={"wait": never})
    proxy, recorder = proxy_for(demo)
    session = host_session({"demo": demo})
    call = request("tools/call", name="demo__wait", arguments={})
    answers: list[JSONObject] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                answers.append(await proxy.answer(session, call, None, NO_CONTEXT))

            tg.start_soon(serve)
            while not session.cancel_host_request(call["id"]):
                await anyio.lowlevel.checkpoint()  # until the request is being served
    assert answers[0]["error"]["code"] == -32800
    assert [c.outcome for c in recorder.calls] == ["cancelled"]


async def test_a_second_request_with_an_id_in_flight_is_refused_and_the_first_unharmed() -> None:
    release = anyio.Event()

    async def held(arguments: JSONObject, sink: Any) -> JSONObject:
        await release.wait()
        return text("first")

    demo = FakeUpstream("demo", tools={"held": held, "echo": echo})
    proxy, _ = proxy_for(demo)
    session = host_session({"demo": demo})
    first = request("tools/call", name="demo__held", arguments={})
    twin = {**request("tools/call", name="demo__echo", arguments={}), "id": first["id"]}
    answers: list[JSONObject] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                answers.append(await proxy.answer(session, first, None, NO_CONTEXT))

            tg.start_soon(serve)
            while not any(m.get("params", {}).get("name") == "held" for m in demo.received):
                await anyio.lowlevel.checkpoint()  # until the first is upstream
            refused = await proxy.answer(session, twin, None, NO_CONTEXT)
            release.set()
    assert refused["error"]["code"] == -32600 and "already in flight" in refused["error"]["message"]
    assert answers == [{"jsonrpc": "2.0", "id": first["id"], "result": text("first")}]


async def test_arguments_nested_past_the_encoder_are_refused_and_recorded_cut() -> None:
    demo = FakeUpstream("demo")
    proxy, recorder = proxy_for(demo)
    session = host_session({"demo": demo})
    deep: Any = "bottom"
    for _ in range(300):
        deep = {"next": deep}
    answer = await proxy.answer(
        session, request("tools/call", name="demo__echo", arguments={"text": deep}), None, NO_CONTEXT
    )
    assert answer["error"]["code"] == -32602 and "nested" in answer["error"]["message"]
    assert [c.outcome for c in recorder.calls] == ["denied"]
    assert demo.received[-1]["method"] == "tools/list"  # the call itself never left


async def test_a_list_change_an_upstream_announces_makes_the_session_list_again() -> None:
    async def add(arguments: JSONObject, sink: Any) -> JSONObject:
        demo.tools["added"] = echo
        assert sink is not None
        await sink.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        return text("added")

    demo = FakeUpstream("demo", tools={"add": add})
    proxy, _ = proxy_for(demo)
    session = host_session({"demo": demo})
    assert await listed(proxy, session) == ["demo__add"]

    class Sink:
        async def send(self, message: JSONObject) -> None:
            return None

    await proxy.answer(session, request("tools/call", name="demo__add", arguments={}), Sink(), NO_CONTEXT)
    answer = await proxy.answer(
        session, request("tools/call", name="demo__added", arguments={"text": "x"}), None, NO_CONTEXT
    )
    assert answer["result"] == text("x")  # routed after a fresh listing, without the host listing first
