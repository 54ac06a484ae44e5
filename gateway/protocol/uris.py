"""Resource URIs as hosts see them: each upstream's own, or under its `uri_prefix`.

Two instances of one server list the same URIs (`demo://readme` twice); the gateway would have
to refuse both. An upstream configured with a `uri_prefix` (say `a+`) has every URI it names
put under it on the way to the host and taken off on the way back:

- listed resources `a+demo://readme`, templates `a+demo://greeting/{name}` (a template stays a
  template: its expansions begin with the prefix too, so the gateway routes them back);
- what it answers and announces: `contents[].uri` of resources/read, `resource_link` and
  embedded `resource` items in tool results and prompt messages, and the `uri` of
  `notifications/resources/updated`;
- what a host sends (resources/read, subscribe, unsubscribe, completion refs) is routed by the
  prefix alone, listed or not (a resource link need not be in any list), and reaches the
  upstream without it.

String concatenation keeps it reversible and stable (it depends on configuration, not on what
else happens to be listed), and with the prefix ending in "+" before the URI's own scheme the
result is still an RFC 3986 URI (`a+demo:`, like `git+https:`), which hosts treat as opaque.
Upstreams without one keep their URIs as they wrote them.
"""

from __future__ import annotations

from typing import Any

from gateway.protocol.jsonrpc import JSONObject

__all__ = ["outward"]


def outward(prefix: str, message: JSONObject) -> JSONObject:
    """`message` (an upstream's response or notification) with the URIs it names as the host
    sees them; the same object when there is nothing to change."""
    if not prefix:
        return message
    if message.get("method") == "notifications/resources/updated":
        params = message.get("params")
        if isinstance(params, dict) and isinstance(params.get("uri"), str):
            return {**message, "params": {**params, "uri": prefix + params["uri"]}}
        return message
    result = message.get("result")
    if not isinstance(result, dict):
        return message
    changed = dict(result)
    if isinstance(result.get("contents"), list):  # resources/read
        changed["contents"] = [_with_uri(prefix, item) for item in result["contents"]]
    if isinstance(result.get("content"), list):  # tools/call
        changed["content"] = [_content(prefix, item) for item in result["content"]]
    if isinstance(result.get("messages"), list):  # prompts/get
        changed["messages"] = [
            {**each, "content": _content(prefix, each["content"])}
            if isinstance(each, dict) and "content" in each
            else each
            for each in result["messages"]
        ]
    return {**message, "result": changed}


def _content(prefix: str, item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    if item.get("type") == "resource_link":
        return _with_uri(prefix, item)
    if item.get("type") == "resource":
        return {**item, "resource": _with_uri(prefix, item.get("resource"))}
    return item


def _with_uri(prefix: str, item: Any) -> Any:
    if isinstance(item, dict) and isinstance(item.get("uri"), str):
        return {**item, "uri": prefix + item["uri"]}
    return item
