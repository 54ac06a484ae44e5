"""What gateway replicas tell each other, all of it, and the one way they do: ``store.Coordination``.

Every message between replicas is one of the frozen types below, on one of two topics:
``mcpgw.all`` reaches every replica (the fan-outs: an upstream's list changed or it recovered,
a credential connected; where a session's streams are open; a host cancelling a request) and
``mcpgw.to.<instance>`` one replica (what must reach a stream, a session or a call it holds).

Ownership is in what the gateway mints: the ids of requests upstreams make of hosts, and 2026
``requestState``, end in ``@<instance>`` (`owned`, `owner_of`), so whichever replica the
host's answer or retry lands on sends it to the one holding the waiting call. Forwarding
(`Cluster.forward`) sends one replica a piece of work of a registered kind and relays the
events it streams back, then its answer.

A gateway alone (``coordination.shared`` False) builds no ``Cluster``: nothing here runs on its
paths. On replicas, a message that crosses no replica costs one attribute test and an empty-set
check (`SessionLink.holders`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Protocol, TypeVar
from weakref import WeakValueDictionary

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from gateway.errors import OwnerGone
from gateway.protocol.jsonrpc import JSONObject
from store import Binding, Coordination, StoreError

__all__ = [
    "EVERYONE",
    "Answered",
    "Cancelled",
    "Cluster",
    "Connected",
    "FanOuts",
    "Hosts",
    "ListChanged",
    "Recovered",
    "SessionEnded",
    "SessionLink",
    "group_stream_key",
    "owned",
    "owner_of",
]

logger = logging.getLogger(__name__)

EVERYONE = "mcpgw.all"
_OWNER_MARK = "@"
_LIVENESS_CHECK_S = 5.0  # how often a forwarded call's asker checks that its owner still runs
_WANTED_EVERY_S = 5.0  # a replica buffering for a stream asks at most this often where it is open
_FORWARDED_EVENTS = 256  # events of one forwarded call not yet relayed before more are dropped
# How often a replica looks for replicas that stopped beating (killed, cut off): their streams
# are forgotten, so what was meant for them is buffered for the host's next stream instead.
_INSTANCES_CHECK_S = 5.0


def inbox(instance: str) -> str:
    """The topic only replica `instance` listens to."""
    return f"mcpgw.to.{instance}"


def owned(value: str, owner: str | None) -> str:
    """`value` (an id or token this replica mints) marked as held by replica `owner`."""
    return value if owner is None else f"{value}{_OWNER_MARK}{owner}"


def owner_of(value: object) -> str | None:
    """The replica that minted `value` (see `owned`), if it names one."""
    if not isinstance(value, str):
        return None
    _, mark, owner = value.rpartition(_OWNER_MARK)
    return owner if mark and owner else None


def group_stream_key(key: tuple[object, ...]) -> str:
    """A 2026-07-28 group's name across replicas: its group key is the same on each of them."""
    return "g-" + hashlib.sha256(json.dumps(key, separators=(",", ":")).encode()).hexdigest()[:32]


# What every replica hears.


@dataclass(frozen=True, slots=True)
class ListChanged:
    """A session no host owns (a shared pool's, the catalogue's) says upstream's list changed."""

    topic: ClassVar[str] = "list_changed"
    upstream: str
    method: str


@dataclass(frozen=True, slots=True)
class Recovered:
    """Upstream answers again after being down, offering these capabilities."""

    topic: ClassVar[str] = "recovered"
    upstream: str
    capabilities: JSONObject


