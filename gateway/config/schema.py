"""The config file's schema: which keys exist, their types and their limits (pydantic, strict:
YAML's own types are what the file meant).

The schema holds no default of its own. A key's default is the one its value class declares
(`gateway.config.values`), read here by `default_of`; a default of None means "not given",
for keys whose default the loader works out or whose absence it must tell apart.
"""

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

from gateway.config._checks import (
    bool_from_text,
    check_env_name,
    check_header_name,
    check_header_value,
    check_host,
    check_name,
    check_no_nul,
    check_origin,
    check_pattern,
    check_prefix,
    check_scope,
    check_uri_prefix,
    check_url,
    float_from_text,
    int_from_text,
)
from gateway.config.policy import ToolFilter
from gateway.config.values import (
    AuthConfig,
    AuthKind,
    EnterpriseIdp,
    GatewayConfig,
    HostSignInConfig,
    IdentityMode,
    ListenConfig,
    LogFormat,
    LoggingConfig,
    LogLevel,
    MetricsConfig,
    OidcProviderConfig,
    PostgresConfig,
    RecordingConfig,
    RetentionConfig,
    SecretsConfig,
    SecurityConfig,
    SessionMode,
    SessionsConfig,
    SignInClientConfig,
    SigningAlg,
    TelemetryConfig,
    Timeouts,
    TokenEndpointAuthMethod,
    Transport,
    UpstreamAuth,
    UpstreamConfig,
)

__all__ = ["MODEL_AT", "SECTIONS", "GatewayModel", "Loc", "Model", "UpstreamModel", "default_of"]

Loc: TypeAlias = tuple[str | int, ...]  # a key path as pydantic reports it: ("upstreams", 1, "url")


def default_of(values: type[Any], name: str) -> Any:
    """A schema default: the one `values` declares for its field `name`, as the file would spell
    it (a list for a tuple, a string for a path). The mark lets a test find defaults that are not."""
    [declared] = [f for f in dataclasses.fields(values) if f.name == name]
    default: Any
    if declared.default_factory is not dataclasses.MISSING:
        default = declared.default_factory()
    elif declared.default is not dataclasses.MISSING:
        default = declared.default
    else:
        raise TypeError(f"{values.__name__}.{name} declares no default")
    mark: dict[str, JsonValue] = {"default_of": f"{values.__name__}.{name}"}
    if isinstance(default, tuple):
        return Field(default_factory=lambda: list(default), json_schema_extra=mark)
    return Field(default=str(default) if isinstance(default, Path) else default, json_schema_extra=mark)


