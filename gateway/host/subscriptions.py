"""`subscriptions/listen` for 2026-07-28 hosts: one response stream carrying change events.

The gateway acknowledges the host's filter first, then gathers events from every upstream:
a 2026-07-28 upstream gets its own listen request (its frames are relayed, re-tagged with the
host's subscription id); a handshake-era upstream session is subscribed to the host's resource
URIs (its GET stream open first, over HTTP), and what it announces (list_changed,
resources/updated), on that stream or on a call's, is filtered onto the stream.
The stream ends when the host closes it, or when the gateway ends it (its session ended, or the
gateway is stopping): then with the listen request's result, so the host knows it was not dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY

from gateway.core.host_session import HostSession
from gateway.core.router import Router
from gateway.errors import CredentialError, RoutingError, UpstreamError
from gateway.host.asgi import ResponseStream
from gateway.protocol.jsonrpc import JSONObject, RequestId, notification, params_of, result
from gateway.protocol.uris import outward

logger = logging.getLogger(__name__)

_SUBSCRIBE_S = 10.0  # how long the ack waits for slow upstreams before going out anyway

_FLAG_OF = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}


class _Filtered:
    """Passes on only what the host asked for, tagged with its subscription id, once acknowledged."""

    def __init__(self, stream: ResponseStream, wanted: JSONObject, subscription_id: RequestId) -> None:
        self.acknowledged = False
        self._stream = stream
        self._wanted = wanted
        self._uris = set(wanted.get("resourceSubscriptions") or ())
        self._meta = {SUBSCRIPTION_ID_META_KEY: subscription_id}

    async def send(self, message: JSONObject) -> None:
        method = message.get("method")
        if not self.acknowledged:
            return  # the ack must be the stream's first frame
        if method in _FLAG_OF:
            if not self._wanted.get(_FLAG_OF[method]):
                return
        elif method == "notifications/resources/updated":
            if params_of(message).get("uri") not in self._uris:
                return
        else:
            return  # acks of upstream listens, anything unasked
        params = params_of(message)
        await self._stream.send(
            notification(method, {**params, "_meta": {**(params.get("_meta") or {}), **self._meta}})
        )


class _UpstreamAck:
    """In front of the relay for one 2026 upstream's listen: notes when that upstream has
    acknowledged, and puts the URIs it announces under its uri_prefix (protocol/uris.py)."""

    def __init__(self, relay: _Filtered, uri_prefix: str) -> None:
        self.ready = anyio.Event()
        self._relay = relay
        self._uri_prefix = uri_prefix

    async def send(self, message: JSONObject) -> None:
        if message.get("method") == "notifications/subscriptions/acknowledged":
            self.ready.set()
        await self._relay.send(outward(self._uri_prefix, message))


async def serve_listen(
    session: HostSession, router: Router, message: JSONObject, stream: ResponseStream, closed: anyio.Event
) -> None:
    """Serve one listen request until `closed` is set (the host went away).

    Every upstream is subscribed before the host's acknowledgement goes out, so an event the
    host causes right after the ack is not missed.
    """
    wanted = _honored(params_of(message).get("notifications"))
    relay = _Filtered(stream, wanted, message["id"])
    await session.listen.attach(relay)
    try:
        async with anyio.create_task_group() as tg:
            readiness = []
            for name in router.upstream_names:
                ready = anyio.Event()
                readiness.append(ready)
                tg.start_soon(_listen_upstream, session, router, name, message, wanted, relay, ready)
            with anyio.move_on_after(_SUBSCRIBE_S):
                for ready in readiness:
                    await ready.wait()
            ack = {"notifications": wanted, "_meta": {SUBSCRIPTION_ID_META_KEY: message["id"]}}
            await stream.send(notification("notifications/subscriptions/acknowledged", ack))
            relay.acknowledged = True
            await closed.wait()
            tg.cancel_scope.cancel()
    finally:
        session.listen.detach(relay)


def listen_ended(subscription_id: RequestId) -> JSONObject:
    """The listen request's result: the last frame of a stream the gateway ended on purpose."""
    return result(
        subscription_id, {"_meta": {SUBSCRIPTION_ID_META_KEY: subscription_id}, "resultType": "complete"}
    )


async def _listen_upstream(
    session: HostSession,
    router: Router,
    name: str,
    message: JSONObject,
    wanted: JSONObject,
    relay: _Filtered,
    ready: anyio.Event,
) -> None:
    try:
        modern = await session.modern(name)
        if modern is not None:
            uri_prefix = modern.config.uri_prefix
            upstream_ack = _UpstreamAck(relay, uri_prefix)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_set_when, upstream_ack.ready, ready)
                try:
                    # returns when that upstream ends it; on the listen pool, never the calls'
                    await modern.channel.listen(
                        _as_upstream_wrote(message, uri_prefix), upstream_ack, None, ready
                    )
                except (UpstreamError, RoutingError, CredentialError) as exc:
                    # Caught here: raised through the task group, it would leave as an
                    # ExceptionGroup that nothing handles, and the host would get no answer.
                    logger.info("session %s: no change events from %s: %s", session.id, name, exc)
                tg.cancel_scope.cancel()
            return
        upstream = await session.upstream(name)  # opened now, so its announcements reach the relay
        with anyio.move_on_after(_SUBSCRIBE_S):
            await upstream.announcing()
        if "subscribe" in (upstream.capabilities.get("resources") or {}):
            for uri in wanted.get("resourceSubscriptions") or ():
                route = await router.route(session, "resources", uri, message)
                if route.upstream == name:  # under the URI the upstream wrote (protocol/uris.py)
                    subscribe = {"jsonrpc": "2.0", "id": f"mcpgw-sub-{uri}", "method": "resources/subscribe"}
                    await upstream.request({**subscribe, "params": {"uri": route.original}}, None)
    except (UpstreamError, RoutingError, CredentialError) as exc:
        logger.info("session %s: no change events from %s: %s", session.id, name, exc)
    finally:
        ready.set()


def _as_upstream_wrote(message: JSONObject, uri_prefix: str) -> JSONObject:
    """The host's listen as an upstream with a uri_prefix gets it: only the URIs under its prefix,
    without it."""
    params = params_of(message)
    wanted = params.get("notifications")
    if not uri_prefix or not isinstance(wanted, dict):
        return message
    uris = wanted.get("resourceSubscriptions")
    if not isinstance(uris, list):
        return message
    own = [uri[len(uri_prefix) :] for uri in uris if isinstance(uri, str) and uri.startswith(uri_prefix)]
    return {**message, "params": {**params, "notifications": {**wanted, "resourceSubscriptions": own}}}


async def _set_when(source: anyio.Event, target: anyio.Event) -> None:
    await source.wait()
    target.set()


def _honored(requested: Any) -> JSONObject:
    """The filter the gateway can serve: the known flags and the resource URIs, nothing else."""
    if not isinstance(requested, dict):
        return {}
    honored: JSONObject = {flag: True for flag in _FLAG_OF.values() if requested.get(flag) is True}
    uris = requested.get("resourceSubscriptions")
    if isinstance(uris, list) and all(isinstance(uri, str) for uri in uris) and uris:
        honored["resourceSubscriptions"] = uris
    return honored
