"""Translating between the two protocol generations where a host and an upstream differ.

A 2026-07-28 host may reach an upstream session of the handshake era. On the way up the
request loses the per-request envelope (`_meta` keys under `io.modelcontextprotocol/`), which
a handshake-era server rejects; on the way down the result gains the fields 2026-07-28 makes
required (`resultType`, and `ttlMs`/`cacheScope` on cacheable results). Nothing else changes.
"""

from __future__ import annotations

from mcp_types.methods import CACHEABLE_METHODS

from gateway.protocol.jsonrpc import JSONObject

_ENVELOPE_PREFIX = "io.modelcontextprotocol/"
SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo"


def to_handshake_request(message: JSONObject) -> JSONObject:
    params = message.get("params")
    if not isinstance(params, dict):
        return message
    meta = params.get("_meta")
    if not isinstance(meta, dict) or not any(key.startswith(_ENVELOPE_PREFIX) for key in meta):
        return message
    kept = {key: value for key, value in meta.items() if not key.startswith(_ENVELOPE_PREFIX)}
    new_params = {**params, "_meta": kept} if kept else {k: v for k, v in params.items() if k != "_meta"}
    return {**message, "params": new_params}


def to_modern_response(method: str, response: JSONObject) -> JSONObject:
    result = response.get("result")
    if not isinstance(result, dict):
        return response
    additions: JSONObject = {}
    if "resultType" not in result:
        additions["resultType"] = "complete"
    if method in CACHEABLE_METHODS:
        if "ttlMs" not in result:
            additions["ttlMs"] = 0
        if "cacheScope" not in result:
            additions["cacheScope"] = "private"
    if not additions:
        return response
    return {**response, "result": {**result, **additions}}


def with_server_info(response: JSONObject, server_info: JSONObject) -> JSONObject:
    """Name the server that produced a result, as a 2026-07-28 server does in its `_meta`."""
    result = response.get("result")
    if not isinstance(result, dict) or not server_info:
        return response
    meta = result.get("_meta")
    meta = meta if isinstance(meta, dict) else {}
    if SERVER_INFO_META_KEY in meta:
        return response
    return {**response, "result": {**result, "_meta": {**meta, SERVER_INFO_META_KEY: server_info}}}
