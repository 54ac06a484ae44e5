"""JSON-RPC 2.0 messages as the gateway handles them: plain dicts, encoded with orjson.

The forwarding path works on messages, not on the SDK's pydantic models: a proxy that
re-validated every message it relays spent most of its CPU doing so (docs/design.md, Performance).
This module holds the few helpers every layer needs to look at a message.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import orjson

from gateway.errors import MessageError, TooDeep

JSONObject: TypeAlias = dict[str, Any]
RequestId: TypeAlias = str | int

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# Gateway-specific codes live in the implementation-defined server-error range.
UPSTREAM_UNAVAILABLE: Final = -32001
UPSTREAM_TIMEOUT: Final = -32002
REQUEST_CANCELLED: Final = -32800
# orjson encodes no deeper than this, and reads up to 1024: a message between the two can be
# read but never passed on, so each side refuses it where it arrives (see `TooDeep`).
MAX_DEPTH: Final = 254
# The severities of `notifications/message`, by rank: a host that asks for one gets those above.
LOG_LEVELS: Final = {name: rank for rank, name in enumerate(
    ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"])}  # fmt: skip


def dumps(message: Any) -> bytes:
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError as exc:  # only depth, for anything decoded from JSON
        raise TooDeep(INVALID_PARAMS, f"nested more than {MAX_DEPTH} levels deep", message) from exc


def loads(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MessageError(PARSE_ERROR, f"Parse error: {exc}") from exc


def loads_relayable(body: bytes | str) -> Any:
    """`loads`, refusing with `TooDeep` what could not be encoded again.

    Counting brackets (at C speed, strings included, so it over-counts) clears nearly every
    message; only one with more brackets than `MAX_DEPTH` pays for a trial encoding.
    """
    value = loads(body)
    brackets = (
        body.count(b"{") + body.count(b"[") if isinstance(body, bytes) else body.count("{") + body.count("[")
    )
    if brackets > MAX_DEPTH:
        dumps(value)
    return value


def is_request(message: JSONObject) -> bool:
    return "method" in message and "id" in message


def is_notification(message: JSONObject) -> bool:
    return "method" in message and "id" not in message


def is_response(message: JSONObject) -> bool:
    return "method" not in message and ("result" in message or "error" in message)


def check_message(value: Any) -> JSONObject:
    """Return `value` if it has the shape of one JSON-RPC 2.0 message, else raise MessageError."""
    if not isinstance(value, dict):
        raise MessageError(INVALID_REQUEST, "Invalid Request: expected one JSON-RPC message object")
    if value.get("jsonrpc") != "2.0":
        raise MessageError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"')
    if "method" in value:
        if not isinstance(value["method"], str):
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "method" must be a string')
        params = value.get("params")
        if params is not None and not isinstance(params, dict):
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "params" must be an object')
    elif not ("result" in value or "error" in value):
        raise MessageError(
            INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response"
        )
    if "id" in value:
        request_id = value["id"]
        bad_id = isinstance(request_id, bool) or not isinstance(request_id, str | int)
        if bad_id and not (request_id is None and "error" in value):  # an error may answer "no id"
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
    return value


def error(request_id: RequestId | None, code: int, message: str, data: Any = None) -> JSONObject:
    body: JSONObject = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": body}


def result(request_id: RequestId, value: JSONObject) -> JSONObject:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def notification(method: str, params: JSONObject | None = None) -> JSONObject:
    message: JSONObject = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def params_of(message: JSONObject) -> JSONObject:
    params = message.get("params")
    return params if isinstance(params, dict) else {}


def meta_of(message: JSONObject) -> JSONObject:
    meta = params_of(message).get("_meta")
    return meta if isinstance(meta, dict) else {}
