"""The validated file -> the frozen values, and the rules that span keys (which keys a transport
or an auth kind allows, names that must be unique, key-less mode only on loopback).

What the file left out is left to the values' own defaults; only the defaults that depend on
other keys or on the file's folder are worked out here.
"""

import base64
import binascii
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config._checks import signing_key
from gateway.config.policy import ToolFilter, is_loopback_host, local_url, redirect_uri_problem
from gateway.config.schema import (
    GatewayModel,
    HostSignInModel,
    Loc,
    OidcProviderModel,
    RecordingModel,
    SecretsModel,
    UpstreamModel,
)
from gateway.config.values import (
    DEFAULT_SESSION_MODE,
    AuthConfig,
    EnterpriseIdp,
    GatewayConfig,
    HostSignInConfig,
    ListenConfig,
    LoggingConfig,
    MetricsConfig,
    OidcProviderConfig,
    PostgresConfig,
    RecordingConfig,
    RetentionConfig,
    SecretsConfig,
    SecurityConfig,
    SessionsConfig,
    SignInClientConfig,
    TelemetryConfig,
    Timeouts,
    UpstreamAuth,
    UpstreamConfig,
)

__all__ = ["to_values"]

Problems = list[tuple[Loc, str]]

_STDIO_ONLY = ("command", "env", "cwd")
_HTTP_ONLY = ("url", "headers")

_AUTH_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "headers": ("headers",),
    "oauth": (
        "identity",
        "scopes",
        "client_id",
        "client_secret",
        "client_metadata_url",
        "allow_private_addresses",
    ),
    "user_headers": ("identity", "headers"),
    "client_credentials": (
        "scopes",
        "client_id",
        "client_secret",
        "allow_private_addresses",
        "token_endpoint",
        "token_endpoint_auth_method",
        "private_key_file",
        "signing_alg",
    ),
    "enterprise_managed": (
        "scopes",
        "client_id",
        "client_secret",
        "allow_private_addresses",
        "token_endpoint",
        "token_endpoint_auth_method",
        "private_key_file",
        "signing_alg",
        "idp",
    ),
}
_ANY_AUTH_KEY = tuple(dict.fromkeys(key for keys in _AUTH_KEYS.values() for key in keys))
_NO_AUTH = UpstreamAuth()  # what an auth key the file leaves out stands for


def to_values(model: GatewayModel, absolute: Path, problems: Problems) -> GatewayConfig:
    """The values `model` (read from the file at `absolute`) describes; what is wrong across keys
    goes to `problems`, and the values are then not to be used."""
    base = absolute.parent
    # Key-less mode is for one person on one machine; never expose it beyond loopback.
    if not model.auth.required and not is_loopback_host(model.listen.host):
        problems.append(
            (
                ("auth", "required"),
                f"false is only allowed when listen.host is a loopback address, got {model.listen.host!r}",
            )
        )
    first_at: dict[str, int] = {}
    upstreams = []
    for i, up in enumerate(model.upstreams):
        if up.name in first_at:
            why = f"duplicate upstream name {up.name!r} (first at upstreams[{first_at[up.name]}])"
            problems.append((("upstreams", i, "name"), why))
        first_at.setdefault(up.name, i)
        upstreams.append(_upstream(up, ("upstreams", i), base, problems))
    _check_uri_prefixes(model, problems)
    database, postgres = _database(model, base, problems)
    security = model.security
    public_url = (model.public_url or local_url(model.listen.host, model.listen.port)).rstrip("/")
    return GatewayConfig(
        path=absolute,
        listen=ListenConfig(host=model.listen.host, port=model.listen.port),
        database=database,
        postgres=postgres,
        auth=AuthConfig(
            required=model.auth.required, max_failures_per_minute=model.auth.max_failures_per_minute
        ),
        security=SecurityConfig(
            allowed_hosts=tuple(security.allowed_hosts),
            allowed_origins=tuple(security.allowed_origins),
            max_body_bytes=security.max_body_bytes,
            header_timeout_s=security.header_timeout_s,
            body_timeout_s=security.body_timeout_s,
            max_headers=security.max_headers,
            max_header_bytes=security.max_header_bytes,
            max_url_bytes=security.max_url_bytes,
            write_timeout_s=security.write_timeout_s,
            max_connections=security.max_connections,
            max_upstream_response_bytes=security.max_upstream_response_bytes,
        ),
        sessions=SessionsConfig(**model.sessions.model_dump()),
        upstreams=tuple(upstreams),
        recording=_recording(model.recording),
        public_url=public_url,
        logging=LoggingConfig(**model.logging.model_dump()),
        metrics=MetricsConfig(**model.metrics.model_dump()),
        telemetry=TelemetryConfig(**model.telemetry.model_dump()),
        secrets=_secrets(model.secrets, base, database, problems, postgres is not None),
        host_sign_in=_host_sign_in(model, public_url, problems),
        public_url_configured=model.public_url is not None,
    )


