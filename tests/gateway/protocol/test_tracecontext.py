"""W3C traceparent: which values continue a trace, and what the upstream is handed."""

from __future__ import annotations

import pytest

from gateway.protocol.jsonrpc import meta_of
from gateway.protocol.tracecontext import TraceParent, trace_for

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has 4 fields
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "",
        None,
        42,
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(value: object) -> None:
    assert TraceParent.parse(value) is None


def test_a_future_version_may_carry_more_fields() -> None:
    parsed = TraceParent.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more")
    assert parsed is not None and parsed.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_the_upstream_gets_a_child_of_the_hosts_span_and_other_meta_is_kept() -> None:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "x", "_meta": {"traceparent": VALID, "progressToken": 7}}}  # fmt: skip
    trace, forwarded = trace_for(message)
    child = TraceParent.parse(meta_of(forwarded)["traceparent"])
    assert child == trace and child.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert child.span_id != "00f067aa0ba902b7" and child.flags == "01"
    assert meta_of(forwarded)["progressToken"] == 7
    assert meta_of(message)["traceparent"] == VALID  # the host's message is not changed


def test_the_http_header_is_used_when_meta_has_none_and_meta_wins_over_it() -> None:
    other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    from_header, _ = trace_for({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {}}, other)
    with_meta = {"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"_meta": {"traceparent": VALID}}}
    from_meta, _ = trace_for(with_meta, other)
    assert (from_header.trace_id, from_header.flags) == ("0af7651916cd43dd8448eb211c80319c", "00")
    assert from_meta.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_without_a_traceparent_each_request_starts_its_own_trace() -> None:
    first, forwarded = trace_for({"jsonrpc": "2.0", "id": 1, "method": "m"})
    second, _ = trace_for({"jsonrpc": "2.0", "id": 2, "method": "m"})
    assert first.trace_id != second.trace_id and len(first.trace_id) == 32
    assert forwarded["params"]["_meta"]["traceparent"] == str(first)
