"""What the gateway knows of one configured upstream's health: one `UpstreamHealth` per upstream.

Every host session reaching an upstream shares its upstream's state, so one session's failed
attempt spares the others theirs:

    unknown ──an attempt──▶ starting ──it answers──▶ up
                                    └──it fails────▶ down ──the connector's retry answers──▶ up

- `unknown`: nothing has tried to reach it yet (upstreams are reached when first needed);
- `starting`: the first attempt is under way;
- `up`: the last attempt to open a session with it succeeded;
- `down`: the last attempt failed (the command would not start, nothing listened, no handshake
  in time), or a call found nothing there (`UpstreamUnreachable`). While it is down no host
  request tries it: each gets `refusal()` at once, naming the cause, and the connector alone
  tries again, after a pause that doubles from `RETRY_FIRST_S` to `RETRY_MAX_S`.

A call that fails on a session that was open (a child that dies mid-call, a timeout) does not
make the upstream down, the next session may well open, but it is kept as the last error.
What this holds is read by `/readyz` (`gateway/readiness.py`) and by the connector, which
owns the transitions' consequences (`on_down`: retry; `on_up`: tell the hosts).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal, TypeAlias

import anyio

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError, UpstreamUnavailable
from gateway.protocol.jsonrpc import JSONObject
from gateway.recording.redaction import Redactor

__all__ = ["RETRY_FIRST_S", "RETRY_MAX_S", "State", "UpstreamHealth"]

logger = logging.getLogger(__name__)

State: TypeAlias = Literal["unknown", "starting", "up", "down"]
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
_ERROR_CHARS = 500  # an error kept (and shown on /readyz) is cut to this


def _never_mind() -> None:
    return None


def _never_mind_what(capabilities: JSONObject) -> None:
    return None


class UpstreamHealth:
    def __init__(
        self,
        config: UpstreamConfig,
        redactor: Redactor | None = None,
        *,
        on_down: Callable[[], None] = _never_mind,
        on_up: Callable[[JSONObject], None] = _never_mind_what,
    ) -> None:
        self.name = config.name
        self.transport = config.transport
        self.required = config.required
        self.state: State = "unknown"
        self.since = time.time()  # when it entered this state (wall clock, for people)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_answered_at: float | None = None
        self.tried = anyio.Event()  # set once the first attempt to reach it has ended
        self._redactor = redactor or Redactor.with_defaults()
        self._on_down = on_down
        self._on_up = on_up
        self._attempts = 0  # attempts to open a session in flight
        self._failures = 0  # attempts failed in a row
        self._retry_at: float | None = None  # monotonic, while down

    @property
    def down(self) -> bool:
        return self.state == "down"

    def refusal(self) -> UpstreamUnavailable | None:
        """The error a request gets instead of trying an upstream that is down; None if it may try."""
        if self.state != "down":
            return None
        wait = self.retry_in()
        retry = "the gateway is trying it again" if wait < 1 else f"the gateway tries again in {wait:.0f}s"
        return UpstreamUnavailable(self.name, f"down: {self.last_error}; {retry}")

    def retry_in(self) -> float:
        """Seconds until the connector's next attempt (0 when it is due, or not down)."""
        return 0.0 if self._retry_at is None else max(0.0, self._retry_at - time.monotonic())

    def attempting(self) -> None:
        """An attempt to open a session begins; `settled` must follow it, whatever happens."""
        self._attempts += 1
        if self.state == "unknown":
            self._enter("starting")

    def settled(self) -> None:
        """An attempt ended; one that was cancelled leaves a first attempt's state as it found it."""
        self._attempts -= 1
        if self.state == "starting" and self._attempts == 0:
            self._enter("unknown")

    def reached(self, capabilities: JSONObject) -> None:
        """It answered an attempt to open a session (or refused only the credential sent)."""
        self.answered()
        was = self.state
        self._failures, self._retry_at = 0, None
        if was != "up":
            self._enter("up")
            self.tried.set()
        if was == "down":
            logger.warning("upstream %s is back", self.name)
            self._on_up(capabilities)

    def failed(self, exc: UpstreamError, *, down: bool) -> None:
        """It failed: an attempt to reach it, or (`down` False) a call on a session that was open."""
        self.last_error = self._redactor.redact_text(exc.reason)[:_ERROR_CHARS]
        self.last_error_at = time.time()
        if not down:
            return
        self._failures += 1
        pause = min(RETRY_FIRST_S * 2 ** (self._failures - 1), RETRY_MAX_S)
        self._retry_at = time.monotonic() + pause * random.uniform(0.8, 1.2)  # not in step with others
        if self.state != "down":
            logger.warning("upstream %s is down: %s", self.name, self.last_error)
            self._enter("down")
            self.tried.set()
            self._on_down()

    def answered(self) -> None:
        self.last_answered_at = time.time()

    def report(self) -> JSONObject:
        """The state as `/readyz` shows it."""
        return {
            "state": self.state,
            "transport": self.transport,
            "required": self.required,
            "since": _iso(self.since),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "last_answered_at": _iso(self.last_answered_at),
            "next_attempt_at": _iso(time.time() + self.retry_in()) if self.state == "down" else None,
        }

    def _enter(self, state: State) -> None:
        self.state = state
        self.since = time.time()


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
