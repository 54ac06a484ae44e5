"""Tests for gateway.config: loading, validation messages, substitution and the example file."""

import re
import textwrap
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from gateway.config import (
    ConfigError,
    GatewayConfig,
    LoggingConfig,
    MetricsConfig,
    SecurityConfig,
    Timeouts,
    ToolFilter,
    config_path_from,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "config.example.yaml"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


_IDP = "name: okta, issuer: 'https://idp.example.com', client_id: c, client_secret: s"


def _oidc(entries: str) -> str:
    """`host_sign_in.oidc` holding `entries`, where @ stands for a provider's required keys (@OKTA:
    with a name in capitals, @HTTP: with a plain http issuer)."""
    idp = entries.replace("@OKTA", _IDP.replace("okta", "Okta")).replace(
        "@HTTP", _IDP.replace("https", "http")
    )
    return f"host_sign_in: {{oidc: [{idp.replace('@', _IDP)}]}}\n"


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def uncomment_examples(text: str) -> str:
    """Turn the example's commented-out keys into live YAML, keeping its explanations as comments."""
    out = []
    for line in text.splitlines():
        match = re.match(r"^(\s*)# (.*)$", line)
        rest = match.group(2).lstrip() if match else ""
        if match and (rest.startswith("#") or re.match(r"(- )?[A-Za-z_]+:(\s|$)", rest)):
            line = match.group(1) + match.group(2)
        out.append(line)
    return "\n".join(out) + "\n"


# --- the example file ---------------------------------------------------------------------------


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert isinstance(config, GatewayConfig)
    assert config.path == EXAMPLE
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)
    assert config.database == EXAMPLE.parent / "mcpgw.db"
    assert config.auth.required is False
    [demo] = config.upstreams
    assert demo.name == "demo"
    assert demo.transport == "stdio"
    assert demo.command == ("python", "-m", "gateway.demo")
    assert demo.prefix == "demo__"


def test_example_config_commented_out_keys_are_valid_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCS_TOKEN", "s3cret")
    monkeypatch.setenv("INTERNAL_TOKEN", "t0k")
    monkeypatch.setenv("MCPGW_SECRET_KEY", "A" * 43)
    monkeypatch.setenv("EDITOR_CLIENT_SECRET", "ed1t0r")
    monkeypatch.setenv("OKTA_CLIENT_SECRET", "0kta-s3cret")
    monkeypatch.setenv("MCPGW_METRICS_TOKEN", "a-metrics-token-of-some-length")
    monkeypatch.setenv("HONEYCOMB_API_KEY", "a-collector-key")
    monkeypatch.setenv("REPORTS_CLIENT_SECRET", "r3ports")
    monkeypatch.setenv("CRM_CLIENT_SECRET", "crm-s3cret")
    monkeypatch.setenv("IDP_CLIENT_SECRET", "1dp")
    path = tmp_path / "config.yaml"
    path.write_text(uncomment_examples(EXAMPLE.read_text(encoding="utf-8")), encoding="utf-8")
    config = load_config(path)
    names = ["demo", "docs", "github", "search", "internal", "reports", "crm", "legacy"]
    assert [u.name for u in config.upstreams] == names
    demo, docs, github, search, internal, reports, crm, legacy = config.upstreams
    assert (reports.auth.kind, reports.auth.token_endpoint_auth_method, reports.auth.client_secret) == (
        "client_credentials",
        "client_secret_basic",
        "r3ports",
    )
    assert reports.auth.own_token and not reports.auth.per_identity and reports.auth.token_endpoint is None
    assert crm.auth.kind == "enterprise_managed" and crm.auth.idp is not None
    assert crm.auth.idp.assertion_file == tmp_path / "idp" / "id-token.jwt"
    assert "crm-s3cret" not in repr(config) and "1dp" not in repr(crm.auth.idp)
    assert (github.auth.kind, github.auth.identity, github.auth.scopes) == ("oauth", "user", ("read",))
    assert github.auth.allow_private_addresses is False
    assert config.auth.max_failures_per_minute == 20
    assert (search.auth.kind, search.auth.identity, search.auth.header_names) == (
        "user_headers",
        "vk",
        ("X-Api-Key",),
    )
    assert internal.auth.static_headers == {"Authorization": "Bearer t0k"}
    assert config.telemetry.endpoint == "http://127.0.0.1:4318"
    assert config.telemetry.headers == {"x-honeycomb-team": "a-collector-key"}
    assert config.telemetry.capture_content is False
    assert config.public_url == "https://mcp.example.com"
    assert config.secrets.key == bytes(32) and config.secrets.key_file == tmp_path / "mcpgw.keys"
    assert demo.env == {"DEMO_LOG_LEVEL": "info"}
    assert demo.cwd == str(tmp_path)
    assert docs.headers == {"Authorization": "Bearer s3cret"}
    assert docs.prefix == ""
    assert docs.url == "http://127.0.0.1:9000/mcp"
    assert legacy.transport == "sse"
    assert not legacy.tools.permits("delete_everything")
    assert config.security == SecurityConfig()  # the example shows the defaults
    assert config.sessions.stateless_gap_s == 1800.0
    assert config.recording.redact_keys == ("ssn", "iban")
    assert config.recording.retention.max_invocations == 1_000_000
    sign_in = config.host_sign_in
    assert not sign_in.enabled and sign_in.api_keys
    [okta] = sign_in.oidc
    assert (okta.name, okta.label, okta.issuer, okta.client_secret) == (
        "okta",
        "Acme Okta",
        "https://acme.okta.com",
        "0kta-s3cret",
    )
    assert (okta.user_claim, okta.organisation_claim, okta.organisations) == (
        "email",
        "groups",
        {"acme-engineering": "acme"},
    )
    assert okta.domains == {"acme.com": "acme", "acme.co.uk": "acme"}
    assert (okta.admin_claim, okta.admin_values) == ("groups", ("mcpgw-admins",))
    assert "0kta-s3cret" not in repr(config)
    assert (sign_in.access_token_ttl_s, sign_in.code_ttl_s) == (3600, 60)
    [editor] = sign_in.clients
    assert (editor.client_id, editor.client_secret, editor.redirect_uris) == (
        "team-editor",
        "ed1t0r",
        ("http://127.0.0.1/callback",),
    )
    assert config.logging == LoggingConfig()  # the example shows the defaults
    assert config.metrics == MetricsConfig(token="a-metrics-token-of-some-length")


