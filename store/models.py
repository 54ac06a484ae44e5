"""The values the store hands out: frozen, slotted, and free of secrets (except CreatedKey)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeAlias, TypeVar

T = TypeVar("T")

__all__ = [
    "ApiKey",
    "AuthFlow",
    "Binding",
    "CreatedKey",
    "Credential",
    "CredentialFilter",
    "CredentialRow",
    "Grant",
    "InvocationRecord",
    "IssuedToken",
    "OAuthClient",
    "Organisation",
    "Page",
    "RecordEvent",
    "RecordedInvocation",
    "RecordedSession",
    "Seek",
    "SessionEnd",
    "SessionStart",
    "SignInClient",
    "SignInClientKind",
    "SignInCode",
    "SignedIn",
]


@dataclass(frozen=True, slots=True)
class Organisation:
    """A tenant: it owns API keys and everything recorded under them."""

    id: str
    """A uuid4 string."""
    name: str
    created_at: datetime
    """UTC, millisecond precision."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: its hash stays in the database, its secret is never kept."""

    id: str
    """A uuid4 string (the ``apiKeyId``)."""
    organisation_id: str
    user_id: str | None
    """The user the key is bound to, if any."""
    is_admin: bool
    prefix: str
    """The first characters of the secret, for display (``mgw_ab12cd``)."""
    created_at: datetime
    revoked_at: datetime | None
    tools_allow: tuple[str, ...] = ("*",)
    """Globs over host-visible tool names (``demo__*``) this key may see and call."""
    tools_deny: tuple[str, ...] = ()
    """Globs this key may not use, even when allowed; deny wins."""
    last_used_at: datetime | None = field(default=None, compare=False)
    """When a gateway last accepted it, to about a minute (``None``: never, or not yet written).
    Not part of equality: it says how a key was used, not which key it is."""


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just created, with its secret: the only time the secret is available."""

    key: ApiKey
    secret: str = field(repr=False)
    """The full ``mgw_...`` key. Show it once; it cannot be recovered."""


@dataclass(frozen=True, slots=True)
class SessionStart:
    """A host session the gateway has just opened (a handshake session or a stateless group)."""

    id: str
    """A uuid4 string: the session's ``id`` in the listing API."""
    mcp_session_id: str
    """The ``Mcp-Session-Id`` the host uses; gateway-minted for 2026-07-28 groups too."""
    organisation_id: str
    api_key_id: str | None
    client_id: str | None
    client_name: str | None
    client_version: str | None
    protocol_version: str
    started_at: datetime


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A host session (or 2026-07-28 group) some replica serves now: what any replica needs to
    serve its next request without a new handshake. Kept apart from the record (which may be
    off, and keeps what was said, not what is live) and deleted when the session ends."""

    mcp_session_id: str
    record_id: str
    """The session's ``id`` in the record (``SessionStart.id``)."""
    organisation_id: str
    api_key_id: str | None
    grant_id: str | None
    protocol_version: str
    handshake_json: str
    """What the host said in its handshake (protocol version, capabilities, clientInfo), as JSON."""
    last_seen_at: datetime
    group_key: str | None = None
    """A 2026-07-28 group's key (the same on every replica); None for a session-based session."""


@dataclass(frozen=True, slots=True)
class SessionEnd:
    id: str
    ended_at: datetime
    reason: str
    """``deleted`` (the host said so), ``idle``, ``shutdown`` or ``upstream_gone``."""


@dataclass(frozen=True, slots=True)
class InvocationRecord:
    """One recorded request, already redacted and capped by the recorder."""

    id: str
    session_id: str
    method: str
    tool_name: str
    """The tool or prompt name, or resource URI, as the host saw it."""
    upstream: str | None
    upstream_name: str | None
    request_id: str | None
    """The JSON-RPC id as JSON text (``7`` or ``"abc"``)."""
    arguments_json: str | None
    arguments_truncated: bool
    result_json: str | None
    result_truncated: bool
    success: bool
    outcome: str
    duration_ms: int
    upstream_ms: int | None
    trace_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TaskEnd:
    """The end of a task a `tools/call` started: its invocation row gets the final outcome, result
    and duration (to ``ended_at``). Only a row still ``task_pending`` changes: the first end seen wins."""

    invocation_id: str
    session_id: str
    outcome: str
    result_json: str | None
    result_truncated: bool
    ended_at: datetime


TASK_PENDING = "task_pending"
"""The outcome of a task's invocation row until the gateway sees the task end."""

RecordEvent = SessionStart | InvocationRecord | SessionEnd | TaskEnd
"""What the recorder writes, in one transaction per batch."""


@dataclass(frozen=True, slots=True)
class RecordedSession(SessionStart):
    """A session row as listed: how it started, and what happened since."""

    last_call_at: datetime
    call_count: int
    ended_at: datetime | None
    end_reason: str | None
    key: tuple[int, int]
    """The keyset position: (last call, unix ms; row number). Newest activity first."""


@dataclass(frozen=True, slots=True)
class RecordedInvocation(InvocationRecord):
    """An invocation row as listed."""

    key: tuple[int, int]
    """The keyset position: (created, unix ms; row number). Oldest first."""


