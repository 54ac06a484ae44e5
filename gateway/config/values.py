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
    "EnterpriseIdp",
    "GatewayConfig",
    "HostSignInConfig",
    "IdentityMode",
    "ListenConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "MetricsConfig",
    "OidcProviderConfig",
    "RecordingConfig",
    "RetentionConfig",
    "SecretsConfig",
    "SecurityConfig",
    "SessionMode",
    "SessionsConfig",
    "SignInClientConfig",
    "SigningAlg",
    "Timeouts",
    "TokenEndpointAuthMethod",
    "Transport",
    "UpstreamAuth",
    "UpstreamConfig",
]

AuthKind: TypeAlias = Literal[
    "none", "headers", "oauth", "user_headers", "client_credentials", "enterprise_managed"
]
TokenEndpointAuthMethod: TypeAlias = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]
SigningAlg: TypeAlias = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
IdentityMode: TypeAlias = Literal["user", "vk", "session"]
Transport: TypeAlias = Literal["stdio", "http", "sse"]
LogLevel: TypeAlias = Literal["debug", "info", "warning", "error"]
LogFormat: TypeAlias = Literal["text", "json"]
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
class EnterpriseIdp:
    """Enterprise-managed authorization (SEP-990): the organisation's identity provider, where
    an identity assertion (an OpenID Connect id_token) is exchanged (RFC 8693) for an ID-JAG,
    which the upstream's authorization server takes in a JWT bearer grant (RFC 7523)."""

    token_endpoint: str
    client_id: str  # the gateway's client at the IdP (the id_token's audience)
    assertion_file: Path  # the id_token to exchange, read again for every exchange (it expires)
    client_secret: str | None = field(default=None, repr=False)
    # The ID-JAG's audience: the upstream's authorization server. None: its discovered issuer.
    audience: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamAuth:
    """How the gateway authenticates to one upstream.

    ``none`` and ``headers`` (static values, sent for everyone) need nothing per user;
    ``oauth`` and ``user_headers`` need a credential per identity: the user behind the API key
    (``user``), the API key itself (``vk``) or one host session (``session``).
    ``client_credentials`` and ``enterprise_managed`` are the gateway's own token for the
    upstream (machine to machine), the same for every caller, obtained and renewed by the
    gateway (`gateway/credentials/own_token.py`).
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
    # client_credentials, enterprise_managed: the upstream's token endpoint (None: discovered
    # from its protected resource metadata) and how the gateway authenticates there; the
    # loader fills the method in (private_key_jwt with a key, else client_secret_basic).
    token_endpoint: str | None = None
    token_endpoint_auth_method: TokenEndpointAuthMethod = "client_secret_basic"
    private_key_file: Path | None = None  # private_key_jwt: a PEM private key
    private_key: str | None = field(default=None, repr=False)  # its contents, read at load
    signing_alg: SigningAlg | None = None  # private_key_jwt; None: the key's usual one
    idp: EnterpriseIdp | None = None  # enterprise_managed

    @property
    def per_identity(self) -> bool:
        return self.kind in ("oauth", "user_headers")

    @property
    def own_token(self) -> bool:
        """Whether the gateway holds one token of its own for the upstream (not per identity)."""
        return self.kind in ("client_credentials", "enterprise_managed")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    transport: Transport
    prefix: str  # "<name>__" unless the file sets one ("" included)
    # Put before every resource URI (and template) it lists, as hosts see them, and taken off
    # those a host sends back: "a+" exposes demo://readme as a+demo://readme. "": URIs as listed.
    uri_prefix: str = ""
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
    # http: connections its calls share, and GET (listen) streams kept open beside them, in a
    # pool of their own so that listening sessions never hold a call's connection.
    max_connections: int = 256
    max_listen_streams: int = 128


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
    # A response the client stops reading: its connection is closed after this long stalled.
    write_timeout_s: float = 30.0
    max_connections: int = 2000  # client connections open at once; past it, 503 and closed
    # An upstream's answer (HTTP body, SSE event, stdio line) is read up to this, never buffered
    # whole past it. 16 MiB is several times the largest tool result a model's context can take
    # (about 1M tokens, some 4 MB of text) and room for a base64 document from resources/read,
    # while 30 such answers in flight stay a few hundred MB, not the gigabytes of 64 MiB each.
    max_upstream_response_bytes: int = 16 * 1024 * 1024


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
    # 2026-07-28 subscriptions/listen streams one API key may hold open (key-less: the gateway)
    max_listen_streams_per_key: int = 16
    # Host requests one API key may have in flight at once, both generations together (key-less:
    # the gateway); each holds memory until answered. Past it: 429 at once.
    max_requests_in_flight_per_key: int = 64


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
class LoggingConfig:
    level: LogLevel = "info"  # `mcpgw serve --log-level` overrides it
    format: LogFormat = "text"
    calls: bool = True  # one line per recorded call, at info
    access_log: bool = False  # one line per HTTP request


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """`/metrics`: without a token, only clients on a loopback address are answered."""

    enabled: bool = True
    token: str | None = field(default=None, repr=False)  # else scrapes send `Authorization: Bearer <token>`


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Traces and metrics over OTLP (gateway/telemetry/otlp.py). Each key mirrors a standard
    OpenTelemetry environment variable; a key left out (None) takes that variable, else the
    SDK's default. Off unless an endpoint is given here or in OTEL_EXPORTER_OTLP_ENDPOINT."""

    endpoint: str | None = None  # OTEL_EXPORTER_OTLP_ENDPOINT: the collector's base URL
    headers: Mapping[str, str] | None = field(default=None, repr=False)  # OTEL_EXPORTER_OTLP_HEADERS
    timeout_s: float | None = None  # OTEL_EXPORTER_OTLP_TIMEOUT (the SDK's default: 10 s)
    protocol: Literal["http/protobuf"] | None = None  # OTEL_EXPORTER_OTLP_PROTOCOL
    service_name: str | None = None  # OTEL_SERVICE_NAME; else "mcpgw"
    resource_attributes: Mapping[str, str] | None = None  # OTEL_RESOURCE_ATTRIBUTES
    sampler: str | None = None  # OTEL_TRACES_SAMPLER (the SDK's default: parentbased_always_on)
    sampler_arg: float | None = None  # OTEL_TRACES_SAMPLER_ARG
    metrics_interval_s: float | None = None  # OTEL_METRIC_EXPORT_INTERVAL (the SDK's: 60 s)
    traces: bool = True
    metrics: bool = True
    capture_content: bool = False  # tool arguments and results on spans, redacted and capped
    max_content_bytes: int = 4096  # per captured value


