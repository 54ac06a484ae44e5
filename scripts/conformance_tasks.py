"""The tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663) for the conformance upstream.

The `mcp` SDK has no tasks store, so this is one, small and in memory, plugged into `MCPServer`
as an SDK `Extension`: it advertises the extension, serves `tasks/get`, `tasks/update` and
`tasks/cancel`, and turns a `tools/call` of a task-supporting tool into a task when the caller
declared the extension (for the session or in the request's `_meta`). A task's work runs in the
server's task group; when it needs input it parks in `input_required` with `inputRequests`
until `tasks/update` has answered every one of them. The tools are the ones the conformance
suite's `tasks-*` scenarios name. A fixture, not part of mcpgw.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CallToolRequestParams,
    ElicitRequest,
    ElicitRequestFormParams,
    InputRequiredResult,
    RequestParams,
)
from pydantic import ConfigDict

TASKS = "io.modelcontextprotocol/tasks"
MODERN = "2026-07-28"
TTL_MS = 300_000
POLL_INTERVAL_MS = 200
HEADER_MISMATCH = -32020
INVALID_PARAMS = -32602
TERMINAL = frozenset({"completed", "failed", "cancelled"})
Status = Literal["working", "input_required", "completed", "failed", "cancelled"]
JSON = dict[str, Any]


class _TaskParams(RequestParams):
    model_config = ConfigDict(extra="allow")
    taskId: str


class _UpdateParams(_TaskParams):
    inputResponses: dict[str, Any] | None = None


class _ProtocolFault(Exception):
    """A task's work failing at the protocol level: the task ends `failed` with this error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Task:
    id: str
    status: Status = "working"
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    result: JSON | None = None
    error: JSON | None = None
    pending: dict[str, JSON] = field(default_factory=dict)  # inputRequests not answered yet
    answers: dict[str, Any] = field(default_factory=dict)
    answered: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    expires_at: float = 0.0

    def _set(self, status: Status) -> None:
        self.status, self.updated_at = status, _now()

    async def ask(self, requests: Mapping[str, JSON]) -> dict[str, Any]:
        """Park in input_required until every request is answered; the answers, by key."""
        self.pending = dict(requests)
        self.answered = anyio.Event()
        self._set("input_required")
        await self.answered.wait()
        self._set("working")
        return {key: self.answers[key] for key in requests}

    def answer(self, responses: Mapping[str, Any]) -> None:
        for key, value in responses.items():
            if key in self.pending:  # unknown keys are ignored, as the extension says
                del self.pending[key]
                self.answers[key] = value
        if self.status == "input_required" and not self.pending:
            self.answered.set()

    def envelope(self) -> JSON:
        return {
            "taskId": self.id,
            "status": self.status,
            "createdAt": self.created_at,
            "lastUpdatedAt": self.updated_at,
            "ttlMs": TTL_MS,
            "pollIntervalMs": POLL_INTERVAL_MS,
        }

    def detailed(self) -> JSON:
        body = {**self.envelope(), "resultType": "complete"}
        if self.status == "input_required":
            body["inputRequests"] = dict(self.pending)
        if self.status == "completed" and self.result is not None:
            body["result"] = self.result
        if self.status == "failed" and self.error is not None:
            body["error"] = self.error
        return body


Work = Callable[[Task, JSON, Mapping[str, Any]], Awaitable[JSON]]


def _text(text: str, *, is_error: bool = False) -> JSON:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def _elicit(message: str, field_name: str, kind: str = "string") -> JSON:
    schema = {"type": "object", "properties": {field_name: {"type": kind}}, "required": [field_name]}
    params = {"mode": "form", "message": message, "requestedSchema": schema}
    return {"method": "elicitation/create", "params": params}


def _content(answer: Any, key: str) -> Any:
    content = answer.get("content") if isinstance(answer, dict) else None
    return content.get(key) if isinstance(content, dict) else None


async def _slow_compute(task: Task, arguments: JSON, responses: Mapping[str, Any]) -> JSON:
    seconds = float(arguments.get("seconds") or 0)
    await anyio.sleep(seconds)
    return _text(f"computed {arguments.get('label', '')} in {seconds:g}s")


async def _failing_job(task: Task, arguments: JSON, responses: Mapping[str, Any]) -> JSON:
    await anyio.sleep(0.3)
    return _text("failing_job failed, as it always does", is_error=True)


async def _protocol_error_job(task: Task, arguments: JSON, responses: Mapping[str, Any]) -> JSON:
    await anyio.sleep(0.1)
    raise _ProtocolFault(-32603, "protocol_error_job broke down")


async def _confirm_delete(task: Task, arguments: JSON, responses: Mapping[str, Any]) -> JSON:
    filename = arguments.get("filename", "")
    answers = await task.ask({"confirm": _elicit(f"Delete {filename}?", "confirm", "boolean")})
    accepted = isinstance(answers["confirm"], dict) and answers["confirm"].get("action") == "accept"
    return _text(f"{'Deleted' if accepted else 'Kept'} {filename}")


async def _multi_input(task: Task, arguments: JSON, responses: Mapping[str, Any]) -> JSON:
    answers = await task.ask(
        {"first": _elicit("First name?", "name"), "second": _elicit("Second name?", "name")}
    )
    return _text(f"got {_content(answers['first'], 'name')} and {_content(answers['second'], 'name')}")


async def _greet_later(task: Task, arguments: JSON, responses: Mapping[str, Any]) -> JSON:
    name = _content(responses.get("user_name"), "name")
    await anyio.sleep(0.1)
    return _text(f"Hello, {name}! (from a task)")


