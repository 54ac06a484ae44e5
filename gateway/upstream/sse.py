"""An upstream MCP server on the legacy HTTP+SSE transport (protocol revision 2024-11-05).

The channel holds one GET stream open; the server's first event (`endpoint`) names the URL
to POST messages to. Every answer, notification and server request then comes back down
that one stream, so it is matched to the waiting calls as a stdio child's output is.
"""

from __future__ import annotations

import logging
from urllib.parse import urljoin, urlsplit

import anyio
import httpx2
from anyio.abc import TaskGroup

from gateway.background import start_guarded
from gateway.errors import ResponseTooLarge, UpstreamUnavailable, UpstreamUnreachable
from gateway.protocol.jsonrpc import JSONObject, dumps
from gateway.upstream.channel import MessageSink, Unsolicited
from gateway.upstream.demux import Demux
from gateway.upstream.events import MAX_LINE_BYTES, EventDecoder

logger = logging.getLogger(__name__)


class SseChannel:
    def __init__(
        self,
        name: str,
        client: httpx2.AsyncClient,
        url: str,
        unsolicited: Unsolicited,
        max_event_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._name = name
        self._max_event_bytes = max_event_bytes  # `security.max_upstream_response_bytes`
        self._client = client
        self._url = url
        self._demux = Demux(name, unsolicited)
        self._endpoint: str | None = None
        self._ready = anyio.Event()
        self._closed = False
        self._scope = anyio.CancelScope()
        self._failure: UpstreamUnavailable | None = None  # why the stream ended, if it failed

    @classmethod
    async def start(
        cls,
        name: str,
        client: httpx2.AsyncClient,
        url: str,
        unsolicited: Unsolicited,
        task_group: TaskGroup,
        max_event_bytes: int = MAX_LINE_BYTES,
    ) -> SseChannel:
        channel = cls(name, client, url, unsolicited, max_event_bytes)
        start_guarded(task_group, f"upstream {name}: reading its event stream", channel._run)
        await channel._ready.wait()
        if channel._endpoint is None:
            if channel._failure is not None:
                raise channel._failure
            raise UpstreamUnavailable(name, "the SSE stream closed before naming its message endpoint")
        return channel

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(self, message: JSONObject, sink: MessageSink | None) -> JSONObject:
        response = await self._demux.round_trip(message, sink, self._post)
        if response is None:
            raise self._failure or UpstreamUnavailable(
                self._name, "the SSE stream closed before the response"
            )
        return response

    async def notify(self, message: JSONObject) -> None:
        await self._post(message)

    async def respond(self, message: JSONObject) -> None:
        await self._post(message)

    async def aclose(self) -> None:
        self._closed = True
        self._scope.cancel()
        self._demux.fail_all()

    async def _post(self, message: JSONObject) -> None:
        if self._closed or self._endpoint is None:
            raise UpstreamUnavailable(self._name, "the SSE stream is closed")
        headers = {"content-type": "application/json"}
        body = dumps(message)  # TooDeep reaches the caller: the message's fault, not the upstream's
        try:
            response = await self._client.post(self._endpoint, content=body, headers=headers)
        except httpx2.HTTPError as exc:
            raise UpstreamUnavailable(self._name, f"connection failed: {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise UpstreamUnavailable(self._name, f"answered HTTP {response.status_code} to a message")

    async def _run(self) -> None:
        with self._scope:
            async with anyio.create_task_group() as writers:  # what goes to hosts (demux.py)
                self._demux.writing_in(writers)
                await self._read()
                writers.cancel_scope.cancel()

    async def _read(self) -> None:
        try:
            headers = {"accept": "text/event-stream"}
            async with self._client.stream("GET", self._url, headers=headers) as response:
                if response.status_code != 200:
                    refused = f"SSE stream refused (HTTP {response.status_code})"
                    logger.warning("upstream %s: %s", self._name, refused)
                    self._failure = UpstreamUnavailable(self._name, refused)
                    return
                # The project's decoder, not httpx2's: it stops at an event over the limit
                # instead of buffering it whole.
                decoder = EventDecoder(self._max_event_bytes)
                async for chunk in response.aiter_bytes():
                    for event in decoder.feed(chunk):
                        if event.event == "endpoint":
                            self._endpoint = self._same_origin(urljoin(self._url, event.data))
                            self._ready.set()
                        elif event.data:
                            await self._demux.dispatch_raw(event.data)
        except ResponseTooLarge as exc:
            # The stream cannot be read past it: whose answer it was is unknown, so every
            # call waiting on this stream fails with the limit, and the channel closes.
            logger.warning("upstream %s: SSE stream ended: %s", self._name, exc)
            self._failure = UpstreamUnavailable(self._name, str(exc))
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
            logger.warning("upstream %s: SSE stream failed: %s", self._name, exc)
            reason = f"could not connect ({exc or type(exc).__name__})"
            self._failure = UpstreamUnreachable(self._name, reason)
        except httpx2.HTTPError as exc:
            logger.warning("upstream %s: SSE stream failed: %s", self._name, exc)
            self._failure = UpstreamUnavailable(self._name, f"SSE stream failed: {exc or type(exc).__name__}")
        finally:
            self._closed = True
            self._ready.set()
            self._demux.fail_all()

    def _same_origin(self, endpoint: str) -> str | None:
        """Only POST to the server we connected to: an endpoint elsewhere would leak our messages."""
        ours, theirs = urlsplit(self._url), urlsplit(endpoint)
        if (ours.scheme, ours.netloc) != (theirs.scheme, theirs.netloc):
            logger.error(
                "upstream %s: refusing a message endpoint on another origin: %s", self._name, endpoint
            )
            return None
        return endpoint
