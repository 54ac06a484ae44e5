"""Turning console pages into HTML responses: Jinja2 templates kept beside this module, always
autoescaped, and the headers every page carries (no caching, a strict CSP: the console has no
script and only its own stylesheet, so it works with JavaScript off)."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import orjson
from jinja2 import Environment, FunctionLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse

__all__ = ["HEADERS", "SIGNIN_HEADERS", "STYLESHEET", "pretty_json", "redirect", "render", "when"]

_POLICY = "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'"
HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": f"{_POLICY}; form-action 'self'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}
SIGNIN_HEADERS = {**HEADERS, "content-security-policy": _POLICY}
"""The sign-in page's: its "Sign in with <provider>" forms post here and are redirected to the
provider, and browsers hold a form's redirects to `form-action` too."""
SHOWN_PAYLOAD_CHARS = 16_384
"""How much of a call's arguments or result a timeline shows; the rest is summarised by size."""

_TEMPLATES = files("api.console").joinpath("templates")


def _load(name: str) -> str:
    return _TEMPLATES.joinpath(name).read_text("utf-8")


_ENV = Environment(
    loader=FunctionLoader(_load),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
STYLESHEET = _load("console.css").encode()


def when(moment: datetime | None) -> str:
    """A time as the console shows it: UTC, to the second."""
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def pretty_json(text: str | None) -> dict[str, Any]:
    """A recorded payload for a person: indented when it is JSON, cut to `SHOWN_PAYLOAD_CHARS`
    with its full size said."""
    if text is None:
        return {"text": "", "size": "0 B", "cut": False}
    try:
        shown = orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        shown = text
    size = _size(len(text.encode()))
    if len(shown) > SHOWN_PAYLOAD_CHARS:
        return {"text": shown[:SHOWN_PAYLOAD_CHARS], "size": size, "cut": True}
    return {"text": shown, "size": size, "cut": False}


_ENV.filters["when"] = when


def render(
    template: str, status: int = 200, *, headers: dict[str, str] = HEADERS, **context: Any
) -> HTMLResponse:
    html = _ENV.get_template(template).render(**context)
    return HTMLResponse(html, status, headers=headers)


def redirect(url: str) -> RedirectResponse:
    # 303: the browser follows a POST's answer with a GET.
    return RedirectResponse(url, 303, headers={"cache-control": "no-store", "referrer-policy": "no-referrer"})