@dataclass(frozen=True, slots=True)
class SecretsConfig:
    """The keys that seal credentials at rest: one from the config (or its ${ENV}), else a key file."""

    key_file: Path  # "<database>.keys" unless the file sets one
    key: bytes | None = field(default=None, repr=False)  # 32 bytes; when set, the key file is not used
    previous_keys: tuple[bytes, ...] = field(default=(), repr=False)  # still open, never seal


@dataclass(frozen=True, slots=True)
class SignInClientConfig:
    """A host's OAuth client an admin registered by hand (for hosts that neither register nor
    publish a client metadata document). Without a secret it is a public client (PKCE only)."""

    client_id: str
    redirect_uris: tuple[str, ...]
    client_name: str | None = None
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class OidcProviderConfig:
    """An organisation's OpenID Connect provider (Okta, Entra ID, Google, Keycloak, ...) through
    which people sign in on the consent page, the gateway being its relying party; and how the
    claims of its id_tokens say who a person is and which organisation they belong to.

    The organisation comes from `organisation_claim` (a claim's value, or one of its values for
    a list such as groups, looked up in `organisations`) or else from the domain of a verified
    e-mail address (`domains`); a person neither maps is refused, never put anywhere by default.
    """

    name: str  # names the provider in the sign-in state and logs: [a-z0-9-]+
    issuer: str  # its discovery document is <issuer>/.well-known/openid-configuration
    client_id: str
    client_secret: str = field(repr=False)
    display_name: str = ""  # on the consent page's button; "" = the name
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    user_claim: str = "email"  # the claim whose value is the user id (an e-mail only if verified)
    organisation_claim: str | None = None
    organisations: Mapping[str, str] = field(default_factory=dict)  # that claim's value -> organisation
    domains: Mapping[str, str] = field(default_factory=dict)  # verified e-mail domain -> organisation
    admin_claim: str | None = None  # a person is an admin when this claim holds one of admin_values
    admin_values: tuple[str, ...] = ()
    allow_private_addresses: bool = False  # the provider may be on a private network address

    @property
    def label(self) -> str:
        return self.display_name or self.name


