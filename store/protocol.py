"""The ``Store`` Protocol: everything the gateway and the api need from persistence."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from ._credentials import CredentialSql
from .models import (
    ApiKey,
    CreatedKey,
    Organisation,
    Page,
    RecordedInvocation,
    RecordedSession,
    RecordEvent,
    Seek,
)

__all__ = ["Store"]


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

    async def end_open_sessions(self, reason: str) -> int:
        """End every session the record shows open, as of its last call, with ``reason``; return
        how many. Run at start: the sessions open then are a previous run's, which stopped
        without ending them (killed, or its machine went down)."""
        ...

    async def list_sessions(
        self, organisation_id: str | None, *, api_key_id: str | None, seek: Seek, limit: int
    ) -> Page[RecordedSession]:
        """A page of sessions, most recent activity first.

        ``organisation_id=None`` lists every organisation (the operator's terminal view);
        ``api_key_id`` narrows to the sessions one key opened, ``None`` does not narrow.
        """
        ...

    async def get_session(
        self, organisation_id: str | None, session_id: str, *, api_key_id: str | None
    ) -> RecordedSession | None:
        """The session with this id, if it is in the organisation (and opened by ``api_key_id``)."""
        ...

    async def list_invocations(self, session_id: str, *, seek: Seek, limit: int) -> Page[RecordedInvocation]:
        """A page of a session's invocations, oldest first. Check the caller may see the session
        (``get_session``) before calling this."""
        ...

    @property
    def credentials(self) -> CredentialSql:
        """Per-identity upstream credentials, pending flows and OAuth client registrations.

        Secrets are sealed on the way in and opened on the way out (``store/_credentials.py``);
        raises ``StoreError`` when the store was opened without a ``Sealer``.
        """
        ...

    async def gateway_secret(self, name: str) -> bytes:
        """A random 32-byte secret kept in the database under ``name``, created on first use, so
        every gateway process on this database agrees on it (e.g. the cursor signing key)."""
        ...