# --- defaults and resolution ----------------------------------------------------------------------


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)
    assert config.auth.required is True
    assert config.security.allowed_hosts == ()
    assert config.security.allowed_origins == ()
    assert config.sessions.idle_s == 300.0
    assert config.upstreams == ()
    assert (config.logging.level, config.logging.format, config.logging.access_log) == ("info", "text", False)
    assert (config.metrics.enabled, config.metrics.token) == (True, None)


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "listen:\nupstreams:\n"))
    assert config.listen.port == 8080
    assert config.upstreams == ()


def test_relative_database_resolves_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc") / write(config_dir, "database: data/gw.db\n").name)
    assert config.path == config_dir / "config.yaml"
    assert config.database == config_dir / "data" / "gw.db"


def test_absolute_database_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "x.db"
    config = load_config(write(tmp_path, f"database: {db}\n"))
    assert config.database == db


def test_a_sqlite_url_is_a_file_and_a_postgresql_url_a_server_whose_password_is_never_shown(
    tmp_path: Path,
) -> None:
    assert (
        load_config(write(tmp_path, "database: sqlite:///data/gw.db\n")).database == tmp_path / "data/gw.db"
    )
    assert load_config(write(tmp_path, "database: sqlite:////abs/gw.db\n")).database == Path("/abs/gw.db")
    key = "A" * 43
    config = load_config(
        write(
            tmp_path,
            f"database: postgresql://gw:hunter2@db:5432/mcpgw?sslmode=require\nsecrets: {{key: {key}}}\n",
        )
    )
    assert config.postgres is not None and config.postgres.pool_size == 10
    assert config.store_at == "postgresql://gw:hunter2@db:5432/mcpgw?sslmode=require"
    assert config.database_shown == "postgresql://gw:***@db:5432/mcpgw?sslmode=require"
    assert "hunter2" not in repr(config)


def test_postgresql_needs_the_sealing_key_from_the_config_and_says_how_to_make_one(tmp_path: Path) -> None:
    error = load_error(tmp_path, "database: postgresql://gw@db/mcpgw\n")
    assert "secrets.key" in str(error) and "mcpgw secrets new-key" in str(error)
    assert "unknown database scheme 'mysql'" in str(load_error(tmp_path, "database: mysql://db/x\n"))
    assert "names its database" in str(
        load_error(tmp_path, f"database: postgresql://gw@db\nsecrets: {{key: {'A' * 43}}}\n")
    )


def test_upstream_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            upstreams:
              - name: web
                transport: http
                url: https://example.com/mcp
            """,
        )
    )
    [web] = config.upstreams
    assert web.tools == ToolFilter()
    assert web.timeouts == Timeouts(connect_s=10.0, call_s=60.0)
    assert web.idle_s == 300.0
    assert web.headers == {}
    assert web.command == ()
    assert web.cwd is None


def test_prefix_defaults_to_name_and_can_be_empty(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            upstreams:
              - {name: a, transport: stdio, command: [a]}
              - {name: b, transport: stdio, command: [b], prefix: ""}
              - {name: c, transport: stdio, command: [c], prefix: "x_"}
            """,
        )
    )
    assert [u.prefix for u in config.upstreams] == ["a__", "", "x_"]


