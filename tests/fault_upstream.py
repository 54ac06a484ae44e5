"""A stdio MCP server that misbehaves on request, for the fault tests: `python -m tests.fault_upstream`.

It speaks newline-delimited JSON-RPC by hand rather than through the SDK, because the faults
it produces (answers nested past what encoders accept, garbage on stdout, secrets on stderr,
dying or going silent mid-call) are exactly what a well-behaved SDK server never does. Each
tool is one fault:

- `echo(text)`: answers normally (the control);
- `deep(depth)`: a result whose `structuredContent` is nested `depth` levels deep;
- `garbage(text)`: writes lines that are not JSON-RPC messages on stdout, then answers;
- `leak(text)`: writes secret-looking lines on stderr, then answers;
- `chatter(lines)`: writes `lines` lines on stderr, then answers;
- `crash()`: exits without answering;
- `hang()`: never answers;
- `twice(text)`: first writes `STRAYS` answers under ids it was never sent, then answers the
  call twice: `text`, then `SECOND_ANSWER` under the same id;
- `flood(messages, size)`: sends `messages` progress notifications for the call (its
  `progressToken`), each with a message of `size` characters, then answers `flooded`;
- `ask_host(calls)`: holds the next `calls` tool calls it is sent unanswered (so that many more
  are in flight), then sends the host a `roots/list` request of its own mid-call, answers with
  what came back (`answered {...}`), then the held calls.

Run with `--exit-at-start` it writes one line on stderr and exits with code 3 before reading
anything (a server that fails to start); with `--mute` it reads what it is sent and never
answers, not even `initialize` (a server that hangs at start).
"""

from __future__ import annotations

import json
import sys
from typing import Any

TOOLS = ["echo", "deep", "garbage", "leak", "chatter", "crash", "hang", "twice", "ask_host", "flood"]
STRAYS = 100
SECOND_ANSWER = "a second answer to the same call"
# What `leak` writes on stderr: an OpenAI-style key, an AWS key id, a password assignment, and
# a password with an ampersand in a line that goes on after it.
LEAKED = [
    "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c",
    "AKIAIOSFODNN7EXAMPLE",
    "hunter2-correct-horse",
    "Tr0ub4dor&3xyz",
]
LEAK_LINE_GOES_ON = "for ada, retrying in 5s"


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"next": value}
    return value


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
    """The result of tool `name`, or None when the fault is not to answer."""
    if name == "echo":
        return _text(str(arguments.get("text", "")))
    if name == "deep":
        return {**_text("deep"), "structuredContent": _nested(int(arguments.get("depth", 300)))}
    if name == "garbage":
        sys.stdout.write('this is not json\n[1, 2, 3]\n{"jsonrpc": "2.0"}\n\n')
        sys.stdout.flush()
        return _text(str(arguments.get("text", "")))
    if name == "leak":
        key, aws, password, ampersand = LEAKED
        sys.stderr.write(
            f"connecting with api key {key}\naws {aws}\n"
            f"login failed: password={ampersand} {LEAK_LINE_GOES_ON}\npassword={password}\n"
        )
        sys.stderr.flush()
        return _text(str(arguments.get("text", "")))
    if name == "chatter":
        for i in range(int(arguments.get("lines", 1000))):
            sys.stderr.write(f"chatter line {i}\n")
        sys.stderr.flush()
        return _text("chattered")
    if name == "twice":
        for n in range(STRAYS):
            _send({"jsonrpc": "2.0", "id": f"never-sent-{n}", "result": _text("not yours")})
        return _text(str(arguments.get("text", "")))
    if name == "crash":
        sys.exit(3)
    if name == "ask_host":
        return _ask_host(int(arguments.get("calls", 0)))
    if name == "flood":
        token = arguments.get("_progressToken")
        text = "f" * int(arguments.get("size", 1000))
        for n in range(int(arguments.get("messages", 100))):
            params = {"progressToken": token, "progress": n, "message": text}
            _send({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})
        return _text("flooded")
    return None  # hang


def _ask_host(calls: int) -> dict[str, Any]:
    held: list[dict[str, Any]] = []
    while len(held) < calls:
        message = json.loads(sys.stdin.readline())
        if message.get("method") == "tools/call":
            held.append(message)
    _send({"jsonrpc": "2.0", "id": "faults-roots", "method": "roots/list"})
    while True:
        message = json.loads(sys.stdin.readline())
        if message.get("id") == "faults-roots" and "method" not in message:
            break
    for call in held:
        params = call.get("params") or {}
        result = _call(str(params.get("name")), params.get("arguments") or {})
        _send({"jsonrpc": "2.0", "id": call["id"], "result": result})
    answer = {key: message[key] for key in ("result", "error") if key in message}
    return _text(f"answered {json.dumps(answer)}")


def _answer(message: dict[str, Any]) -> dict[str, Any] | None:
    method, params = message.get("method"), message.get("params") or {}
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "faults", "version": "1"},
        }
    if method == "tools/list":
        schema = {"type": "object"}
        return {"tools": [{"name": name, "inputSchema": schema} for name in TOOLS]}
    if method == "tools/call":
        token = (params.get("_meta") or {}).get("progressToken")
        return _call(str(params.get("name")), {**(params.get("arguments") or {}), "_progressToken": token})
    if method == "ping":
        return {}
    return None


EXIT_CODE = 3


def main() -> None:
    if "--exit-at-start" in sys.argv:
        sys.stderr.write("fault upstream: cannot start (as asked)\n")
        sys.exit(EXIT_CODE)
    for line in sys.stdin:
        if "--mute" in sys.argv:
            continue
        if not line.strip():
            continue
        message = json.loads(line)
        if "id" not in message or "method" not in message:
            continue  # notifications and responses need no answer
        result = _answer(message)
        if result is not None and (message.get("params") or {}).get("name") == "twice":
            # Both answers in one write, so that both are read before the first is acted on.
            first = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            second = {**first, "result": _text(SECOND_ANSWER)}
            sys.stdout.write(json.dumps(first) + "\n" + json.dumps(second) + "\n")
            sys.stdout.flush()
        elif result is not None:
            _send({"jsonrpc": "2.0", "id": message["id"], "result": result})
        elif message["method"] not in ("tools/call",):
            error = {"code": -32601, "message": f"Method not found: {message['method']}"}
            _send({"jsonrpc": "2.0", "id": message["id"], "error": error})


if __name__ == "__main__":
    main()
