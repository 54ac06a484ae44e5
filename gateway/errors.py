"""The gateway's exception tree.

    GatewayError
    ├── UpstreamError                 something went wrong talking to one upstream
    │   ├── UpstreamUnavailable       could not connect, or it went away mid-call
    │   ├── UpstreamTimeout           it did not answer within its `call_s`
    │   └── UpstreamSessionExpired    it forgot our session (HTTP 404): re-initialise once
    └── RoutingError                  the host named a tool/resource/prompt nobody serves

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


class RoutingError(GatewayError):
    """A name the host sent maps to no upstream (or is filtered away)."""
