"""A handshake-era host reaching an upstream that speaks 2026-07-28 only.

Such an upstream refuses `initialize`, so the host's session reaches it statelessly: each request
goes up with the 2026-07-28 envelope the host would have sent (its capabilities and client info
from its `initialize`), and the answer comes down without what that revision adds (`resultType`,
`ttlMs`, `cacheScope`, the `io.modelcontextprotocol/` `_meta` keys). Where the upstream answers
`input_required`, the gateway asks the host over its session with each request the answer names
(elicitation, sampling, roots: the handshake era's server-to-client requests), then retries the
call with the answers and the upstream's `requestState`, until the upstream completes it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import Any, Final

import anyio
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY

from gateway.cluster import owned
from gateway.errors import UpstreamTimeout
from gateway.protocol.context import Deadline
from gateway.protocol.elicitation import form_defaults, with_defaults
from gateway.protocol.jsonrpc import INTERNAL_ERROR, JSONObject, error, params_of
from gateway.upstream.channel import MessageSink
from gateway.upstream.connector import MODERN_VERSION, Handshake, ModernUpstream

__all__ = ["HostQuestions", "bridged_request"]

MAX_ROUNDS: Final = 16  # an upstream asking forever must not hold the call forever
_MODERN_ONLY_FIELDS = ("resultType", "ttlMs", "cacheScope")
_ENVELOPE_PREFIX = "io.modelcontextprotocol/"
QUESTION_PREFIX: Final = "mcpgw-ask-"
_ROUND_MARK: Final = "/mcpgw-round-"


class HostQuestions:
    """Requests the gateway itself puts to a session's host, and the answers it waits for."""

    __slots__ = ("_ids", "_waiting", "owner")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[str, tuple[anyio.Event, list[JSONObject]]] = {}
        self.owner: str | None = None  # on replicas: this one's id, where the answer must come back

    async def ask(self, sink: MessageSink, method: str, params: Any, deadline: Deadline) -> JSONObject:
        """Send the host `method` and wait (until `deadline`) for its response message:
        `TimeoutError` past it."""
        question_id = owned(f"{QUESTION_PREFIX}{next(self._ids)}", self.owner)
        answered, answer = anyio.Event(), list[JSONObject]()
        self._waiting[question_id] = (answered, answer)
        try:
            async with asyncio.timeout_at(deadline.at()):
                await sink.send({"jsonrpc": "2.0", "id": question_id, "method": method, "params": params})
                await answered.wait()
        finally:
            self._waiting.pop(question_id, None)
        return answer[0]

    def answered(self, message: JSONObject) -> bool:
        """Take a host's response if it answers one of these questions."""
        question_id = message.get("id")
        waiting = self._waiting.pop(question_id, None) if isinstance(question_id, str) else None
        if waiting is None:
            return False
        answered, answer = waiting
        answer.append(message)
        answered.set()
        return True


async def bridged_request(
    modern: ModernUpstream,
    handshake: Handshake,
    questions: HostQuestions,
    message: JSONObject,
    sink: MessageSink,
    credential: Mapping[str, str] | None,
    forwarded: Mapping[str, str],
    deadline: Deadline,
) -> JSONObject:
    """Send a handshake-era host's request to a 2026-07-28 upstream, asking the host whatever
    the upstream needs on the way; the final answer as the host's revision has it. Every round,
    and every question to the host, spends the one budget of the call: it ends at `deadline`."""
    request = _with_envelope(message, handshake)
    for round_number in range(1, MAX_ROUNDS + 1):
        if round_number > 1:
            # A retry is a new request (SEP-2322): a new id, told apart from the host's own ids.
            request = {**request, "id": f"{message['id']}{_ROUND_MARK}{round_number}"}
        response = await modern.request(request, sink, credential, forwarded, deadline)
        result = response.get("result")
        if not isinstance(result, dict) or result.get("resultType") != "input_required":
            return {**_without_modern_fields(response), "id": message["id"]}
        asks = result.get("inputRequests")
        answers: JSONObject = {}
        for key, ask in (asks if isinstance(asks, dict) else {}).items():
            if not isinstance(ask, dict) or not isinstance(ask.get("method"), str):
                continue
            try:
                reply = await questions.ask(sink, ask["method"], ask.get("params") or {}, deadline)
            except TimeoutError:
                text = f"no answer within {deadline.budget_s:g}s: the host did not answer {ask['method']}"
                raise UpstreamTimeout(modern.config.name, text) from None
            if "result" not in reply:  # the host refused: so does the call, with the host's words
                return _refused(message, reply)
            answers[key] = with_defaults(reply, form_defaults(ask))["result"]
        params = {k: v for k, v in params_of(request).items() if k not in ("inputResponses", "requestState")}
        params["inputResponses"] = answers
        if "requestState" in result:
            params["requestState"] = result["requestState"]
        request = {**request, "params": params}
    text = f"{modern.config.name} asked for input more than {MAX_ROUNDS} times"
    return error(message["id"], INTERNAL_ERROR, text)


def _refused(message: JSONObject, reply: JSONObject) -> JSONObject:
    failure: Any = reply.get("error")
    failure = failure if isinstance(failure, dict) else {}
    code = failure.get("code")
    text = str(failure.get("message", "the host refused"))
    return error(message["id"], code if isinstance(code, int) else INTERNAL_ERROR, text)


def _with_envelope(message: JSONObject, handshake: Handshake) -> JSONObject:
    params = params_of(message)
    meta = params.get("_meta")
    envelope = {
        **(meta if isinstance(meta, dict) else {}),
        PROTOCOL_VERSION_META_KEY: MODERN_VERSION,
        CLIENT_CAPABILITIES_META_KEY: handshake.capabilities,
        CLIENT_INFO_META_KEY: handshake.client_info,
    }
    return {**message, "params": {**params, "_meta": envelope}}


def _without_modern_fields(response: JSONObject) -> JSONObject:
    result = response.get("result")
    if not isinstance(result, dict):
        return response
    kept = {k: v for k, v in result.items() if k not in _MODERN_ONLY_FIELDS}
    meta = kept.get("_meta")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if not k.startswith(_ENVELOPE_PREFIX)}
        if meta:
            kept["_meta"] = meta
        else:
            del kept["_meta"]
    return {**response, "result": kept}
