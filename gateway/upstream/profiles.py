"""Capability profiles: what a host declared it can be asked, reduced to a small canonical value.

An upstream may list tools only to clients that can answer what the tools ask (sampling,
elicitation, roots). The shared catalogue (`core/lists.py`) is therefore kept per profile, and
each profile's list is fetched through a listing session (`upstream/pool.py`) whose handshake
declares exactly that profile. Only the spec's paths below count: `experimental` and
`extensions` are left out, so a host cannot make the gateway hold unboundedly many profiles.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.protocol.jsonrpc import JSONObject

__all__ = ["EMPTY_PROFILE", "MAX_PROFILES", "Profile", "capabilities_of", "profile_of"]

# The client capabilities of the spec (2025-11-25, and the tasks requests), as dotted paths.
_PATHS = (
    "roots",
    "roots.listChanged",
    "sampling",
    "sampling.context",
    "sampling.tools",
    "elicitation",
    "elicitation.form",
    "elicitation.url",
    "tasks",
    "tasks.list",
    "tasks.cancel",
    "tasks.requests",
    "tasks.requests.sampling",
    "tasks.requests.sampling.createMessage",
    "tasks.requests.elicitation",
    "tasks.requests.elicitation.create",
)
_BOOLEAN = frozenset({"roots.listChanged"})  # the others are objects

MAX_PROFILES = 8  # per upstream, besides the empty one (a handful exist among real hosts)
Profile = tuple[str, ...]  # the declared paths, in `_PATHS` order
EMPTY_PROFILE: Profile = ()


def _declared(capabilities: Mapping[str, object], path: str) -> bool:
    value: object = capabilities
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    if path in _BOOLEAN:
        return value is True
    return isinstance(value, Mapping)


def profile_of(capabilities: Mapping[str, object]) -> Profile:
    """The profile of a host's declared client capabilities."""
    return tuple(path for path in _PATHS if _declared(capabilities, path))


def capabilities_of(profile: Profile) -> JSONObject:
    """The client capabilities a handshake declares for `profile`."""
    capabilities: JSONObject = {}
    for path in profile:
        *parents, leaf = path.split(".")
        node = capabilities
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = True if path in _BOOLEAN else node.get(leaf, {})
    return capabilities
