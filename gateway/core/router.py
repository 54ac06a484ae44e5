"""Names and URIs: which upstream serves what the host asks for.

What each upstream lists comes from the shared catalogue (`lists.py`), fetched once for every
host session; the merge, the filters and the routing table are each session's own.
Tools and prompts are exposed as `<prefix><name>` (prefix `<upstream>__` unless configured);
resources get a prefixed `name` and keep their URIs, or have them under the upstream's
`uri_prefix` when it has one (`protocol/uris.py`), which also routes any URI under it to that
upstream. Lists are fanned out to every upstream and merged; the merge also builds the routing
table the session uses for calls. A name two upstreams both claim is refused, not guessed.

An upstream whose listing fails (down, or no usable credential) is left out of the list and
said to be missing, and names under its prefix are routed to it all the same: a call then
answers with what is wrong with that upstream, not "unknown tool".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

from gateway.config import ToolFilter, UpstreamConfig
from gateway.core.catalogue import Kind, Route, Table
from gateway.core.host_session import HostSession
from gateway.core.lists import UpstreamLists
from gateway.errors import AuthRequired, CredentialError, RoutingError, UpstreamError
from gateway.protocol.jsonrpc import JSONObject, meta_of, params_of
from gateway.upstream.channel import MessageSink

logger = logging.getLogger(__name__)

_MAX_PAGES = 100
_MAX_REMEMBERED = 10_000  # tool names whose filter verdict a session's table keeps
_ITEMS = {"tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources",
          "resources/templates/list": "resourceTemplates"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Listing:
    """A merged list as the host gets it (`result`), and the upstreams missing from it: name ->
    why (those that only wait for the caller to connect an account offer a connect tool instead)."""

    result: JSONObject
    missing: dict[str, str]


class Router:
    def __init__(self, upstreams: Sequence[UpstreamConfig], lists: UpstreamLists | None = None) -> None:
        # Without the shared lists (fast tests over fake channels), each session lists for itself.
        self._lists = lists
        self._upstreams = {u.name: u for u in upstreams}
        self._order = [u.name for u in upstreams]
        self._conflicts_told: set[tuple[str, str]] = set()  # a config problem: said once, not per listing
        # Longest first, though the config lets no uri_prefix begin another.
        self._uri_prefixes = sorted(
            ((u.uri_prefix, u.name) for u in upstreams if u.uri_prefix), key=lambda each: -len(each[0])
        )

    @property
    def upstream_names(self) -> list[str]:
        return list(self._order)

    async def list_all(self, session: HostSession, message: JSONObject, sink: MessageSink | None) -> Listing:
        """Answer tools/list, prompts/list, resources/list or resources/templates/list for the host."""
        method = message["method"]
        key = _ITEMS[method]
        per_upstream: dict[str, list[JSONObject]] = {}
        failed: dict[str, CredentialError | UpstreamError | RoutingError] = {}

        async def fetch(name: str) -> None:
            try:
                per_upstream[name] = await self._fetch_all(session, name, message, key, sink)
            except (CredentialError, UpstreamError, RoutingError) as exc:
                # Said once per change of the upstream's state (upstream/health.py), not per listing.
                logger.info("session %s: %s from %s failed: %s", session.id, method, name, exc)
                failed[name] = exc

        async with anyio.create_task_group() as tg:
            for name in self._order:
                tg.start_soon(fetch, name)
        items, table = self._merge(method, key, per_upstream, session.principal.tools)
        missing: dict[str, str] = {}
        for name in sorted(failed, key=self._order.index):
            config = self._upstreams[name]
            exc = failed[name]
            connect = _connect_tool(config)
            if not isinstance(exc, AuthRequired):
                missing[name] = exc.reason if isinstance(exc, UpstreamError) else str(exc)
            elif (
                key == "tools"
                and connect["name"] not in table.routes
                and session.principal.tools.permits(connect["name"])
            ):
                items.append(connect)
                table.routes[connect["name"]] = Route(name, CONNECT_TOOL, connect=True)
            if config.prefix:
                table.unlisted[config.prefix] = name
        kind = _kind(method)
        previous = session.catalogue.table(kind)
        if previous is not None:
            # resources/list and resources/templates/list each refresh their half of one table.
            if key == "resourceTemplates":
                table = Table(routes=previous.routes, refused=previous.refused, templates=table.templates)
            elif key == "resources":
                table.templates = previous.templates
        session.catalogue.keep(kind, table)
        return Listing({key: items}, missing)

    async def route(self, session: HostSession, kind: Kind, name: str, message: JSONObject) -> Route:
        """The upstream for a tool/prompt name or resource URI, listing once if not yet known."""
        if kind == "resources":
            for uri_prefix, upstream in self._uri_prefixes:
                if name.startswith(uri_prefix):
                    return Route(upstream, name[len(uri_prefix) :])
        route = _lookup(session.catalogue.table(kind), kind, name)
        if route is None:
            await self._refresh(session, kind, message)
            route = _lookup(session.catalogue.table(kind), kind, name)
        if route is None or (kind == "tools" and not self._permitted_once(session, route, name)):
            # A missing resource is the spec's resource-not-found: invalid params, naming the URI.
            raise RoutingError(
                f"Unknown {_SINGULAR[kind]}: {name}", {"uri": name} if kind == "resources" else None
            )
        return route

    def _permitted_once(self, session: HostSession, route: Route, name: str) -> bool:
        table = session.catalogue.table("tools")
        if table is None:
            return self._permitted(session, route, name)
        known = table.permitted.get(name)
        if known is None:
            known = self._permitted(session, route, name)
            if len(table.permitted) < _MAX_REMEMBERED:  # names come from hosts: bounded
                table.permitted[name] = known
        return known

    def _permitted(self, session: HostSession, route: Route, name: str) -> bool:
        """The filters, on every call and not only when lists are built: a route found another
        way (an upstream routed by prefix while its listing cannot be made) obeys them too."""
        upstream_allows = route.connect or self._upstreams[route.upstream].tools.permits(route.original)
        return upstream_allows and session.principal.tools.permits(name)

    async def _refresh(self, session: HostSession, kind: Kind, message: JSONObject) -> None:
        base: JSONObject = {"jsonrpc": "2.0", "id": f"mcpgw-list-{message.get('id')}"}
        meta = meta_of(message)
        if meta:  # a 2026-07-28 host's envelope: the listing is made on its behalf
            base["params"] = {"_meta": {k: v for k, v in meta.items() if k != "progressToken"}}
        if kind == "resources":
            await self.list_all(session, {**base, "method": "resources/list"}, None)
            await self.list_all(session, {**base, "method": "resources/templates/list"}, None)
        else:
            await self.list_all(session, {**base, "method": f"{kind}/list"}, None)

    async def _fetch_all(
        self, session: HostSession, name: str, message: JSONObject, key: str, sink: MessageSink | None
    ) -> list[JSONObject]:
        if self._lists is not None:
            return await self._lists.items(session, name, key, message)
        capability = "resources" if key == "resourceTemplates" else key
        if capability not in await session.capabilities(name):
            return []
        params = {k: v for k, v in params_of(message).items() if k != "cursor"}
        items: list[JSONObject] = []
        for _ in range(_MAX_PAGES):
            response = await session.forward(name, {**message, "params": params}, sink)
            result = response.get("result")
            if not isinstance(result, dict):
                error = response.get("error") or {}
                raise RoutingError(f"{message['method']} failed: {error.get('message', 'no result')}")
            items.extend(item for item in result.get(key, []) if isinstance(item, dict))
            cursor = result.get("nextCursor")
            if not cursor:
                break
            params = {**params, "cursor": cursor}
        return items

    def _merge(
        self, method: str, key: str, per_upstream: dict[str, list[JSONObject]], key_filter: ToolFilter
    ) -> tuple[list[JSONObject], Table]:
        table = Table()
        merged: dict[str, JSONObject] = {}
        for name in self._order:
            config = self._upstreams[name]
            for item in per_upstream.get(name, []):
                if key == "tools" and not config.tools.permits(str(item.get("name"))):
                    continue
                exposed, route_key, original = _exposure(config, key, item)
                if key == "tools" and not key_filter.permits(exposed):
                    continue  # the API key's own filter: it can only narrow the upstream's
                if key == "resourceTemplates":
                    _add_template(table, route_key, name)
                if route_key in table.refused:
                    continue
                owner = table.routes.get(route_key)
                if owner is not None and owner.upstream != name:
                    if (key, route_key) not in self._conflicts_told and len(self._conflicts_told) < 1000:
                        self._conflicts_told.add((key, route_key))
                        logger.error(
                            "%s %r is offered by both %r and %r; refusing it (give one a %s)",
                            key,
                            route_key,
                            owner.upstream,
                            name,
                            "prefix" if key in ("tools", "prompts") else "uri_prefix",
                        )
                    table.refused[route_key] = (owner.upstream, name)
                    del table.routes[route_key]
                    merged.pop(route_key, None)
                    continue
                table.routes[route_key] = Route(name, original)
                merged[route_key] = _exposed_item(key, item, exposed, route_key)
        return list(merged.values()), table


_SINGULAR = {"tools": "tool", "prompts": "prompt", "resources": "resource"}
CONNECT_TOOL = "connect_account"


def _connect_tool(config: UpstreamConfig) -> JSONObject:
    """The one tool an upstream offers a caller who has not connected their account yet."""
    return {
        "name": f"{config.prefix or config.name + '__'}{CONNECT_TOOL}",
        "description": (
            f"Connect your account for {config.name}: its tools appear once you have. "
            "Call this to get the link to open."
        ),
        "inputSchema": {"type": "object", "properties": {}},
    }


def _kind(method: str) -> Kind:
    kind = method.split("/", 1)[0]
    assert kind in ("tools", "prompts", "resources"), method
    return kind  # type: ignore[return-value]


def _exposure(config: UpstreamConfig, key: str, item: JSONObject) -> tuple[str, str, str]:
    """(host-visible name, routing key, upstream's own key) for one listed item; the routing key
    of a resource or template is its URI as the host sees it."""
    name = str(item.get("name", ""))
    if key in ("tools", "prompts"):
        return config.prefix + name, config.prefix + name, name
    uri = str(item.get("uriTemplate" if key == "resourceTemplates" else "uri", ""))
    return config.prefix + name, config.uri_prefix + uri, uri


def _exposed_item(key: str, item: JSONObject, exposed: str, route_key: str) -> JSONObject:
    if key == "resources":
        return {**item, "name": exposed, "uri": route_key}
    if key == "resourceTemplates":
        return {**item, "name": exposed, "uriTemplate": route_key}
    return {**item, "name": exposed}


def _add_template(table: Table, template: str, upstream: str) -> None:
    try:
        table.templates.append((UriTemplate.parse(template), upstream))
    except InvalidUriTemplate:
        logger.warning("upstream %s lists an invalid URI template %r", upstream, template)


def _lookup(table: Table | None, kind: Kind, name: str) -> Route | None:
    if table is None:
        return None
    if name in table.refused:
        first, second = table.refused[name]
        raise RoutingError(
            f"{name!r} is offered by both upstream {first!r} and {second!r}; give one a "
            + ("uri_prefix" if kind == "resources" else "prefix")
        )
    route = table.routes.get(name)
    if route is None and kind != "resources":
        for prefix, upstream in table.unlisted.items():
            if name.startswith(prefix):
                return Route(upstream, name[len(prefix) :])
    if route is None and kind == "resources":
        for template, upstream in table.templates:
            if template.match(name) is not None:
                return Route(upstream, name)
    return route