@dataclass(frozen=True, slots=True)
class Connected:
    """A binding just got its credential: its sessions' tool lists change."""

    topic: ClassVar[str] = "connected"
    organisation_id: str
    upstream: str
    auth_mode: str
    subject: str

    @staticmethod
    def of(binding: Binding) -> Connected:
        return Connected(binding.organisation_id, binding.upstream, binding.auth_mode, binding.subject)

    @property
    def binding(self) -> Binding:
        return Binding(self.organisation_id, self.upstream, self.auth_mode, self.subject)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The sender holds a stream open for `stream` (a session's GET stream, a group's listen)."""

    topic: ClassVar[str] = "stream_opened"
    stream: str


@dataclass(frozen=True, slots=True)
class StreamClosed:
    topic: ClassVar[str] = "stream_closed"
    stream: str


@dataclass(frozen=True, slots=True)
class StreamWanted:
    """The sender buffers messages for `stream`: whoever holds it open says so again."""

    topic: ClassVar[str] = "stream_wanted"
    stream: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A session's host cancelled a request this replica is not serving: whoever is, stops."""

    topic: ClassVar[str] = "cancelled"
    session_id: str
    request_id: str | int


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The sender ended a session (deleted by its host, idle everywhere, evicted): every other
    replica drops its copy (gateway/core/shared_sessions.py)."""

    topic: ClassVar[str] = "session_ended"
    session_id: str


# What one replica hears.


@dataclass(frozen=True, slots=True)
class ToStream:
    topic: ClassVar[str] = "to_stream"
    stream: str
    message: JSONObject


@dataclass(frozen=True, slots=True)
class Answered:
    """A session's host answered a request the receiver's upstream made (the id it minted)."""

    topic: ClassVar[str] = "answered"
    session_id: str
    message: JSONObject


@dataclass(frozen=True, slots=True)
class _Forwarded:
    topic: ClassVar[str] = "forwarded"
    call: str
    kind: str
    body: JSONObject
    reply_to: str


@dataclass(frozen=True, slots=True)
class _ForwardEvent:
    topic: ClassVar[str] = "forward_event"
    call: str
    event: JSONObject


@dataclass(frozen=True, slots=True)
class _ForwardEnd:
    topic: ClassVar[str] = "forward_end"
    call: str
    body: JSONObject | None  # None: the receiver holds no such thing
    failed: str | None = None  # serving it failed there: why


@dataclass(frozen=True, slots=True)
class _ForwardCancel:
    topic: ClassVar[str] = "forward_cancel"
    call: str


Message = (
    ListChanged
    | Recovered
    | Connected
    | StreamOpened
    | StreamClosed
    | StreamWanted
    | Cancelled
    | SessionEnded
    | ToStream
    | Answered
    | _Forwarded
    | _ForwardEvent
    | _ForwardEnd
    | _ForwardCancel
)
_TYPES: dict[str, type[Message]] = {
    kind.topic: kind
    for kind in (
        ListChanged,
        Recovered,
        Connected,
        StreamOpened,
        StreamClosed,
        StreamWanted,
        Cancelled,
        SessionEnded,
        ToStream,
        Answered,
        _Forwarded,
        _ForwardEvent,
        _ForwardEnd,
        _ForwardCancel,
    )
}
M = TypeVar("M", ListChanged, Recovered, Connected, Cancelled, Answered, SessionEnded)
Emit = Callable[[JSONObject], Awaitable[None]]
Served = Callable[[JSONObject, Emit], Awaitable[JSONObject | None]]


class LocalStream(Protocol):
    """A session's listen stream on this replica, as the cluster feeds it."""

    async def deliver_here(self, message: JSONObject) -> None:
        """To this replica's streams only (or its buffer): it came from another replica."""
        ...

    async def flush(self, send: Emit) -> None:
        """Hand what it buffered to `send`, in order (a stream opened on another replica)."""
        ...

    @property
    def open(self) -> bool: ...


