"""What the fuzzers aim at: the gateway process, who may call it, and one request at a time.

A `Shot` is one HTTP request as a strategy draws it, with symbolic parts (`{org}`, the `live`
session, the `fuzz` key) that `World.fire` resolves against the running gateway. `fire`
enforces the properties every response must have (no 5xx, no hang, the process still up)
and counts what it sent for the run's summary line.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import httpx2
import orjson

from tests.fuzz.budget import REQUEST_DEADLINE_S
from tests.harness import GatewayProcess

ACCEPT = "application/json, text/event-stream"
HANDSHAKE_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"


@dataclass
class Tally:
    """What the fuzz run sent and got, for the summary line at the end of the run."""

    requests: int = 0
    server_errors: int = 0
    hangs: int = 0
    canaries: int = 0
    schemathesis_cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    signin: Counter[str] = field(default_factory=Counter)  # requests per sign-in endpoint class
    rss_start: int = 0
    rss_end: int = 0
    rss_peak: int = 0

    def to_wire(self) -> dict[str, Any]:
        """The counts as plain values, for a pytest-xdist worker to hand its controller."""
        return {**asdict(self), "statuses": dict(self.statuses), "signin": dict(self.signin)}

    def add(self, wire: Mapping[str, Any]) -> None:
        """Add a worker's counts (`to_wire`) to these; its memory readings, if it ran the gateway."""
        for name in ("requests", "server_errors", "hangs", "canaries", "schemathesis_cases"):
            setattr(self, name, getattr(self, name) + wire[name])
        self.statuses.update(wire["statuses"])
        self.signin.update(wire["signin"])
        if wire["rss_start"]:
            self.rss_start, self.rss_end, self.rss_peak = wire["rss_start"], wire["rss_end"], wire["rss_peak"]

    def summary(self) -> str:
        mib = 1024 * 1024
        common = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        signin = ", ".join(f"{name}: {n}" for name, n in sorted(self.signin.items()))
        return (
            f"fuzz: {self.requests} requests ({common}), {self.server_errors} 5xx, {self.hangs} hangs; "
            f"{self.canaries} canary calls; {self.schemathesis_cases} schemathesis cases; gateway RSS "
            f"{self.rss_start / mib:.1f} -> {self.rss_end / mib:.1f} MiB (peak {self.rss_peak / mib:.1f})"
            + (f"; sign-in requests: {signin}" if signin else "")
        )


TALLY = Tally()


@dataclass(frozen=True)
class Caller:
    organisation_id: str
    api_key_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


@dataclass(frozen=True)
class Shot:
    """One request, as drawn: `path` may hold `{org}` (the fuzz key's organisation) or `{other}`;
    `key` names a caller (`fuzz`, `admin`, `stranger`, `none`) or is `raw:` + a header value;
    `session` is `live` (an open session of the fuzz key), `none`, or a literal id."""

    method: str
    path: str
    key: str = "fuzz"
    session: str = "none"
    headers: tuple[tuple[str, bytes], ...] = ()
    body: bytes | None = None
    open_ended: bool = False  # a stream that stays open when it works (GET, subscriptions/listen)


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    location: str | None = None


@dataclass(frozen=True)
class SignIn:
    """What the sign-in fuzzers sign in with: a registered client and a user-bound key of the
    fuzz organisation (for the consent page), and the OpenID Connect provider's issuer."""

    client_id: str
    client_secret: str
    key: str
    oidc_issuer: str


class GatewayDown(AssertionError):
    pass


