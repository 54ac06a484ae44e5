"""Fuzzing the MCP endpoint (`/mcp`, `/mcp/{organisationId}`) in both protocol generations.

Every drawn request must be answered in full within the deadline and never with a 5xx; every
refusal must be a JSON-RPC error a host can read; and after each one a normal client's
`tools/call` still goes through (checked by `World.fire` and `World.still_serves`).
"""

from __future__ import annotations

from hypothesis import given

from tests.fuzz.budget import fuzz_settings
from tests.fuzz.strategies import garbage_shots, handshake_shots, stateless_shots, stream_shots
from tests.fuzz.world import Answer, Shot, World, json_rpc_error

_REFUSED_BY_THE_HTTP_LAYER = frozenset({408, 414, 431})  # gateway/host/limits.py


def assert_readable(shot: Shot, answer: Answer) -> None:
    """A refusal says why, as a JSON-RPC error; an accepted notification or response is a bare 202."""
    if answer.status == 202:
        assert answer.body == b"", (shot, answer)
    if answer.status in _REFUSED_BY_THE_HTTP_LAYER:
        # Refused while reading the head or body, before any MCP handling: a short plain text.
        assert answer.content_type.startswith("text/plain"), (shot, answer)
        return
    if answer.status >= 400 and shot.method != "HEAD":
        error = json_rpc_error(answer)
        assert error is not None, (shot, answer)
        assert isinstance(error.get("code"), int) and isinstance(error.get("message"), str), (shot, answer)
        assert answer.content_type.startswith("application/json"), (shot, answer)


@fuzz_settings()
@given(shot=handshake_shots())
async def test_session_based_traffic_is_never_a_server_error_and_never_hangs(
    fuzz_world: World, shot: Shot
) -> None:
    assert_readable(shot, await fuzz_world.fire(shot))
    await fuzz_world.still_serves()


@fuzz_settings()
@given(shot=stateless_shots())
async def test_stateless_2026_traffic_is_never_a_server_error_and_never_hangs(
    fuzz_world: World, shot: Shot
) -> None:
    assert_readable(shot, await fuzz_world.fire(shot))
    await fuzz_world.still_serves()


@fuzz_settings()
@given(shot=garbage_shots())
async def test_garbage_of_any_http_method_is_refused_with_a_json_rpc_error(
    fuzz_world: World, shot: Shot
) -> None:
    assert_readable(shot, await fuzz_world.fire(shot))
    await fuzz_world.still_serves()


@fuzz_settings()
@given(shot=stream_shots())
async def test_opening_streams_and_ending_sessions_is_never_a_server_error(
    fuzz_world: World, shot: Shot
) -> None:
    assert_readable(shot, await fuzz_world.fire(shot))
    await fuzz_world.still_serves()
