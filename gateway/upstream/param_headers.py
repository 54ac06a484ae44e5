"""`Mcp-Param-*` headers (2026-07-28): what a tool's input schema asks to see mirrored in headers.

A tool declares, with `x-mcp-header` on a property, that a call's value for it goes in an
`Mcp-Param-<token>` header too, for proxies and load balancers that route on headers. The
gateway learns the declarations from the upstream's tool lists, and leaves out of them any tool
whose declarations are invalid (the revision says a client must not use such a tool). Parsing
and rendering are the SDK's."""

from __future__ import annotations

import logging
from typing import Any

from mcp.shared.inbound import find_invalid_x_mcp_header, mcp_param_headers, x_mcp_header_map

from gateway.protocol.jsonrpc import JSONObject

__all__ = ["ToolHeaders"]

logger = logging.getLogger(__name__)


class ToolHeaders:
    """One upstream's tools' `x-mcp-header` declarations, as its last listings gave them."""

    __slots__ = ("_declared", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._declared: dict[str, dict[tuple[str, ...], str]] = {}

    def learn(self, response: JSONObject) -> JSONObject:
        """A `tools/list` response without its tools of invalid declarations; the valid ones kept."""
        result = response.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            return response
        kept: list[Any] = []
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            schema = tool.get("inputSchema") if isinstance(tool, dict) else None
            reason = find_invalid_x_mcp_header(schema)
            if reason is not None:
                logger.warning("upstream %s: tool %r left out: %s", self._name, name, reason)
                continue
            if isinstance(name, str):
                declared = x_mcp_header_map(schema)
                if declared:
                    self._declared[name] = declared
                else:
                    self._declared.pop(name, None)
            kept.append(tool)
        if len(kept) == len(tools):
            return response
        return {**response, "result": {**result, "tools": kept}}

    def for_call(self, message: JSONObject) -> dict[str, str]:
        """The `Mcp-Param-*` headers of a `tools/call`, from the called tool's declarations."""
        params = message.get("params")
        if not isinstance(params, dict):
            return {}
        declared = self._declared.get(str(params.get("name")))
        arguments = params.get("arguments")
        if not declared or not isinstance(arguments, dict):
            return {}
        return mcp_param_headers(declared, arguments)
