"""Requests upstreams make of a session's host, under ids the gateway mints."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from gateway.cluster import owned
from gateway.protocol.jsonrpc import JSONObject, RequestId
from gateway.upstream.connector import UpstreamSession

LOCAL_REQUEST_PREFIX = "mcpgw-local-"


@dataclass(slots=True)
class Outbound:
    upstream: UpstreamSession
    original_id: RequestId
    defaults: JSONObject | None = None  # a form elicitation's, applied to the host's answer


class OutboundRequests:
    """Requests upstreams send this session's host (elicitation, sampling, roots, ping), under
    ids the gateway mints: two upstreams may both use id 1 toward one host. The host's answer
    is taken back by the gateway's id and goes to the upstream that asked, under its own."""

    __slots__ = ("_ids", "_pending", "owner")

    def __init__(self) -> None:
        self._pending: dict[str, Outbound] = {}
        self._ids = itertools.count(1)
        self.owner: str | None = None  # on replicas: this one's id, where the answer must come back

    def add(
        self, upstream: UpstreamSession, original_id: RequestId, defaults: JSONObject | None = None
    ) -> str:
        gateway_id = owned(f"mcpgw-{next(self._ids)}", self.owner)
        self._pending[gateway_id] = Outbound(upstream, original_id, defaults)
        return gateway_id

    def take(self, gateway_id: object) -> Outbound | None:
        return self._pending.pop(gateway_id, None) if isinstance(gateway_id, str) else None

    def local_id(self) -> str:
        """An id for a request the gateway itself sends the host; its answer is dropped."""
        return f"{LOCAL_REQUEST_PREFIX}{next(self._ids)}"
