"""Assembling the gateway: config in, ASGI app out.

Everything long-lived (the store, upstream connection pools, the task group that owns stdio
children and listen streams, the session reaper) is entered in the app's lifespan, in that
order, and left in reverse; nothing opens at import time. Upstreams marked `required` are
tried once everything is up; the others when a host first needs them.

Every route is declared when the app is built. What serves them exists only once the lifespan
has started: it is the lifespan's state (`Gateway`), which the server hands every request in
`scope["state"]`, and each route takes what it needs from there. The MCP endpoint, nearly all
the traffic, is mounted in front of Starlette as a raw ASGI app (`GatewayApp`): no middleware
and no routing run for it, and it answers every error itself.
"""

from __future__ import annotations

import gc
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api import (
    CURSOR_SECRET_NAME,
    CredentialsApi,
    CursorCodec,
    GrantsApi,
    KeysApi,
    ReauthRefused,
    SessionsApi,
    Throttled,
    api_routes,
    credential_routes,
    grant_routes,
    key_routes,
    metrics_routes,
)
from api.console import (
    Console,
    ConsoleSessions,
    ProviderRedirect,
    ProviderSignIn,
    UpstreamStatus,
    console_routes,
)
from api.errors import ProviderUnavailable
from gateway.background import start_guarded
from gateway.cluster import Answered, Cancelled, Cluster, FanOuts, Hosts, SessionEnded
from gateway.config import GatewayConfig, UpstreamConfig
from gateway.core.lists import UpstreamLists
from gateway.core.proxy import Proxy
from gateway.core.registry import SessionRegistry, start_reaper
from gateway.core.router import Router
from gateway.core.shared_sessions import SharedSessions
from gateway.core.stateless_group import StatelessGroup
from gateway.core.tasks import TASK_IDS_SECRET_NAME, TaskIds, TaskRelay
from gateway.credentials.broker import CredentialBroker
from gateway.credentials.pages import ConnectPages, connect_routes
from gateway.credentials.sealing import sealer_for
from gateway.errors import AuthThrottled, FlowProblem, OidcError
from gateway.host.asgi import OriginGuard
from gateway.host.auth import HostAuth
from gateway.host.legacy_sse import LegacySse
from gateway.host.shutdown import Shutdown
from gateway.host.stateless import RESUME, StatelessHandler
from gateway.host.streamable import GATEWAY_CAPABILITIES, SERVER_INFO, Endpoint
from gateway.principal import Principal
from gateway.readiness import Readiness
from gateway.recording.observed import ObservedRecorder
from gateway.recording.recorder import NullRecorder, Recorder
from gateway.recording.redaction import Redactor
from gateway.recording.store_recorder import StoreRecorder, running_recorder
from gateway.signin.oidc import CALLBACK_PATH, STATE_COOKIE
from gateway.signin.routes import signin_routes
from gateway.signin.server import SignInServer
from gateway.telemetry.access import AccessLog
from gateway.telemetry.metrics import GatewayMetrics, HeldOpen
from gateway.telemetry.otlp import OtlpExport, otlp_settings
from gateway.telemetry.tracing import PeerAddress, Tracing
from gateway.telemetry.window import UpstreamWindow
from gateway.upstream.children import Children
from gateway.upstream.connector import Connector, pool_for, sse_client_for
from gateway.upstream.listening import ListenStreams
from gateway.upstream.pool import SharedPool
from store import Binding, Store, open_store
from store.postgres import DEFAULT_POOL_SIZE

logger = logging.getLogger(__name__)

DEFAULT_ORGANISATION = "default"
# Once the server begins to stop, calls in flight have this long to finish before their sessions
# end (cancelling them), unless it is asked again; streams that never finish by themselves end at
# once (host/shutdown.py).
SHUTDOWN_GRACE_S = 3.0
# Collections of the youngest generation: every call allocates a few hundred objects, nearly all
# freed by reference counting, so the default (700) collects every few calls for little.
GC_YOUNG_THRESHOLD = 10_000


@dataclass(slots=True)
class Gateway:
    """The running gateway: the lifespan's state, what every route is served by."""

    config: GatewayConfig
    store: Store
    registry: SessionRegistry
    endpoint: Endpoint
    broker: CredentialBroker
    legacy: LegacySse
    sessions_api: SessionsApi
    credentials_api: CredentialsApi
    keys_api: KeysApi
    grants_api: GrantsApi
    pages: ConnectPages
    readiness: Readiness
    metrics: GatewayMetrics
    window: UpstreamWindow  # each upstream's last hour of calls
    # What upstreams list, shared by every host session, and the sessions no host owns: what the
    # gateway holds for its upstreams (children per upstream: `children.count(name)`).
    lists: UpstreamLists
    pools: Mapping[str, SharedPool]
    children: Children
    console: Console  # the admin console at /admin/
    signin: SignInServer | None = None  # with host_sign_in.enabled: the authorization server
    stopped: bool = False