@dataclass(frozen=True, slots=True)
class Seek:
    """Where a page starts: after (or before, walking back) a keyset position."""

    key: tuple[int, int] | None = None
    """None: from the start of the listing."""
    backward: bool = False
    """Walk toward the start: the page holds the rows just before ``key``."""
    inclusive: bool = False
    """The row at ``key`` itself belongs to the page (re-reading a page)."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    rows: tuple[T, ...]
    """In listing order, whichever way the walk went."""
    more_before: bool
    more_after: bool


# ---------------------------------------------------------------------------------------------
# Credentials for upstreams (issue 4). Secret parts are held sealed in the database; the values
# below carry them opened only where the gateway needs them (``repr=False``), never in listings.

AuthMode: TypeAlias = Literal["user", "vk", "session"]
CredentialStatus: TypeAlias = Literal["active", "needs_reauth", "needs_update", "orphaned"]


@dataclass(frozen=True, slots=True)
class Binding:
    """Whose credential for which upstream: the unit a credential and its flows belong to."""

    organisation_id: str
    upstream: str
    auth_mode: AuthMode
    subject: str
    """The user id (``user``), API key id (``vk``) or recorded session id (``session``)."""


@dataclass(frozen=True, slots=True)
class Credential:
    id: str
    binding: Binding
    kind: Literal["token", "header"]
    status: CredentialStatus
    secret: Mapping[str, Any] = field(repr=False)
    """Opened: ``access_token``/``refresh_token``/... for a token, header values for a header."""
    header_names: tuple[str, ...]
    """The names the values were submitted for (header rows)."""
    oauth_client_id: str | None
    expires_at: datetime | None
    created_at: datetime
    last_refreshed_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuthFlow:
    """A pending OAuth consent or header submission: lives briefly and is claimed once."""

    id: str
    binding: Binding
    auth_kind: Literal["oauth", "headers"]
    secret: Mapping[str, Any] = field(repr=False)
    """Opened: the OAuth ``state`` and PKCE ``code_verifier``; empty for header flows."""
    oauth_client_id: str | None
    created_at: datetime
    expires_at: datetime
    claimed_at: datetime | None


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """The gateway's registration with one authorization server for one upstream."""

    id: str
    upstream: str
    issuer: str
    redirect_uri: str
    client_id: str
    client_secret: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class CredentialRow:
    """One row of the credential listing: a credential, or a pending flow with none beside it."""

    id: str
    kind: Literal["token", "header", "flow"]
    auth_kind: Literal["oauth", "headers"]
    binding: Binding
    status: str
    expires_at: datetime | None
    created_at: datetime
    last_refreshed_at: datetime | None
    updated_at: datetime | None
    oauth_client_id: str | None
    key_prefix: str | None
    """The display prefix of the API key a ``vk`` row binds to."""
    key: tuple[int, str]
    """The keyset position: (created, unix ms; id). Newest first."""


@dataclass(frozen=True, slots=True)
class CredentialFilter:
    status: str | None = None
    auth_mode: str | None = None
    kind: str | None = None
    upstream: str | None = None


# ---------------------------------------------------------------------------------------------
# Hosts that sign in (issue 13): the gateway as the OAuth authorization server for its own MCP
# URL. Codes, tokens and client secrets go in as values and are kept as hashes; nothing here
# carries one back out.

SignInClientKind: TypeAlias = Literal["registered", "document"]


@dataclass(frozen=True, slots=True)
class SignInClient:
    """A host's OAuth client the gateway knows: registered (RFC 7591) or read from the client
    metadata document its URL client id names. Clients listed in the config are not stored."""

    id: str
    """A uuid4 string: the ``clientId`` recorded for the sessions its sign-ins open."""
    client_id: str
    """The OAuth ``client_id``: a uuid the gateway minted, or the metadata document's URL."""
    kind: SignInClientKind
    metadata: Mapping[str, Any]
    """Its RFC 7591 metadata (``redirect_uris``, ``client_name``, ...), never a secret."""
    secret_hash: str | None = field(repr=False)
    """SHA-256 hex of the client secret the registration issued; ``None`` for a public client."""
    created_at: datetime
    last_used_at: datetime | None = None
    """When it last obtained tokens: a client unused for long is forgotten."""
    expires_at: datetime | None = None
    """A metadata document's: when to fetch it again."""


@dataclass(frozen=True, slots=True)
class PendingSignIn:
    """An authorization request waiting for the person's answer on the consent page."""

    id: str
    """Random, in the consent page's URL."""
    address: str
    """Where the request came from (an IPv6 address by its /64): what the bound per address counts."""
    client_id: str
    request: Mapping[str, Any]
    """What finishing it needs (the client, the request's parameters, the resource, the CSRF
    token), as JSON values; the caller words it and bounds its size."""
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SignInCode:
    """What an authorization code stands for: a person's consent, bound to the client, its
    redirect URI, the PKCE challenge and the resource (the MCP URL the tokens are for)."""

    client_id: str
    client_row_id: str
    client_name: str | None
    redirect_uri: str
    code_challenge: str
    resource: str
    scope: str
    organisation_id: str
    api_key_id: str
    """The key the person approved with: what the host will act as."""
    expires_at: datetime
    redirect_uri_explicit: bool = True
    """Whether the authorization request named ``redirect_uri`` (then the token request must
    repeat it, RFC 6749 section 4.1.3), rather than leaving it to the one the client registered."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token to keep (as its hash) and when it expires."""

    secret: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Grant:
    """One consent: a client may act as the API key that approved it, until revoked. Its access
    and refresh tokens are one family: revoking the grant ends them all."""

    id: str
    organisation_id: str
    api_key_id: str
    user_id: str | None
    """The approving key's user."""
    key_prefix: str
    client_row_id: str
    client_id: str
    client_name: str | None
    resource: str
    scope: str
    created_at: datetime
    last_used_at: datetime | None
    """When tokens were last issued for it (the code redeemed, a refresh)."""
    revoked_at: datetime | None
    revoked_reason: str | None
    """``revoked`` (by an admin or the host), ``code_replayed``, ``refresh_token_reused``, or
    ``api_key_revoked`` when the approving key was revoked."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    """What a live token stands for: its grant, and the API key the host acts as."""

    grant: Grant
    key: ApiKey
    expires_at: datetime
