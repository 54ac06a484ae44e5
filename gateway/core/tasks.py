"""The tasks extension (`io.modelcontextprotocol/tasks`) through the gateway.

An upstream that supports the extension may answer a `tools/call` with a task (`resultType:
"task"` and a `taskId`); the host then polls it (`tasks/get`), answers its input requests
(`tasks/update`) and may cancel it (`tasks/cancel`). The gateway passes all of that through
unchanged but for one thing, the task id: the host sees a `TaskIds` token that names the
upstream and the upstream's own id, signed for the caller (organisation and API key). Any
replica sharing the database (its signing secret) can route a token without a lookup, and a
token of another caller, or one that was never minted, is the same unknown task (-32602).

A caller that did not declare the extension gets no task semantics: `tasks/*` is refused with
-32021 (missing required client capability) before its id is even read. The extension belongs
to 2026-07-28: a handshake-era host is not offered it (its `initialize` answer has no
`extensions`), and a task-capable upstream runs that host's calls at once (or refuses, -32021,
a tool that can only run as a task), as it does for any caller that did not declare it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import orjson
from mcp.shared.inbound import MCP_NAME_HEADER, decode_header_value
from mcp_types import CLIENT_CAPABILITIES_META_KEY

from gateway.core.host_session import HostSession
from gateway.errors import CredentialError, RecordingFailed, TooDeep, UpstreamError, UpstreamTimeout
from gateway.protocol.context import RequestContext
from gateway.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    JSONObject,
    error,
    meta_of,
    params_of,
)
from gateway.recording.recorder import Recorder, TaskEnded, task_outcome
from gateway.upstream.channel import MessageSink
from gateway.upstream.connector import Connects

__all__ = [
    "TASKS_EXTENSION",
    "TASK_IDS_SECRET_NAME",
    "TASK_METHODS",
    "SealedTask",
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
logger = logging.getLogger(__name__)

_PREFIX = "mcpgw-task."
_TAG_BYTES = 16


@dataclass(frozen=True, slots=True)
class SealedTask:
    """What a host-visible task id carries: the upstream, its task id, and the invocation row
    (with its session's record id) that the task's end finishes, when the call was recorded."""

    upstream: str
    task_id: str
    invocation_id: str | None = None
    session_id: str | None = None


class TaskIds:
    """Host-visible task ids: `mcpgw-task.<what SealedTask holds>.<HMAC over it and the caller>`."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def seal(self, caller: tuple[str, str | None], task: SealedTask) -> str:
        payload = _b64(orjson.dumps([task.upstream, task.task_id, task.invocation_id, task.session_id]))
        return f"{_PREFIX}{payload}.{_b64(self._tag(caller, payload))}"

    def open(self, caller: tuple[str, str | None], token: str) -> SealedTask | None:
        """What `token` names, or None for a token this caller was not given."""
        if not token.startswith(_PREFIX):
            return None
        payload, _, tag = token[len(_PREFIX) :].partition(".")
        try:
            if not hmac.compare_digest(_unb64(tag), self._tag(caller, payload)):
                return None
            fields = orjson.loads(_unb64(payload))
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            return None
        if not isinstance(fields, list) or len(fields) != 4:
            return None
        if not all(isinstance(f, str) for f in fields[:2]):
            return None
        return SealedTask(*fields)

    def _tag(self, caller: tuple[str, str | None], payload: str) -> bytes:
        organisation, api_key = caller
        message = orjson.dumps([organisation, api_key, payload])
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def declares_tasks(message: JSONObject) -> bool:
    """Whether the caller declared the extension in this request's `_meta`. The extension is of
    2026-07-28, where every request declares what its client can do (a request may also opt in
    on its own); a handshake-era result cannot carry a task, so such a host never declares it."""
    capabilities = meta_of(message).get(CLIENT_CAPABILITIES_META_KEY)
    if not isinstance(capabilities, dict):
        return False
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
    """Task ids on the way down (a task created) and `tasks/*` requests on the way up; the end of
    a task, once a `tasks/get` shows it, finishes the invocation row its `tools/call` made."""

    def __init__(self, upstreams: Collection[str], recorder: Recorder, ids: TaskIds | None = None) -> None:
        self.ids = ids or TaskIds()
        self._upstreams = frozenset(upstreams)
        self._recorder = recorder

    def created(
        self, session: HostSession, upstream: str, response: JSONObject
    ) -> tuple[JSONObject, str | None]:
        """An upstream's answer to a `tools/call`, its task id (if it made a task) sealed; and
        the id the call's invocation row must have, for a task (whose end finishes that row)."""
        result = response.get("result")
        if not isinstance(result, dict) or result.get("resultType") != "task":
            return response, None
        task_id = result.get("taskId")
        if not isinstance(task_id, str):
            return response, None
        invocation_id = str(uuid.uuid4())
        task = SealedTask(upstream, task_id, invocation_id, session.record_id)
        sealed = self.ids.seal(_caller(session), task)
        return {**response, "result": {**result, "taskId": sealed}}, invocation_id

    async def request(
        self, session: HostSession, message: JSONObject, sink: MessageSink | None, context: RequestContext
    ) -> JSONObject:
        """Serve `tasks/get`, `tasks/update` or `tasks/cancel`: to the upstream that made the task."""
        request_id = message["id"]
        if not declares_tasks(message):
            required: JSONObject = {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}
            text = f"Client did not declare required extension {TASKS_EXTENSION!r}"
            return error(request_id, MISSING_REQUIRED_CLIENT_CAPABILITY, text, required)
        params = params_of(message)
        token = params.get("taskId")
        if not isinstance(token, str):
            return error(request_id, INVALID_PARAMS, "Invalid params: 'taskId' must be a string")
        task = self.ids.open(_caller(session), token)
        if task is None or task.upstream not in self._upstreams:  # never minted, or its upstream gone
            return _unknown(request_id, token)
        forwarded = {**message, "params": {**params, "taskId": task.task_id}}
        # The revision's routing header names the task: the upstream's own id, on its way there.
        headers = {**context.forwarded, MCP_NAME_HEADER: task.task_id}
        try:
            response = await session.forward(
                task.upstream, forwarded, sink, RequestContext(context.traceparent, headers)
            )
        except (UpstreamError, CredentialError, TooDeep) as exc:
            code = UPSTREAM_TIMEOUT if isinstance(exc, UpstreamTimeout) else UPSTREAM_UNAVAILABLE
            return error(request_id, code, str(exc))
        failure = response.get("error")
        if isinstance(failure, dict) and failure.get("code") == INVALID_PARAMS:
            return _unknown(request_id, token)  # the upstream's words would name its own id
        result = response.get("result")
        if not isinstance(result, dict) or result.get("taskId") != task.task_id:
            return response
        result = {**result, "taskId": token}
        if message["method"] == "tasks/get" and not await self._finish(task, result):
            return error(request_id, INTERNAL_ERROR, "The gateway could not record this task's end")
        return {**response, "result": result}

    async def _finish(self, task: SealedTask, detailed: JSONObject) -> bool:
        """Finish the task's row if `detailed` shows it ended; False if that cannot be recorded
        (then the host is not told of the end: it asks again)."""
        outcome = task_outcome(detailed)
        if outcome is None or task.invocation_id is None or task.session_id is None:
            return True
        kept = detailed.get("result") if outcome in ("ok", "tool_error") else detailed.get("error", detailed)
        end = TaskEnded(task.invocation_id, task.session_id, outcome, kept, time.time())
        try:
            with anyio.CancelScope(shield=True):
                await self._recorder.task_ended(end)
        except RecordingFailed as exc:
            logger.error("the end of task row %s was not recorded: %s", task.invocation_id, exc)
            return False
        return True


def _caller(session: HostSession) -> tuple[str, str | None]:
    return session.principal.organisation_id, session.principal.api_key_id


def _unknown(request_id: Any, token: str) -> JSONObject:
    return error(request_id, INVALID_PARAMS, f"Unknown task: {token}")
