"""Hypothesis strategies for requests to the MCP endpoint: garbage, and messages that are nearly right.

Near-valid messages are built the way a confused or hostile host would send them: the right
envelope with wrong types in any field, odd ids, unknown methods, responses and notifications
nobody asked for, batches, the 2026-07-28 per-request envelope with pieces missing or wrong and
routing headers that agree with the body or not, very long and unicode values, and nesting up
to `MAX_DEPTH` (deeper, past what the encoder takes, is test_known_attacks.py's own property).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st
from mcp.shared.inbound import encode_header_value

from tests.fuzz.world import HANDSHAKE_VERSION, MODERN_VERSION, Shot

MAX_DEPTH = 200
"""Nesting in the general fuzz stays below the depth at which JSON nesting is a known defect."""

PROTOCOL_META = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_META = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_META = "io.modelcontextprotocol/clientInfo"
LOG_LEVEL_META = "io.modelcontextprotocol/logLevel"

VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", HANDSHAKE_VERSION, MODERN_VERSION]
REQUESTS = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "subscriptions/listen",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "tasks/get",
]
NOTIFICATIONS = [
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/message",
]
TOOLS = [
    "web__echo",
    "web__fail",
    "web__structured",
    "web__log_levels",
    "web__traceparent",
    "web__touch",
    "web__wait",  # filtered out: invalid params
    "vault__echo",  # no credential yet: an error result with a connect link
    "vault__connect_account",
    "echo",
    "",
]
URIS = ["demo://readme", "demo://greeting/fuzz", "demo://nothing", "file:///etc/passwd", "", "demo://"]


# -- values --------------------------------------------------------------------------------------

texts = st.text(max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: past 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)


def _nested(depth: int, as_list: bool) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if as_list else {"d": value}
    return value


deep_values = st.builds(_nested, st.integers(1, MAX_DEPTH), st.booleans())
long_texts = st.builds(lambda char, size: char * size, st.characters(), st.integers(1_000, 70_000))
wide_values = st.builds(lambda size: list(range(size)), st.integers(100, 8_000))
odd_values = json_values | deep_values | long_texts | wide_values
ids = st.integers() | st.text(max_size=60) | st.none() | st.booleans() | st.floats() | json_values
rarely = st.integers(0, 9).map(lambda roll: roll == 9)


def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the value, now and then a wrong type in its place."""
    return rarely.flatmap(lambda odd: odd_values if odd else value)


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return rarely.flatmap(lambda is_odd: odd if is_odd else usual)


# -- messages ------------------------------------------------------------------------------------


def method_params(method: str) -> st.SearchStrategy[dict[str, Any]]:
    shaped: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "tools/call": st.fixed_dictionaries(
            {"name": maybe(st.sampled_from(TOOLS))},
            optional={"arguments": maybe(st.fixed_dictionaries({}, optional={"text": maybe(texts)}))},
        ),
        "resources/read": st.fixed_dictionaries({"uri": maybe(st.sampled_from(URIS))}),
        "resources/subscribe": st.fixed_dictionaries({"uri": maybe(st.sampled_from(URIS))}),
        "resources/unsubscribe": st.fixed_dictionaries({"uri": maybe(st.sampled_from(URIS))}),
        "prompts/get": st.fixed_dictionaries(
            {"name": maybe(st.sampled_from(["web__greet", "greet", ""]))},
            optional={"arguments": maybe(st.dictionaries(texts, maybe(texts), max_size=3))},
        ),
        "completion/complete": st.fixed_dictionaries(
            {
                "ref": maybe(
                    st.fixed_dictionaries({"type": maybe(st.just("ref/prompt")), "name": maybe(texts)})
                ),
                "argument": maybe(
                    st.fixed_dictionaries({"name": maybe(st.just("name")), "value": maybe(texts)})
                ),
            }
        ),
        "logging/setLevel": st.fixed_dictionaries(
            {"level": maybe(st.sampled_from(["debug", "info", "error", "emergency", "loud"]))}
        ),
        "initialize": st.fixed_dictionaries(
            {
                "protocolVersion": maybe(st.sampled_from(VERSIONS)),
                "capabilities": maybe(json_objects),
                "clientInfo": maybe(st.fixed_dictionaries({"name": maybe(texts), "version": maybe(texts)})),
            }
        ),
        "notifications/cancelled": st.fixed_dictionaries(
            {"requestId": ids}, optional={"reason": maybe(texts)}
        ),
        "notifications/progress": st.fixed_dictionaries(
            {"progressToken": ids, "progress": maybe(st.floats(allow_nan=False))}
        ),
    }
    return shaped.get(method, json_objects)


