"""Gateway configuration: the YAML schema, its validation, and the frozen values the gateway runs on.

`load_config` reads one YAML file, replaces `${NAME}` / `${NAME:-default}` placeholders in string
values from the environment, validates the result (unknown keys are errors) and returns a
`GatewayConfig` made of frozen dataclasses. Every problem is a `ConfigError` whose message names
the file, the key path (``upstreams[1].transport``), the line and the reason, one line per problem.
`config.example.yaml` at the repository root documents every key.
"""

import base64
import binascii
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from gateway.errors import ConfigError, ConfigProblem  # what load_config raises: public here too

__all__ = [
    "AuthConfig",
    "ConfigError",
    "ConfigProblem",
    "GatewayConfig",
    "ListenConfig",
    "RecordingConfig",
    "RetentionConfig",
    "SecretsConfig",
    "SecurityConfig",
    "SessionsConfig",
    "Timeouts",
    "ToolFilter",
    "UpstreamAuth",
    "UpstreamConfig",
    "config_path_from",
    "is_loopback_host",
    "load_config",
]

Loc: TypeAlias = tuple[str | int, ...]


# ---------------------------------------------------------------------------------------------
# Public values


@dataclass(frozen=True, slots=True)
class ToolFilter:
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()

    def permits(self, name: str) -> bool:
        """True when some allow pattern matches `name` and no deny pattern does."""
        # fnmatchcase, not fnmatch: tool names are case-sensitive on every platform.
        return any(fnmatchcase(name, p) for p in self.allow) and not any(
            fnmatchcase(name, p) for p in self.deny
        )


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 10.0
    call_s: float = 60.0


AuthKind: TypeAlias = Literal["none", "headers", "oauth", "user_headers"]
IdentityMode: TypeAlias = Literal["user", "vk", "session"]


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
    transport: Literal["stdio", "http", "sse"]
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    prefix: str = ""
    tools: ToolFilter = ToolFilter()
    timeouts: Timeouts = Timeouts()
    idle_s: float = 600.0
    auth: UpstreamAuth = UpstreamAuth()


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
    idle_s: float = 1800.0
    stateless_gap_s: float = 1800.0


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

    key_file: Path
    key: bytes | None = field(default=None, repr=False)  # 32 bytes; when set, the key file is not used
    previous_keys: tuple[bytes, ...] = field(default=(), repr=False)  # still open, never seal


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    path: Path
    listen: ListenConfig
    database: Path
    auth: AuthConfig
    security: SecurityConfig
    sessions: SessionsConfig
    upstreams: tuple[UpstreamConfig, ...]
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    public_url: str = "http://127.0.0.1:8080"  # the base of the URLs users open (OAuth, forms)
    secrets: SecretsConfig = field(default_factory=lambda: SecretsConfig(Path("mcpgw.keys")))
    public_url_configured: bool = False  # else public_url follows the address served on

    def served_at(self, host: str, port: int) -> "GatewayConfig":
        """This config as served on `host`:`port` (after --host/--port, and once a port 0 is
        bound): `public_url` names that address unless the config sets one."""
        public_url = self.public_url if self.public_url_configured else local_url(host, port)
        return replace(self, listen=ListenConfig(host, port), public_url=public_url)


def config_path_from(arg: str | None) -> Path:
    """The config file to use: `arg`, else ``$MCPGW_CONFIG``, else ``./config.yaml``."""
    if arg:
        return Path(arg)
    from_env = os.environ.get("MCPGW_CONFIG")
    return Path(from_env) if from_env else Path("config.yaml")


def load_config(path: str | Path) -> GatewayConfig:
    """Read, substitute, validate and convert one config file; raise `ConfigError` if it is not valid."""
    shown = Path(path)
    absolute = Path(os.path.abspath(shown.expanduser()))
    data, root = _read(shown, absolute)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _error(shown, [ConfigProblem("", _line(root, ()), "the top level must be a mapping of keys")])
    # An empty section (`upstreams:` with nothing under it) reads as null; take it as "defaults".
    data = {k: v for k, v in data.items() if not (v is None and k in _SECTIONS)}

    problems: list[tuple[Loc, str]] = []
    data = _expand(data, (), os.environ, problems)
    if problems:
        raise _error(shown, [ConfigProblem(_key_path(loc), _line(root, loc), why) for loc, why in problems])
    try:
        model = _RootModel.model_validate(data)
    except ValidationError as exc:
        raise _error(shown, _pydantic_problems(exc, root)) from None
    return _convert(model, absolute, shown, root)


