"""Node programs the tests start: `tests/node/` (a real OpenID provider, MCP clients of the
TypeScript SDK, server-everything), installed from its committed lockfile.

`install()` runs `npm ci` in `tests/node/` when `node_modules` does not match the lockfile (a
stamp in `node_modules` holds the lockfile's hash), under a file lock, so parallel test runs
install once and none sees a half-made `node_modules`. The session fixture `node_modules` in
`tests/conftest.py` calls it once per run; a clean clone's first install takes seconds to a
minute (it is outside every test's own deadline). `run_node` starts a script and waits (with
a deadline) for the line of JSON in which it says it is listening.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from tests.harness import ROOT, STARTUP_TIMEOUT, stop_process

NODE_DIR = ROOT / "tests" / "node"
_LOCKFILE = NODE_DIR / "package-lock.json"
_STAMP = NODE_DIR / "node_modules" / ".mcpgw-lockfile-sha256"  # npm ci removes it with the rest
_INSTALL_LOCK = NODE_DIR / ".npm-ci.lock"  # outside node_modules, which npm ci deletes
INSTALL_TIMEOUT_S = 600.0
# Loading a large package tree (oidc-provider) on a busy 2-core machine takes a while.
NODE_STARTUP_TIMEOUT_S = 2 * STARTUP_TIMEOUT


class NodeUnavailable(RuntimeError):
    """Node or npm is missing, or `npm ci` failed: the message says which and what to do."""


def _wanted() -> str:
    return hashlib.sha256(_LOCKFILE.read_bytes()).hexdigest()


def _installed() -> bool:
    return _STAMP.is_file() and _STAMP.read_text(encoding="ascii").strip() == _wanted()


def install() -> None:
    """Make `tests/node/node_modules` what the lockfile says, unless it is already (idempotent;
    safe to call from several processes at once)."""
    if _installed():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise NodeUnavailable(
            "node and npm are needed for the tests that start Node programs (tests/node/); "
            "install Node.js 20 or later with npm, which come together from https://nodejs.org"
        )
    with _INSTALL_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing: wait for it, then look again
        if _installed():
            return
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeUnavailable(f"npm ci in {NODE_DIR} took over {INSTALL_TIMEOUT_S:.0f} s") from exc
        if done.returncode != 0:
            raise NodeUnavailable(f"npm ci in {NODE_DIR} failed ({done.returncode}):\n{done.stderr}")
        _STAMP.write_text(_wanted() + "\n", encoding="ascii")


@dataclass(frozen=True, slots=True)
class NodeProgram:
    process: Process
    ready: dict[str, Any]  # the JSON line it printed once listening


@asynccontextmanager
async def run_node(
    script: str, *args: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[NodeProgram]:
    """Run `node tests/node/<script> <args>` until the block ends; enter once it has printed a
    JSON line with `"listening": true` (within `NODE_STARTUP_TIMEOUT_S`). Its stderr goes to the
    test's; `env` is added to this process's environment. `install()` must have run (the
    `node_modules` fixture)."""
    node = shutil.which("node")
    if node is None:
        raise NodeUnavailable("node is not on PATH; install Node.js 20 or later (https://nodejs.org)")
    process = await anyio.open_process(
        [node, str(NODE_DIR / script), *args],
        cwd=NODE_DIR,
        stderr=None,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        assert process.stdout is not None
        ready: dict[str, Any] | None = None
        seen: list[str] = []
        with anyio.fail_after(NODE_STARTUP_TIMEOUT_S):
            buffered = ""
            async for text in TextReceiveStream(process.stdout):
                buffered += text
                *lines, buffered = buffered.split("\n")
                seen += lines
                ready = next((found for line in lines if (found := _listening(line)) is not None), None)
                if ready is not None:
                    break
        if ready is None:
            raise NodeUnavailable(f"{script} ended before listening; it printed {seen!r}")
        yield NodeProgram(process, ready)
    finally:
        with anyio.CancelScope(shield=True):
            await stop_process(process)


def _listening(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("listening") is True else None