def with_meta(params: dict[str, Any], meta: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return meta.map(lambda m: {**params, "_meta": m})


request_meta = st.fixed_dictionaries(
    {},
    optional={
        "progressToken": ids,
        "traceparent": maybe(st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
        LOG_LEVEL_META: maybe(st.sampled_from(["debug", "error"])),
    },
)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """The 2026-07-28 per-request `_meta` envelope, whole or with pieces missing or wrong."""
    meta: dict[str, Any] = {
        PROTOCOL_META: draw(maybe(st.sampled_from([MODERN_VERSION, MODERN_VERSION, HANDSHAKE_VERSION]))),
        CAPABILITIES_META: draw(
            maybe(st.sampled_from([{}, {"elicitation": {}}, {"sampling": {}, "roots": {}}]))
        ),
        CLIENT_INFO_META: draw(
            maybe(st.fixed_dictionaries({"name": maybe(st.sampled_from(["fuzz", "host"])), "version": texts}))
        ),
    }
    if draw(rarely):
        del meta[draw(st.sampled_from(sorted(meta)))]
    return {**draw(request_meta), **meta}


@st.composite
def messages(draw: st.DrawFn, modern: bool) -> dict[str, Any]:
    """One JSON-RPC message: mostly requests, also notifications and unsolicited responses."""
    kind = draw(st.sampled_from(["request"] * 6 + ["notification", "response", "error"]))
    message: dict[str, Any] = {"jsonrpc": draw(maybe(st.just("2.0")))}
    if kind in ("request", "notification"):
        names = REQUESTS if kind == "request" else NOTIFICATIONS
        method = draw(mostly(st.sampled_from(names), texts))
        message["method"] = draw(maybe(st.just(method)))
        params = draw(method_params(method))
        if modern:
            params = draw(with_meta(params, envelopes()))
        elif draw(st.booleans()):
            params = draw(with_meta(params, request_meta))
        message["params"] = draw(mostly(st.just(params), odd_values))
        if kind == "request":
            message["id"] = draw(mostly(st.integers(-(2**31), 2**31) | st.text(max_size=20), ids))
    else:
        message["id"] = draw(mostly(st.integers(0, 100), ids))
        if kind == "response":
            message["result"] = draw(json_objects)
        else:
            message["error"] = draw(
                maybe(st.fixed_dictionaries({"code": maybe(st.integers()), "message": texts}))
            )
    if draw(rarely):
        del message[draw(st.sampled_from(sorted(message)))]
    return message


def encode(value: Any) -> bytes:
    """JSON as a host might send it; stdlib json, since it writes integers of any size."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


@st.composite
def mangled(draw: st.DrawFn, body: bytes) -> bytes:
    """A body cut short, or with a byte changed, inserted or removed."""
    if not body:
        return body
    where = draw(st.integers(1, len(body) - 1)) if len(body) > 1 else 0
    how = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
    if how == "cut":
        return body[:where]
    if how == "delete":
        return body[:where] + body[where + 1 :]
    byte = bytes([draw(st.integers(0, 255))])
    return body[:where] + byte + body[where + (how == "flip") :]


garbage_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b"{}",
            b"NaN",
            b'"\\ud800"',
            b'{"jsonrpc":"2.0","id":1,"method":"\\ud800"}',
            b'{"jsonrpc":"2.0","id":1,"method":"ping"}{"jsonrpc":"2.0"}',
            b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe"}',
            b"\xef\xbb\xbf" + b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
            b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}',
        ]
    ),
    json_values.map(encode),
)


# -- headers -------------------------------------------------------------------------------------

header_values = st.binary(max_size=60).map(
    # What HTTP lets a client send: no control characters, no white space at either end.
    lambda raw: bytes(b for b in raw if b >= 0x20 and b != 0x7F).strip(b" ")
)
content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"APPLICATION/JSON",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/json-seq",
        b"",
    ]
)
accepts = st.sampled_from(
    [b"application/json, text/event-stream", b"application/json", b"text/event-stream", b"*/*", b""]
)


@st.composite
def common_headers(draw: st.DrawFn, version: str | None) -> list[tuple[str, bytes]]:
    """The headers every request carries: mostly right, sometimes odd or missing."""
    headers: list[tuple[str, bytes]] = []
    roll = draw(st.integers(0, 9))
    if roll < 7:
        headers.append(("content-type", b"application/json"))
    elif roll < 9:
        headers.append(("content-type", draw(content_types | header_values)))
    roll = draw(st.integers(0, 9))
    if roll < 7:
        headers.append(("accept", b"application/json, text/event-stream"))
    elif roll < 9:
        headers.append(("accept", draw(accepts | header_values)))
    roll = draw(st.integers(0, 9))
    if version is not None and roll < 7:
        headers.append(("mcp-protocol-version", version.encode()))
    elif roll < 9:
        headers.append(
            ("mcp-protocol-version", draw(st.sampled_from(VERSIONS).map(str.encode) | header_values))
        )
    if draw(rarely):
        for name in draw(
            st.lists(st.sampled_from(["traceparent", "origin", "x-api-key", "x-junk"]), max_size=2)
        ):
            headers.append((name, draw(header_values)))
    return headers


def _routing(message: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The `Mcp-Method`/`Mcp-Name` headers a 2026-07-28 client would send for this body."""
    method = message.get("method")
    headers = []
    if isinstance(method, str) and encode_header_value(method) == method:
        headers.append(("mcp-method", method.encode()))
    params = message.get("params")
    name = params.get("name", params.get("uri")) if isinstance(params, dict) else None
    if isinstance(name, str):
        headers.append(("mcp-name", encode_header_value(name).encode()))
    return headers


# -- shots ---------------------------------------------------------------------------------------

paths = mostly(
    st.sampled_from(["/mcp", "/mcp/{org}"]),
    st.sampled_from(["/mcp/{other}", "/mcp/not-an-organisation", "/mcp/%00", "/mcp/%2e%2e"]),
)
keys = mostly(
    st.just("fuzz"),
    st.sampled_from(["admin", "stranger", "none", "raw:Bearer mgw_not-a-key", "raw:Basic Zm9vOmJhcg=="]),
)


@st.composite
def handshake_shots(draw: st.DrawFn) -> Shot:
    """Session-based traffic: `initialize`, then messages on a live, unknown or missing session."""
    message = draw(messages(modern=False))
    method = message.get("method")
    body = draw(mostly(st.just(encode(message)), mangled(encode(message))))
    if draw(rarely):
        body = encode([message, *draw(st.lists(messages(modern=False), max_size=3))])  # a batch
    session = draw(mostly(st.just("live"), st.sampled_from(["none", "unknown-session", ""])))
    if method == "initialize":
        session = draw(st.sampled_from(["none", "live"]))
    headers = draw(common_headers(HANDSHAKE_VERSION))
    return Shot(
        "POST",
        draw(paths),
        draw(keys),
        session,
        tuple(headers),
        body,
        open_ended=method == "subscriptions/listen",
    )


@st.composite
def stateless_shots(draw: st.DrawFn) -> Shot:
    """2026-07-28 traffic: every request self-contained, the envelope in `params._meta` and the
    routing headers mirroring the body (or not)."""
    message = draw(messages(modern=True))
    body = draw(mostly(st.just(encode(message)), mangled(encode(message))))
    headers = draw(common_headers(MODERN_VERSION))
    if draw(rarely):
        headers += [("mcp-method", draw(header_values)), ("mcp-name", draw(header_values))]
    else:
        headers += _routing(message)
    if draw(rarely):
        headers.append(("mcp-session-id", draw(header_values)))
    return Shot(
        "POST",
        draw(paths),
        draw(keys),
        "none",
        tuple(headers),
        body,
        open_ended=message.get("method") == "subscriptions/listen",
    )


@st.composite
def garbage_shots(draw: st.DrawFn) -> Shot:
    """Bodies that are not JSON-RPC at all, any HTTP method, any headers."""
    method = draw(st.sampled_from(["POST"] * 5 + ["GET", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]))
    body = draw(garbage_bodies) if method not in ("GET", "HEAD") else None
    session = draw(st.sampled_from(["live", "none", "unknown-session"]))
    headers = draw(common_headers(draw(st.sampled_from([None, HANDSHAKE_VERSION, MODERN_VERSION]))))
    return Shot(method, draw(paths), draw(keys), session, tuple(headers), body, open_ended=method == "GET")


@st.composite
def stream_shots(draw: st.DrawFn) -> Shot:
    """GET (the session's server-to-host stream) and DELETE (ending the session), as sent by
    hosts that get the headers right and by those that do not."""
    method = draw(st.sampled_from(["GET", "GET", "DELETE"]))
    session = draw(st.sampled_from(["live"] * 4 + ["none", "unknown-session", ""]))
    headers = [("accept", draw(accepts | header_values))]
    if draw(st.booleans()):
        headers.append(
            ("mcp-protocol-version", draw(st.sampled_from(VERSIONS).map(str.encode) | header_values))
        )
    return Shot(method, draw(paths), draw(keys), session, tuple(headers), None, open_ended=method == "GET")
