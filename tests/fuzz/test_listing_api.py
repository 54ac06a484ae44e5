"""Fuzzing the listing API (`/mcp/{organisationId}/sessions…`) and the credential API (`/api/mcp/sessions…`).

Ids are drawn mostly from what exists (the organisation, recorded sessions, credential rows),
query strings carry the paging and filter parameters with any value (percent-encoded garbage
and bytes that are not UTF-8 included), and every caller is tried: admin, plain key, another
organisation's admin, no key, a made-up key. Every answer must come in time and never be a 5xx,
and every refusal must be its surface's error body.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.budget import fuzz_settings
from tests.fuzz.strategies import rarely
from tests.fuzz.world import Answer, Shot, World

PARAMETERS = ["Limit", "Cursor", "limit", "cursor", "status", "auth_mode", "kind", "mcp_client", "x"]
segment_text = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=40)
query_text = st.one_of(
    st.integers(-5, 300).map(str),
    st.sampled_from(["", "200", "201", "0", "1e2", " 5", "\uff15", "active", "vk", "flow", "web", "vault"]),
    st.sampled_from(["W10.AAAA", "a.b", "..", "x" * 199 + ".y", "WzEsMV0.AAAAAAAAAAAAAAAAAAAAAA"]),
    st.text(max_size=30),
)
raw_escapes = st.sampled_from(["%ff", "%00", "%C0%AF", "%e2%82", "%", "%zz", "%2526"])


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    pairs = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(PARAMETERS))
        value = quote(draw(query_text), safe="")
        if draw(st.integers(0, 9)) == 9:
            value += draw(raw_escapes)  # not UTF-8, or not an escape at all
        pairs.append(f"{name}={value}")
    return "?" + "&".join(pairs) if pairs else ""


def pick(data: st.DataObject, known: list[str]) -> str:
    """An id that exists, one that does not, or one that is not an id."""
    choice = data.draw(st.sampled_from(["known"] * 3 + ["unknown", "garbage"]))
    if choice == "known" and known:
        return data.draw(st.sampled_from(known))
    if choice == "garbage":
        return quote(data.draw(segment_text), safe="")
    return str(uuid.UUID(int=data.draw(st.integers(0, 2**128 - 1))))


def assert_surface_error(path: str, shot: Shot, answer: Answer) -> None:
    """Refusals are problem+json on the listing API and BifrostError on `/api/*`."""
    if answer.status < 400 or shot.method == "HEAD":
        return
    body: Any = orjson.loads(answer.body)
    if path.startswith("/api/"):
        assert answer.content_type == "application/json", (shot, answer)
        assert body["status_code"] == answer.status and isinstance(body["error"]["code"], str), (shot, answer)
    else:
        assert answer.content_type == "application/problem+json", (shot, answer)
        assert body["status"] == answer.status and isinstance(body["title"], str), (shot, answer)


@fuzz_settings()
@given(data=st.data())
async def test_the_listing_and_credential_apis_never_answer_with_a_server_error(
    fuzz_world: World, data: st.DataObject
) -> None:
    org = data.draw(st.sampled_from(["{org}"] * 4 + ["{other}", quote(data.draw(segment_text), safe="")]))
    session = pick(data, fuzz_world.session_ids)
    row = pick(data, fuzz_world.credential_ids)
    path, method = data.draw(
        st.sampled_from(
            [
                (f"/mcp/{org}/sessions", "GET"),
                (f"/mcp/{org}/sessions/{session}", "GET"),
                (f"/mcp/{org}/sessions/{session}/invocations", "GET"),
                ("/api/mcp/sessions", "GET"),
                (f"/api/mcp/sessions/{row}", "DELETE"),
                (f"/api/mcp/sessions/{row}/reauth", "POST"),
                ("/openapi.json", "GET"),
            ]
        )
    )
    if data.draw(rarely):
        method = data.draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]))
    key = data.draw(
        st.sampled_from(["admin"] * 4 + ["fuzz"] * 2 + ["stranger", "none", "raw:Bearer mgw_forged", "raw:x"])
    )
    shot = Shot(method, path + data.draw(query_strings()), key)
    assert_surface_error(path, shot, await fuzz_world.fire(shot))
    await fuzz_world.still_serves()