class SessionLink:
    """One session (or group) as the other replicas know it: by `key`, the same on each."""

    __slots__ = ("_cluster", "_wanted_at", "holders", "key")

    def __init__(self, cluster: Cluster, key: str) -> None:
        self._cluster = cluster
        self.key = key
        self.holders = cluster.holders(key)  # other replicas with a stream open for it (shared set)
        self._wanted_at = -math.inf

    @property
    def instance_id(self) -> str:
        return self._cluster.instance_id

    async def send(self, message: JSONObject, *, to_one: bool = False) -> bool:
        """Send `message` to the streams open on other replicas (`to_one`: to one of them, the
        same while it lasts): False if there is none."""
        if not self.holders:
            return False
        for holder in [min(self.holders)] if to_one else list(self.holders):
            await self._cluster.publish(inbox(holder), ToStream(self.key, message))
        return True

    async def opened(self) -> None:
        """A stream opened here: sent before the host is told it is open (a 2026 listen's ack),
        so what the host causes next elsewhere is sent here."""
        await self._cluster.publish(EVERYONE, StreamOpened(self.key))

    def closed(self) -> None:
        self._cluster.post(EVERYONE, StreamClosed(self.key))

    def buffering(self) -> None:
        """This replica started buffering for the session: ask where its stream is (at most
        every few seconds), in case it opened before this replica heard of it."""
        now = anyio.current_time()
        if now - self._wanted_at >= _WANTED_EVERY_S:
            self._wanted_at = now
            self._cluster.post(EVERYONE, StreamWanted(self.key))

    async def answer(self, message: JSONObject) -> bool:
        """Pass the host's answer to the replica whose upstream asked: False if that is this one."""
        owner = owner_of(message.get("id"))
        if owner is None or owner == self._cluster.instance_id:
            return False
        await self._cluster.publish(inbox(owner), Answered(self.key, message))
        return True

    async def cancel(self, request_id: object) -> None:
        """The host cancelled a request this replica is not serving: maybe another is."""
        if isinstance(request_id, str | int):
            await self._cluster.publish(EVERYONE, Cancelled(self.key, request_id))