_Text = Annotated[str, Field(min_length=1)]
_Port = Annotated[int, BeforeValidator(int_from_text), Field(ge=0, le=65535)]
_Bytes = Annotated[int, BeforeValidator(int_from_text), Field(gt=0)]
_Count = Annotated[int, BeforeValidator(int_from_text), Field(gt=0)]
_Seconds = Annotated[float, BeforeValidator(float_from_text), Field(gt=0, allow_inf_nan=False)]
_Bool = Annotated[bool, BeforeValidator(bool_from_text)]
_HeaderName = Annotated[str, AfterValidator(check_header_name)]
_HeaderValue = Annotated[str, AfterValidator(check_header_value)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ListenModel(Model):
    host: _Text = default_of(ListenConfig, "host")
    port: _Port = default_of(ListenConfig, "port")


class AuthModel(Model):
    required: _Bool = default_of(AuthConfig, "required")
    max_failures_per_minute: Annotated[int, BeforeValidator(int_from_text), Field(ge=0)] = default_of(
        AuthConfig, "max_failures_per_minute"
    )


class SecurityModel(Model):
    allowed_hosts: list[Annotated[str, AfterValidator(check_host)]] = default_of(
        SecurityConfig, "allowed_hosts"
    )
    allowed_origins: list[Annotated[str, AfterValidator(check_origin)]] = default_of(
        SecurityConfig, "allowed_origins"
    )
    max_body_bytes: _Bytes = default_of(SecurityConfig, "max_body_bytes")
    header_timeout_s: _Seconds = default_of(SecurityConfig, "header_timeout_s")
    body_timeout_s: _Seconds = default_of(SecurityConfig, "body_timeout_s")
    max_headers: _Count = default_of(SecurityConfig, "max_headers")
    max_header_bytes: _Bytes = default_of(SecurityConfig, "max_header_bytes")
    max_url_bytes: _Bytes = default_of(SecurityConfig, "max_url_bytes")
    write_timeout_s: _Seconds = default_of(SecurityConfig, "write_timeout_s")
    max_connections: _Count = default_of(SecurityConfig, "max_connections")
    max_upstream_response_bytes: _Bytes = default_of(SecurityConfig, "max_upstream_response_bytes")


class SessionsModel(Model):
    idle_s: _Seconds = default_of(SessionsConfig, "idle_s")
    stateless_gap_s: _Seconds = default_of(SessionsConfig, "stateless_gap_s")
    max_per_key: _Count = default_of(SessionsConfig, "max_per_key")
    max_total: _Count = default_of(SessionsConfig, "max_total")
    groups_per_key: _Count = default_of(SessionsConfig, "groups_per_key")
    max_children: _Count = default_of(SessionsConfig, "max_children")
    max_listen_streams_per_key: _Count = default_of(SessionsConfig, "max_listen_streams_per_key")
    max_requests_in_flight_per_key: _Count = default_of(SessionsConfig, "max_requests_in_flight_per_key")


class ToolFilterModel(Model):
    allow: list[_Text] = default_of(ToolFilter, "allow")
    deny: list[_Text] = default_of(ToolFilter, "deny")


class TimeoutsModel(Model):
    connect_s: _Seconds = default_of(Timeouts, "connect_s")
    call_s: _Seconds = default_of(Timeouts, "call_s")


class EnterpriseIdpModel(Model):
    token_endpoint: Annotated[str, AfterValidator(check_url)]
    client_id: _Text
    client_secret: _Text | None = default_of(EnterpriseIdp, "client_secret")
    assertion_file: _Text
    audience: _Text | None = default_of(EnterpriseIdp, "audience")


class UpstreamAuthModel(Model):
    kind: AuthKind = default_of(UpstreamAuth, "kind")
    # None: not given. Which of these a kind allows is checked on conversion, so absence must show.
    identity: IdentityMode | None = None
    scopes: list[Annotated[str, AfterValidator(check_scope)]] | None = None
    client_id: _Text | None = None
    client_secret: _Text | None = None
    client_metadata_url: Annotated[str, AfterValidator(check_url)] | None = None
    allow_private_addresses: _Bool | None = None
    # user_headers: a list of names; headers: a mapping of names to values.
    headers: list[_HeaderName] | dict[_HeaderName, _HeaderValue] | None = None
    token_endpoint: Annotated[str, AfterValidator(check_url)] | None = None
    token_endpoint_auth_method: TokenEndpointAuthMethod | None = None  # None: from the key or secret
    private_key_file: _Text | None = None
    signing_alg: SigningAlg | None = None
    idp: EnterpriseIdpModel | None = None


class UpstreamModel(Model):
    name: Annotated[str, AfterValidator(check_name)]
    transport: Transport
    # None: not given. Which transport allows which is checked on conversion, so absence must show.
    command: list[Annotated[str, AfterValidator(check_no_nul)]] | None = None
    env: (
        dict[Annotated[str, AfterValidator(check_env_name)], Annotated[str, AfterValidator(check_no_nul)]]
        | None
    ) = None
    cwd: _Text | None = None
    url: Annotated[str, AfterValidator(check_url)] | None = None
    headers: dict[_HeaderName, _HeaderValue] | None = None
    prefix: Annotated[str, AfterValidator(check_prefix)] | None = None  # None: "<name>__"
    uri_prefix: Annotated[str, AfterValidator(check_uri_prefix)] = default_of(UpstreamConfig, "uri_prefix")
    tools: ToolFilterModel = Field(default_factory=ToolFilterModel)
    timeouts: TimeoutsModel = Field(default_factory=TimeoutsModel)
    idle_s: _Seconds = default_of(UpstreamConfig, "idle_s")
    required: _Bool = default_of(UpstreamConfig, "required")
    sessions: SessionMode | None = None  # None: DEFAULT_SESSION_MODE of the transport
    max_sessions: _Count = default_of(UpstreamConfig, "max_sessions")
    max_children: _Count = default_of(UpstreamConfig, "max_children")
    list_ttl_s: _Seconds = default_of(UpstreamConfig, "list_ttl_s")
    max_connections: _Count = default_of(UpstreamConfig, "max_connections")
    max_listen_streams: _Count = default_of(UpstreamConfig, "max_listen_streams")
    auth: UpstreamAuthModel = Field(default_factory=UpstreamAuthModel)


class RedactModel(Model):
    keys: list[_Text] = default_of(RecordingConfig, "redact_keys")
    patterns: list[Annotated[str, Field(min_length=1), AfterValidator(check_pattern)]] = default_of(
        RecordingConfig, "redact_patterns"
    )


class RetentionModel(Model):
    # 0 turns a limit off (None in the values).
    max_age_days: Annotated[float, BeforeValidator(float_from_text), Field(ge=0, allow_inf_nan=False)] = (
        default_of(RetentionConfig, "max_age_days")
    )
    max_invocations: Annotated[int, BeforeValidator(int_from_text), Field(ge=0)] = default_of(
        RetentionConfig, "max_invocations"
    )
    interval_s: _Seconds = default_of(RetentionConfig, "interval_s")


class RecordingModel(Model):
    enabled: _Bool = default_of(RecordingConfig, "enabled")
    max_payload_bytes: _Bytes = default_of(RecordingConfig, "max_payload_bytes")
    redact: RedactModel = Field(default_factory=RedactModel)
    retention: RetentionModel = Field(default_factory=RetentionModel)


class LoggingModel(Model):
    level: LogLevel = default_of(LoggingConfig, "level")
    format: LogFormat = default_of(LoggingConfig, "format")
    calls: _Bool = default_of(LoggingConfig, "calls")
    access_log: _Bool = default_of(LoggingConfig, "access_log")


class MetricsModel(Model):
    enabled: _Bool = default_of(MetricsConfig, "enabled")
    # At least 16 characters: it is all that stands between the network and the metrics.
    token: Annotated[str, Field(min_length=16)] | None = default_of(MetricsConfig, "token")


# The samplers OTEL_TRACES_SAMPLER names (the SDK's own list).
_SAMPLERS = (
    "always_on|always_off|traceidratio|parentbased_always_on|parentbased_always_off|parentbased_traceidratio"
)


class TelemetryModel(Model):
    endpoint: Annotated[str, AfterValidator(check_url)] | None = default_of(TelemetryConfig, "endpoint")
    headers: dict[_HeaderName, _HeaderValue] | None = default_of(TelemetryConfig, "headers")
    timeout_s: _Seconds | None = default_of(TelemetryConfig, "timeout_s")
    protocol: Literal["http/protobuf"] | None = default_of(TelemetryConfig, "protocol")
    service_name: _Text | None = default_of(TelemetryConfig, "service_name")
    resource_attributes: dict[_Text, str] | None = default_of(TelemetryConfig, "resource_attributes")
    sampler: Annotated[str, Field(pattern=f"^({_SAMPLERS})$")] | None = default_of(TelemetryConfig, "sampler")
    sampler_arg: Annotated[float, BeforeValidator(float_from_text), Field(ge=0, le=1)] | None = default_of(
        TelemetryConfig, "sampler_arg"
    )
    metrics_interval_s: _Seconds | None = default_of(TelemetryConfig, "metrics_interval_s")
    traces: _Bool = default_of(TelemetryConfig, "traces")
    metrics: _Bool = default_of(TelemetryConfig, "metrics")
    capture_content: _Bool = default_of(TelemetryConfig, "capture_content")
    max_content_bytes: _Bytes = default_of(TelemetryConfig, "max_content_bytes")


class SecretsModel(Model):
    key: str | None = None  # base64url of 32 bytes; "" (an unset ${VAR:-}) means none
    previous_keys: list[_Text] = default_of(SecretsConfig, "previous_keys")
    key_file: _Text | None = None  # None: beside the database


class SignInClientModel(Model):
    client_id: _Text
    redirect_uris: Annotated[list[_Text], Field(min_length=1)]
    client_name: _Text | None = default_of(SignInClientConfig, "client_name")
    client_secret: _Text | None = default_of(SignInClientConfig, "client_secret")


class OidcProviderModel(Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")]
    issuer: Annotated[str, AfterValidator(check_url)]
    client_id: _Text
    client_secret: _Text  # give it as ${ENV}, like every secret in the file
    display_name: _Text | None = None  # None: the name
    scopes: list[Annotated[str, AfterValidator(check_scope)]] = default_of(OidcProviderConfig, "scopes")
    user_claim: _Text = default_of(OidcProviderConfig, "user_claim")
    organisation_claim: _Text | None = default_of(OidcProviderConfig, "organisation_claim")
    organisations: dict[_Text, _Text] = default_of(OidcProviderConfig, "organisations")
    domains: dict[_Text, _Text] = default_of(OidcProviderConfig, "domains")
    admin_claim: _Text | None = default_of(OidcProviderConfig, "admin_claim")
    admin_values: list[_Text] = default_of(OidcProviderConfig, "admin_values")
    allow_private_addresses: _Bool = default_of(OidcProviderConfig, "allow_private_addresses")


class HostSignInModel(Model):
    enabled: _Bool = default_of(HostSignInConfig, "enabled")
    api_keys: _Bool = default_of(HostSignInConfig, "api_keys")
    oidc: list[OidcProviderModel] = default_of(HostSignInConfig, "oidc")
    access_token_ttl_s: _Count = default_of(HostSignInConfig, "access_token_ttl_s")
    refresh_token_ttl_s: _Count = default_of(HostSignInConfig, "refresh_token_ttl_s")
    code_ttl_s: _Count = default_of(HostSignInConfig, "code_ttl_s")
    consent_ttl_s: _Count = default_of(HostSignInConfig, "consent_ttl_s")
    registrations_per_hour: Annotated[int, BeforeValidator(int_from_text), Field(ge=0)] = default_of(
        HostSignInConfig, "registrations_per_hour"
    )
    pending_per_address: _Count = default_of(HostSignInConfig, "pending_per_address")
    document_fetches_per_hour: Annotated[int, BeforeValidator(int_from_text), Field(ge=0)] = default_of(
        HostSignInConfig, "document_fetches_per_hour"
    )
    document_fetches_per_hour_total: Annotated[int, BeforeValidator(int_from_text), Field(ge=0)] = default_of(
        HostSignInConfig, "document_fetches_per_hour_total"
    )
    unused_client_ttl_s: _Count = default_of(HostSignInConfig, "unused_client_ttl_s")
    clients: list[SignInClientModel] = default_of(HostSignInConfig, "clients")


class GatewayModel(Model):
    listen: ListenModel = Field(default_factory=ListenModel)
    public_url: Annotated[str, AfterValidator(check_url)] | None = None  # None: the listen address
    database: _Text = default_of(GatewayConfig, "database")
    database_pool_size: Annotated[int, BeforeValidator(int_from_text), Field(ge=1, le=1000)] = default_of(
        PostgresConfig, "pool_size"
    )
    auth: AuthModel = Field(default_factory=AuthModel)
    security: SecurityModel = Field(default_factory=SecurityModel)
    sessions: SessionsModel = Field(default_factory=SessionsModel)
    upstreams: list[UpstreamModel] = default_of(GatewayConfig, "upstreams")
    recording: RecordingModel = Field(default_factory=RecordingModel)
    secrets: SecretsModel = Field(default_factory=SecretsModel)
    host_sign_in: HostSignInModel = Field(default_factory=HostSignInModel)
    logging: LoggingModel = Field(default_factory=LoggingModel)
    metrics: MetricsModel = Field(default_factory=MetricsModel)
    telemetry: TelemetryModel = Field(default_factory=TelemetryModel)


# Which model a mapping at a given key path (list indexes dropped) is validated by.
MODEL_AT: dict[tuple[str, ...], type[Model]] = {
    (): GatewayModel,
    ("listen",): ListenModel,
    ("auth",): AuthModel,
    ("security",): SecurityModel,
    ("sessions",): SessionsModel,
    ("upstreams",): UpstreamModel,
    ("upstreams", "tools"): ToolFilterModel,
    ("upstreams", "timeouts"): TimeoutsModel,
    ("upstreams", "auth"): UpstreamAuthModel,
    ("upstreams", "auth", "idp"): EnterpriseIdpModel,
    ("secrets",): SecretsModel,
    ("recording",): RecordingModel,
    ("recording", "redact"): RedactModel,
    ("recording", "retention"): RetentionModel,
    ("host_sign_in",): HostSignInModel,
    ("host_sign_in", "clients"): SignInClientModel,
    ("host_sign_in", "oidc"): OidcProviderModel,
    ("logging",): LoggingModel,
    ("metrics",): MetricsModel,
    ("telemetry",): TelemetryModel,
}

# The top-level keys that hold mappings of their own; an empty one (`upstreams:` with nothing
# under it) reads as null, which the loader takes as "defaults".
SECTIONS = frozenset(path[0] for path in MODEL_AT if len(path) == 1)
