"""The access log: one line per HTTP request (logger `mcpgw.access`), when `logging.access_log`
is on. It wraps the whole app, so it costs nothing when off (the app is not wrapped at all).

A line has the client address, method, path, status and milliseconds, and never a query
string (OAuth callbacks carry codes there) nor a connect link's secret part.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.telemetry.logs import FIELDS

__all__ = ["AccessLog"]

ACCESS = logging.getLogger("mcpgw.access")
_SECRET_PATHS = ("/connect/",)  # what follows is a link that lets its holder connect an account


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not ACCESS.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            fields = {
                "client": client[0] if client else None,
                "method": scope["method"],
                "path": _shown_path(scope["path"]),
                "status": status or None,  # None: no response was started
                "ms": round((time.perf_counter() - began) * 1000, 1),
            }
            text = " ".join(f"{name}={'-' if value is None else value}" for name, value in fields.items())
            ACCESS.info("%s", text, extra={FIELDS: fields})


def _shown_path(path: str) -> str:
    for prefix in _SECRET_PATHS:
        if path.startswith(prefix):
            return prefix + "…"
    return path