class Cluster:
    """This replica's end of the conversation with the others (see the module's docstring)."""

    def __init__(self, coordination: Coordination, task_group: TaskGroup) -> None:
        self._coordination = coordination
        self._task_group = task_group
        self.instance_id = coordination.instance_id
        self._streams: WeakValueDictionary[str, LocalStream] = WeakValueDictionary()
        self._holders: dict[str, set[str]] = {}
        self._handlers: dict[type[Message], list[Callable[[Any], Awaitable[None]]]] = {}
        self._kinds: dict[str, Served] = {}
        self._waiting: dict[str, MemoryObjectSendStream[_ForwardEvent | _ForwardEnd]] = {}
        self._serving: dict[str, anyio.CancelScope] = {}
        self.live: frozenset[str] = frozenset({self.instance_id})  # as of the last check
        self._watching = anyio.CancelScope()
        self._unsubscribe = [
            coordination.subscribe(EVERYONE, self._received),
            coordination.subscribe(inbox(self.instance_id), self._received),
        ]
        task_group.start_soon(self._watch_instances)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for scope in self._serving.values():
            scope.cancel()
        self._watching.cancel()

    # Sending.

    async def publish(self, topic: str, message: Message) -> None:
        """Send `message` on `topic`; a database that cannot be reached loses it (logged)."""
        payload = {"t": message.topic, "from": self.instance_id, **asdict(message)}
        try:
            await self._coordination.publish(topic, payload)
        except StoreError as exc:
            logger.warning("replicas: could not send %s: %s", message.topic, exc)

    def post(self, topic: str, message: Message) -> None:
        """`publish` from code that cannot wait for it (a stream closing)."""
        self._task_group.start_soon(self.publish, topic, message)

    async def announce(self, message: ListChanged | Recovered | Connected) -> bool:
        """Tell every replica, this one included (its handler runs here too): False if the
        message could not be sent, and the caller must act on it here alone."""
        payload = {"t": message.topic, "from": self.instance_id, **asdict(message)}
        try:
            await self._coordination.publish(EVERYONE, payload)
        except StoreError as exc:
            logger.warning("replicas: could not tell the others of %s: %s", message.topic, exc)
            return False
        return True

    # Receiving.

    def on(self, kind: type[M], handler: Callable[[M], Awaitable[None]]) -> None:
        """Run `handler` with every message of `kind` (fan-outs: from every replica, this one
        included; `Answered`, `Cancelled`, `SessionEnded`: from the others)."""
        self._handlers.setdefault(kind, []).append(handler)

    def serve(self, kind: str, handler: Served) -> None:
        """Serve forwarded calls of `kind`: `handler(body, emit)` answers with the body the asker
        gets (None: this replica holds no such thing), calling `emit` with each event first."""
        self._kinds[kind] = handler

    def holders(self, key: str) -> set[str]:
        return self._holders.setdefault(key, set())

    def link(self, key: str, stream: LocalStream) -> SessionLink:
        """The cross-replica side of a session's listen stream `stream`, known as `key`."""
        self._streams[key] = stream
        return SessionLink(self, key)

    def unlink(self, key: str) -> None:
        self._streams.pop(key, None)
        if not self._holders.get(key, True):
            del self._holders[key]

    async def _received(self, payload: Mapping[str, Any]) -> None:
        kind = _TYPES.get(str(payload.get("t")))
        sender = payload.get("from")
        if kind is None or not isinstance(sender, str):
            logger.warning("replicas: a message of no known kind (%r) ignored", payload.get("t"))
            return
        try:
            message = kind(**{f.name: payload[f.name] for f in fields(kind) if f.name in payload})
        except TypeError as exc:
            logger.warning("replicas: a malformed %s ignored: %s", kind.topic, exc)
            return
        mine = sender == self.instance_id
        if isinstance(message, ListChanged | Recovered | Connected):
            await self._dispatch(message)  # the sender's own hosts are told here too
        elif mine:
            return  # what it says of streams and cancellations, this replica knows already
        elif isinstance(message, StreamOpened):
            self.holders(message.stream).add(sender)
            stream = self._streams.get(message.stream)
            if stream is not None:
                await stream.flush(lambda m: self.publish(inbox(sender), ToStream(message.stream, m)))
        elif isinstance(message, StreamClosed):
            self.holders(message.stream).discard(sender)
        elif isinstance(message, StreamWanted):
            stream = self._streams.get(message.stream)
            if stream is not None and stream.open:
                await self.publish(EVERYONE, StreamOpened(message.stream))
        elif isinstance(message, ToStream):
            stream = self._streams.get(message.stream)
            if stream is not None:
                await stream.deliver_here(message.message)
        elif isinstance(message, Cancelled | Answered | SessionEnded):
            await self._dispatch(message)
        elif isinstance(message, _Forwarded):
            self._task_group.start_soon(self._serve_forwarded, message)
        elif isinstance(message, _ForwardEvent | _ForwardEnd):
            waiting = self._waiting.get(message.call)
            if waiting is not None:
                try:
                    waiting.send_nowait(message)
                except anyio.WouldBlock:
                    logger.warning("replicas: a forwarded call's asker is not keeping up; event dropped")
        elif isinstance(message, _ForwardCancel):
            scope = self._serving.get(message.call)
            if scope is not None:
                scope.cancel()

    async def _dispatch(self, message: Message) -> None:
        for handler in self._handlers.get(type(message), ()):
            try:
                await handler(message)
            except Exception as exc:  # one failing handler must not cost the others the message
                logger.error("replicas: handling %s failed: %s: %s", message.topic, type(exc).__name__, exc)

    async def _watch_instances(self) -> None:
        with self._watching:
            with suppress(StoreError):
                self.live = await self._coordination.live_instances()
            while True:
                await anyio.sleep(_INSTANCES_CHECK_S)  # a schedule, not synchronisation
                await self.check_instances()

    async def check_instances(self) -> None:
        """Forget the streams of replicas gone without a word (`kill -9`, a lost machine): a
        `StreamClosed` never comes from them, and what this replica sent them would be lost."""
        try:
            self.live = await self._coordination.live_instances()
        except StoreError as exc:
            logger.warning("replicas: could not list the live replicas: %s", exc)
            return
        gone: set[str] = set()
        for key, holders in list(self._holders.items()):
            gone |= holders - self.live
            holders &= self.live
            if not holders and key not in self._streams:
                del self._holders[key]
        if gone:
            logger.warning("replicas: %s stopped beating; the streams open there are forgotten", sorted(gone))

    # Forwarding.

    async def forward(self, owner: str, kind: str, body: JSONObject, on_event: Emit) -> JSONObject | None:
        """Have replica `owner` serve `body` as a call of `kind`, passing each event it streams
        to `on_event`; its answer (None: it holds no such thing). `OwnerGone` if it is not
        running or stops before it answers. Cancelling this cancels it there."""
        call = secrets.token_hex(8)
        sender, events = anyio.create_memory_object_stream[_ForwardEvent | _ForwardEnd](_FORWARDED_EVENTS)
        self._waiting[call] = sender
        try:
            await self._check_live(owner)
            await self.publish(inbox(owner), _Forwarded(call, kind, body, self.instance_id))
            while True:
                item: _ForwardEvent | _ForwardEnd | None = None
                with anyio.move_on_after(_LIVENESS_CHECK_S):
                    item = await events.receive()
                if item is None:
                    await self._check_live(owner)
                elif isinstance(item, _ForwardEnd):
                    if item.failed is not None:
                        raise OwnerGone(f"replica {owner} could not go on with it: {item.failed}")
                    return item.body
                else:
                    await on_event(item.event)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.publish(inbox(owner), _ForwardCancel(call))
            raise
        finally:
            del self._waiting[call]
            sender.close()
            events.close()

    async def _check_live(self, owner: str) -> None:
        try:
            live = await self._coordination.live_instances()
        except StoreError:
            return  # the database is away: the owner may well be running
        if owner not in live:
            raise OwnerGone(f"replica {owner} is not running")

    async def _serve_forwarded(self, message: _Forwarded) -> None:
        handler = self._kinds.get(message.kind)
        reply_to = inbox(message.reply_to)

        async def emit(event: JSONObject) -> None:
            await self.publish(reply_to, _ForwardEvent(message.call, event))

        body: JSONObject | None = None
        failed: str | None = None
        with anyio.CancelScope() as scope:
            self._serving[message.call] = scope
            try:
                if handler is not None:
                    body = await handler(message.body, emit)
            except Exception as exc:  # the asker must hear of it, not wait for its deadline
                logger.error(
                    "replicas: serving a forwarded %s failed: %s: %s", message.kind, type(exc).__name__, exc
                )
                failed = type(exc).__name__
            finally:
                self._serving.pop(message.call, None)
        if scope.cancelled_caught:
            return
        await self.publish(reply_to, _ForwardEnd(message.call, body, failed))


