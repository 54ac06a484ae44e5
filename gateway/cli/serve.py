"""`mcpgw serve`: the gateway's app under uvicorn, on a socket bound before the app is built.

Binding first means the port is known (with `--port 0`, whichever one the kernel picked) when
the config is completed: the links the gateway hands out (connect pages, OAuth redirects) name
the address it really serves on, unless `public_url` says otherwise. A host that connects before
the gateway has started waits in the socket's backlog rather than being refused.

Ctrl+C (or SIGTERM) stops it within a few seconds however many streams hosts hold open: the
server tells the app it is stopping before it waits for responses to finish (host/shutdown.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from gateway.app import SHUTDOWN_GRACE_S, build_app
from gateway.cli import mcpgw_version
from gateway.config import GatewayConfig, UpstreamConfig, local_url
from gateway.host.limits import protocol_for
from gateway.host.shutdown import Shutdown

__all__ = ["serve"]

_BACKLOG = 2048  # uvicorn's default
# A last resort: responses still running this long after the server began to stop are cancelled.
# The gateway ends its streams at once and its sessions after SHUTDOWN_GRACE_S.
_STOPPED_WITHIN_S = round(SHUTDOWN_GRACE_S) + 5  # whole seconds, as uvicorn takes it


class _Server(uvicorn.Server):
    """uvicorn's server, announcing where it serves once it does, as uvicorn does for sockets it
    binds itself (scripts and tests wait for this line), and telling the app when it stops.

    A second Ctrl+C (or SIGTERM) stops at once but still in order: calls in flight are cancelled
    and every session's end is recorded. uvicorn's own answer to it, to stop waiting and skip the
    lifespan's shutdown, lost those rows and could hang on work cancelled halfway; a third Ctrl+C
    still gets it.
    """

    def __init__(self, config: uvicorn.Config, stopping: Shutdown) -> None:
        super().__init__(config)
        self._stopping = stopping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hurried = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and sockets:
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, sockets[0].getsockname()[1]
            )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Before uvicorn waits for responses to finish: some finish only when told to.
        self._stopping.begin()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and not self._hurried and self._loop is not None:
            self._hurried = True
            # A signal handler may run inside the loop's own code: hand the work to the loop.
            self._loop.call_soon_threadsafe(self._hurry)
            return
        super().handle_exit(sig, frame)

    def _hurry(self) -> None:
        logging.getLogger("uvicorn.error").info("Stopping now: calls in flight are cancelled")
        self._stopping.hurry()


def serve(config: GatewayConfig, host: str, port: int) -> int:
    """Serve `config` on `host`:`port` until stopped; the exit status."""
    try:
        sock = _listening_socket(host, port)
    except OSError as exc:
        print(f"mcpgw: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    served = config.served_at(host, sock.getsockname()[1])
    _announce(served)
    stopping = Shutdown()
    server_config = uvicorn.Config(
        build_app(served, stopping),
        host=host,
        port=served.listen.port,
        # The gateway's own logging (gateway/telemetry/logs.py) holds, uvicorn's lines included;
        # its access log is the gateway's (logging.access_log), which leaves secrets out.
        log_config=None,
        log_level=None,
        access_log=False,
        lifespan="on",
        http=protocol_for(served.security),  # head and body deadlines, header limits
        timeout_graceful_shutdown=_STOPPED_WITHIN_S,
    )
    # uvicorn raises the Ctrl+C it handled again once the gateway has stopped: that is the end.
    with contextlib.suppress(KeyboardInterrupt):
        _Server(server_config, stopping).run(sockets=[sock])
    return 0


def _announce(config: GatewayConfig) -> None:
    """The start-up lines: where it serves, who may call it, where the record goes, what is behind."""
    log = logging.getLogger("mcpgw")
    url = local_url(config.listen.host, config.listen.port)
    log.info("mcpgw %s: MCP endpoint %s/mcp", mcpgw_version(), url)
    if config.public_url_configured:
        log.info("public URL (connect links, OAuth redirects): %s", config.public_url)
    if config.auth.required:
        log.info("auth: API keys required (Authorization: Bearer mgw_… or x-api-key)")
    else:
        log.info("auth: off (key-less mode, loopback only)")
    recording = "on" if config.recording.enabled else "off"
    log.info("database: %s (recording %s)", config.database_shown, recording)
    if config.metrics.enabled:
        who = "bearer token" if config.metrics.token is not None else "loopback clients only"
        log.info("metrics: /metrics (%s)", who)
    if not config.upstreams:
        log.info("upstreams: none")
    for upstream in config.upstreams:
        log.info("upstream %s: %s %s", upstream.name, upstream.transport, _where(upstream))


def _where(upstream: UpstreamConfig) -> str:
    """Where an upstream is, without what could be secret: a URL's user, query and fragment, a
    command's arguments."""
    if upstream.url is not None:
        parts = urlsplit(upstream.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit((parts.scheme, host + port, parts.path, "", ""))
    return upstream.command[0] if upstream.command else ""


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock  # not inheritable (PEP 446): no stdio child may hold the port
