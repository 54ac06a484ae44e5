"""The cookies that tie a connect flow to the browser of the person who confirmed it.

A connect link can reach someone other than the identity it was made for (it is pasted into a
chat, or someone sends theirs on as bait), so the connect page first names whose credential it
makes and asks the person to confirm, with a POST that must carry the page's CSRF token: the
token is also in a cookie set with the page (SameSite=Strict, sealed with the flow's id), so a
form posted from anywhere else is refused. Confirming sets a second cookie, sealed for that one
flow and HttpOnly, that the rest of the flow needs: the OAuth callback (SameSite=Lax, so that the
authorization server's redirect back carries it) and the header form. A callback opened in
another browser, which never confirmed the link (bob confirms his own link, then hands the
authorization server's page on to alice), has no such cookie and connects nothing.

Both values are sealed with the gateway's keys (`store.Sealer`, AES-GCM), bound to their purpose
and flow, and carry the flow's expiry; neither holds a secret of the flow itself.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import time
from collections.abc import Mapping

from starlette.responses import Response

from store import AuthFlow, Sealer, SealError

__all__ = ["CSRF_COOKIE", "BrowserBinding"]

CSRF_COOKIE = "mcpgw_connect_csrf"
_BOUND_PREFIX = "mcpgw_connect_"
_CSRF_PURPOSE = "credentials/connect/csrf"
_BOUND_PURPOSE = "credentials/connect/browser/"


class BrowserBinding:
    def __init__(self, sealer: Sealer, *, secure: bool) -> None:
        self._sealer = sealer
        self._secure = secure  # Secure cookies where the gateway's public URL is https

    # -- the confirmation page's CSRF token ----------------------------------------------------

    def csrf_token(self, flow: AuthFlow, cookies: Mapping[str, str]) -> str:
        """The token for the page's form: the one this browser already holds for the flow (so
        a second tab of the page still works), else a new one (`set_csrf` sets its cookie)."""
        kept = self._opened(cookies.get(CSRF_COOKIE), _CSRF_PURPOSE, flow)
        token = kept.get("csrf") if kept is not None else None
        return token if isinstance(token, str) else secrets.token_urlsafe(24)

    def set_csrf(self, response: Response, flow: AuthFlow, token: str, path: str) -> None:
        value = self._sealed({"flow": flow.id, "csrf": token, "until": _until(flow)}, _CSRF_PURPOSE)
        response.set_cookie(
            CSRF_COOKIE,
            value,
            max_age=_max_age(flow),
            path=path,
            secure=self._secure,
            httponly=True,
            samesite="strict",
        )

    def csrf_ok(self, flow: AuthFlow, cookies: Mapping[str, str], posted: object) -> bool:
        kept = self._opened(cookies.get(CSRF_COOKIE), _CSRF_PURPOSE, flow)
        expected = kept.get("csrf") if kept is not None else None
        return (
            isinstance(expected, str)
            and isinstance(posted, str)
            and hmac.compare_digest(posted.encode(), expected.encode())
        )

    # -- the browser that confirmed ------------------------------------------------------------

    def bind(self, response: Response, flow: AuthFlow, path: str) -> None:
        """Mark this browser as the one that confirmed `flow`, for requests under `path`."""
        value = self._sealed({"flow": flow.id, "until": _until(flow)}, _BOUND_PURPOSE + flow.id)
        response.set_cookie(
            _BOUND_PREFIX + flow.id,
            value,
            max_age=_max_age(flow),
            path=path,
            secure=self._secure,
            httponly=True,
            samesite="lax",
        )

    def bound(self, flow: AuthFlow, cookies: Mapping[str, str]) -> bool:
        """Whether the request comes from the browser that confirmed `flow`."""
        return self._opened(cookies.get(_BOUND_PREFIX + flow.id), _BOUND_PURPOSE + flow.id, flow) is not None

    def unbind(self, response: Response, flow: AuthFlow, path: str) -> None:
        response.delete_cookie(_BOUND_PREFIX + flow.id, path=path, secure=self._secure, httponly=True)

    # -- sealing -------------------------------------------------------------------------------

    def _sealed(self, value: dict[str, object], purpose: str) -> str:
        sealed = self._sealer.seal(json.dumps(value).encode(), purpose)
        return base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")

    def _opened(self, cookie: str | None, purpose: str, flow: AuthFlow) -> dict[str, object] | None:
        if not cookie or len(cookie) > 1024:
            return None
        try:
            sealed = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            kept = json.loads(self._sealer.open(sealed, purpose))
        except (binascii.Error, ValueError, SealError):
            return None
        if not isinstance(kept, dict) or kept.get("flow") != flow.id:
            return None
        until = kept.get("until")
        if not isinstance(until, int | float) or until <= time.time():
            return None
        return kept


def _until(flow: AuthFlow) -> float:
    return flow.expires_at.timestamp()


def _max_age(flow: AuthFlow) -> int:
    return max(1, int(_until(flow) - time.time()))