@asynccontextmanager
async def running_gateway(config: GatewayConfig, shutdown: Shutdown | None = None) -> AsyncIterator[Gateway]:
    shutdown = shutdown or Shutdown()
    async with AsyncExitStack() as stack:
        sealer = sealer_for(config.secrets)
        pool_size = config.postgres.pool_size if config.postgres else DEFAULT_POOL_SIZE
        store = await stack.enter_async_context(
            open_store(config.store_at, sealer=sealer, pool_size=pool_size)
        )
        organisation = await store.ensure_organisation(DEFAULT_ORGANISATION)
        # One gateway per database: what the record shows open now, a previous run left open. On
        # replicas, the sessions the others serve go on: only those none serves (their end lost).
        shared = store.coordination.shared
        if stale := await store.end_open_sessions("gateway_restart", keep_live=shared):
            logger.info("ended %d session(s) the previous run left open (reason gateway_restart)", stale)
        metrics = GatewayMetrics(upstream.name for upstream in config.upstreams)
        stored: StoreRecorder | None = None
        if config.recording.enabled:
            recording = running_recorder(store, config.recording, metrics.commit, metrics.maintenance)
            stored = await stack.enter_async_context(recording)
        window = UpstreamWindow()
        tracing: Tracing | None = None
        if (telemetry := otlp_settings(config.telemetry, os.environ)) is not None:
            export = OtlpExport(telemetry)
            stack.push_async_callback(_stop_export, export)
            metrics.watch_telemetry(export.dropped)
            # Captured content (telemetry.capture_content) is redacted by the record's own rules.
            content = Redactor.with_defaults(
                config.recording.redact_keys, config.recording.redact_patterns, telemetry.max_content_bytes
            )
            tracing = Tracing(export, config.upstreams, content)
        recorder: Recorder = ObservedRecorder(
            stored or NullRecorder(), metrics, window, log_calls=config.logging.calls, tracing=tracing
        )
        task_group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(task_group.cancel_scope.cancel)
        # Authorization servers get a client of their own: upstream pools carry upstream headers.
        # It keeps no idle connections: requests go to pinned addresses (credentials/egress.py),
        # and a TLS connection verified for one name must not serve another on the same address.
        oauth_http = await stack.enter_async_context(
            httpx2.AsyncClient(timeout=30.0, limits=httpx2.Limits(max_keepalive_connections=0))
        )

        connectors: dict[str, Connector] = {}

        async def verify(upstream: UpstreamConfig, headers: Mapping[str, str]) -> None:
            await connectors[upstream.name].verify(headers)

        upstreams = {upstream.name: upstream for upstream in config.upstreams}
        broker = CredentialBroker(store, upstreams, oauth_http, config.public_url, verify, metrics.refresh)
        children = Children(config.sessions.max_children)
        # What upstreams write to the gateway's log is redacted by the record's own rules.
        log_redactor = Redactor.with_defaults(config.recording.redact_keys, config.recording.redact_patterns)
        for upstream in config.upstreams:
            http = upstream.transport == "http"
            sse = upstream.transport == "sse"
            most = config.security.max_upstream_response_bytes
            pool = (
                await stack.enter_async_context(pool_for(upstream, max_response_bytes=most)) if http else None
            )
            listen_streams = None
            if http:
                listen_pool = await stack.enter_async_context(
                    pool_for(upstream, listening=True, max_response_bytes=most)
                )
                listen_streams = ListenStreams(upstream.name, listen_pool, upstream.max_listen_streams)
            client = await stack.enter_async_context(sse_client_for(upstream)) if sse else None
            connectors[upstream.name] = Connector(
                upstream,
                task_group,
                pool=pool,
                sse_client=client,
                log_redactor=log_redactor,
                children=children,
                listen_streams=listen_streams,
                max_response_bytes=most,
                own_credential=own.headers if (own := broker.own_tokens.get(upstream.name)) else None,
            )
        pools = {name: SharedPool(connector) for name, connector in connectors.items()}
        for each in pools.values():
            stack.push_async_callback(each.aclose)
        lists = UpstreamLists(connectors, pools)
        router = Router(config.upstreams, lists)
        # Replicas on one database reach each other through it (gateway/cluster.py); a gateway
        # alone builds nothing of that.
        cluster = Cluster(store.coordination, task_group) if store.coordination.shared else None
        if cluster is not None:
            stack.callback(cluster.close)
        registry = SessionRegistry(
            connectors,
            config.sessions,
            recorder,
            broker,
            pools,
            lists.forget,
            cluster,
            None if cluster is None else SharedSessions(store, cluster),
        )
        hosts: Hosts = registry if cluster is None else FanOuts(cluster, registry)
        for each in pools.values():
            each.on_list_changed(hosts.upstream_list_changed)
        metrics.watch(lambda: _held_open(registry, stored, connectors, pools, children, cluster))
        broker.on_connected(hosts.connected)
        for connector in connectors.values():
            connector.on_recovered(hosts.upstream_recovered)
        stack.push_async_callback(registry.aclose)
        task_ids = TaskIds(await store.gateway_secret(TASK_IDS_SECRET_NAME))
        proxy = Proxy(router, recorder, TaskRelay(router.upstream_names, recorder, task_ids), tracing)
        auth = HostAuth(
            store,
            required=config.auth.required,
            default_organisation_id=organisation.id,
            max_failures_per_minute=config.auth.max_failures_per_minute,
            tokens=store.signin if config.host_sign_in.enabled else None,
        )
        signin: SignInServer | None = None
        if config.host_sign_in.enabled:
            signin = SignInServer(
                config.host_sign_in, config.public_url, store, oauth_http, auth.authenticate, sealer
            )
            start_guarded(task_group, "sign-in maintenance", signin.maintain, metrics.maintenance)
        # Before the task group is cancelled and the store closed: the last key use is kept.
        stack.push_async_callback(_shielded, auth.flush_usage)
        endpoint = Endpoint(
            auth=auth,
            guard=OriginGuard(config.security.allowed_hosts, config.security.allowed_origins),
            registry=registry,
            proxy=proxy,
            stateless=StatelessHandler(
                registry, proxy, GATEWAY_CAPABILITIES, SERVER_INFO, task_group, shutdown, cluster
            ),
            max_body_bytes=config.security.max_body_bytes,
            shutdown=shutdown,
            signin=None if signin is None else signin.resource,
        )

        if cluster is not None:
            _serve_replicas(cluster, registry, proxy, endpoint.stateless)

        async def end_sessions_at_shutdown() -> None:
            await shutdown.wait()
            await shutdown.grace(SHUTDOWN_GRACE_S)
            await _shielded(registry.aclose)  # not cut short by the lifespan's own end

        start_guarded(task_group, "ending sessions at shutdown", end_sessions_at_shutdown)
        start_reaper(registry, task_group)
        for connector in connectors.values():
            if connector.config.required:
                connector.check_soon()
        stack.callback(broker.listen())
        start_guarded(task_group, "credential maintenance", broker.maintain, metrics.maintenance)
        start_guarded(task_group, "API key maintenance", auth.maintain)
        authenticate = endpoint.auth.authenticate

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

        cursors = CursorCodec(await store.gateway_secret(CURSOR_SECRET_NAME))
        credentials_api = CredentialsApi(store, cursors, authenticate_api, reauthorise, broker.forget)

        def upstream_statuses() -> list[UpstreamStatus]:
            return [_upstream_status(connector, window) for connector in connectors.values()]

        console = Console(
            store,
            cursors,
            authenticate_api,
            ConsoleSessions(store, sealer),
            credentials_api,
            upstream_statuses,
            secure_cookies=config.public_url.startswith("https://"),
            providers=None if signin is None else _console_providers(signin),
        )
        if signin is not None:
            signin.consents.console = console.provider_signed_in
        yield Gateway(
            config,
            store,
            registry,
            endpoint,
            broker,
            legacy=LegacySse(endpoint),
            sessions_api=SessionsApi(store, cursors, authenticate_api),
            credentials_api=credentials_api,
            keys_api=KeysApi(store, authenticate_api),
            grants_api=GrantsApi(store, authenticate_api),
            pages=ConnectPages(
                broker, authenticate, sealer, secure_cookies=config.public_url.startswith("https://")
            ),
            readiness=Readiness(
                store, {name: connector.health for name, connector in connectors.items()}, task_group
            ),
            signin=signin,
            metrics=metrics,
            window=window,
            lists=lists,
            pools=pools,
            children=children,
            console=console,
        )


