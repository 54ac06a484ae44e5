"""`GET /metrics`: the gateway's metrics in the Prometheus text format.

Secure by default: with no token configured, only clients on a loopback address are answered
(403 for others: the scrape is understood, the caller not let in); with a token, a client must
send it as `Authorization: Bearer <token>` (401 otherwise), from anywhere. Errors are plain
text, which is what a scraper shows of them.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from api.sessions import client_of

__all__ = ["metrics_routes"]

Exposition = Callable[[], bytes]


def metrics_routes(exposition: Callable[[Request], Exposition], token: str | None) -> list[BaseRoute]:
    expected = None if token is None else f"Bearer {token}".encode()

    async def metrics(request: Request) -> Response:
        if expected is not None:
            sent = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(sent, expected):
                return PlainTextResponse(
                    "Send the metrics token: 'Authorization: Bearer <metrics.token>'.\n",
                    401,
                    {"www-authenticate": 'Bearer realm="mcpgw-metrics"'},
                )
        elif not _loopback(client_of(request)):
            return PlainTextResponse(
                "Metrics are served to loopback clients only; set metrics.token to scrape from elsewhere.\n",
                403,
            )
        return Response(exposition(request)(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics, methods=["GET"])]


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