def test_same_prefix_on_two_upstreams_is_allowed(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            upstreams:
              - {name: a, transport: stdio, command: [a], prefix: ""}
              - {name: b, transport: stdio, command: [b], prefix: ""}
            """,
        )
    )
    assert len(config.upstreams) == 2


def test_a_uri_prefix_is_empty_unless_set_and_must_leave_a_uri_scheme(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            upstreams:
              - {name: a, transport: stdio, command: [a], uri_prefix: "a+"}
              - {name: b, transport: stdio, command: [b]}
            """,
        )
    )
    assert [u.uri_prefix for u in config.upstreams] == ["a+", ""]
    error = load_error(
        tmp_path, "upstreams:\n  - {name: a, transport: stdio, command: [a], uri_prefix: 'A_'}\n"
    )
    assert error.problems[0].key == "upstreams[0].uri_prefix"
    assert "like 'a+'" in str(error)


def test_a_uri_prefix_that_begins_another_is_refused(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
upstreams:
  - {name: a, transport: stdio, command: [a], uri_prefix: "a+"}
  - {name: b, transport: stdio, command: [b], uri_prefix: "a+b+"}
""",
    )
    assert error.problems[0].key == "upstreams[1].uri_prefix"
    assert "one begins the other" in str(error)


def test_config_values_are_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    with pytest.raises(AttributeError):
        config.listen.port = 1  # type: ignore[misc]


# --- tool filter ----------------------------------------------------------------------------------


def test_tool_filter_deny_wins_over_allow() -> None:
    tools = ToolFilter(allow=("read_*", "delete_tmp"), deny=("delete_*",))
    assert tools.permits("read_file")
    assert not tools.permits("delete_tmp")
    assert not tools.permits("write_file")


def test_tool_filter_allows_everything_by_default_and_is_case_sensitive() -> None:
    assert ToolFilter().permits("anything")
    assert not ToolFilter(allow=("Read*",)).permits("read_file")


# --- environment placeholders ---------------------------------------------------------------------


def test_env_placeholder_is_substituted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCS_TOKEN", "t0k")
    monkeypatch.setenv("DOCS_HOST", "docs.internal")
    config = load_config(
        write(
            tmp_path,
            """
            upstreams:
              - name: docs
                transport: http
                url: https://${DOCS_HOST}/mcp
                headers: {Authorization: "Bearer ${DOCS_TOKEN}"}
            """,
        )
    )
    [docs] = config.upstreams
    assert docs.url == "https://docs.internal/mcp"
    assert docs.headers == {"Authorization": "Bearer t0k"}


def test_env_placeholder_default_applies_when_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCPGW_TEST_PORT", raising=False)
    monkeypatch.setenv("MCPGW_TEST_HOST", "localhost")
    config = load_config(
        write(tmp_path, "listen: {host: '${MCPGW_TEST_HOST:-127.0.0.1}', port: '${MCPGW_TEST_PORT:-9090}'}\n")
    )
    assert config.listen.host == "localhost"
    assert config.listen.port == 9090


def test_env_placeholder_can_fill_numbers_and_booleans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "8181")
    monkeypatch.setenv("AUTH", "true")
    monkeypatch.setenv("GAP", "2.5")
    config = load_config(
        write(
            tmp_path,
            """
            listen: {port: "${PORT}"}
            auth: {required: "${AUTH}"}
            sessions: {stateless_gap_s: "${GAP}"}
            """,
        )
    )
    assert config.listen.port == 8181
    assert config.auth.required is True
    assert config.sessions.stateless_gap_s == 2.5


def test_unset_env_placeholder_is_an_error_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCPGW_NOT_SET", raising=False)
    error = load_error(
        tmp_path,
        """\
        upstreams:
          - name: docs
            transport: http
            url: http://127.0.0.1:9000/mcp
            headers:
              Authorization: "Bearer ${MCPGW_NOT_SET}"
        """,
    )
    message = str(error)
    assert "MCPGW_NOT_SET" in message
    assert "upstreams[0].headers.Authorization" in message
    assert "config.yaml:6:" in message


def test_doubled_dollar_escapes_a_literal_placeholder(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "upstreams: [{name: a, transport: stdio, command: [echo, '$${HOME}']}]\n")
    )
    assert config.upstreams[0].command == ("echo", "${HOME}")


def test_malformed_placeholder_is_rejected(tmp_path: Path) -> None:
    error = load_error(tmp_path, "database: ${not-a-name}\n")
    assert "database" in str(error)
    assert "malformed placeholder" in str(error)


def test_placeholder_substitution_happens_after_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A value containing YAML syntax must stay a plain string, not restructure the document.
    monkeypatch.setenv("TRICKY", "x\nauth: {required: false}")
    config = load_config(write(tmp_path, "database: '${TRICKY}'\n"))
    assert config.auth.required is True
    assert config.database.name == "x\nauth: {required: false}"


# --- rejected configs: each message names file, key path, line and reason ----------------------


def test_unknown_key_is_rejected_with_its_line(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """\
        listen:
          host: 127.0.0.1
          prot: 8080
        """,
    )
    message = str(error)
    assert f"{tmp_path / 'config.yaml'}:3: listen.prot: unknown key 'prot'" in message
    assert "did you mean 'port'" in message
    assert "allowed keys: host, port" in message
    assert error.problems[0].line == 3
    assert error.problems[0].key == "listen.prot"


def test_unknown_nested_upstream_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """\
        upstreams:
          - name: a
            transport: stdio
            command: [a]
            timeouts:
              connect: 5
        """,
    )
    assert ":6: upstreams[0].timeouts.connect: unknown key 'connect'" in str(error)


def test_unknown_top_level_key_is_rejected(tmp_path: Path) -> None:
    error = load_error(tmp_path, "listen: {}\nupstream: []\n")
    assert ":2: upstream: unknown key 'upstream'" in str(error)
    assert "upstreams" in str(error)


def test_wrong_type_is_rejected_with_key_and_line(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """\
        upstreams:
          - name: a
            transport: stdio
            command: python -m thing
        """,
    )
    assert ":4: upstreams[0].command: Input should be a valid list, got a string" in str(error)


def test_bad_transport_is_rejected_with_key_and_line(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """\
        upstreams:
          - {name: a, transport: stdio, command: [a]}
          - name: b
            transport: websocket
        """,
    )
    assert ":4: upstreams[1].transport:" in str(error)
    assert "'websocket'" in str(error)


def test_numbers_are_not_silently_turned_into_strings(tmp_path: Path) -> None:
    error = load_error(tmp_path, "upstreams: [{name: a, transport: stdio, command: [a], env: {V: 1.10}}]\n")
    assert "upstreams[0].env.V: Input should be a valid string, got a number" in str(error)


def test_every_problem_is_reported(tmp_path: Path) -> None:
    error = load_error(tmp_path, "listen: {port: 70000, host: ''}\nsessions: {idle_s: 0}\n")
    assert [p.key for p in error.problems] == ["listen.host", "listen.port", "sessions.idle_s"]
    assert len(str(error).splitlines()) == 3


def test_a_short_metrics_token_and_an_unknown_log_format_are_rejected_without_echoing_the_token(
    tmp_path: Path,
) -> None:
    error = load_error(tmp_path, "metrics: {token: short-secret}\nlogging: {format: xml, level: loud}\n")
    assert [p.key for p in error.problems] == ["logging.level", "logging.format", "metrics.token"]
    assert "short-secret" not in str(error)


@pytest.mark.parametrize("port", ["-1", "65536", "eighty", "true"])
def test_bad_ports_are_rejected(tmp_path: Path, port: str) -> None:
    error = load_error(tmp_path, f"listen:\n  port: {port}\n")
    assert ":2: listen.port:" in str(error)


@pytest.mark.parametrize(
    "setting",
    [
        "header_timeout_s: 0",
        "body_timeout_s: -1",
        "max_headers: 0",
        "max_header_bytes: 0",
        "max_url_bytes: 1.5",
    ],
)
def test_request_limits_must_be_positive(tmp_path: Path, setting: str) -> None:
    error = load_error(tmp_path, f"security:\n  {setting}\n")
    assert f":2: security.{setting.split(':')[0]}:" in str(error)


def test_duplicate_upstream_names_are_rejected(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """\
        upstreams:
          - name: same
            transport: stdio
            command: [a]
          - name: same
            transport: http
            url: http://127.0.0.1:1/mcp
        """,
    )
    assert ":5: upstreams[1].name: duplicate upstream name 'same'" in str(error)


@pytest.mark.parametrize("name", ["Docs", "my_docs", "a b", ""])
def test_bad_upstream_name_is_rejected(tmp_path: Path, name: str) -> None:
    error = load_error(tmp_path, f"upstreams:\n  - name: '{name}'\n    transport: stdio\n    command: [a]\n")
    assert ":2: upstreams[0].name:" in str(error)
    assert "^[a-z0-9-]+$" in str(error)


def test_missing_required_key_points_at_its_mapping(tmp_path: Path) -> None:
    error = load_error(tmp_path, "upstreams:\n  - name: a\n    command: [a]\n")
    assert ":2: upstreams[0].transport: required key is missing" in str(error)


def test_stdio_needs_a_command(tmp_path: Path) -> None:
    error = load_error(tmp_path, "upstreams:\n  - name: a\n    transport: stdio\n")
    assert ":2: upstreams[0].command: required key is missing for transport 'stdio'" in str(error)
    error = load_error(tmp_path, "upstreams:\n  - name: a\n    transport: stdio\n    command: []\n")
    assert ":4: upstreams[0].command: must not be empty" in str(error)


def test_http_needs_a_url(tmp_path: Path) -> None:
    error = load_error(tmp_path, "upstreams:\n  - name: a\n    transport: http\n")
    assert ":2: upstreams[0].url: required key is missing for transport 'http'" in str(error)


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("{name: a, transport: stdio, command: [a], url: 'http://x/mcp'}", "url"),
        ("{name: a, transport: stdio, command: [a], headers: {X-A: b}}", "headers"),
        ("{name: a, transport: sse, url: 'http://x/sse', command: [a]}", "command"),
        ("{name: a, transport: http, url: 'http://x/mcp', env: {A: b}}", "env"),
        ("{name: a, transport: http, url: 'http://x/mcp', cwd: /tmp}", "cwd"),
    ],
)
def test_keys_of_the_other_transport_are_rejected(tmp_path: Path, entry: str, key: str) -> None:
    error = load_error(tmp_path, f"upstreams:\n  - {entry}\n")
    assert f"upstreams[0].{key}: not allowed for transport" in str(error)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/mcp", "example.com/mcp", "http:///mcp", "http://h:99999/"]
)
def test_bad_urls_are_rejected(tmp_path: Path, url: str) -> None:
    error = load_error(tmp_path, f"upstreams:\n  - name: a\n    transport: http\n    url: '{url}'\n")
    assert ":4: upstreams[0].url: must be an http:// or https:// URL" in str(error)


def test_header_values_cannot_inject_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVIL", "x\r\nX-Admin: yes")
    error = load_error(
        tmp_path, "upstreams: [{name: a, transport: http, url: 'http://x/mcp', headers: {A: '${EVIL}'}}]\n"
    )
    assert "upstreams[0].headers.A: an HTTP header value must not contain CR, LF or NUL" in str(error)


def test_framing_headers_cannot_be_configured(tmp_path: Path) -> None:
    upstream = "{name: a, transport: http, url: 'http://x/mcp', headers: {Content-Length: '0'}}"
    error = load_error(tmp_path, f"upstreams: [{upstream}]\n")
    assert "'Content-Length' is set by mcpgw itself and cannot be configured" in str(error)


def test_origin_with_a_path_is_rejected(tmp_path: Path) -> None:
    error = load_error(tmp_path, "security:\n  allowed_origins: ['https://app.example.com/']\n")
    assert "security.allowed_origins[0]: must be an origin" in str(error)


def test_keyless_mode_is_refused_off_loopback(tmp_path: Path) -> None:
    error = load_error(tmp_path, "listen: {host: 0.0.0.0}\nauth:\n  required: false\n")
    assert ":3: auth.required: false is only allowed when listen.host is a loopback address" in str(error)
    for host in ("localhost", "::1", "127.0.0.2"):
        assert load_config(write(tmp_path, f"listen: {{host: '{host}'}}\nauth: {{required: false}}\n")).auth


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: config file not found")):
        load_config(missing)


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, "listen:\n  host: [unclosed\n  port: 1\n")
    assert str(error).startswith(f"{tmp_path / 'config.yaml'}:")
    assert "invalid YAML" in str(error)
    assert error.problems[0].line is not None


def test_python_tags_are_not_constructed(tmp_path: Path) -> None:
    error = load_error(tmp_path, "database: !!python/object/apply:os.getcwd []\n")
    assert "invalid YAML" in str(error)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error = load_error(tmp_path, "- listen\n")
    assert "the top level must be a mapping" in str(error)


# --- choosing the file ----------------------------------------------------------------------------


def test_config_path_comes_from_argument_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPGW_CONFIG", "/etc/mcpgw/from-env.yaml")
    assert config_path_from("given.yaml") == Path("given.yaml")
    assert config_path_from(None) == Path("/etc/mcpgw/from-env.yaml")
    monkeypatch.delenv("MCPGW_CONFIG")
    assert config_path_from(None) == Path("config.yaml")


def test_recording_is_on_by_default_with_bounded_retention(tmp_path: Path) -> None:
    recording = load_config(write(tmp_path, "upstreams: []\n")).recording
    assert recording.enabled and recording.max_payload_bytes == 65536
    assert (recording.retention.max_age_days, recording.retention.max_invocations) == (30.0, 1_000_000)


def test_recording_settings_are_read_and_zero_turns_a_retention_limit_off(tmp_path: Path) -> None:
    text = """\
    recording:
      enabled: false
      max_payload_bytes: 1024
      redact: {keys: [ssn], patterns: ['(?i:acct-)[0-9]+']}
      retention: {max_age_days: 0, max_invocations: 500, interval_s: 60}
    """
    recording = load_config(write(tmp_path, text)).recording
    assert not recording.enabled and recording.max_payload_bytes == 1024
    assert (recording.redact_keys, recording.redact_patterns) == (("ssn",), ("(?i:acct-)[0-9]+",))
    assert (recording.retention.max_age_days, recording.retention.max_invocations) == (None, 500)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("'[unclosed'", "not a valid regular expression"),
        ("'(?i)acct'", "write flags scoped, like (?i:secret)"),
    ],
)
def test_a_bad_redaction_pattern_is_rejected_with_its_line(tmp_path: Path, pattern: str, reason: str) -> None:
    error = load_error(tmp_path, f"recording:\n  redact:\n    patterns:\n      - {pattern}\n")
    assert ":4: recording.redact.patterns[0]:" in str(error) and reason in str(error)


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("retention: {max_age_days: -1}", "recording.retention.max_age_days"),
        ("retention: {max_invocations: many}", "recording.retention.max_invocations"),
        ("max_payload_bytes: 0", "recording.max_payload_bytes"),
        ("redact: {names: [a]}", "recording.redact.names"),
    ],
)
def test_bad_recording_values_are_rejected(tmp_path: Path, entry: str, key: str) -> None:
    error = load_error(tmp_path, f"recording:\n  {entry}\n")
    assert f"{key}:" in str(error)


# --- upstream credentials -------------------------------------------------------------------------


def test_auth_defaults_to_none_and_public_url_to_the_listen_address(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "listen: {host: '::1', port: 9000}\nupstreams: [{name: a, transport: stdio, command: [x]}]\n",
        )
    )
    assert config.upstreams[0].auth.kind == "none" and not config.upstreams[0].auth.per_identity
    assert config.public_url == "http://[::1]:9000"
    assert config.secrets.key_file == tmp_path / "mcpgw.keys" and config.secrets.key is None


@pytest.mark.parametrize(
    ("auth", "where", "why"),
    [
        ("{kind: oauth}", "upstreams[0].auth.kind", "'oauth' needs an http (Streamable HTTP) upstream"),
        ("{kind: user_headers, headers: {A: b}}", "upstreams[0].auth.headers", "a list of header names"),
        ("{kind: user_headers}", "upstreams[0].auth.headers", "a list of header names"),
        ("{kind: headers, headers: [A]}", "upstreams[0].auth.headers", "a mapping of header names"),
        ("{kind: none, scopes: [a]}", "upstreams[0].auth.scopes", "not allowed for auth kind 'none'"),
        ("{kind: oauth, headers: [A]}", "upstreams[0].auth.headers", "not allowed for auth kind 'oauth'"),
        (
            "{kind: user_headers, headers: [A], allow_private_addresses: true}",
            "upstreams[0].auth.allow_private_addresses",
            "not allowed for auth kind 'user_headers'",
        ),
        ("{kind: oauth, client_secret: s}", "upstreams[0].auth.client_secret", "needs client_id"),
        ("{kind: oauth, scopes: ['a b']}", "upstreams[0].auth.scopes[0]", "one word of printable ASCII"),
        ("{kind: oauth, identity: team}", "upstreams[0].auth.identity", "'user', 'vk' or 'session'"),
        (
            "{kind: oauth, client_metadata_url: 'http://x/c.json'}",
            "upstreams[0].auth.client_metadata_url",
            "https",
        ),
        (
            "{kind: user_headers, headers: ['bad name']}",
            "upstreams[0].auth.headers",
            "not a valid HTTP header name",
        ),
    ],
)
def test_bad_upstream_auth_is_refused_with_its_key_and_reason(
    tmp_path: Path, auth: str, where: str, why: str
) -> None:
    transport = (
        "transport: stdio, command: [x]" if "'oauth' needs" in why else "transport: http, url: 'http://h/mcp'"
    )
    error = load_error(tmp_path, f"upstreams: [{{name: a, {transport}, auth: {auth}}}]\n")
    assert where in str(error) and why in str(error), str(error)


@pytest.mark.parametrize(
    ("auth", "where", "why"),
    [
        ("{kind: client_credentials, client_secret: s}", "upstreams[0].auth.client_id", "needs client_id"),
        (
            "{kind: client_credentials, client_id: c}",
            "upstreams[0].auth.client_secret",
            "needs client_secret",
        ),
        (
            "{kind: client_credentials, client_id: c, token_endpoint_auth_method: private_key_jwt}",
            "upstreams[0].auth.private_key_file",
            "needs a PEM private key file",
        ),
        (
            "{kind: client_credentials, client_id: c, private_key_file: missing.pem}",
            "upstreams[0].auth.private_key_file",
            "cannot read",
        ),
        (
            "{kind: client_credentials, client_id: c, private_key_file: not-a-key.pem}",
            "upstreams[0].auth.private_key_file",
            "holds no PEM private key",
        ),
        (
            "{kind: client_credentials, client_id: c, client_secret: s, signing_alg: ES256}",
            "upstreams[0].auth.signing_alg",
            "used only with private_key_jwt",
        ),
        (
            "{kind: client_credentials, client_id: c, client_secret: s, identity: vk}",
            "upstreams[0].auth.identity",
            "not allowed for auth kind 'client_credentials'",
        ),
        (
            "{kind: client_credentials, client_id: c, client_secret: s, idp: {token_endpoint: 'https://i/t', "
            "client_id: g, assertion_file: a}}",
            "upstreams[0].auth.idp",
            "not allowed for auth kind 'client_credentials'",
        ),
        ("{kind: enterprise_managed, client_id: c, client_secret: s}", "upstreams[0].auth.idp", "needs idp"),
        (
            "{kind: enterprise_managed, client_id: c, client_secret: s, token_endpoint: 'https://a/t', "
            "idp: {token_endpoint: 'https://i/t', client_id: g, assertion_file: a}}",
            "upstreams[0].auth.idp.audience",
            "the authorization server's issuer",
        ),
        (
            "{kind: enterprise_managed, client_id: c, client_secret: s, "
            "idp: {client_id: g, assertion_file: a}}",
            "upstreams[0].auth.idp.token_endpoint",
            "required key is missing",
        ),
    ],
)
def test_bad_own_token_auth_is_refused_with_its_key_and_reason(
    tmp_path: Path, auth: str, where: str, why: str
) -> None:
    (tmp_path / "not-a-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    error = load_error(
        tmp_path, f"upstreams: [{{name: a, transport: http, url: 'http://h/mcp', auth: {auth}}}]\n"
    )
    assert where in str(error) and why in str(error), str(error)


def test_an_own_token_needs_an_http_upstream_and_takes_a_key_file_beside_the_config(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        "upstreams: [{name: a, transport: stdio, command: [x], auth: {kind: client_credentials, "
        "client_id: c, client_secret: s}}]\n",
    )
    assert "upstreams[0].auth.kind" in str(error) and "needs an http" in str(error)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "gw.pem").write_bytes(ECKey.generate_key("P-384").as_pem(private=True))
    config = load_config(
        write(
            tmp_path,
            "upstreams: [{name: a, transport: http, url: 'http://h/mcp', sessions: shared, "
            "auth: {kind: client_credentials, client_id: c, private_key_file: keys/gw.pem}}]\n",
        )
    )
    auth = config.upstreams[0].auth
    assert (auth.token_endpoint_auth_method, auth.private_key_file) == (
        "private_key_jwt",
        tmp_path / "keys" / "gw.pem",
    )
    assert auth.private_key is not None and auth.private_key not in repr(config)


def test_a_secrets_key_must_be_32_bytes_of_base64url(tmp_path: Path) -> None:
    error = load_error(tmp_path, "secrets: {key: c2hvcnQ}\n")
    assert "secrets.key: must be 32 random bytes in base64url" in str(error)
    error = load_error(tmp_path, f"secrets: {{previous_keys: [{'A' * 43}]}}\n")
    assert "needs secrets.key" in str(error)


# --- host sign-in ---------------------------------------------------------------------------------


def test_host_sign_in_is_off_by_default_and_reads_its_keys_and_clients(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).host_sign_in.enabled is False
    config = load_config(
        write(
            tmp_path,
            """\
            public_url: https://gw.example.com
            host_sign_in:
              enabled: true
              api_keys: true
              oidc: []
              access_token_ttl_s: 600
              clients:
                - client_id: team-editor
                  client_name: The team's editor
                  client_secret: s3cret
                  redirect_uris: ['http://127.0.0.1/callback', 'https://editor.example.com/cb']
            """,
        )
    )
    sign_in = config.host_sign_in
    assert (sign_in.enabled, sign_in.api_keys, sign_in.oidc, sign_in.access_token_ttl_s) == (
        True,
        True,
        (),
        600,
    )
    [client] = sign_in.clients
    assert (client.client_id, client.client_name, client.client_secret) == (
        "team-editor",
        "The team's editor",
        "s3cret",
    )
    assert client.redirect_uris == ("http://127.0.0.1/callback", "https://editor.example.com/cb")
    assert "s3cret" not in repr(config)


def test_an_oidc_provider_takes_defaults_and_lets_sign_in_go_without_api_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDP_SECRET", "1dp-s3cret")
    config = load_config(
        write(
            tmp_path,
            """\
            public_url: https://gw.example.com
            host_sign_in:
              enabled: true
              api_keys: false
              oidc:
                - name: corp
                  issuer: https://login.example.com/
                  client_id: gateway
                  client_secret: ${IDP_SECRET}
                  domains: {example.com: example}
            """,
        )
    )
    [corp] = config.host_sign_in.oidc
    assert not config.host_sign_in.api_keys
    assert (corp.label, corp.issuer, corp.client_secret) == (
        "corp",
        "https://login.example.com",
        "1dp-s3cret",
    )
    assert (corp.scopes, corp.user_claim, corp.organisation_claim) == (
        ("openid", "email", "profile"),
        "email",
        None,
    )
    assert (corp.admin_claim, corp.admin_values, corp.allow_private_addresses) == (None, (), False)
    assert "1dp-s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        (
            "auth: {required: false}\nhost_sign_in: {enabled: true}\n",
            "host_sign_in.enabled",
            "needs auth.required: true",
        ),
        ("host_sign_in: {enabled: true, api_keys: false}\n", "host_sign_in.api_keys", "nobody could sign in"),
        (
            _oidc("{@OKTA}"),
            "host_sign_in.oidc[0].name",
            "should match pattern",
        ),
        (
            _oidc("{@HTTP}"),
            "host_sign_in.oidc[0].issuer",
            "https",
        ),
        (
            _oidc("{@}"),
            "host_sign_in.oidc[0]",
            "organisation_claim with organisations, or domains",
        ),
        (
            _oidc("{@, domains: {example.com: a}, scopes: [email]}"),
            "host_sign_in.oidc[0].scopes",
            "openid",
        ),
        (
            _oidc("{@, organisation_claim: org}"),
            "host_sign_in.oidc[0].organisation_claim",
            "needs organisations",
        ),
        (
            _oidc("{@, domains: {Example.com: a}}"),
            "host_sign_in.oidc[0].domains['Example.com']",
            "lower-case domain",
        ),
        (
            _oidc("{@, domains: {example.com: a}, admin_values: [x]}"),
            "host_sign_in.oidc[0].admin_values",
            "go together",
        ),
        (
            _oidc("{@, domains: {example.com: a}}, {@, domains: {example.com: a}}"),
            "host_sign_in.oidc[1].name",
            "duplicate",
        ),
        (
            _oidc("{@, domains: {example.com: a}, secret: s}"),
            "host_sign_in.oidc[0].secret",
            "unknown key",
        ),
        (
            "public_url: https://gw.example.com/mcpgw\nhost_sign_in: {enabled: true}\n",
            "public_url",
            "an origin",
        ),
        (
            "public_url: http://gw.example.com\nhost_sign_in: {enabled: true}\n",
            "public_url",
            "https",
        ),
        (
            "listen: {host: 0.0.0.0}\nhost_sign_in: {enabled: true}\n",
            "public_url",
            "https",
        ),
        (
            "host_sign_in: {clients: [{client_id: a, redirect_uris: ['http://evil.example/cb']}]}\n",
            "host_sign_in.clients[0].redirect_uris[0]",
            "loopback",
        ),
        (
            "host_sign_in: {clients: [{client_id: a, redirect_uris: ['https://x.example/cb#frag']}]}\n",
            "host_sign_in.clients[0].redirect_uris[0]",
            "fragment",
        ),
        (
            "host_sign_in: {clients: [{client_id: a, redirect_uris: []}]}\n",
            "host_sign_in.clients[0].redirect_uris",
            "at least 1",
        ),
        (
            "host_sign_in: {clients: [{client_id: 'https://x.example/c.json', redirect_uris: ['https://x.example/cb']}]}\n",
            "host_sign_in.clients[0].client_id",
            "metadata document",
        ),
        (
            "host_sign_in: {clients: [{client_id: a, redirect_uris: ['https://x.example/cb']},"
            " {client_id: a, redirect_uris: ['https://x.example/cb']}]}\n",
            "host_sign_in.clients[1].client_id",
            "duplicate",
        ),
        ("host_sign_in: {access_token_ttl_s: 0}\n", "host_sign_in.access_token_ttl_s", "greater than 0"),
    ],
)
def test_bad_host_sign_in_settings_are_refused_with_their_key_and_reason(
    tmp_path: Path, text: str, where: str, why: str
) -> None:
    error = load_error(tmp_path, text)
    assert where in str(error) and why in str(error), str(error)


def test_sessions_default_to_shared_for_stdio_and_per_host_for_http(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            upstreams:
              - {name: kid, transport: stdio, command: [x]}
              - {name: web, transport: http, url: 'http://h/mcp'}
              - {name: own, transport: stdio, command: [x], sessions: per_host, max_children: 3}
            """,
        )
    )
    assert [(u.sessions, u.max_sessions, u.max_children) for u in config.upstreams] == [
        ("shared", 4, 50),
        ("per_host", 4, 50),
        ("per_host", 4, 3),
    ]
    assert config.sessions.max_children == 200


def test_an_upstream_with_per_user_credentials_cannot_be_shared(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        "upstreams: [{name: a, transport: http, url: 'http://h/mcp', sessions: shared,"
        " auth: {kind: oauth}}]\n",
    )
    assert "upstreams[0].sessions" in str(error) and "must be per_host" in str(error), str(error)