def _console_providers(signin: SignInServer) -> ProviderSignIn | None:
    """The host sign-in's OpenID Connect providers, offered on the console's sign-in page too."""
    if not signin.config.oidc:
        return None

    async def begin(provider: str) -> ProviderRedirect:
        try:
            begun = await signin.consents.begin_console_sign_in(provider)
        except OidcError as exc:
            raise ProviderUnavailable(exc.message) from exc
        return ProviderRedirect(begun.url, STATE_COOKIE, begun.stored_state, begun.max_age_s, CALLBACK_PATH)

    return ProviderSignIn({p.name: p.label for p in signin.config.oidc}, begin)


def _upstream_status(connector: Connector, window: UpstreamWindow) -> UpstreamStatus:
    health = connector.health.report()
    last = window.summary(connector.config.name)
    return UpstreamStatus(
        name=connector.config.name,
        transport=connector.config.transport,
        state=str(health["state"]),
        last_error=None if health["last_error"] is None else str(health["last_error"]),
        last_error_at=None if health["last_error_at"] is None else str(health["last_error_at"]),
        calls=last.calls,
        errors=last.errors,
        error_rate=last.error_rate,
        p50_ms=last.p50_ms,
        p99_ms=last.p99_ms,
    )


def _held_open(
    registry: SessionRegistry,
    recorder: StoreRecorder | None,
    connectors: Mapping[str, Connector],
    pools: Mapping[str, SharedPool],
    children: Children,
    cluster: Cluster | None,
) -> HeldOpen:
    kinds: Counter[str] = Counter()
    upstream_sessions: Counter[str] = Counter({name: pool.sessions() for name, pool in pools.items()})
    for session in registry.sessions():
        kinds["group" if isinstance(session, StatelessGroup) else "session"] += 1
        for upstream in session.open_upstreams():
            if not upstream.channel.closed:
                upstream_sessions[upstream.name] += 1
    running = {name: children.count(name) for name in connectors}
    states = {name: connector.health.state for name, connector in connectors.items()}
    return HeldOpen(
        kinds,
        upstream_sessions,
        running,
        0 if recorder is None else recorder.queue_depth,
        states,
        1 if cluster is None else len(cluster.live),
    )