# ---------------------------------------------------------------------------------------------
# Reading and `${NAME}` substitution


def _read(shown: Path, absolute: Path) -> tuple[Any, yaml.Node | None]:
    try:
        text = absolute.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        where = "" if str(shown) == str(absolute) else f" (looked for {absolute})"
        raise _error(shown, [ConfigProblem("", None, f"config file not found{where}")]) from exc
    except OSError as exc:
        raise _error(shown, [ConfigProblem("", None, f"cannot read config file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise _error(shown, [ConfigProblem("", None, f"config file is not UTF-8 text: {exc}")]) from exc

    # One parse yields both the node tree (for line numbers) and the data SafeLoader builds from it.
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise _error(shown, [ConfigProblem("", line, f"invalid YAML: {what}")]) from exc
    except yaml.YAMLError as exc:
        raise _error(shown, [ConfigProblem("", None, f"invalid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    return data, root


# `$${` is the escape for a literal `${`; a `${` that is not a well-formed placeholder is an error
# rather than passed through, so a typo cannot smuggle a literal placeholder into a header.
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def _expand(value: Any, loc: Loc, env: Mapping[str, str], problems: list[tuple[Loc, str]]) -> Any:
    if isinstance(value, str):
        return _substitute(value, loc, env, problems) if "${" in value else value
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    return value


def _substitute(text: str, loc: Loc, env: Mapping[str, str], problems: list[tuple[Loc, str]]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name is None:
            problems.append(
                (loc, "malformed placeholder: write ${NAME} or ${NAME:-default} ($${ for a literal ${)")
            )
            return match.group(0)
        value = env.get(name)
        if default is not None and not value:  # shell semantics: `:-` also covers set-but-empty
            return default
        if value is None:
            problems.append((loc, f"environment variable {name} is not set (use ${{{name}:-default}})"))
            return ""
        return value

    return _PLACEHOLDER.sub(replace, text)


# ---------------------------------------------------------------------------------------------
# Schema (pydantic, strict: YAML's own types are what the file meant)


def _int_from_text(value: object) -> object:
    # Placeholders always produce strings, so `port: ${PORT}` must still be able to become a number.
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return value
    return value


def _float_from_text(value: object) -> object:
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _bool_from_text(value: object) -> object:
    if isinstance(value, str):
        return _BOOL_WORDS.get(value.strip().lower(), value)
    return value


def _check_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9-]+", value):
        raise ValueError(f"upstream name must match ^[a-z0-9-]+$, got {value!r}")
    return value


def _check_prefix(value: str) -> str:
    # The prefix becomes part of every tool name a host sees; some hosts accept only these characters.
    if not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        raise ValueError(f"prefix may contain only letters, digits, '_' and '-', got {value!r}")
    return value


def _split_url(value: str) -> SplitResult | None:
    """The URL's parts, or None when it does not parse (a malformed port included)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        return None
    return parts


def _check_url(value: str) -> str:
    parts = _split_url(value)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value


def _check_origin(value: str) -> str:
    parts = _split_url(value)
    # A browser's Origin header never has a path, so "http://localhost:3000/" could never match.
    if parts is None or not parts.scheme or not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ValueError(
            f"must be an origin like 'http://localhost:3000' (no path or trailing '/'), got {value!r}"
        )
    return value


def _check_host(value: str) -> str:
    if not value or "/" in value or any(c.isspace() for c in value):
        raise ValueError(
            f"must be a host name with an optional port, like 'mcp.example.com:8443', got {value!r}"
        )
    return value


# Framing and connection headers: mcpgw sets these itself, and a second value would let the
# upstream read the request differently from how it was sent.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                               "te", "trailer", "upgrade", "expect"})  # fmt: skip


def _check_header_name(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError(f"not a valid HTTP header name: {value!r}")
    if value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{value!r} is set by mcpgw itself and cannot be configured")
    return value


def _check_header_value(value: str) -> str:
    # A CR or LF would let a value (often from the environment) inject further headers.
    if any(c in value for c in "\r\n\0"):
        raise ValueError("an HTTP header value must not contain CR, LF or NUL")
    return value


def _check_scope(value: str) -> str:
    if not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", value):  # RFC 6749 section 3.3
        raise ValueError(f"a scope is one word of printable ASCII, no quotes or backslashes: {value!r}")
    return value


def _check_env_name(value: str) -> str:
    if not value or "=" in value or "\0" in value:
        raise ValueError(f"not a valid environment variable name: {value!r}")
    return value


def _check_pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    try:
        re.compile(f"(?:{value})|x")  # the patterns are joined into one alternation
    except re.error as exc:
        raise ValueError(f"{exc}; write flags scoped, like (?i:secret)") from exc
    return value


def _check_no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    return value


_Text = Annotated[str, Field(min_length=1)]
_Port = Annotated[int, BeforeValidator(_int_from_text), Field(ge=0, le=65535)]
_Bytes = Annotated[int, BeforeValidator(_int_from_text), Field(gt=0)]
_Count = Annotated[int, BeforeValidator(_int_from_text), Field(gt=0)]
_Seconds = Annotated[float, BeforeValidator(_float_from_text), Field(gt=0, allow_inf_nan=False)]
_Bool = Annotated[bool, BeforeValidator(_bool_from_text)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _ListenModel(_Model):
    host: _Text = "127.0.0.1"
    port: _Port = 8080


class _AuthModel(_Model):
    required: _Bool = True
    max_failures_per_minute: Annotated[int, BeforeValidator(_int_from_text), Field(ge=0)] = 20


class _SecurityModel(_Model):
    allowed_hosts: list[Annotated[str, AfterValidator(_check_host)]] = Field(default_factory=list)
    allowed_origins: list[Annotated[str, AfterValidator(_check_origin)]] = Field(default_factory=list)
    max_body_bytes: _Bytes = 4 * 1024 * 1024
    header_timeout_s: _Seconds = 10.0
    body_timeout_s: _Seconds = 30.0
    max_headers: _Count = 100
    max_header_bytes: _Bytes = 64 * 1024
    max_url_bytes: _Bytes = 8 * 1024


class _SessionsModel(_Model):
    idle_s: _Seconds = 1800.0
    stateless_gap_s: _Seconds = 1800.0


class _ToolFilterModel(_Model):
    allow: list[_Text] = Field(default_factory=lambda: ["*"])
    deny: list[_Text] = Field(default_factory=list)


class _TimeoutsModel(_Model):
    connect_s: _Seconds = 10.0
    call_s: _Seconds = 60.0


class _UpstreamAuthModel(_Model):
    kind: Literal["none", "headers", "oauth", "user_headers"] = "none"
    identity: Literal["user", "vk", "session"] | None = None
    scopes: list[Annotated[str, AfterValidator(_check_scope)]] | None = None
    client_id: _Text | None = None
    client_secret: _Text | None = None
    client_metadata_url: Annotated[str, AfterValidator(_check_url)] | None = None
    allow_private_addresses: _Bool | None = None
    # user_headers: a list of names; headers: a mapping of names to values.
    headers: (
        list[Annotated[str, AfterValidator(_check_header_name)]]
        | dict[
            Annotated[str, AfterValidator(_check_header_name)],
            Annotated[str, AfterValidator(_check_header_value)],
        ]
        | None
    ) = None


class _UpstreamModel(_Model):
    name: Annotated[str, AfterValidator(_check_name)]
    transport: Literal["stdio", "http", "sse"]
    command: list[Annotated[str, AfterValidator(_check_no_nul)]] | None = None
    env: (
        dict[Annotated[str, AfterValidator(_check_env_name)], Annotated[str, AfterValidator(_check_no_nul)]]
        | None
    ) = None
    cwd: _Text | None = None
    url: Annotated[str, AfterValidator(_check_url)] | None = None
    headers: (
        dict[
            Annotated[str, AfterValidator(_check_header_name)],
            Annotated[str, AfterValidator(_check_header_value)],
        ]
        | None
    ) = None
    prefix: Annotated[str, AfterValidator(_check_prefix)] | None = None
    tools: _ToolFilterModel = Field(default_factory=_ToolFilterModel)
    timeouts: _TimeoutsModel = Field(default_factory=_TimeoutsModel)
    idle_s: _Seconds = 600.0
    auth: _UpstreamAuthModel = Field(default_factory=_UpstreamAuthModel)


class _RedactModel(_Model):
    keys: list[_Text] = Field(default_factory=list)
    patterns: list[Annotated[str, Field(min_length=1), AfterValidator(_check_pattern)]] = Field(
        default_factory=list
    )


class _RetentionModel(_Model):
    max_age_days: Annotated[float, BeforeValidator(_float_from_text), Field(ge=0, allow_inf_nan=False)] = 30.0
    max_invocations: Annotated[int, BeforeValidator(_int_from_text), Field(ge=0)] = 1_000_000
    interval_s: _Seconds = 600.0


class _RecordingModel(_Model):
    enabled: _Bool = True
    max_payload_bytes: _Bytes = 64 * 1024
    redact: _RedactModel = Field(default_factory=_RedactModel)
    retention: _RetentionModel = Field(default_factory=_RetentionModel)


class _SecretsModel(_Model):
    key: str | None = None  # base64url of 32 bytes; "" (an unset ${VAR:-}) means none
    previous_keys: list[_Text] = Field(default_factory=list)
    key_file: _Text | None = None


class _RootModel(_Model):
    listen: _ListenModel = Field(default_factory=_ListenModel)
    public_url: Annotated[str, AfterValidator(_check_url)] | None = None
    database: _Text = "./mcpgw.db"
    auth: _AuthModel = Field(default_factory=_AuthModel)
    security: _SecurityModel = Field(default_factory=_SecurityModel)
    sessions: _SessionsModel = Field(default_factory=_SessionsModel)
    upstreams: list[_UpstreamModel] = Field(default_factory=list)
    recording: _RecordingModel = Field(default_factory=_RecordingModel)
    secrets: _SecretsModel = Field(default_factory=_SecretsModel)


_SECTIONS = frozenset({"listen", "auth", "security", "sessions", "upstreams", "recording", "secrets"})

# Which model a mapping at a given key path (list indexes dropped) is validated by.
_MODEL_AT: dict[tuple[str, ...], type[_Model]] = {
    (): _RootModel,
    ("listen",): _ListenModel,
    ("auth",): _AuthModel,
    ("security",): _SecurityModel,
    ("sessions",): _SessionsModel,
    ("upstreams",): _UpstreamModel,
    ("upstreams", "tools"): _ToolFilterModel,
    ("upstreams", "timeouts"): _TimeoutsModel,
    ("upstreams", "auth"): _UpstreamAuthModel,
    ("secrets",): _SecretsModel,
    ("recording",): _RecordingModel,
    ("recording", "redact"): _RedactModel,
    ("recording", "retention"): _RetentionModel,
}


# ---------------------------------------------------------------------------------------------
# Errors: pydantic locations → key paths and YAML lines


def _error(file: Path, problems: Sequence[ConfigProblem]) -> ConfigError:
    lines = []
    for p in problems:
        where = f"{file}:{p.line}" if p.line is not None else str(file)
        lines.append(f"{where}: {p.key}: {p.reason}" if p.key else f"{where}: {p.reason}")
    return ConfigError("\n".join(lines), file=file, problems=problems)


def _key_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _line(root: yaml.Node | None, loc: Loc, *, of_key: bool = False) -> int | None:
    """Line of the node at `loc`, or of its nearest existing ancestor (e.g. for a missing key)."""
    if root is None:
        return None
    node = root
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            # Last match wins, as it does when SafeLoader builds the dict.
            pairs = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not pairs:
                break
            key_node, value_node = pairs[-1]
            node = key_node if of_key and i == len(loc) - 1 else value_node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


_YAML_TYPE = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _pydantic_problems(exc: ValidationError, root: yaml.Node | None) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors():
        loc: Loc = tuple(err["loc"])
        kind = err["type"]
        of_key = False
        if loc and loc[-1] == "[key]":  # the error is about a mapping key, not its value
            loc, of_key = loc[:-1], True
        if kind == "extra_forbidden":
            of_key = True
            model = _MODEL_AT.get(tuple(p for p in loc[:-1] if isinstance(p, str)))
            allowed = list(model.model_fields) if model else []
            reason = f"unknown key {loc[-1]!r}"
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            if close:
                reason += f" (did you mean {close[0]!r}?)"
            if allowed:
                reason += f"; allowed keys: {', '.join(allowed)}"
        elif kind == "missing":
            reason = "required key is missing"
        elif kind == "value_error":
            reason = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            # Pydantic says "dictionary" and names private model classes; YAML users think "mapping".
            reason = "Input should be a mapping" if kind in ("model_type", "dict_type") else err["msg"]
            if kind.endswith("_type") or kind in ("literal_error", "enum"):
                got = _YAML_TYPE.get(type(err["input"]), type(err["input"]).__name__)
                reason += f", got {got}" if kind != "literal_error" else f", got {err['input']!r}"
        if of_key and kind != "extra_forbidden":
            reason += " (in a key)"
        problems.append(ConfigProblem(_key_path(loc), _line(root, loc, of_key=of_key), reason))
    return problems


# ---------------------------------------------------------------------------------------------
# Cross-field rules and conversion to the frozen values

_STDIO_ONLY = ("command", "env", "cwd")
_HTTP_ONLY = ("url", "headers")


def is_loopback_host(host: str) -> bool:
    bare = host.removeprefix("[").removesuffix("]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def _convert(model: _RootModel, absolute: Path, shown: Path, root: yaml.Node | None) -> GatewayConfig:
    base = absolute.parent
    problems: list[tuple[Loc, str]] = []

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
        here: Loc = ("upstreams", i)
        if up.name in first_at:
            problems.append(
                (
                    (*here, "name"),
                    f"duplicate upstream name {up.name!r} (first at upstreams[{first_at[up.name]}])",
                )
            )
        first_at.setdefault(up.name, i)
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

        auth = _upstream_auth(up, here, problems)
        cwd = None if up.cwd is None else str(base / Path(up.cwd).expanduser())
        upstreams.append(
            UpstreamConfig(
                name=up.name,
                transport=up.transport,
                command=tuple(up.command or ()),
                env=dict(up.env or {}),
                cwd=cwd,
                url=up.url,
                headers=dict(up.headers or {}),
                prefix=f"{up.name}__" if up.prefix is None else up.prefix,
                tools=ToolFilter(allow=tuple(up.tools.allow), deny=tuple(up.tools.deny)),
                timeouts=Timeouts(connect_s=up.timeouts.connect_s, call_s=up.timeouts.call_s),
                idle_s=up.idle_s,
                auth=auth,
            )
        )

    database = base / Path(model.database).expanduser()
    secrets = _secrets(model.secrets, base, database, problems)
    if problems:
        raise _error(shown, [ConfigProblem(_key_path(loc), _line(root, loc), why) for loc, why in problems])

    return GatewayConfig(
        path=absolute,
        listen=ListenConfig(host=model.listen.host, port=model.listen.port),
        database=database,
        auth=AuthConfig(
            required=model.auth.required, max_failures_per_minute=model.auth.max_failures_per_minute
        ),
        security=SecurityConfig(
            allowed_hosts=tuple(model.security.allowed_hosts),
            allowed_origins=tuple(model.security.allowed_origins),
            max_body_bytes=model.security.max_body_bytes,
            header_timeout_s=model.security.header_timeout_s,
            body_timeout_s=model.security.body_timeout_s,
            max_headers=model.security.max_headers,
            max_header_bytes=model.security.max_header_bytes,
            max_url_bytes=model.security.max_url_bytes,
        ),
        sessions=SessionsConfig(idle_s=model.sessions.idle_s, stateless_gap_s=model.sessions.stateless_gap_s),
        upstreams=tuple(upstreams),
        recording=_recording(model.recording),
        public_url=(model.public_url or local_url(model.listen.host, model.listen.port)).rstrip("/"),
        secrets=secrets,
        public_url_configured=model.public_url is not None,
    )


def local_url(host: str, port: int) -> str:
    """The base URL of a gateway listening on `host`:`port`."""
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}"


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
}
_ANY_AUTH_KEY = tuple(dict.fromkeys(key for keys in _AUTH_KEYS.values() for key in keys))


def _upstream_auth(up: _UpstreamModel, here: Loc, problems: list[tuple[Loc, str]]) -> UpstreamAuth:
    model = up.auth
    at: Loc = (*here, "auth")
    for key in _ANY_AUTH_KEY:
        if getattr(model, key) is not None and key not in _AUTH_KEYS[model.kind]:
            problems.append(((*at, key), f"not allowed for auth kind {model.kind!r}"))
    if model.kind in ("oauth", "user_headers") and up.transport != "http":
        problems.append(((*at, "kind"), f"{model.kind!r} needs an http (Streamable HTTP) upstream"))
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
    if model.client_metadata_url is not None and not model.client_metadata_url.startswith("https://"):
        problems.append(((*at, "client_metadata_url"), "must be an https:// URL"))
    return UpstreamAuth(
        kind=model.kind,
        identity=model.identity or "user",
        scopes=tuple(model.scopes or ()),
        client_id=model.client_id,
        client_secret=model.client_secret,
        client_metadata_url=model.client_metadata_url,
        allow_private_addresses=bool(model.allow_private_addresses),
        header_names=names,
        static_headers=static,
    )


def _secrets(
    model: _SecretsModel, base: Path, database: Path, problems: list[tuple[Loc, str]]
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
    key_file = base / Path(model.key_file).expanduser() if model.key_file else database.with_suffix(".keys")
    return SecretsConfig(key_file=key_file, key=key, previous_keys=previous)


def _recording(model: _RecordingModel) -> RecordingConfig:
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