def _upstream(up: UpstreamModel, here: Loc, base: Path, problems: Problems) -> UpstreamConfig:
    stdio = up.transport == "stdio"
    for key in _HTTP_ONLY if stdio else _STDIO_ONLY:
        if getattr(up, key) is not None:
            only = "http and sse" if stdio else "stdio"
            problems.append(((*here, key), f"not allowed for transport {up.transport!r} ({only} only)"))
    if stdio and not up.command:
        why = "must not be empty" if up.command is not None else "required key is missing"
        problems.append(((*here, "command"), f"{why} for transport 'stdio'"))
    elif stdio and up.command and not up.command[0]:
        problems.append(((*here, "command", 0), "the program name must not be empty"))
    if not stdio and up.url is None:
        problems.append(((*here, "url"), f"required key is missing for transport {up.transport!r}"))
    # The transport decides which of command/env/cwd and url/headers exist; an absent one is empty.
    return UpstreamConfig(
        name=up.name,
        transport=up.transport,
        command=tuple(up.command or ()),
        env=dict(up.env or {}),
        cwd=None if up.cwd is None else str(base / Path(up.cwd).expanduser()),
        url=up.url,
        headers=dict(up.headers or {}),
        prefix=f"{up.name}__" if up.prefix is None else up.prefix,
        uri_prefix=up.uri_prefix,
        tools=ToolFilter(allow=tuple(up.tools.allow), deny=tuple(up.tools.deny)),
        timeouts=Timeouts(connect_s=up.timeouts.connect_s, call_s=up.timeouts.call_s),
        idle_s=up.idle_s,
        required=up.required,
        sessions=DEFAULT_SESSION_MODE[up.transport] if up.sessions is None else up.sessions,
        max_sessions=up.max_sessions,
        max_children=up.max_children,
        list_ttl_s=up.list_ttl_s,
        max_connections=up.max_connections,
        max_listen_streams=up.max_listen_streams,
        auth=_upstream_auth(up, here, base, problems),
    )


def _check_uri_prefixes(model: GatewayModel, problems: Problems) -> None:
    """A URI a host sends back must lead to one upstream: no uri_prefix may begin another."""
    seen: list[tuple[int, str]] = []
    for i, up in enumerate(model.upstreams):
        if not up.uri_prefix:
            continue
        for j, other in seen:
            if up.uri_prefix.startswith(other) or other.startswith(up.uri_prefix):
                why = f"{up.uri_prefix!r} and upstreams[{j}].uri_prefix {other!r}: one begins the other"
                problems.append((("upstreams", i, "uri_prefix"), why))
        seen.append((i, up.uri_prefix))


