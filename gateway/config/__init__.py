"""Gateway configuration: one YAML file in, frozen values out.

- `values`: the frozen dataclasses the rest of the gateway reads, and every default a key has.
- `schema`: which keys exist, their types and limits (pydantic, strict, unknown keys rejected).
- `loader`: reading the YAML, `${NAME}` substitution, `load_config`, and `ConfigError`, whose
  problems name the key path and the line; `_convert` turns the validated file into values.
- `policy`: the rules the running gateway applies from them (`ToolFilter`, loopback hosts).

Defaults live in the values, and the schema reads them (`schema.default_of`), rather than the
other way round: the values are what the gateway and its tests construct directly
(`SecurityConfig()`, `ToolFilter()`), so a default written there holds for them as it does for
a file, while pydantic stays at the edge where the file is read (docs/design.md, "Types,
modules and config"). A default that depends on other keys or on the file's folder is worked
out once, by the loader.
`config.example.yaml` at the repository root documents every key.
"""

from gateway.config._checks import SigningKey, signing_key
from gateway.config.loader import ConfigError, ConfigProblem, config_path_from, load_config
from gateway.config.policy import ToolFilter, is_loopback_host, local_url, redirect_uri_problem
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
    RecordingConfig,
    RetentionConfig,
    SecretsConfig,
    SecurityConfig,
    SessionMode,
    SessionsConfig,
    SignInClientConfig,
    SigningAlg,
    Timeouts,
    TokenEndpointAuthMethod,
    Transport,
    UpstreamAuth,
    UpstreamConfig,
)

__all__ = [
    "AuthConfig",
    "AuthKind",
    "ConfigError",
    "ConfigProblem",
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
    "SigningKey",
    "Timeouts",
    "TokenEndpointAuthMethod",
    "ToolFilter",
    "Transport",
    "UpstreamAuth",
    "UpstreamConfig",
    "config_path_from",
    "is_loopback_host",
    "load_config",
    "local_url",
    "redirect_uri_problem",
    "signing_key",
]
