"""The gateway's exception tree: every exception that crosses a module boundary in `gateway/`.

    GatewayError
    ├── UpstreamError                 something went wrong talking to one upstream
    │   ├── UpstreamUnavailable       could not connect, or it went away mid-call
    │   │   ├── UpstreamUnreachable   nothing there: no connection, or the command would not start
    │   │   └── HandshakeRefused      it answered, but refused our `initialize` (a 2026-07-28-only one does)
    │   ├── UpstreamTimeout           it did not answer within its `call_s`
    │   ├── UpstreamSessionExpired    it forgot our session (HTTP 404): re-initialise once
    │   ├── UpstreamBusy              starting one more session or child would pass a configured cap
    │   └── UpstreamUnauthorized      it refused our credential (HTTP 401/403)
    ├── RoutingError                  the host named a tool/resource/prompt nobody serves
    ├── RequestIdInUse                a host reused the id of a request still being served
    ├── OwnerGone                     the replica holding a call stopped (`gateway/cluster.py`)
    ├── SessionLimit                  a caller (429) or the gateway (503) holds all the sessions it may
    ├── HostRefusal                   a host request refused at the door: HTTP status + JSON-RPC error
    ├── AuthThrottled                 a client address failed to authenticate too often (429)
    ├── SignInRefused                 a host's sign-in request refused: an OAuth error code (RFC 6749)
    ├── CredentialError               no usable credential for an upstream
    │   ├── AuthRequired              the caller must connect an account first (carries the URL)
    │   ├── OAuthError                an authorization server misbehaved or cannot be used
    │   │   └── EgressRefused         discovery named a URL the gateway will not fetch (or read on)
    │   └── FlowProblem               a connect URL or OAuth callback that cannot go on (HTTP status)
    ├── MessageError                  a body that is not one JSON-RPC message (carries the error)
    │   └── TooDeep                   nested deeper than the gateway can pass on
    ├── BodyTooLarge                  a host's request body over `security.max_body_bytes` (413)
    ├── RecordingFailed               a record could not be made durable: no success may be told
    │   └── SessionsUnreachable       replicas: the live sessions' rows cannot be read or written (503)
    ├── WireError                     the upstream HTTP/1.1 client's failures (`upstream/_wire.py`)
    │   ├── ConnectTimeout            no connection within the connect timeout
    │   └── ConnectFailed             the upstream's address refused or could not be reached
    ├── EventStreamError              an upstream's event stream that cannot be decoded
    ├── ResponseTooLarge              an upstream's answer over `security.max_upstream_response_bytes`
    ├── ConfigError                   the config file is missing, unreadable or not valid
    │   └── TelemetryConfigError      telemetry settings (or OTEL_* variables) this gateway cannot do
    └── OidcError                     a person's sign-in through an OpenID Connect provider failed
        ├── OidcUnavailable           the provider cannot be used now (discovery, keys, token endpoint)
        └── OidcRefused               the person is not signed in (`reason` says why, the message how)

Lower-layer errors (httpx2, OS process errors) are translated into these once, where they
happen, with `raise ... from exc`; everything above deals only with this tree. `WireError` is
that lower layer for `upstream/http.py` (its private HTTP/1.1 client), translated there into
`UpstreamError` as httpx2's errors are in `upstream/sse.py`. An exception that is not here is
private to its module (its name starts with `_`) and never leaves it.

Code that catches `GatewayError` itself catches all of the above; where it means only the
failures of serving a call, it names them (`UpstreamError`, `RoutingError`, `CredentialError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class GatewayError(Exception):
    """Root of the gateway's errors."""


class UpstreamError(GatewayError):
    def __init__(self, upstream: str, reason: str) -> None:
        super().__init__(f"upstream {upstream!r}: {reason}")
        self.upstream = upstream
        self.reason = reason


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or went away before answering."""


class UpstreamUnreachable(UpstreamUnavailable):
    """Nothing answered at all: no connection could be made, or the command could not be started.
    Unlike a call that failed, this says the upstream itself is down (`upstream/health.py`)."""


class HandshakeRefused(UpstreamUnavailable):
    """The upstream answered our `initialize` with an error: it is there (not down), but no session
    opens this way; a server of 2026-07-28 only is reached statelessly instead."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamSessionExpired(UpstreamError):
    """The upstream answered 404 for our session id: it no longer knows the session."""


class UpstreamBusy(UpstreamError):
    """Opening one more upstream session would pass a cap (`max_children`, `sessions.max_children`):
    refused at once, and not a sign that the upstream is down."""


class UpstreamUnauthorized(UpstreamError):
    """The upstream answered 401 or 403: the credential we sent is not (or no longer) good.
    ``scope`` is what a 403 `insufficient_scope` challenge names: the token is good, but this
    call needs more (step-up authorization)."""

    def __init__(self, upstream: str, reason: str, *, scope: str | None = None) -> None:
        super().__init__(upstream, reason)
        self.scope = scope


class CredentialError(GatewayError):
    """No credential the gateway can use for an upstream on this caller's behalf."""


class AuthRequired(CredentialError):
    """The caller has no usable credential for the upstream; ``url`` is where to connect one."""

    def __init__(self, upstream: str, url: str, flow_id: str, *, reason: str) -> None:
        super().__init__(f"upstream {upstream!r}: {reason}")
        self.upstream = upstream
        self.url = url
        self.flow_id = flow_id
        self.reason = reason


