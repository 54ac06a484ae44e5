"""The gateway's exception tree.

    GatewayError
    ├── UpstreamError                 something went wrong talking to one upstream
    │   ├── UpstreamUnavailable       could not connect, or it went away mid-call
    │   ├── UpstreamTimeout           it did not answer within its `call_s`
    │   ├── UpstreamSessionExpired    it forgot our session (HTTP 404): re-initialise once
    │   └── UpstreamUnauthorized      it refused our credential (HTTP 401/403)
    ├── RoutingError                  the host named a tool/resource/prompt nobody serves
    ├── RequestIdInUse                a host reused the id of a request still being served
    ├── AuthThrottled                 a client address failed to authenticate too often (429)
    └── CredentialError               no usable credential for an upstream
        ├── AuthRequired              the caller must connect an account first (carries the URL)
        ├── OAuthError                an authorization server misbehaved or cannot be used
        │   └── EgressRefused         discovery named a URL the gateway will not fetch (or read on)
        └── FlowProblem               a connect URL or OAuth callback that cannot go on (HTTP status)

Lower-layer errors (httpx2, OS process errors) are translated into these once, where they
happen, with `raise ... from exc`; everything above deals only with this tree.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the gateway's errors."""


class UpstreamError(GatewayError):
    def __init__(self, upstream: str, reason: str) -> None:
        super().__init__(f"upstream {upstream!r}: {reason}")
        self.upstream = upstream
        self.reason = reason


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or went away before answering."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamSessionExpired(UpstreamError):
    """The upstream answered 404 for our session id: it no longer knows the session."""


class UpstreamUnauthorized(UpstreamError):
    """The upstream answered 401 or 403: the credential we sent is not (or no longer) good."""


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


class RequestIdInUse(GatewayError):
    """A host sent a request whose id is the id of one of its requests still being served."""

    def __init__(self, request_id: object) -> None:
        super().__init__(f"a request with id {request_id!r} is already in flight in this session")
        self.request_id = request_id
