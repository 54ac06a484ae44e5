"""The values the store hands out: frozen, slotted, and free of secrets (except CreatedKey)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["ApiKey", "CreatedKey", "Organisation"]


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


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just created, with its secret: the only time the secret is available."""

    key: ApiKey
    secret: str = field(repr=False)
    """The full ``mgw_...`` key. Show it once; it cannot be recovered."""
