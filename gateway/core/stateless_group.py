"""A 2026-07-28 host's requests, grouped: the stateless revision's stand-in for a session."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from gateway.core.host_session import HostSession
from gateway.protocol.context import Deadline, RequestContext
from gateway.protocol.jsonrpc import JSONObject
from gateway.protocol.revisions import to_handshake_request, with_server_info
from gateway.upstream.channel import MessageSink
from gateway.upstream.connector import ModernUpstream, UpstreamSession
from gateway.upstream.profiles import Profile

_REMAPPED_IDS = itertools.count(1)  # 2026 groups' request ids upstream: unique in every session


class StatelessGroup(HostSession):
    """A 2026-07-28 host's requests, grouped per (API key, client name and version).

    Its requests may come from many host processes: their ids are not unique in it, so they
    are remapped on their way to a handshake-era upstream (and converted to that revision),
    and upstreams that speak 2026-07-28 are reached statelessly instead. Nothing is buffered
    for a listen stream that is not open: the revision promises no replay."""

    announces_on_listen_only = True
    key: GroupKey | None = None  # set by the registry, which keeps its groups by it

    async def modern(self, name: str) -> ModernUpstream | None:
        return await self._connectors[name].modern(self._credential_source(name))

    async def _modern_request(
        self,
        modern: ModernUpstream,
        message: JSONObject,
        sink: MessageSink | None,
        credential: Mapping[str, str] | None,
        context: RequestContext,
        deadline: Deadline,
    ) -> JSONObject:
        # 2026 on both sides: it passes as it is.
        return await modern.request(message, sink, credential, context.forwarded, deadline)

    def _upward(self, message: JSONObject) -> JSONObject:
        message = to_handshake_request(message)
        if "id" in message:
            message = {**message, "id": f"mcpgw-r{next(_REMAPPED_IDS)}"}
        return message

    def _downward(self, response: JSONObject, request_id: object, upstream: UpstreamSession) -> JSONObject:
        if request_id is None:
            return response
        return with_server_info({**response, "id": request_id}, upstream.server_info)


# organisation, API key, grant, client name, version, capability profile
GroupKey = tuple[str, str | None, str | None, str, str, Profile]