class Hosts(Protocol):
    """What the fan-outs do on each replica (the session registry)."""

    async def upstream_list_changed(self, name: str, method: str) -> None: ...

    async def upstream_recovered(self, name: str, capabilities: JSONObject) -> None: ...

    async def connected(self, binding: Binding) -> None: ...


class FanOuts:
    """The registry's fan-outs, published: every replica's hosts and shared lists hear them
    (this replica's through the same delivery), or this one's alone if they cannot be sent."""

    __slots__ = ("_cluster", "_hosts")

    def __init__(self, cluster: Cluster, hosts: Hosts) -> None:
        self._cluster = cluster
        self._hosts = hosts
        cluster.on(ListChanged, lambda m: hosts.upstream_list_changed(m.upstream, m.method))
        cluster.on(Recovered, lambda m: hosts.upstream_recovered(m.upstream, m.capabilities))
        cluster.on(Connected, lambda m: hosts.connected(m.binding))

    async def upstream_list_changed(self, name: str, method: str) -> None:
        if not await self._cluster.announce(ListChanged(name, method)):
            await self._hosts.upstream_list_changed(name, method)

    async def upstream_recovered(self, name: str, capabilities: JSONObject) -> None:
        if not await self._cluster.announce(Recovered(name, capabilities)):
            await self._hosts.upstream_recovered(name, capabilities)

    async def connected(self, binding: Binding) -> None:
        if not await self._cluster.announce(Connected.of(binding)):
            await self._hosts.connected(binding)