class OAuthError(CredentialError):
    """Discovery, registration or a token request failed; ``permanent`` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class EgressRefused(OAuthError):
    """A URL that discovery led to is off limits (another origin, a private address, plain http)
    or its answer is (too large); see `gateway/credentials/egress.py`. Not permanent: an admin
    may allow it, and the credential behind a refresh is not at fault."""


class FlowProblem(CredentialError):
    """A connect URL or callback that cannot go on; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RoutingError(GatewayError):
    """A name the host sent maps to no upstream (or is filtered away); ``data`` is what the
    host's error carries beside the message (a missing resource's ``uri``, as the spec's does)."""

    def __init__(self, message: str, data: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.data = data


class AuthThrottled(GatewayError):
    """A client address has failed to authenticate too often: answer 429 with ``Retry-After``
    (``retry_after_s``) without looking the key up."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed authentications; retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class SignInRefused(GatewayError):
    """A request to the gateway's own authorization server that it refuses: ``error`` is the
    OAuth error code the answer carries (RFC 6749 section 5.2, RFC 7591 section 3.2.2:
    ``invalid_request``, ``invalid_client``, ``invalid_target``, ...), ``status`` the HTTP
    status; the message is the ``error_description``, and never carries a secret."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


class RequestIdInUse(GatewayError):
    """A host sent a request whose id is the id of one of its requests still being served."""

    def __init__(self, request_id: object) -> None:
        super().__init__(f"a request with id {request_id!r} is already in flight in this session")
        self.request_id = request_id


class OwnerGone(GatewayError):
    """The replica holding a call stopped (or was killed), or failed going on with it: lost."""


class MessageError(GatewayError):
    """A body that is not a JSON-RPC message; carries the JSON-RPC error to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TooDeep(MessageError):
    """A message nested deeper than `gateway.protocol.jsonrpc.MAX_DEPTH`, which that module
    refuses (and words the error for): `value` is what was read of it."""

    def __init__(self, code: int, message: str, value: Any) -> None:
        super().__init__(code, message)
        self.value = value


class BodyTooLarge(GatewayError):
    """A request body grew past the limit it was read under."""


class RecordingFailed(GatewayError):
    """The record could not be made durable: the host must not be told the call succeeded."""


class SessionsUnreachable(RecordingFailed):
    """On replicas: the database that holds which sessions are live could not be asked, so a
    session can be neither opened (its row is its first record) nor found (503: try again)."""


class WireError(GatewayError):
    """The upstream could not be reached, or the connection broke before the response ended."""


class ConnectTimeout(WireError):
    """No connection to the upstream within the connect timeout; ``connecting`` when the time went
    on connecting (the address does not answer), not on waiting for a free connection of the pool."""

    def __init__(self, message: str, *, connecting: bool = True) -> None:
        super().__init__(message)
        self.connecting = connecting


class ConnectFailed(WireError):
    """The upstream's address refused the connection, could not be reached, or failed TLS."""


class EventStreamError(GatewayError):
    """An upstream's `text/event-stream` body that cannot be decoded (a line over its limit)."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file."""

    key: str  # key path such as "upstreams[1].transport"; "" when it concerns the whole file
    line: int | None  # 1-based
    reason: str


class ResponseTooLarge(GatewayError):
    """An upstream answered more than `security.max_upstream_response_bytes` (an HTTP body, one
    event of its stream, one stdio line): reading stopped there, nothing past it was buffered."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"answered with more than {limit} bytes, the limit (security.max_upstream_response_bytes)"
        )
        self.limit = limit


class ConfigError(GatewayError):
    """The config file is missing, unreadable, not YAML, or does not describe a valid gateway."""

    def __init__(self, message: str, *, file: Path | None = None, problems: Sequence[ConfigProblem] = ()):
        super().__init__(message)
        self.file = file
        self.problems = tuple(problems)


class TelemetryConfigError(ConfigError):
    """The telemetry settings name something this gateway cannot do (a protocol other than
    http/protobuf, an unknown sampler), in the config or the standard OTEL_* variables."""


class HostRefusal(GatewayError):
    """A host request the MCP endpoint refuses before serving it: answered with HTTP `status` and
    a JSON-RPC error (`code`, the message, `data`) for `request_id`, plus `headers` a client acts
    on (`WWW-Authenticate`, `Retry-After`, `Allow`). `host/asgi.py` `send_refusal` renders it:
    the one place the host surface turns an error into a response."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        request_id: object = None,
        data: object = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.data = data
        self.headers = headers


class SessionLimit(GatewayError):
    """No more host sessions: this API key holds its `sessions.max_per_key` (`status` 429), or the
    gateway its `sessions.max_total` (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OidcError(GatewayError):
    """Signing a person in through an OpenID Connect provider (`gateway/signin/oidc.py`) did not
    succeed; the message is for that person's browser and never carries a code or a token."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.message = message


class OidcUnavailable(OidcError):
    """The provider cannot be used now: its discovery document, its keys or its token endpoint
    failed or said something the gateway cannot accept. Trying later (or an admin) may help."""


class OidcRefused(OidcError):
    """The person is not signed in. ``reason`` is one of: ``state`` (the callback does not belong
    to this browser's sign-in, or it was tampered with), ``expired``, ``provider_error`` (the
    provider answered with an error, ``access_denied`` when the person declined), ``code`` (the
    provider did not accept the code: used already, or for another sign-in), ``id_token`` (its
    signature, issuer, audience, expiry or nonce is wrong), ``missing_claim``, ``email_unverified``,
    ``unmapped`` (no organisation takes this person), ``ambiguous`` (several do),
    ``unknown_provider``."""

    def __init__(self, provider: str, reason: str, message: str) -> None:
        super().__init__(provider, message)
        self.reason = reason