def _upstream_auth(up: UpstreamModel, here: Loc, base: Path, problems: Problems) -> UpstreamAuth:
    model = up.auth
    at: Loc = (*here, "auth")
    for key in _ANY_AUTH_KEY:
        if getattr(model, key) is not None and key not in _AUTH_KEYS[model.kind]:
            problems.append(((*at, key), f"not allowed for auth kind {model.kind!r}"))
    if model.kind in ("oauth", "user_headers") and up.transport != "http":
        problems.append(((*at, "kind"), f"{model.kind!r} needs an http (Streamable HTTP) upstream"))
    if model.kind in ("oauth", "user_headers") and up.sessions == "shared":
        # A shared session carries no one caller's credential.
        problems.append(((*here, "sessions"), f"must be per_host for auth kind {model.kind!r}"))
    elif model.kind == "headers" and up.transport == "stdio":
        problems.append(((*at, "kind"), "'headers' needs an http or sse upstream (stdio: use env)"))
    names: tuple[str, ...] = ()
    static: dict[str, str] = {}
    if model.kind == "user_headers":
        if not isinstance(model.headers, list) or not model.headers:
            problems.append(((*at, "headers"), "user_headers needs a list of header names, like [X-Api-Key]"))
        else:
            # Header names are case-insensitive; the first spelling is the one the form shows.
            first: dict[str, str] = {}
            for name in model.headers:
                first.setdefault(name.lower(), name)
            names = tuple(first.values())
    if model.kind == "headers":
        if not isinstance(model.headers, dict) or not model.headers:
            problems.append(((*at, "headers"), "headers needs a mapping of header names to values"))
        else:
            static = dict(model.headers)
            for name in static:
                if name.lower() in {h.lower() for h in (up.headers or {})}:
                    problems.append(((*at, "headers", name), "also set in the upstream's own headers"))
    if model.client_secret is not None and model.client_id is None:
        problems.append(((*at, "client_secret"), "needs client_id"))
    own = _own_token_auth(up, at, base, problems) if model.kind in _OWN_TOKEN_KINDS else {}
    if model.client_metadata_url is not None and not model.client_metadata_url.startswith("https://"):
        problems.append(((*at, "client_metadata_url"), "must be an https:// URL"))
    return UpstreamAuth(
        kind=model.kind,
        identity=model.identity or _NO_AUTH.identity,
        scopes=_NO_AUTH.scopes if model.scopes is None else tuple(model.scopes),
        client_id=model.client_id,
        client_secret=model.client_secret,
        client_metadata_url=model.client_metadata_url,
        allow_private_addresses=(
            _NO_AUTH.allow_private_addresses
            if model.allow_private_addresses is None
            else model.allow_private_addresses
        ),
        header_names=names,
        static_headers=static,
        **own,
    )


_OWN_TOKEN_KINDS = ("client_credentials", "enterprise_managed")


def _own_token_auth(up: UpstreamModel, at: Loc, base: Path, problems: Problems) -> dict[str, Any]:
    """The keys of a token the gateway holds itself: how it authenticates at the token endpoint
    (a key file means private_key_jwt unless the file says otherwise), and the IdP."""
    model = up.auth
    if up.transport != "http":
        problems.append(((*at, "kind"), f"{model.kind!r} needs an http (Streamable HTTP) upstream"))
    if model.client_id is None:
        problems.append(((*at, "client_id"), f"{model.kind} needs client_id"))
    method = model.token_endpoint_auth_method or (
        "private_key_jwt" if model.private_key_file is not None else "client_secret_basic"
    )
    key_file = None if model.private_key_file is None else base / Path(model.private_key_file).expanduser()
    key = None
    if method == "private_key_jwt":
        if key_file is None:
            problems.append(((*at, "private_key_file"), "private_key_jwt needs a PEM private key file"))
        else:
            key = _private_key(key_file, (*at, "private_key_file"), problems)
        if model.client_secret is not None:
            problems.append(((*at, "client_secret"), "not used with private_key_jwt"))
    else:
        if model.client_secret is None:
            problems.append(((*at, "client_secret"), f"{method} needs client_secret (give it as ${{ENV}})"))
        for key_name in ("private_key_file", "signing_alg"):
            if getattr(model, key_name) is not None:
                problems.append(((*at, key_name), f"used only with private_key_jwt, not {method}"))
    idp = None
    if model.kind == "enterprise_managed":
        if model.idp is None:
            needs = "enterprise_managed needs idp: {token_endpoint, client_id, assertion_file}"
            problems.append(((*at, "idp"), needs))
        else:
            if model.token_endpoint is not None and model.idp.audience is None:
                # The ID-JAG names its audience; without discovery nothing else tells the issuer.
                why = "needs idp.audience (the authorization server's issuer) when token_endpoint is given"
                problems.append(((*at, "idp", "audience"), why))
            idp = EnterpriseIdp(
                token_endpoint=model.idp.token_endpoint,
                client_id=model.idp.client_id,
                client_secret=model.idp.client_secret,
                assertion_file=base / Path(model.idp.assertion_file).expanduser(),
                audience=model.idp.audience,
            )
    return {
        "token_endpoint": model.token_endpoint,
        "token_endpoint_auth_method": method,
        "private_key_file": key_file,
        "private_key": key,
        "signing_alg": model.signing_alg,
        "idp": idp,
    }


