"""The frozen values the gateway runs on, and every default a config key has.

A default is written here and nowhere else: the schema reads it (`schema.default_of`) and the
loader leaves out what the file left out. Only defaults that depend on other keys or on where
the file is (an upstream's prefix, `public_url`, the key file beside the database) are worked
out by the loader, and those fields have none here.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeAlias

from gateway.config.policy import ToolFilter, local_url

__all__ = [
    "DEFAULT_SESSION_MODE",
    "AuthConfig",
    "AuthKind",
    "GatewayConfig",
    "IdentityMode",
    "ListenConfig",
    "RecordingConfig",
    "RetentionConfig",
    "SecretsConfig",
    "SecurityConfig",
    "SessionMode",
    "SessionsConfig",
    "Timeouts",
    "Transport",
    "UpstreamAuth",
    "UpstreamConfig",
]

AuthKind: TypeAlias = Literal["none", "headers", "oauth", "user_headers"]
IdentityMode: TypeAlias = Literal["user", "vk", "session"]
Transport: TypeAlias = Literal["stdio", "http", "sse"]
SessionMode: TypeAlias = Literal["per_host", "shared"]

# An upstream's `sessions` when the file sets none. stdio: shared, because a child per host
# session costs tens of MB and most stdio servers keep no per-client state; http and sse:
# per_host, because a remote session is cheap to hold and remote servers more often keep
# per-client state or ask the host things (sampling, elicitation, roots) mid-call.
DEFAULT_SESSION_MODE: Mapping[Transport, SessionMode] = {
    "stdio": "shared",
    "http": "per_host",
    "sse": "per_host",
}


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 10.0
    call_s: float = 60.0


@dataclass(frozen=True, slots=True)
class UpstreamAuth:
    """How the gateway authenticates to one upstream.

    ``none`` and ``headers`` (static values, sent for everyone) need nothing per user;
    ``oauth`` and ``user_headers`` need a credential per identity: the user behind the API key
    (``user``), the API key itself (``vk``) or one host session (``session``).
    """

    kind: AuthKind = "none"
    identity: IdentityMode = "user"
    scopes: tuple[str, ...] = ()  # oauth: asked for at authorisation; empty = what the server says
    client_id: str | None = None  # oauth: a pre-registered client; else a metadata document or RFC 7591
    client_secret: str | None = field(default=None, repr=False)
    client_metadata_url: str | None = None  # oauth: an https URL serving this client's metadata document
    allow_private_addresses: bool = False  # oauth: discovery may reach RFC 1918/ULA addresses
    header_names: tuple[str, ...] = ()  # user_headers: what the form asks for
    static_headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # headers

    @property
    def per_identity(self) -> bool:
        return self.kind in ("oauth", "user_headers")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    transport: Transport
    prefix: str  # "<name>__" unless the file sets one ("" included)
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tools: ToolFilter = field(default_factory=ToolFilter)
    timeouts: Timeouts = Timeouts()
    idle_s: float = 300.0
    auth: UpstreamAuth = UpstreamAuth()
    # Whether the gateway is ready (`/readyz`) only while this upstream is up; a required
    # upstream is also tried at start-up rather than when a host first needs it.
    required: bool = False
    # per_host: one upstream session per host session; shared: a pool of at most
    # `max_sessions` upstream sessions multiplexed across host sessions. The loader fills it
    # from DEFAULT_SESSION_MODE when the file sets none.
    sessions: SessionMode = "per_host"
    max_sessions: int = 4  # shared: upstream sessions (stdio: children) in the pool
    max_children: int = 50  # stdio, per_host: children running at once for all host sessions
    list_ttl_s: float = 300.0  # what it lists is listed again after this long (unless it says)


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class AuthConfig:
    required: bool = True
    max_failures_per_minute: int = 20  # failed key checks per client address; 0 = no limit


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    # What a client may make the HTTP server hold while it sends a request (gateway.host.limits).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    max_url_bytes: int = 8 * 1024


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    # A host session with no request and no open stream for this long is ended (its children
    # stop with it): five minutes, so abandoned sessions (killed bridges, one-shot CLIs, probes)
    # give their processes back within minutes; hosts that stay keep a GET stream open.
    idle_s: float = 300.0
    stateless_gap_s: float = 1800.0
    max_per_key: int = 100  # open host sessions one API key may hold (key-less: the whole gateway)
    max_total: int = 10_000  # open host sessions and 2026-07-28 groups, all keys together
    groups_per_key: int = 20  # 2026-07-28 groups per key; past it the least recently used is ended
    max_children: int = 200  # stdio children of all upstreams together


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    max_age_days: float | None = 30.0  # None: keep forever
    max_invocations: int | None = 1_000_000  # None: no limit
    interval_s: float = 600.0


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    enabled: bool = True
    max_payload_bytes: int = 64 * 1024
    redact_keys: tuple[str, ...] = ()  # added to gateway.recording.redaction's built-in names
    redact_patterns: tuple[str, ...] = ()  # added to the built-in patterns
    retention: RetentionConfig = field(default_factory=RetentionConfig)


@dataclass(frozen=True, slots=True)
class SecretsConfig:
    """The keys that seal credentials at rest: one from the config (or its ${ENV}), else a key file."""

    key_file: Path  # "<database>.keys" unless the file sets one
    key: bytes | None = field(default=None, repr=False)  # 32 bytes; when set, the key file is not used
    previous_keys: tuple[bytes, ...] = field(default=(), repr=False)  # still open, never seal


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    path: Path
    public_url: str  # the base of the URLs users open (OAuth, forms); else the listen address
    secrets: SecretsConfig
    database: Path = Path("mcpgw.db")  # a relative path is relative to the config file's folder
    listen: ListenConfig = field(default_factory=ListenConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    upstreams: tuple[UpstreamConfig, ...] = ()
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    public_url_configured: bool = False  # else public_url follows the address served on

    def served_at(self, host: str, port: int) -> "GatewayConfig":
        """This config as served on `host`:`port` (after --host/--port, and once a port 0 is
        bound): `public_url` names that address unless the config sets one."""
        public_url = self.public_url if self.public_url_configured else local_url(host, port)
        return replace(self, listen=ListenConfig(host, port), public_url=public_url)
