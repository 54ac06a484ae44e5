"""Who is using the console: an admin signed in with an admin API key, kept in a sealed cookie.

The key is POSTed once on the sign-in form (never in a URL) and checked like any API key
(`Authenticate`, with its failure throttling); what the browser then holds is the console
session: organisation, key id, user, a CSRF token and an expiry, sealed with the gateway's
sealer (AES-GCM, `store.Sealer`) in an HttpOnly, SameSite=Strict cookie (Secure when the
gateway's public URL is https). Nothing is kept server-side, so every gateway on the database
accepts it; every request re-reads the key, so revoking the admin's key (or its losing admin)
ends its console sessions at once. The key itself never reaches the cookie.

Where the gateway has OpenID Connect providers for host sign-in, an admin may sign in with one
instead (`pages.py`, `ProviderSignIn`): the person becomes the key `identity_key` finds for them,
and gets a console session only if that key is an admin's.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from store import Sealer, SealError, Store

__all__ = ["COOKIE", "SESSION_TTL_S", "Admin", "ConsoleSessions"]

COOKIE = "mcpgw_console"
SESSION_TTL_S = 8 * 3600
_WHERE = "console-session"  # what the sealing is bound to: a value sealed for anything else does not open
_MAX_COOKIE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Admin:
    """The signed-in admin, as `api.sessions.Caller` describes a caller."""

    organisation_id: str
    api_key_id: str
    user_id: str | None
    csrf: str
    expires_at: float
    is_admin: bool = True

    def csrf_ok(self, posted: object) -> bool:
        # As bytes: compare_digest refuses str that is not ASCII, which anyone can post.
        return isinstance(posted, str) and hmac.compare_digest(posted.encode(), self.csrf.encode())


class ConsoleSessions:
    def __init__(self, store: Store, sealer: Sealer, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._sealer = sealer
        self._clock = clock

    def open_session(self, organisation_id: str, api_key_id: str, user_id: str | None) -> tuple[Admin, str]:
        """A new console session for this admin key, and the cookie value that carries it."""
        admin = Admin(
            organisation_id, api_key_id, user_id, secrets.token_urlsafe(24), self._clock() + SESSION_TTL_S
        )
        fields = [admin.organisation_id, admin.api_key_id, admin.user_id, admin.csrf, admin.expires_at]
        sealed = self._sealer.seal(orjson.dumps(fields), _WHERE)
        return admin, base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    async def admin(self, cookie: str | None) -> Admin | None:
        """The admin whose session this cookie carries: unexpired, sealed by this gateway, and
        its key still live and an admin's; else None."""
        if not cookie or len(cookie) > _MAX_COOKIE_CHARS:
            return None
        try:
            sealed = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            organisation_id, api_key_id, user_id, csrf, expires_at = orjson.loads(
                self._sealer.open(sealed, _WHERE)
            )
        except (binascii.Error, ValueError, SealError, TypeError):
            return None
        if not isinstance(expires_at, (int, float)) or expires_at <= self._clock():
            return None
        keys = await self._store.live_api_keys(organisation_id, api_key_id=api_key_id)
        if not any(key.is_admin for key in keys):
            return None
        return Admin(organisation_id, api_key_id, user_id, csrf, float(expires_at))
