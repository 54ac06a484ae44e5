"""The gateway's log: its level and format, and the one line it writes per recorded call.

Everything logs through the standard library (`logging`), uvicorn included, to stderr, as text
(`time LEVEL logger: message`) or as one JSON object a line (`time`, `level`, `logger`,
`message`, and the fields of a structured line such as a call's). A call's line carries who
(session, API key), what (method, tool or URI, upstream), how it ended (outcome, ms) and the
trace id: never arguments, results or anything a key or token could be read from.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = ["CALLS", "FIELDS", "JsonFormatter", "configure_logging", "log_call"]

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


def configure_logging(level: str, form: Literal["text", "json"]) -> None:
    """Send every logger's lines, uvicorn's included, to stderr at `level` in `form`."""
    handler = logging.StreamHandler(sys.stderr)
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
    text = " ".join(f"{name}={'-' if value is None else value}" for name, value in fields.items())
    CALLS.info("call %s", text, extra={FIELDS: fields})