def _private_key(path: Path, at: Loc, problems: Problems) -> str | None:
    """The PEM text of a private key file, if it holds one joserfc can sign with."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append((at, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"))
        return None
    if signing_key(text) is None:
        problems.append((at, f"{path} holds no PEM private key (RSA, EC P-256/384/521 or Ed25519)"))
        return None
    return text


_POSTGRES_SCHEMES = ("postgresql", "postgres")
_SQLITE_PREFIX = "sqlite:///"  # then a path: sqlite:///relative.db, sqlite:////absolute.db


def _database(model: GatewayModel, base: Path, problems: Problems) -> tuple[Path, PostgresConfig | None]:
    """`database:` as a SQLite file (a path or sqlite:///path), or a PostgreSQL server's URL."""
    text = model.database
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme in _POSTGRES_SCHEMES:
        parts = urlsplit(text)
        if not parts.hostname and "host=" not in parts.query:
            problems.append(
                (("database",), "a PostgreSQL URL names its server: postgresql://user@host:port/db")
            )
        if not parts.path.strip("/"):
            problems.append(
                (("database",), "a PostgreSQL URL names its database: postgresql://user@host:port/db")
            )
        shown = text
        if parts.password is not None:
            shown = text.replace(f":{parts.password}@", ":***@", 1)
        postgres = PostgresConfig(url=text, shown=shown, pool_size=model.database_pool_size)
        return base / "mcpgw.db", postgres
    if text.startswith(_SQLITE_PREFIX):
        text = text[len(_SQLITE_PREFIX) :]
    elif scheme:
        why = f"unknown database scheme {scheme!r}: give a path, sqlite:///path or postgresql://user@host:port/db"
        problems.append((("database",), why))
    return base / Path(text).expanduser(), None


def _secrets(
    model: SecretsModel, base: Path, database: Path, problems: Problems, on_postgres: bool = False
) -> SecretsConfig:
    def decode(text: str, loc: Loc) -> bytes:
        try:
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            problems.append((loc, "must be 32 random bytes in base64url (make one: mcpgw secrets new-key)"))
        return key

    key = decode(model.key, ("secrets", "key")) if model.key else None
    previous = tuple(decode(k, ("secrets", "previous_keys", i)) for i, k in enumerate(model.previous_keys))
    if previous and key is None:
        problems.append((("secrets", "previous_keys"), "needs secrets.key (previous keys only open)"))
    if on_postgres and not model.key:
        # A file beside the database does not exist for a server, and every gateway process on
        # it must seal with the same key: it comes from the environment.
        why = (
            "is required with a PostgreSQL database: make one with `mcpgw secrets new-key` and give it "
            "from the environment (key: ${MCPGW_SECRETS_KEY})"
        )
        problems.append((("secrets", "key"), why))
    if on_postgres and model.key_file:
        problems.append((("secrets", "key_file"), "not used with a PostgreSQL database (set secrets.key)"))
    key_file = base / Path(model.key_file).expanduser() if model.key_file else database.with_suffix(".keys")
    return SecretsConfig(key_file=key_file, key=key, previous_keys=previous)


def _host_sign_in(model: GatewayModel, public_url: str, problems: Problems) -> HostSignInConfig:
    sign_in: HostSignInModel = model.host_sign_in
    at: Loc = ("host_sign_in",)
    oidc = tuple(_oidc_provider(model, (*at, "oidc", i), problems) for i, model in enumerate(sign_in.oidc))
    first_named: dict[str, int] = {}
    for i, provider in enumerate(oidc):
        if provider.name in first_named:
            why = (
                f"duplicate name {provider.name!r} (first at host_sign_in.oidc[{first_named[provider.name]}])"
            )
            problems.append(((*at, "oidc", i, "name"), why))
        first_named.setdefault(provider.name, i)
    if sign_in.enabled:
        if not model.auth.required:
            why = "needs auth.required: true (in key-less mode nobody has to sign in)"
            problems.append(((*at, "enabled"), why))
        if not sign_in.api_keys and not oidc:
            why = "must be true while no OIDC provider is configured, or nobody could sign in"
            problems.append(((*at, "api_keys"), why))
        # The issuer, the resource and every URL a host is sent to are built on public_url; RFC
        # 8414 puts the metadata of an issuer with a path at the host's root, which a gateway
        # served under a path does not own.
        parts = urlsplit(public_url)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            why = "host sign-in needs public_url to be an origin, like https://mcp.example.com (no path)"
            problems.append((("public_url",), why))
        elif parts.scheme != "https" and not is_loopback_host(parts.hostname or ""):
            why = (
                f"host sign-in needs an https public_url (plain http only on loopback), got {public_url!r}; "
                "set public_url to the address hosts reach, behind a TLS-terminating proxy"
            )
            problems.append((("public_url",), why))
    clients = []
    first_at: dict[str, int] = {}
    for i, client in enumerate(sign_in.clients):
        here: Loc = (*at, "clients", i)
        if client.client_id in first_at:
            first = first_at[client.client_id]
            why = f"duplicate client_id {client.client_id!r} (first at host_sign_in.clients[{first}])"
            problems.append(((*here, "client_id"), why))
        first_at.setdefault(client.client_id, i)
        if client.client_id.lower().startswith(("https://", "http://")):
            why = "a URL client_id names a client metadata document, which the gateway fetches itself"
            problems.append(((*here, "client_id"), why))
        for j, uri in enumerate(client.redirect_uris):
            if (why_not := redirect_uri_problem(uri)) is not None:
                problems.append(((*here, "redirect_uris", j), why_not))
        clients.append(
            SignInClientConfig(
                client_id=client.client_id,
                redirect_uris=tuple(client.redirect_uris),
                client_name=client.client_name,
                client_secret=client.client_secret,
            )
        )
    return HostSignInConfig(
        enabled=sign_in.enabled,
        api_keys=sign_in.api_keys,
        oidc=oidc,
        access_token_ttl_s=sign_in.access_token_ttl_s,
        refresh_token_ttl_s=sign_in.refresh_token_ttl_s,
        code_ttl_s=sign_in.code_ttl_s,
        consent_ttl_s=sign_in.consent_ttl_s,
        registrations_per_hour=sign_in.registrations_per_hour,
        pending_per_address=sign_in.pending_per_address,
        document_fetches_per_hour=sign_in.document_fetches_per_hour,
        document_fetches_per_hour_total=sign_in.document_fetches_per_hour_total,
        unused_client_ttl_s=sign_in.unused_client_ttl_s,
        clients=tuple(clients),
    )


def _oidc_provider(model: OidcProviderModel, here: Loc, problems: Problems) -> OidcProviderConfig:
    issuer = urlsplit(model.issuer)
    if issuer.scheme != "https" and not is_loopback_host(issuer.hostname or ""):
        problems.append(
            ((*here, "issuer"), f"must be https (plain http only on loopback), got {model.issuer!r}")
        )
    if issuer.query or issuer.fragment:
        problems.append(
            ((*here, "issuer"), "an issuer has no query or fragment (OpenID Connect Discovery 1.0)")
        )
    if "openid" not in model.scopes:
        problems.append(((*here, "scopes"), "must include openid, or the provider sends no id_token"))
    if (model.organisation_claim is None) != (not model.organisations):
        key, why = (
            ("organisations", "needs organisation_claim: the claim whose values it maps")
            if model.organisation_claim is None
            else ("organisation_claim", "needs organisations: which of its values is which organisation")
        )
        problems.append(((*here, key), why))
    if model.organisation_claim is None and not model.domains:
        why = "say how a person's organisation is found: organisation_claim with organisations, or domains"
        problems.append((here, why))
    for domain in model.domains:
        if domain != domain.lower() or "@" in domain or domain.startswith(".") or "." not in domain:
            problems.append(((*here, "domains", domain), "a lower-case domain such as example.com"))
    if (model.admin_claim is None) != (not model.admin_values):
        key = "admin_values" if model.admin_claim is None else "admin_claim"
        problems.append(((*here, key), "admin_claim and admin_values go together"))
    return OidcProviderConfig(
        name=model.name,
        issuer=model.issuer.rstrip("/"),
        client_id=model.client_id,
        client_secret=model.client_secret,
        display_name=model.display_name or "",
        scopes=tuple(model.scopes),
        user_claim=model.user_claim,
        organisation_claim=model.organisation_claim,
        organisations=dict(model.organisations),
        domains=dict(model.domains),
        admin_claim=model.admin_claim,
        admin_values=tuple(model.admin_values),
        allow_private_addresses=model.allow_private_addresses,
    )


def _recording(model: RecordingModel) -> RecordingConfig:
    retention = model.retention
    return RecordingConfig(
        enabled=model.enabled,
        max_payload_bytes=model.max_payload_bytes,
        redact_keys=tuple(model.redact.keys),
        redact_patterns=tuple(model.redact.patterns),
        retention=RetentionConfig(
            max_age_days=retention.max_age_days or None,  # 0 turns the limit off
            max_invocations=retention.max_invocations or None,
            interval_s=retention.interval_s,
        ),
    )