async def _stop_export(export: OtlpExport) -> None:
    """Send the last spans, but never hold the gateway's stop for a collector that hangs."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(3):
        await anyio.to_thread.run_sync(export.shutdown, abandon_on_cancel=True)


@contextmanager
def _settled_heap() -> Iterator[None]:
    """While the gateway serves: what start-up made (modules, config, pools, the app) is moved out
    of the collector's sight (`gc.freeze`), so collections no longer walk it over and over, and
    the young generation is collected less often. Restored when it stops (tests run many). No
    collection first: it would cost tens of milliseconds per start, and the little garbage
    start-up leaves is collected once the heap is unfrozen."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _shielded(step: Callable[[], Awaitable[None]]) -> None:
    with anyio.CancelScope(shield=True):
        await step()


def build_app(config: GatewayConfig, shutdown: Shutdown | None = None) -> GatewayApp:
    """The gateway's ASGI app: every route declared here, served once the lifespan has started.
    The server that runs it begins `shutdown` when it starts to stop, so that streams end
    (host/shutdown.py)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Gateway]]:
        async with running_gateway(config, shutdown) as gateway:
            app.state.gateway = gateway  # for tests that look inside; requests use their own state
            logger.info(
                "mcpgw serving %d upstream(s): %s",
                len(config.upstreams),
                ", ".join(u.name for u in config.upstreams),
            )
            try:
                with _settled_heap():
                    yield {"gateway": gateway}
            finally:  # /healthz says so once the gateway has stopped, for any reason
                gateway.stopped = True

    async def health(request: Request) -> JSONResponse:
        if _gateway(request.scope).stopped:
            return JSONResponse({"status": "stopped"}, 503)
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> JSONResponse:
        gateway = _gateway(request.scope)
        if gateway.stopped:
            return JSONResponse({"status": "stopped"}, 503)
        status, body = await gateway.readiness.report()
        return JSONResponse(body, status, headers={"cache-control": "no-store"})

    async def sse_stream(scope: Scope, receive: Receive, send: Send) -> None:
        await _gateway(scope).legacy.stream(scope, receive, send)

    async def sse_message(scope: Scope, receive: Receive, send: Send) -> None:
        await _gateway(scope).legacy.message(scope, receive, send)

    def sessions_api(request: Request) -> SessionsApi:
        return _gateway(request.scope).sessions_api

    def credentials_api(request: Request) -> CredentialsApi:
        return _gateway(request.scope).credentials_api

    def keys_api(request: Request) -> KeysApi:
        return _gateway(request.scope).keys_api

    def grants_api(request: Request) -> GrantsApi:
        return _gateway(request.scope).grants_api

    def pages(request: Request) -> ConnectPages:
        return _gateway(request.scope).pages

    def signin(request: Request) -> SignInServer:
        server = _gateway(request.scope).signin
        assert server is not None  # its routes are declared only when it is enabled
        return server

    def console(request: Request) -> Console:
        return _gateway(request.scope).console

    def exposition(request: Request) -> Callable[[], bytes]:
        return _gateway(request.scope).metrics.exposition

    routes = [
        Route("/sse", _Asgi(sse_stream), methods=["GET"]),
        Route("/messages", _Asgi(sse_message), methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
        *api_routes(sessions_api),
        *credential_routes(credentials_api),
        *key_routes(keys_api),
        *grant_routes(grants_api),
        *console_routes(console),
        *connect_routes(pages, config.public_url),
        *(signin_routes(signin) if config.host_sign_in.enabled else []),
        *(metrics_routes(exposition, config.metrics.token) if config.metrics.enabled else []),
    ]
    rest = Starlette(routes=routes, lifespan=lifespan)
    # Starlette would answer "/x/" with a redirect to "/x" built from the request's Host
    # header, which a client chooses: a path is either served or 404.
    rest.router.redirect_slashes = False
    traced = otlp_settings(config.telemetry, os.environ) is not None
    return GatewayApp(rest, access_log=config.logging.access_log, peer_address=traced)


class GatewayApp:
    """The MCP endpoint, mounted as a raw ASGI app in front of everything else.

    `/mcp`, `/mcp/` and `/mcp/{organisationId}` go straight to `Endpoint` (host/streamable.py):
    no middleware, no routing (they are nearly all the traffic, and Starlette's error and
    exception middleware and route matching cost ~0.03 ms of CPU per call); the endpoint
    answers every error itself. Everything else, the lifespan included, is `rest`: a Starlette
    app with every other route.
    """

    def __init__(self, rest: Starlette, access_log: bool = False, peer_address: bool = False) -> None:
        self.rest = rest
        # Only wrapped when asked for: the MCP endpoint's path stays as short as it can be.
        self._routed: ASGIApp = PeerAddress(self._route) if peer_address else self._route
        self._logged = AccessLog(self._routed) if access_log else None

    @property
    def state(self) -> State:
        """The Starlette app's state, where tests find the running `Gateway`."""
        return self.rest.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._logged is not None:
            await self._logged(scope, receive, send)
        else:
            await self._routed(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            if path in ("/mcp", "/mcp/"):
                await _gateway(scope).endpoint({**scope, "path_params": {}}, receive, send)
                return
            organisation = path[5:] if path.startswith("/mcp/") else ""
            if organisation and "/" not in organisation:
                scope = {**scope, "path_params": {"organisationId": organisation}}
                await _gateway(scope).endpoint(scope, receive, send)
                return
        await self.rest(scope, receive, send)


class _Asgi:
    """A raw ASGI endpoint for a Starlette route, which takes a plain function for a request handler."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def _gateway(scope: Scope) -> Gateway:
    gateway: Gateway = scope["state"]["gateway"]
    return gateway


def _serve_replicas(
    cluster: Cluster, registry: SessionRegistry, proxy: Proxy, stateless: StatelessHandler
) -> None:
    """What other replicas pass this one: a host's answer to a request this one's upstream
    made, a cancellation of a request it serves, the retry of a call it suspended, the end of a
    session it holds a copy of."""

    async def answered(message: Answered) -> None:
        session = registry.held(message.session_id)
        if session is not None:
            await proxy.response(session, message.message)

    async def cancelled(message: Cancelled) -> None:
        session = registry.held(message.session_id)
        if session is not None:
            session.cancel_host_request(message.request_id)

    async def ended(message: SessionEnded) -> None:
        await registry.ended_elsewhere(message.session_id)

    cluster.on(Answered, answered)
    cluster.on(Cancelled, cancelled)
    cluster.on(SessionEnded, ended)
    cluster.serve(RESUME, stateless.resume_here)
