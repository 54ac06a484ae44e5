"""The tasks extension (`io.modelcontextprotocol/tasks`) through the gateway.

An upstream that supports the extension may answer a `tools/call` with a task (`resultType:
"task"` and a `taskId`); the host then polls it (`tasks/get`), answers its input requests
(`tasks/update`) and may cancel it (`tasks/cancel`). The gateway passes all of that through
unchanged but for one thing, the task id: the host sees a `TaskIds` token that names the
upstream and the upstream's own id, signed for the caller (organisation and API key). Any
replica sharing the database (its signing secret) can route a token without a lookup, and a
token of another caller, or one that was never minted, is the same unknown task (-32602).

A caller that did not declare the extension gets no task semantics: `tasks/*` is refused with
-32021 (missing required client capability) before its id is even read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Collection, Mapping
from typing import Any, Final

import orjson
from mcp.shared.inbound import MCP_NAME_HEADER, decode_header_value
from mcp_types import CLIENT_CAPABILITIES_META_KEY

from gateway.core.sessions import HostSession
from gateway.errors import CredentialError, TooDeep, UpstreamError, UpstreamTimeout
from gateway.protocol.context import RequestContext
from gateway.protocol.jsonrpc import (
    INVALID_PARAMS,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    JSONObject,
    error,
    meta_of,
    params_of,
)
from gateway.upstream.channel import MessageSink
from gateway.upstream.connector import Connects

__all__ = [
    "TASKS_EXTENSION",
    "TASK_IDS_SECRET_NAME",
    "TASK_METHODS",
    "TaskIds",
    "TaskRelay",
    "declares_tasks",
    "header_mismatch",
    "offered_extensions",
]

TASKS_EXTENSION: Final = "io.modelcontextprotocol/tasks"
TASK_METHODS: Final = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
TASK_IDS_SECRET_NAME: Final = "task-ids"
MISSING_REQUIRED_CLIENT_CAPABILITY: Final = -32021
_PREFIX = "mcpgw-task."
_TAG_BYTES = 16


class TaskIds:
    """Host-visible task ids: `mcpgw-task.<upstream and its task id>.<HMAC over those and the caller>`."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def seal(self, caller: tuple[str, str | None], upstream: str, task_id: str) -> str:
        payload = _b64(orjson.dumps([upstream, task_id]))
        return f"{_PREFIX}{payload}.{_b64(self._tag(caller, payload))}"

    def open(self, caller: tuple[str, str | None], token: str) -> tuple[str, str] | None:
        """(upstream, its task id), or None for a token this caller was not given."""
        if not token.startswith(_PREFIX):
            return None
        payload, _, tag = token[len(_PREFIX) :].partition(".")
        try:
            if not hmac.compare_digest(_unb64(tag), self._tag(caller, payload)):
                return None
            upstream, task_id = orjson.loads(_unb64(payload))
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            return None
        if not isinstance(upstream, str) or not isinstance(task_id, str):
            return None
        return upstream, task_id

    def _tag(self, caller: tuple[str, str | None], payload: str) -> bytes:
        organisation, api_key = caller
        message = orjson.dumps([organisation, api_key, payload])
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def declares_tasks(session: HostSession, message: JSONObject) -> bool:
    """Whether the caller declared the extension: in this request's `_meta` (2026-07-28, where
    a request may also opt in on its own) or else in its session's handshake."""
    capabilities = meta_of(message).get(CLIENT_CAPABILITIES_META_KEY)
    if not isinstance(capabilities, dict):
        capabilities = session.handshake.capabilities
    extensions = capabilities.get("extensions")
    return isinstance(extensions, dict) and TASKS_EXTENSION in extensions


def header_mismatch(message: JSONObject, headers: Mapping[str, str]) -> str | None:
    """Why a 2026-07-28 `tasks/*` request's `Mcp-Name` header disagrees with its `taskId`, if it
    does: the revision routes tasks by that header, so a missing or different one is refused."""
    if message.get("method") not in TASK_METHODS:
        return None
    task_id = params_of(message).get("taskId")
    if task_id is None:
        return None
    header = headers.get(MCP_NAME_HEADER)
    if decode_header_value(header.strip() if header is not None else None) != task_id:
        return f"{MCP_NAME_HEADER} header does not match the request body's 'taskId' parameter"
    return None


async def offered_extensions(connectors: Mapping[str, Connects]) -> JSONObject:
    """The extensions to advertise: the tasks extension if a 2026-07-28 upstream offers it."""
    for connector in connectors.values():
        modern = await connector.modern()
        extensions = modern.capabilities.get("extensions") if modern is not None else None
        if isinstance(extensions, dict) and TASKS_EXTENSION in extensions:
            return {TASKS_EXTENSION: {}}
    return {}


class TaskRelay:
    """Task ids on the way down (a task created) and `tasks/*` requests on the way up."""

    def __init__(self, upstreams: Collection[str], ids: TaskIds | None = None) -> None:
        self.ids = ids or TaskIds()
        self._upstreams = frozenset(upstreams)

    def created(self, session: HostSession, upstream: str, response: JSONObject) -> JSONObject:
        """An upstream's answer to a `tools/call`, its task id (if it made a task) sealed."""
        result = response.get("result")
        if not isinstance(result, dict) or result.get("resultType") != "task":
            return response
        task_id = result.get("taskId")
        if not isinstance(task_id, str):
            return response
        sealed = self.ids.seal(_caller(session), upstream, task_id)
        return {**response, "result": {**result, "taskId": sealed}}

    async def request(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        """Serve `tasks/get`, `tasks/update` or `tasks/cancel`: to the upstream that made the task."""
        request_id = message["id"]
        if not declares_tasks(session, message):
            required: JSONObject = {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}
            text = f"Client did not declare required extension {TASKS_EXTENSION!r}"
            return error(request_id, MISSING_REQUIRED_CLIENT_CAPABILITY, text, required)
        params = params_of(message)
        token = params.get("taskId")
        if not isinstance(token, str):
            return error(request_id, INVALID_PARAMS, "Invalid params: 'taskId' must be a string")
        opened = self.ids.open(_caller(session), token)
        if opened is None or opened[0] not in self._upstreams:  # never minted, or its upstream gone
            return _unknown(request_id, token)
        upstream, task_id = opened
        forwarded = {**message, "params": {**params, "taskId": task_id}}
        # The revision's routing header names the task: the upstream's own id, on its way there.
        headers = {**context.forwarded, MCP_NAME_HEADER: task_id}
        try:
            response = await session.forward(
                upstream, forwarded, sink, RequestContext(context.traceparent, headers)
            )
        except (UpstreamError, CredentialError, TooDeep) as exc:
            code = UPSTREAM_TIMEOUT if isinstance(exc, UpstreamTimeout) else UPSTREAM_UNAVAILABLE
            return error(request_id, code, str(exc))
        failure = response.get("error")
        if isinstance(failure, dict) and failure.get("code") == INVALID_PARAMS:
            return _unknown(request_id, token)  # the upstream's words would name its own id
        result = response.get("result")
        if isinstance(result, dict) and result.get("taskId") == task_id:
            return {**response, "result": {**result, "taskId": token}}
        return response


def _caller(session: HostSession) -> tuple[str, str | None]:
    return session.principal.organisation_id, session.principal.api_key_id


def _unknown(request_id: Any, token: str) -> JSONObject:
    return error(request_id, INVALID_PARAMS, f"Unknown task: {token}")
