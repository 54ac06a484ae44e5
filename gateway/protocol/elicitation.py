"""Defaults of a form elicitation: what the gateway, as its upstream's client, fills in.

SEP-1034 gives the fields of a form `default`s that the client applies; a host that accepts
without some field leaves that to the gateway, the client the upstream is talking to."""

from __future__ import annotations

from typing import Any

from gateway.protocol.jsonrpc import JSONObject

__all__ = ["form_defaults", "with_defaults"]


def form_defaults(request: JSONObject) -> JSONObject | None:
    """The defaults an `elicitation/create` request's form gives its fields; None for any other
    request, or a form that gives none."""
    if request.get("method") != "elicitation/create":
        return None
    params: Any = request.get("params")
    schema = params.get("requestedSchema") if isinstance(params, dict) else None
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return None
    defaults = {
        name: field["default"]
        for name, field in properties.items()
        if isinstance(field, dict) and "default" in field
    }
    return defaults or None


def with_defaults(response: JSONObject, defaults: JSONObject | None) -> JSONObject:
    """A host's answer to a form elicitation, every field it left out of an accepted form set
    to its default; any other answer as it is."""
    result = response.get("result")
    if not defaults or not isinstance(result, dict) or result.get("action") != "accept":
        return response
    content = result.get("content")
    content = content if isinstance(content, dict) else {}
    return {**response, "result": {**result, "content": {**defaults, **content}}}
