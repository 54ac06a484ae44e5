"""Assembling the gateway: config in, ASGI app out.

Everything long-lived (the store, upstream connection pools, the task group that owns stdio
children and listen streams, the session reaper) is entered in the app's lifespan, in that
order, and left in reverse; nothing opens at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api import CURSOR_SECRET_NAME, ReauthRefused, Throttled, api_routes, credential_routes
from gateway.background import start_guarded
from gateway.config import GatewayConfig, UpstreamConfig
from gateway.core.proxy import Proxy
from gateway.core.router import Router
from gateway.core.sessions import SessionRegistry, start_reaper
from gateway.credentials.broker import CredentialBroker
from gateway.credentials.pages import connect_routes
from gateway.credentials.sealing import sealer_for
from gateway.errors import AuthThrottled, FlowProblem
from gateway.host.asgi import OriginGuard
from gateway.host.auth import HostAuth, Principal
from gateway.host.legacy_sse import LegacySse
from gateway.host.shutdown import Shutdown
from gateway.host.stateless import StatelessHandler
from gateway.host.streamable import GATEWAY_CAPABILITIES, SERVER_INFO, Endpoint
from gateway.recording.recorder import NullRecorder, Recorder
from gateway.recording.redaction import Redactor
from gateway.recording.store_recorder import running_recorder
from gateway.upstream.connector import Connector, pool_for, sse_client_for
from store import Binding, Store, open_sqlite_store

logger = logging.getLogger(__name__)

DEFAULT_ORGANISATION = "default"
# Once the server begins to stop, calls in flight have this long to finish before their sessions
# end (cancelling them), unless it is asked again; streams that never finish by themselves end at
# once (host/shutdown.py).
SHUTDOWN_GRACE_S = 3.0


@dataclass(slots=True)
class Gateway:
    """The running gateway's parts, for the app's routes and for tests that look inside."""

    config: GatewayConfig
    store: Store
    registry: SessionRegistry
    endpoint: Endpoint
    broker: CredentialBroker


class _Late:
    """An ASGI route target whose real handler exists only once the lifespan has started."""

    def __init__(self) -> None:
        self.target: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.target is None:
            raise RuntimeError("the gateway is not started")
        await self.target(scope, receive, send)


class _GatewayApp(Starlette):
    """Starlette, except that MCP requests go straight to the endpoint.

    They are nearly all the traffic, and the endpoint answers every error itself: Starlette's
    error middleware, exception middleware and route matching cost ~0.03 ms of CPU per call.
    """

    def __init__(self, mcp: _Late, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mcp = mcp
        # Starlette would answer "/x/" with a redirect to "/x" built from the request's Host
        # header, which a client chooses: a path is either served or 404.
        self.router.redirect_slashes = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._mcp.target
        if endpoint is not None and scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            if path in ("/mcp", "/mcp/"):
                await endpoint({**scope, "path_params": {}}, receive, send)
                return
            organisation = path[5:] if path.startswith("/mcp/") else ""
            if organisation and "/" not in organisation:
                await endpoint({**scope, "path_params": {"organisationId": organisation}}, receive, send)
                return
        await super().__call__(scope, receive, send)


@asynccontextmanager
async def running_gateway(config: GatewayConfig, shutdown: Shutdown | None = None) -> AsyncIterator[Gateway]:
    shutdown = shutdown or Shutdown()
    async with AsyncExitStack() as stack:
        sealer = sealer_for(config.secrets)
        store = await stack.enter_async_context(open_sqlite_store(config.database, sealer=sealer))
        organisation = await store.ensure_organisation(DEFAULT_ORGANISATION)
        # One gateway per database: what the record shows open now, a previous run left open.
        if stale := await store.end_open_sessions("gateway_restart"):
            logger.info("ended %d session(s) the previous run left open (reason gateway_restart)", stale)
        recorder: Recorder = NullRecorder()
        if config.recording.enabled:
            recorder = await stack.enter_async_context(running_recorder(store, config.recording))
        task_group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(task_group.cancel_scope.cancel)
        connectors: dict[str, Connector] = {}
        # What upstreams write to the gateway's log is redacted by the record's own rules.
        log_redactor = Redactor.with_defaults(config.recording.redact_keys, config.recording.redact_patterns)
        for upstream in config.upstreams:
            http = upstream.transport == "http"
            sse = upstream.transport == "sse"
            pool = await stack.enter_async_context(pool_for(upstream)) if http else None
            client = await stack.enter_async_context(sse_client_for(upstream)) if sse else None
            connectors[upstream.name] = Connector(
                upstream, task_group, pool=pool, sse_client=client, log_redactor=log_redactor
            )
        router = Router(config.upstreams)
        # Authorization servers get a client of their own: upstream pools carry upstream headers.
        # It keeps no idle connections: requests go to pinned addresses (credentials/egress.py),
        # and a TLS connection verified for one name must not serve another on the same address.
        oauth_http = await stack.enter_async_context(
            httpx2.AsyncClient(timeout=30.0, limits=httpx2.Limits(max_keepalive_connections=0))
        )

        async def verify(upstream: UpstreamConfig, headers: Mapping[str, str]) -> None:
            await connectors[upstream.name].verify(headers)

        upstreams = {upstream.name: upstream for upstream in config.upstreams}
        broker = CredentialBroker(store, upstreams, oauth_http, config.public_url, verify)
        registry = SessionRegistry(
            connectors, config.sessions.idle_s, config.sessions.stateless_gap_s, recorder, broker
        )
        broker.on_connected(registry.connected)
        stack.push_async_callback(registry.aclose)
        proxy = Proxy(router, recorder)
        auth = HostAuth(
            store,
            required=config.auth.required,
            default_organisation_id=organisation.id,
            max_failures_per_minute=config.auth.max_failures_per_minute,
        )
        # Before the task group is cancelled and the store closed: the last key use is kept.
        stack.push_async_callback(_shielded, auth.flush_usage)
        endpoint = Endpoint(
            auth=auth,
            guard=OriginGuard(config.security.allowed_hosts, config.security.allowed_origins),
            registry=registry,
            proxy=proxy,
            stateless=StatelessHandler(
                registry, proxy, GATEWAY_CAPABILITIES, SERVER_INFO, task_group, shutdown
            ),
            max_body_bytes=config.security.max_body_bytes,
            shutdown=shutdown,
        )

        async def end_sessions_at_shutdown() -> None:
            await shutdown.wait()
            await shutdown.grace(SHUTDOWN_GRACE_S)
            await _shielded(registry.aclose)  # not cut short by the lifespan's own end

        start_guarded(task_group, "ending sessions at shutdown", end_sessions_at_shutdown)
        start_reaper(registry, task_group)
        start_guarded(task_group, "credential maintenance", broker.maintain)
        start_guarded(task_group, "API key maintenance", auth.maintain)
        yield Gateway(config, store, registry, endpoint, broker)


async def _shielded(step: Callable[[], Awaitable[None]]) -> None:
    with anyio.CancelScope(shield=True):
        await step()


def build_app(config: GatewayConfig, shutdown: Shutdown | None = None) -> Starlette:
    """The gateway's ASGI app. Its MCP routes only answer before the lifespan has started (with
    an error); after, `_GatewayApp` hands MCP requests to the endpoint directly. The server that
    runs it begins `shutdown` when it starts to stop, so that streams end (host/shutdown.py)."""
    mcp, sse_stream, sse_message = _Late(), _Late(), _Late()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running_gateway(config, shutdown) as gateway:
            mcp.target = gateway.endpoint
            legacy = LegacySse(gateway.endpoint)
            sse_stream.target, sse_message.target = legacy.stream, legacy.message
            app.state.gateway = gateway
            # The API needs the open store, so its routes join once the lifespan has one.
            cursor_key = await gateway.store.gateway_secret(CURSOR_SECRET_NAME)
            authenticate = gateway.endpoint.auth.authenticate
            broker = gateway.broker

            async def authenticate_api(headers: Mapping[str, str], client: str | None) -> Principal | None:
                try:
                    return await authenticate(headers, client)
                except AuthThrottled as exc:
                    raise Throttled(exc.retry_after_s) from exc

            async def reauthorise(binding: Binding) -> tuple[str, str, str]:
                try:
                    flow = await broker.reauthorise(binding)
                except FlowProblem as exc:
                    raise ReauthRefused(exc.message) from exc
                return flow.id, flow.auth_kind, broker.flow_url(flow)

            listing = [
                *api_routes(gateway.store, cursor_key, authenticate_api),
                *credential_routes(gateway.store, cursor_key, authenticate_api, reauthorise, broker.forget),
                *connect_routes(broker, authenticate),
            ]
            app.router.routes.extend(listing)
            logger.info(
                "mcpgw serving %d upstream(s): %s",
                len(config.upstreams),
                ", ".join(u.name for u in config.upstreams),
            )
            try:
                yield
            finally:  # /healthz and the MCP routes say so once the gateway has stopped, for any reason
                mcp.target = None
                for route in listing:
                    app.router.routes.remove(route)

    async def health(request: Request) -> JSONResponse:
        if mcp.target is None:
            return JSONResponse({"status": "stopped"}, 503)
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/mcp", mcp, methods=["GET", "POST", "DELETE"]),
        Route("/mcp/{organisationId}", mcp, methods=["GET", "POST", "DELETE"]),
        Route("/sse", sse_stream, methods=["GET"]),
        Route("/messages", sse_message, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    return _GatewayApp(mcp, routes=routes, lifespan=lifespan)
