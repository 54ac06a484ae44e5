"""The ``Store`` Protocol: everything the gateway and the api need from persistence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .models import ApiKey, CreatedKey, Organisation

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

    async def revoke_api_key(self, api_key_id: str) -> None:
        """Revoke the key; raise ``KeyNotFound`` if there is none. Revoking twice is a no-op."""
        ...
