"""Who is calling: what every host request is served as, once its key or token is checked."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import ToolFilter


@dataclass(frozen=True, slots=True)
class Principal:
    organisation_id: str
    api_key_id: str | None  # None only in key-less local mode
    user_id: str | None
    is_admin: bool
    tools: ToolFilter = field(default_factory=ToolFilter)  # the key's narrowing, over host-visible names
    # A signed-in host's: the grant its token belongs to, the registered client's id (what a
    # session records as its clientId) and the MCP URL the token is bound to. None for a key.
    grant_id: str | None = None
    client_id: str | None = None
    resource: str | None = None

    def same_caller(self, other: Principal) -> bool:
        return (
            self.organisation_id == other.organisation_id
            and self.api_key_id == other.api_key_id
            and self.grant_id == other.grant_id
        )
