"""The gateway's log: its level and format, and the one line it writes per recorded call.

Everything logs through the standard library (`logging`), uvicorn included, to stderr, as text
(`time LEVEL logger: message`) or as one JSON object a line (`time`, `level`, `logger`,
`message`, and the fields of a structured line such as a call's). A call's line carries who
(session, API key), what (method, tool or URI, upstream), how it ended (outcome, ms) and the
trace id: never arguments, results or anything a key or token could be read from.

A line costs the request that logs it only its `LogRecord`: on the event loop, records wait in
`LineBuffer` until the loop has run what is ready (the responses of this round among it), then
are formatted and written together, one `write` for all of them. The formats show no caller,
thread or process, so the records do not look them up (the logging module's documented
switches; `os.getpid` is a system call).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = ["CALLS", "FIELDS", "JsonFormatter", "LineBuffer", "configure_logging", "log_call"]

CALLS = logging.getLogger("mcpgw.calls")
FIELDS = "mcpgw_fields"  # the LogRecord attribute a structured line keeps its fields in
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line; a structured line's fields become keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class LineBuffer(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, on an event loop's thread, formats and writes the records of one
    round of the loop together, after that round; elsewhere (other threads, no loop running) it
    writes at once, after what is buffered. `flush` (the logging module's, at exit) writes
    whatever is left."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[logging.LogRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if args and not (isinstance(args, tuple) and all(type(a) in _UNCHANGING for a in args)):
            record.msg, record.args = record.getMessage(), None  # they may change meanwhile
        loop = self._loop
        if loop is not None and threading.get_ident() == self._loop_thread and loop.is_running():
            with self.lock:  # type: ignore[union-attr]
                self._pending.append(record)
                if len(self._pending) > 1:
                    return  # the round's flush is scheduled already
            loop.call_soon(self.flush)
            return
        if (running := _running_loop()) is not None:  # the first line on this loop: later ones wait
            self._loop, self._loop_thread = running, threading.get_ident()
        self._write([record])

    def flush(self) -> None:
        self._write([])

    def _write(self, records: list[logging.LogRecord]) -> None:
        with self.lock:  # type: ignore[union-attr]
            records, self._pending = [*self._pending, *records], []
            lines = []
            for record in records:
                try:
                    lines.append(self.format(record) + self.terminator)
                except Exception:
                    self.handleError(record)
            try:
                if lines:
                    self.stream.write("".join(lines))
                self.stream.flush()
            except Exception:
                self.handleError(records[-1] if records else logging.makeLogRecord({}))


class _KeyValues:
    """A call line's text, `name=value ...`, made only when the line is formatted."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields  # the caller's own, never changed once logged

    def __str__(self) -> str:
        return " ".join(f"{name}={'-' if value is None else value}" for name, value in self._fields.items())


# Record arguments that cannot change before a buffered record is formatted.
_UNCHANGING = frozenset({str, int, float, bool, type(None), bytes, _KeyValues})


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def configure_logging(level: str, form: Literal["text", "json"]) -> None:
    """Send every logger's lines, uvicorn's included, to stderr at `level` in `form`."""
    # Neither format shows them: not looked up for each record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # the caller's file, line and function (logging's "Optimization" notes)
    handler = LineBuffer(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # Through the root's handler, not handlers of their own, so that one format holds.
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(logging.NOTSET)
    # Request lines name URLs, which can carry session ids: keep the HTTP client's chatter out.
    logging.getLogger("httpx2").setLevel(max(logging.WARNING, root.level))


def log_call(fields: dict[str, Any]) -> None:
    """The line of one recorded call (the caller checks `CALLS.isEnabledFor(INFO)` first)."""
    CALLS.info("call %s", _KeyValues(fields), extra={FIELDS: fields})
