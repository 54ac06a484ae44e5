"""What the OpenTelemetry semantic conventions for MCP (semantic-conventions-genai,
docs/gen-ai/mcp.md) put on a span and on a histogram point, from what the gateway knows of a
request: the target's attribute, `error.type`, the upstream's address, a client span's attributes.

What none of them ever carries: headers, keys, tokens, a resource URI's query or fragment, or
an error's text when the error carries data (a connect link travels there)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio

from gateway.config.values import UpstreamConfig
from gateway.recording.recorder import CallRecord

__all__ = [
    "MAX_STATUS_TEXT",
    "OVER_HTTP",
    "TARGET",
    "UpstreamAddress",
    "client_attributes",
    "error_of",
    "params_and_meta",
    "shown_uri",
    "upstream_address",
]

MAX_STATUS_TEXT = 200
# The attribute that names a request's target (its span's name is `{method} {target}`).
TARGET = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}
# Every host request and notification reaches the gateway over HTTP (Streamable or legacy SSE).
OVER_HTTP = {"network.transport": "tcp", "network.protocol.name": "http"}


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    transport: str  # network.transport: tcp | pipe
    attributes: Mapping[str, str | int]


def upstream_address(config: UpstreamConfig) -> UpstreamAddress:
    if config.transport == "stdio" or config.url is None:
        return UpstreamAddress("pipe", {"network.transport": "pipe"})
    parts = urlsplit(config.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    attributes: dict[str, str | int] = {"network.transport": "tcp", "network.protocol.name": "http"}
    if parts.hostname:
        attributes |= {"server.address": parts.hostname, "server.port": port}
    return UpstreamAddress("tcp", attributes)


def client_attributes(
    call: CallRecord,
    method: str,
    error_type: str | None,
    version: str | None,
    upstream: UpstreamAddress | None,
    *,
    metric: bool,
) -> dict[str, Any]:
    """A client span's attributes, or (`metric`) its histogram point's: those of bounded values."""
    attributes: dict[str, Any] = {"mcp.method.name": method}
    if version is not None:
        attributes["mcp.protocol.version"] = version  # what the upstream session negotiated
    if upstream is not None:
        attributes |= upstream.attributes
    target_key = TARGET.get(method)
    if target_key and call.upstream_name:
        attributes[target_key] = call.upstream_name
    if method == "tools/call":
        attributes["gen_ai.operation.name"] = "execute_tool"
    if error_type is not None:
        attributes["error.type"] = error_type
    if metric:
        return attributes
    attributes["mcpgw.upstream"] = call.upstream
    if method.startswith("resources/") and call.upstream_name:
        attributes["mcp.resource.uri"] = shown_uri(call.upstream_name)
    if call.request_id is not None:
        attributes["jsonrpc.request.id"] = str(call.request_id)
    return attributes


def params_and_meta(message: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    meta = params.get("_meta")
    return params, meta if isinstance(meta, dict) else {}


def error_of(response: dict[str, Any] | None, failure: BaseException | None) -> tuple[str | None, str | None]:
    """error.type by the conventions (the JSON-RPC code as text, `tool_error`), and a status text."""
    if failure is not None:
        if isinstance(failure, anyio.get_cancelled_exc_class()):
            return "cancelled", None
        return type(failure).__qualname__, None
    if response is None:
        return "cancelled", None
    error = response.get("error")
    if isinstance(error, dict):
        text = error.get("message")
        # An error with data may carry a connect link or an elicitation URL: its text stays out.
        shown = text[:MAX_STATUS_TEXT] if isinstance(text, str) and "data" not in error else None
        return str(error.get("code", "_OTHER")), shown
    result = response.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return "tool_error", None
    return None, None


def shown_uri(uri: str) -> str:
    """A resource URI without its query or fragment, where a token could be."""
    return uri.split("?", 1)[0].split("#", 1)[0]
