"""Whose credential a call uses: the binding derived from the caller, never asserted by the host."""

from __future__ import annotations

from gateway.config import UpstreamConfig
from gateway.errors import CredentialError
from gateway.principal import Principal
from store import Binding

LOCAL_SUBJECT = "local"  # key-less mode: one person on one machine


def binding_for(config: UpstreamConfig, principal: Principal, session_record_id: str) -> Binding:
    """The binding a call to `config` by `principal` in a session uses (docs/design.md, Identity)."""
    mode = config.auth.identity
    if mode == "session":
        subject: str | None = session_record_id
    elif principal.api_key_id is None:
        subject = LOCAL_SUBJECT
    elif mode == "vk":
        subject = principal.api_key_id
    else:
        subject = principal.user_id
    if subject is None:
        raise CredentialError(
            f"upstream {config.name!r} keeps one credential per user, and this API key belongs to no user; "
            "use a key created with --user"
        )
    return Binding(principal.organisation_id, config.name, mode, subject)
