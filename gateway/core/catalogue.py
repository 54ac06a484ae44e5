"""What a host session has learnt of its upstreams' lists: the routing tables the router builds.

A session holds one `Catalogue`; only `core/router.py` fills it (from merged listings) and reads
it (to route a call). Others may only make it forget: a `list_changed` from an upstream forgets
that kind, a newly connected account forgets everything, and the next call lists again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mcp.shared.uri_template import UriTemplate

__all__ = ["Catalogue", "Kind", "Route", "Table"]

Kind = Literal["tools", "prompts", "resources"]


@dataclass(frozen=True, slots=True)
class Route:
    upstream: str
    original: str
    connect: bool = False  # the gateway's own connect tool for this upstream, answered by the proxy


@dataclass(slots=True)
class Table:
    """Host-visible name (or URI) -> route, as of the last merged listing of one kind."""

    routes: dict[str, Route] = field(default_factory=dict)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)
    templates: list[tuple[UriTemplate, str]] = field(default_factory=list)
    # Upstreams whose listing failed, by prefix: any name under the prefix goes there, so the
    # call answers with what is wrong (the link to connect the account, the authorization
    # server or the upstream being down, naming the cause) instead of "unknown tool".
    unlisted: dict[str, str] = field(default_factory=dict)
    # Names the tool filters were checked against for a call, and what they said: once per
    # table, not per call (the filters are the session's and its upstreams', fixed meanwhile).
    permitted: dict[str, bool] = field(default_factory=dict)


class Catalogue:
    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: dict[Kind, Table] = {}

    def table(self, kind: Kind) -> Table | None:
        return self._tables.get(kind)

    def keep(self, kind: Kind, table: Table) -> None:
        self._tables[kind] = table

    def forget(self, kind: Kind | None = None) -> None:
        """Forget one kind's table (None: all): the next call that needs it lists again."""
        if kind is None:
            self._tables.clear()
        else:
            self._tables.pop(kind, None)