@dataclass
class World:
    gateway: GatewayProcess
    http: httpx2.AsyncClient
    fuzz: Caller  # the key most shots use
    admin: Caller  # an admin of the same organisation
    canary: Caller  # a normal client's key, used for nothing but checking the gateway still works
    stranger: Caller  # an admin of another organisation
    session_ids: list[str]  # recorded sessions (listing ids) of the fuzz organisation
    credential_ids: list[str]  # credential rows and flows of the fuzz organisation
    signin: SignIn | None = None  # set once the gateway is up
    _live: str | None = None
    _canary_session: str | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def caller(self, name: str) -> Caller:
        callers = {"fuzz": self.fuzz, "admin": self.admin, "canary": self.canary, "stranger": self.stranger}
        return callers[name]

    async def open_session(self, caller: Caller, client: str = "fuzz") -> str:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": client, "version": "1"},
            },
        }
        headers = {"accept": ACCEPT, **caller.headers}
        with anyio.fail_after(REQUEST_DEADLINE_S):
            opened = await self.http.post(self.gateway.url, json=init, headers=headers)
            assert opened.status_code == 200, opened.text
            session_id = opened.headers["mcp-session-id"]
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            done = await self.http.post(
                self.gateway.url, json=initialized, headers={**headers, "mcp-session-id": session_id}
            )
            assert done.status_code == 202, done.text
        return str(session_id)

    async def live_session(self) -> str:
        """An open session of the fuzz key (a new one if a shot ended the last)."""
        if self._live is None:
            self._live = await self.open_session(self.fuzz)
        return self._live

    async def fire(self, shot: Shot) -> Answer:
        """Send `shot`; fail on a 5xx, on a response not complete within the deadline, or if the
        gateway process has gone."""
        session = await self.live_session() if shot.session == "live" else shot.session
        url = self.gateway.base_url + shot.path.format(
            org=self.fuzz.organisation_id, other=self.stranger.organisation_id
        )
        headers: list[tuple[bytes, bytes]] = []
        if shot.key.startswith("raw:"):
            headers.append((b"authorization", shot.key[4:].encode("latin-1")))
        elif shot.key != "none":
            headers.extend(as_bytes(self.caller(shot.key).headers))
        if session != "none":
            headers.append((b"mcp-session-id", session.encode("latin-1")))
        headers.extend((name.encode(), value) for name, value in shot.headers)
        TALLY.requests += 1
        try:
            with anyio.fail_after(REQUEST_DEADLINE_S):
                async with self.http.stream(shot.method, url, headers=headers, content=shot.body) as response:
                    streaming = response.headers.get("content-type", "").startswith("text/event-stream")
                    body = b"" if shot.open_ended and streaming else await response.aread()
        except TimeoutError:
            TALLY.hangs += 1
            self._check_alive()
            raise AssertionError(f"no complete answer within {REQUEST_DEADLINE_S} s to {shot!r}") from None
        except httpx2.TransportError as exc:
            self._check_alive()
            raise AssertionError(f"the connection failed ({exc!r}) for {shot!r}") from exc
        TALLY.statuses[response.status_code] += 1
        if response.status_code >= 500:
            TALLY.server_errors += 1
            raise AssertionError(f"{response.status_code} {body[:300]!r} for {shot!r}")
        if shot.method == "DELETE" and session == self._live and response.status_code == 200:
            self._live = None
        return Answer(
            response.status_code,
            response.headers.get("content-type", ""),
            body,
            response.headers.get("location"),
        )

    async def still_serves(self) -> None:
        """A normal client's `tools/call` still goes through (its own session, its own key)."""
        if self._canary_session is None:
            self._canary_session = await self.open_session(self.canary, client="canary")
        text = f"canary {next(self._ids)}"
        call = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": "tools/call",
            "params": {"name": "web__echo", "arguments": {"text": text}},
        }
        headers = {"accept": ACCEPT, "mcp-session-id": self._canary_session, **self.canary.headers}
        TALLY.canaries += 1
        try:
            with anyio.fail_after(REQUEST_DEADLINE_S):
                response = await self.http.post(self.gateway.url, json=call, headers=headers)
        except TimeoutError:
            self._check_alive()
            raise AssertionError("the canary call got no answer in time") from None
        assert response.status_code == 200, response.text
        assert response.json()["result"]["content"][0]["text"] == text

    def _check_alive(self) -> None:
        if self.gateway.process.returncode is not None:
            log = self.gateway.log.read_text(errors="replace")[-4000:]
            raise GatewayDown(f"the gateway exited with {self.gateway.process.returncode}:\n{log}")


def json_rpc_error(answer: Answer) -> Mapping[str, Any] | None:
    """The JSON-RPC error object of an answer, if it is one."""
    try:
        parsed = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else None


def as_bytes(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode("latin-1")) for name, value in headers.items()]
