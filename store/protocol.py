"""The protocols a backend implements: everything the gateway and the api need from persistence.

``Store`` is the whole of it; ``CredentialStore`` is the part that holds upstream credentials,
reached as ``Store.credentials``. The SQLite backend (``store/sqlite.py``) is one
implementation; callers see only these protocols, the models and :mod:`store.errors`.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from .coordination import Coordination
from .models import (
    ApiKey,
    AuthFlow,
    Binding,
    CreatedKey,
    Credential,
    CredentialFilter,
    CredentialRow,
    Grant,
    IssuedToken,
    LiveSession,
    OAuthClient,
    Organisation,
    Page,
    PendingSignIn,
    RecordedInvocation,
    RecordedSession,
    RecordEvent,
    Seek,
    SignedIn,
    SignInClient,
    SignInCode,
)

__all__ = ["CredentialStore", "SignInStore", "Store"]


class CredentialStore(Protocol):
    """Per-identity upstream credentials, the flows that obtain them, and OAuth client registrations.

    Secret parts (a credential's and a flow's ``secret``, a client's ``client_secret``) are
    sealed with the store's ``Sealer`` on the way in and opened on the way out, each bound to
    where it is kept (its table or collection, row id and field), so a value copied elsewhere
    does not open. Nothing above the store handles ciphertext. A value that does not open
    raises :class:`store.SealError`; every other failure is a :class:`store.StoreError`.

    A binding (organisation, upstream, auth mode, subject) has at most one credential; it may
    have several flows, of which the newest live one is offered again.
    """

    # -- credentials ---------------------------------------------------------------------------

    async def credential_for(self, binding: Binding) -> Credential | None:
        """The binding's credential, or ``None``."""
        ...

    async def credential(self, organisation_id: str, credential_id: str) -> Credential | None:
        """The credential with this id if it is the organisation's, else ``None``."""
        ...

    async def save(
        self,
        credential_id: str,
        binding: Binding,
        *,
        kind: str,
        secret: Mapping[str, Any],
        header_names: tuple[str, ...],
        oauth_client_id: str | None,
        expires_at: datetime | None,
        now: datetime,
    ) -> None:
        """Store the binding's credential, ``active``, replacing any it had (a reauth keeps the
        existing credential's id; ``credential_id`` names a new one). A header credential counts
        as updated ``now``."""
        ...

    async def refreshed(
        self, credential_id: str, secret: Mapping[str, Any], expires_at: datetime | None, now: datetime
    ) -> None:
        """Keep a refreshed token: new secret and expiry, refreshed ``now``, status ``active``."""
        ...

    async def set_status(self, credential_id: str, status: str, *, unless: str | None = None) -> bool:
        """Set the credential's status unless it already is ``status`` or is ``unless``; whether
        it changed."""
        ...

    async def all_bindings(self) -> list[tuple[str, Binding, str, tuple[str, ...]]]:
        """(id, binding, status, header names) of every credential: for reconciling statuses."""
        ...

    async def delete(self, organisation_id: str, row_id: str) -> bool:
        """Delete the organisation's credential or flow with this id and every pending flow of
        its binding (flows first: one left behind could mint the credential again); ``False``
        if the organisation has no such row."""
        ...

    async def delete_session_bindings(self, organisation_id: str, session_id: str) -> int:
        """Remove what the ``session``-mode bindings of one (ended) session hold, flows then
        credentials; return how many credentials went."""
        ...

    async def listing(
        self,
        organisation_id: str,
        where: CredentialFilter,
        after: tuple[int, str] | None,
        limit: int,
        now: datetime,
        *,
        row_id: str | None = None,
    ) -> list[CredentialRow]:
        """Up to ``limit`` rows of the organisation's listing, newest first, matching ``where``:
        its credentials, and for each binding without one its newest flow still pending at
        ``now``. ``after`` is the ``key`` of the last row of the previous page (``None``: from
        the start); ``row_id`` narrows the listing to that one row."""
        ...

    # -- flows ---------------------------------------------------------------------------------

    async def create_flow(
        self,
        flow_id: str,
        binding: Binding,
        auth_kind: str,
        *,
        secret: Mapping[str, Any],
        oauth_client_id: str | None,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        """Keep a new pending flow. Its ``secret``'s ``state`` (OAuth) and ``link`` (the connect
        link's token), when they are strings, are what :meth:`flow_by_state` and
        :meth:`flow_by_link` find it by: keep a hash of each for that, never the value."""
        ...

    async def flow(self, flow_id: str) -> AuthFlow | None:
        """The flow with this id, claimed or not, expired or not; or ``None``."""
        ...

    async def flow_by_link(self, link: str) -> AuthFlow | None:
        """The flow whose connect link ends in ``link`` (its ``secret["link"]``)."""
        ...

    async def flow_by_state(self, state: str) -> AuthFlow | None:
        """The flow whose OAuth ``state`` this is (its ``secret["state"]``)."""
        ...

    async def live_flow(self, binding: Binding, auth_kind: str, not_before: datetime) -> AuthFlow | None:
        """The binding's newest unclaimed flow of this kind that lives past ``not_before`` and
        has a connect link to offer again."""
        ...

    async def claim_flow(self, flow_id: str, now: datetime) -> bool:
        """Mark the flow used; False if it was already (a replay) or has expired. Of two
        processes claiming one flow, exactly one gets True."""
        ...

    async def prune_flows(self, before: datetime) -> int:
        """Delete the flows that expired before ``before``; return how many."""
        ...

    # -- OAuth client registrations ------------------------------------------------------------

    async def oauth_client(self, upstream: str, issuer: str, redirect_uri: str) -> OAuthClient | None:
        """The gateway's registration at ``issuer`` for ``upstream`` and this redirect URI."""
        ...

    async def oauth_client_by_id(self, client_row_id: str) -> OAuthClient | None:
        """The registration with this id (a credential's ``oauth_client_id``), or ``None``."""
        ...

    async def save_oauth_client(self, client: OAuthClient, now: datetime) -> OAuthClient:
        """Keep a registration; if another process registered first, theirs wins and is returned."""
        ...

    # -- rotation ------------------------------------------------------------------------------

    async def reseal(self) -> int:
        """Seal every secret not yet under the current key with it; return how many were. A
        value changed meanwhile (a running gateway refreshed it) is left as it was written."""
        ...

    async def key_ids_in_use(self) -> set[str]:
        """The ids of the keys that sealed the secrets held now (which keys may be dropped)."""
        ...


class SignInStore(Protocol):
    """Hosts that sign in: their clients, authorization codes, grants and tokens.

    Codes, tokens and client secrets are handed in as values and kept as SHA-256 hashes, which
    is all a lookup needs (each is 256 random bits, see ``store/keys.py``). Revoking a grant,
    however it happens (an admin, RFC 7009, a replayed code, a reused refresh token), changes
    :meth:`Store.key_generation` for every process before it returns, as revoking a key does,
    so no cache goes on accepting its tokens. Every failure is a :class:`store.StoreError`.
    """

    async def client(self, client_id: str) -> SignInClient | None:
        """The stored client with this OAuth ``client_id``, or ``None``."""
        ...

    async def save_client(self, client: SignInClient) -> SignInClient:
        """Keep a client. A metadata document's client already kept under its ``client_id``
        takes the new metadata and expiry and keeps its id; the kept row is returned."""
        ...

    async def park_authorization(self, pending: PendingSignIn, per_address: int, now: datetime) -> bool:
        """Keep an authorization request until its ``expires_at``, unless ``per_address``
        requests from its address, unexpired at ``now``, are kept already: then ``False``."""
        ...

    async def pending_authorization(self, request_id: str, now: datetime) -> PendingSignIn | None:
        """The kept authorization request, unless it is unknown, ended or expired at ``now``."""
        ...

    async def end_authorization(self, request_id: str) -> bool:
        """Forget the authorization request; ``True`` for the one call that did (so that a
        request answered twice at once is finished once)."""
        ...

    async def issue_code(self, code: str, what: SignInCode, now: datetime) -> None:
        """Keep a new authorization code (its hash) for what it stands for."""
        ...

    async def redeem_code(self, code: str, now: datetime) -> SignInCode | None:
        """What the code stands for, the first time it is redeemed (expired or not: the caller
        words that); ``None`` when it is unknown or redeemed already. A second redemption
        revokes the grant the first one opened (RFC 6749 section 4.1.2)."""
        ...

    async def open_grant(
        self,
        code: str,
        grant_id: str,
        access: IssuedToken,
        refresh: IssuedToken | None,
        now: datetime,
    ) -> None:
        """Open the grant a redeemed code stands for, with its first tokens, in one transaction."""
        ...

    async def signed_in(self, access_token: str, now: datetime) -> SignedIn | None:
        """What a live access token stands for: unexpired at ``now``, its grant and its API key
        not revoked; else ``None``."""
        ...

    async def access_token_ended(
        self, access_token: str, now: datetime
    ) -> Literal["expired", "revoked"] | None:
        """Why a token ``signed_in`` refused is no longer good: the key that approved it was
        revoked, or it expired; ``None`` when no such token is known (a revoked grant's tokens
        are deleted with it)."""
        ...

    async def refreshable(self, refresh_token: str, now: datetime) -> SignedIn | None:
        """What a live, unused refresh token stands for. One already exchanged is a replay: its
        whole grant is revoked (``refresh_token_reused``) and ``None`` returned."""
        ...

    async def rotate(
        self, refresh_token: str, access: IssuedToken, refresh: IssuedToken, now: datetime
    ) -> bool:
        """Spend the refresh token for new tokens of its grant, in one transaction; ``False`` if
        it was spent meanwhile (then its grant is revoked, as by :meth:`refreshable`), revoked or
        expired."""
        ...

    async def grant_of(self, token: str) -> Grant | None:
        """The grant an access or refresh token (live or not) belongs to, or ``None``."""
        ...

    async def revoke_grant(self, grant_id: str, reason: str, now: datetime) -> bool:
        """Revoke the grant and drop its tokens; ``False`` if there is no such live grant."""
        ...

    async def grants(self, organisation_id: str) -> list[Grant]:
        """The organisation's grants, revoked ones too (until pruned), newest first."""
        ...

    async def prune(self, now: datetime, unused_before: datetime) -> int:
        """Delete expired codes, tokens and authorization requests, grants left without tokens,
        grants revoked a week ago, and clients unused since ``unused_before`` that no live
        grant needs; return how many rows went."""
        ...


class Store(Protocol):
    """Async persistence. Implementations raise only :class:`store.StoreError` and subclasses.

    Lookups are never cached here: a row written by another process (``mcpgw keys create``
    beside a running gateway) is visible to the next call. Caching is the caller's business.
    """

    async def ensure_organisation(self, name: str) -> Organisation:
        """Return the organisation called ``name``, creating it if there is none."""
        ...

    async def get_organisation(self, organisation_id: str) -> Organisation | None:
        """Return the organisation with this id, or ``None``."""
        ...

    async def find_organisation(self, name: str) -> Organisation | None:
        """Return the organisation called ``name``, or ``None`` (never creates one)."""
        ...

    async def create_api_key(
        self,
        organisation_id: str,
        *,
        user_id: str | None = None,
        is_admin: bool = False,
        tools_allow: Sequence[str] = ("*",),
        tools_deny: Sequence[str] = (),
    ) -> CreatedKey:
        """Create a key for the organisation; raise ``OrganisationNotFound`` if it does not exist.

        ``tools_allow``/``tools_deny`` narrow which tools the key's sessions see (globs over
        host-visible names); they never widen what the upstreams' own filters allow.

        The returned ``CreatedKey.secret`` is the only copy of the secret; only its hash is kept.
        """
        ...

    async def find_api_key(self, secret: str) -> ApiKey | None:
        """Return the key whose secret this is, or ``None`` if unknown or revoked."""
        ...

    async def api_key_revoked(self, secret: str) -> bool:
        """Whether this secret is a key that was revoked (``find_api_key`` found nothing for it
        and its holder is told why)."""
        ...

    async def live_api_keys(
        self, organisation_id: str, *, api_key_id: str | None = None, user_id: str | None = None
    ) -> list[ApiKey]:
        """The organisation's keys that are not revoked, narrowed to one id and/or one user."""
        ...

    async def list_api_keys(self, organisation_id: str) -> list[ApiKey]:
        """Every key of the organisation, revoked ones too, oldest first, with ``last_used_at``."""
        ...

    async def revoke_api_key(self, api_key_id: str) -> None:
        """Revoke the key; raise ``KeyNotFound`` if there is none. Revoking twice is a no-op.

        When this returns, :meth:`key_generation` has changed for every process using the
        store, so none of them goes on accepting the key from a cache.
        """
        ...

    def key_generation(self) -> Hashable:
        """A value that changes whenever a key is revoked, by this process or any other.

        Callers that cache keys compare it on every use, so it must be cheap and must not block:
        the SQLite store ``stat()``s a marker file beside the database (about a microsecond,
        see ``store/_revocations.py``); a server database would keep a counter that a listener
        (PostgreSQL ``LISTEN``/``NOTIFY``) advances.
        """
        ...

    async def record_key_use(self, used: Mapping[str, datetime]) -> None:
        """Record when keys (by id) were last used; an older time than the stored one, or an
        unknown id, changes nothing. Callers batch: this is not meant to run per request."""
        ...

    async def write_records(self, events: Sequence[RecordEvent]) -> None:
        """Commit ``events`` (session starts, invocations, session ends) in one transaction.

        When this returns, every event is durable; when it raises, none was written. An
        invocation counts toward its session's ``call_count`` and ``last_call_at``.
        """
        ...

    async def prune_records(self, *, older_than: datetime | None, max_invocations: int | None) -> int:
        """Delete sessions idle since before ``older_than`` with their invocations, older calls,
        and the oldest invocations beyond ``max_invocations``; return the number of rows deleted
        (not counting the invocations that go with a deleted session)."""
        ...

    async def end_open_sessions(self, reason: str, *, keep_live: bool = False) -> int:
        """End every session the record shows open, as of its last call, with ``reason``; return
        how many. Run at start: the sessions open then are a previous run's, which stopped
        without ending them (killed, or its machine went down). ``keep_live`` (replicas): only
        those no replica serves now (no ``live_sessions`` row: its end was lost)."""
        ...

    async def open_live_session(self, live: LiveSession) -> LiveSession:
        """Write a session's live row before its first upstream is contacted; for a 2026-07-28
        group that another replica opened first (same ``group_key``), return that one's row."""
        ...

    async def live_session(self, mcp_session_id: str) -> LiveSession | None:
        """The live row of a session some replica serves, None once it has ended."""
        ...

    async def sessions_seen(self, mcp_session_ids: Collection[str], at: datetime) -> None:
        """These sessions had a request (or an open stream) at ``at``; batched by the caller."""
        ...

    async def end_live_session(self, mcp_session_id: str) -> bool:
        """Delete the live row; True if this call did (the caller ends the session), False if
        it was gone already (another replica ended it)."""
        ...

    async def end_idle_sessions(
        self, sessions_before: datetime, groups_before: datetime
    ) -> list[LiveSession]:
        """Delete and return the live rows last seen before these times (sessions, groups):
        each to one caller alone, whichever replicas run this at once."""
        ...

    async def list_sessions(
        self,
        organisation_id: str | None,
        *,
        api_key_id: str | None,
        seek: Seek,
        limit: int,
        client_name: str | None = None,
    ) -> Page[RecordedSession]:
        """A page of sessions, most recent activity first.

        ``organisation_id=None`` lists every organisation (the operator's terminal view);
        ``api_key_id`` narrows to the sessions one key opened, ``client_name`` (within an
        organisation) to those of one client as it named itself; ``None`` does not narrow.
        """
        ...

    async def get_session(
        self, organisation_id: str | None, session_id: str, *, api_key_id: str | None
    ) -> RecordedSession | None:
        """The session with this id, if it is in the organisation (and opened by ``api_key_id``)."""
        ...

    async def find_session(self, mcp_session_id: str) -> RecordedSession | None:
        """The session a host knew by this ``Mcp-Session-Id`` (the newest, should two share
        one), in any organisation: for the operator's terminal, not for callers of the API.
        No index has this column: it reads every session row."""
        ...

    async def list_invocations(self, session_id: str, *, seek: Seek, limit: int) -> Page[RecordedInvocation]:
        """A page of a session's invocations, oldest first. Check the caller may see the session
        (``get_session``) before calling this."""
        ...

    @property
    def credentials(self) -> CredentialStore:
        """Per-identity upstream credentials, pending flows and OAuth client registrations.

        Raises ``StoreError`` when the store was opened without a ``Sealer``: it could neither
        seal nor open their secrets.
        """
        ...

    @property
    def signin(self) -> SignInStore:
        """Hosts that sign in: their clients, authorization codes, grants and tokens."""
        ...

    @property
    def coordination(self) -> Coordination:
        """How this process reaches the others on the same database (store/coordination.py)."""
        ...

    async def gateway_secret(self, name: str) -> bytes:
        """A random 32-byte secret kept in the database under ``name``, created on first use, so
        every gateway process on this database agrees on it (e.g. the cursor signing key)."""
        ...
