"""An upstream MCP server run as a child process, speaking newline-delimited JSON-RPC on stdio.

Every host session gets its own child (two host sessions never share upstream state), so the
child's lifetime is the upstream session's: closing the channel ends the process group.
Everything the child writes arrives on one stream; `Demux` matches it to the waiting calls.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from subprocess import PIPE

import anyio
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp.client.stdio import get_default_environment
from mcp.os.posix.utilities import terminate_posix_process_tree

from gateway.background import start_guarded
from gateway.errors import ResponseTooLarge, UpstreamUnavailable, UpstreamUnreachable
from gateway.protocol.jsonrpc import JSONObject, dumps
from gateway.recording.redaction import Redactor
from gateway.upstream.channel import MessageSink, Unsolicited
from gateway.upstream.demux import Demux

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 * 1024 * 1024  # the default of security.max_upstream_response_bytes
_STDERR_LINE_BYTES = 64 * 1024  # read; what is logged of a line is cut far shorter
_STDERR_LOGGED_CHARS = 2000
_STREAM_ENDED = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class StderrLog:
    """A child's stderr in the gateway's log, safe to keep: each line redacted with the record's
    rules and cut short, at most `burst` lines per `window_s` (the rest counted, and the count
    logged once the window is over), so a chatty or hostile child can neither leak secrets
    into the log nor flood it."""

    def __init__(self, name: str, redactor: Redactor, burst: int = 50, window_s: float = 10.0) -> None:
        self._name = name
        self._redactor = redactor
        self._burst = burst
        self._window_s = window_s
        self._window_start = -window_s
        self._logged = 0
        self._dropped = 0

    def line(self, raw: bytes) -> None:
        now = time.monotonic()
        if now - self._window_start >= self._window_s:
            self.flush()
            self._window_start, self._logged = now, 0
        if self._logged >= self._burst:
            self._dropped += 1
            return
        self._logged += 1
        text = raw.decode(errors="replace").rstrip()
        if len(text) > _STDERR_LOGGED_CHARS:
            text = f"{text[:_STDERR_LOGGED_CHARS]}… ({len(text)} characters)"
        logger.info("upstream %s stderr: %s", self._name, self._redactor.redact_text(text))

    def flush(self) -> None:
        """Log how many lines the current window held back, if any."""
        if self._dropped:
            logger.info(
                "upstream %s: %d more stderr line(s) not logged (at most %d per %gs)",
                self._name,
                self._dropped,
                self._burst,
                self._window_s,
            )
            self._dropped = 0


def resolve_command(command: Sequence[str]) -> list[str]:
    """A bare `python` means the interpreter running the gateway, so the example config works in any venv."""
    argv = list(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def _not_inherited() -> None:
    """Mark every descriptor above stderr close-on-exec, so a child gets its three pipes only.

    anyio spawns with the loop's subprocess support: asyncio's closes other descriptors
    (`close_fds`), but uvloop's (the loop `mcpgw serve` runs on, libuv underneath) ignores
    `close_fds`: whatever the gateway holds without close-on-exec reaches every child. Python
    opens descriptors that way, but a socket handed down by a supervisor (or made inheritable)
    is not: a child holding the listening socket keeps the port bound after a `kill -9` of the
    gateway, and one holding another child's pipe would keep that child from reading EOF when
    the gateway dies. Spawning is rare (a child per session at most), the scan is cheap.
    """
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc (not Linux): the loop's close_fds is all there is
        return
    for fd in descriptors:
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:  # closed since it was listed (or the listing's own descriptor)
                continue


class StdioChannel:
    def __init__(self, name: str, process: Process, unsolicited: Unsolicited, stderr: StderrLog) -> None:
        self._name = name
        self._stderr = stderr
        self._process = process
        self._demux = Demux(name, unsolicited)
        self._write_lock = anyio.Lock()
        self._closed = False
        self._scope = anyio.CancelScope()
        self.exited = anyio.Event()
        self._max_line_bytes = MAX_LINE_BYTES
        self._failure: str | None = None  # why the channel closed, when that is what calls are told

    @classmethod
    async def start(
        cls,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None,
        unsolicited: Unsolicited,
        task_group: TaskGroup,
        stderr: StderrLog,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> StdioChannel:
        full_env = {**get_default_environment(), **env}
        try:
            _not_inherited()
            process = await anyio.open_process(
                resolve_command(command),
                stdin=PIPE,
                stdout=PIPE,
                stderr=PIPE,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise UpstreamUnreachable(name, f"cannot start {command[0]!r}: {exc}") from exc
        channel = cls(name, process, unsolicited, stderr)
        channel._max_line_bytes = max_line_bytes
        start_guarded(task_group, f"upstream {name}: reading its output", channel._run)
        return channel

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pid(self) -> int:
        return self._process.pid

    async def request(self, message: JSONObject, sink: MessageSink | None) -> JSONObject:
        response = await self._demux.round_trip(message, sink, self._write)
        if response is None:
            if self._failure is not None:
                raise UpstreamUnavailable(self._name, self._failure)
            code = self._process.returncode
            exited = "the process exited before answering"
            raise UpstreamUnavailable(self._name, exited if code is None else f"{exited} (exit code {code})")
        return response

    async def notify(self, message: JSONObject) -> None:
        await self._write(message)

    async def respond(self, message: JSONObject) -> None:
        await self._write(message)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._scope.cancel()
        with anyio.CancelScope(shield=True):
            if self._process.stdin is not None:
                await self._process.stdin.aclose()
            with anyio.move_on_after(2):
                await self._process.wait()
            if self._process.returncode is None:
                await terminate_posix_process_tree(self._process, 2.0)
            await self._process.aclose()
        self._demux.fail_all()

    async def _write(self, message: JSONObject) -> None:
        if self._closed or self._process.stdin is None:
            raise UpstreamUnavailable(self._name, "the process is not running")
        line = dumps(message) + b"\n"  # TooDeep reaches the caller: the message's fault, not ours
        try:
            async with self._write_lock:
                await self._process.stdin.send(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            # A closed pipe is a process exiting, or about to: its exit code names the cause, so it
            # is waited for (briefly: a child that closed its stdin and lives on is "gone" too).
            with anyio.move_on_after(1):
                await self._process.wait()
            code = self._process.returncode
            text = "the process went away" if code is None else f"the process exited (exit code {code})"
            raise UpstreamUnavailable(self._name, text) from exc

    async def _run(self) -> None:
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    self._demux.writing_in(tg)  # what goes to hosts, so reading never waits on one
                    tg.start_soon(self._drain_stderr)
                    await self._read_stdout()
                    tg.cancel_scope.cancel()
        finally:
            if not self._closed:  # the child exited, or reading it failed: either way it is done
                logger.warning("upstream %s: process exited (code %s)", self._name, self._process.returncode)
                with anyio.CancelScope(shield=True):
                    await self.aclose()
            self.exited.set()

    async def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        reader = BufferedByteReceiveStream(self._process.stdout)
        while True:
            try:
                line = await reader.receive_until(b"\n", self._max_line_bytes)
            except _STREAM_ENDED:
                return
            except anyio.DelimiterNotFound:
                # Whose answer it is cannot be known without reading it whole: the child is
                # ended, and the calls it had are told why.
                self._failure = str(ResponseTooLarge(self._max_line_bytes))
                logger.error("upstream %s: %s; ending its process", self._name, self._failure)
                return
            if line.strip():
                await self._demux.dispatch_raw(line)

    async def _drain_stderr(self) -> None:
        assert self._process.stderr is not None
        reader = BufferedByteReceiveStream(self._process.stderr)
        try:
            while True:
                try:
                    line = await reader.receive_until(b"\n", _STDERR_LINE_BYTES)
                except anyio.DelimiterNotFound:
                    line = await reader.receive_exactly(_STDERR_LINE_BYTES)  # a long line, in pieces
                self._stderr.line(line)
        except _STREAM_ENDED:
            return
        finally:
            self._stderr.flush()