@dataclass(frozen=True, slots=True)
class TaskTool:
    work: Work
    support: Literal["optional", "required"]
    # A tool that gathers input synchronously first (SEP-2322) becomes a task only once the
    # answers arrive: the first rounds are the tool's own.
    after_input: str | None = None


TASK_TOOLS: dict[str, TaskTool] = {
    "slow_compute": TaskTool(_slow_compute, "optional"),
    "failing_job": TaskTool(_failing_job, "required"),
    "protocol_error_job": TaskTool(_protocol_error_job, "optional"),
    "confirm_delete": TaskTool(_confirm_delete, "optional"),
    "multi_input": TaskTool(_multi_input, "optional"),
    "test_tool_with_task": TaskTool(_greet_later, "required", after_input="user_name"),
}


def _declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    """The caller declared the extension, which exists in 2026-07-28 only (the handshake era's
    results cannot carry a task)."""
    if ctx.protocol_version != MODERN:
        return False
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and TASKS in capabilities.extensions)


class TasksExtension(Extension):
    identifier = TASKS

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self.task_group: TaskGroup | None = None  # the server's, set once it runs

    def methods(self) -> Sequence[MethodBinding]:
        return (
            MethodBinding("tasks/get", _TaskParams, self._get),
            MethodBinding("tasks/update", _UpdateParams, self._update),
            MethodBinding("tasks/cancel", _TaskParams, self._cancel),
        )

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        tool = TASK_TOOLS.get(params.name)
        if tool is None:
            return await call_next(ctx)
        if not _declared(ctx):
            if tool.support == "required":
                raise _missing_extension()
            return await call_next(ctx)
        responses = _responses(params)
        if tool.after_input is not None and tool.after_input not in responses:
            return await call_next(ctx)
        task = self._create()
        assert self.task_group is not None, "the server runs the extension inside its task group"
        self.task_group.start_soon(self._run, task, tool.work, dict(params.arguments or {}), responses)
        return {**task.envelope(), "resultType": "task"}

    def _create(self) -> Task:
        now = anyio.current_time()
        for task_id, old in list(self._tasks.items()):
            if old.expires_at and old.expires_at < now:
                del self._tasks[task_id]
        task = Task(secrets.token_urlsafe(12))
        self._tasks[task.id] = task
        return task

    async def _run(self, task: Task, work: Work, arguments: JSON, responses: Mapping[str, Any]) -> None:
        with task.scope:
            try:
                task.result = await work(task, arguments, responses)
                task._set("completed")
            except _ProtocolFault as exc:
                task.error = {"code": exc.code, "message": str(exc)}
                task._set("failed")
        if task.scope.cancelled_caught:
            task._set("cancelled")
        task.expires_at = anyio.current_time() + TTL_MS / 1000

    def _find(self, ctx: ServerRequestContext[Any, Any], params: _TaskParams) -> Task:
        if not _declared(ctx):
            raise _missing_extension()
        headers = getattr(ctx.request, "headers", None)
        name = headers.get("mcp-name") if headers is not None else None
        if name is not None and name.strip() != params.taskId:
            raise MCPError(code=HEADER_MISMATCH, message="Mcp-Name header does not match params.taskId")
        task = self._tasks.get(params.taskId)
        if task is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown task: {params.taskId}")
        return task

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: _TaskParams) -> HandlerResult:
        return self._find(ctx, params).detailed()

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: _UpdateParams) -> HandlerResult:
        self._find(ctx, params).answer(params.inputResponses or {})
        return {"resultType": "complete"}

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: _TaskParams) -> HandlerResult:
        task = self._find(ctx, params)
        if task.status not in TERMINAL:
            task.scope.cancel()
        return {"resultType": "complete"}


def _missing_extension() -> MCPError:
    required = {"requiredCapabilities": {"extensions": {TASKS: {}}}}
    text = f"Client did not declare required extension {TASKS!r}"
    return MCPError(code=-32021, message=text, data=required)


def _responses(params: CallToolRequestParams) -> dict[str, Any]:
    raw = getattr(params, "input_responses", None)
    if not raw:
        return {}
    dumped = {}
    for key, value in raw.items():
        is_model = hasattr(value, "model_dump")
        dumped[key] = value.model_dump(by_alias=True, mode="json", exclude_none=True) if is_model else value
    return dumped


def add_task_tools(server: MCPServer[Any]) -> None:
    """The suite's tools for the tasks scenarios, as they run when no task is made."""

    @server.tool(description="Says hello (never a task).")
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    @server.tool(description="Sleeps `seconds`, then answers; a task when the caller declared tasks.")
    async def slow_compute(seconds: float = 0, label: str = "") -> str:
        await anyio.sleep(seconds)
        return f"computed {label} in {seconds:g}s"

    @server.tool(description="A task that ends with a tool error (needs the tasks extension).")
    def failing_job() -> str:
        raise RuntimeError("failing_job failed, as it always does")

    @server.tool(description="A task that ends with a protocol error.")
    def protocol_error_job() -> str:
        raise MCPError(code=-32603, message="protocol_error_job broke down")

    @server.tool(description="Asks for confirmation, then deletes nothing.")
    def confirm_delete(filename: str) -> str:
        return f"Kept {filename} (confirmation needs the tasks extension)"

    @server.tool(description="Asks two questions at once.")
    def multi_input() -> str:
        return "no answers (questions need the tasks extension)"

    @server.tool(description="Asks a name (SEP-2322), then greets from a task (needs the tasks extension).")
    async def test_tool_with_task() -> InputRequiredResult:
        schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        params = ElicitRequestFormParams(message="What is your name?", requested_schema=schema)
        ask = ElicitRequest(params=params)
        return InputRequiredResult(input_requests={"user_name": ask})