@dataclass(frozen=True, slots=True)
class HostSignInConfig:
    """Hosts that sign in (OAuth 2.1, the gateway being the authorization server for its own MCP
    URL) rather than send an API key: claude.ai, ChatGPT, Claude's and other connectors."""

    enabled: bool = False
    api_keys: bool = True  # the consent page accepts a user-bound API key
    oidc: tuple[OidcProviderConfig, ...] = ()  # the organisation's OpenID Connect providers
    access_token_ttl_s: int = 3600
    refresh_token_ttl_s: int = 30 * 86400  # a refresh token's life; each use mints a new one
    code_ttl_s: int = 60  # an authorization code's life: the host redeems it at once
    consent_ttl_s: int = 600  # how long a consent page can be answered
    registrations_per_hour: int = 20  # RFC 7591 registrations per client address; 0 = no limit
    pending_per_address: int = 30  # authorization requests awaiting consent per client address
    document_fetches_per_hour: int = 30  # client metadata documents fetched per client address; 0 = no limit
    document_fetches_per_hour_total: int = 300  # the same, for all addresses together; 0 = no limit
    unused_client_ttl_s: int = 30 * 86400  # a registered client with no live sign-in is forgotten
    clients: tuple[SignInClientConfig, ...] = ()  # pre-registered


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """`database: postgresql://user[:password]@host[:port]/db[?sslmode=…]`: the store on a
    PostgreSQL server. A password the URL leaves out comes from PGPASSWORD or ~/.pgpass; TLS
    parameters in its query (sslmode, sslrootcert, sslcert, sslkey) go to the driver as they are."""

    url: str = field(repr=False)  # may hold the password: never logged (see `shown`)
    shown: str = ""  # the URL without its password, for the log and messages
    pool_size: int = 10  # connections at most, besides the recorder's and the listener's


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    path: Path
    public_url: str  # the base of the URLs users open (OAuth, forms); else the listen address
    secrets: SecretsConfig
    database: Path = Path("mcpgw.db")  # a relative path is relative to the config file's folder
    postgres: PostgresConfig | None = None  # `database:` named a PostgreSQL server (then no file)
    listen: ListenConfig = field(default_factory=ListenConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    upstreams: tuple[UpstreamConfig, ...] = ()
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    host_sign_in: HostSignInConfig = field(default_factory=HostSignInConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    public_url_configured: bool = False  # else public_url follows the address served on

    def served_at(self, host: str, port: int) -> "GatewayConfig":
        """This config as served on `host`:`port` (after --host/--port, and once a port 0 is
        bound): `public_url` names that address unless the config sets one."""
        public_url = self.public_url if self.public_url_configured else local_url(host, port)
        return replace(self, listen=ListenConfig(host, port), public_url=public_url)

    @property
    def store_at(self) -> Path | str:
        """What `store.open_store` opens: the PostgreSQL URL, else the SQLite file."""
        return self.database if self.postgres is None else self.postgres.url

    @property
    def database_shown(self) -> str:
        """Where the record is, for the log: the file, or the server's URL without a password."""
        return str(self.database) if self.postgres is None else self.postgres.shown
