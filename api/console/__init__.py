"""The admin console at `/admin/`: server-rendered pages over the same store queries and cursors
as the JSON APIs, for an admin signed in with an admin API key (`signin.py`)."""

from api.console.pages import BASE, Console, ProviderRedirect, ProviderSignIn, UpstreamStatus
from api.console.routes import console_routes
from api.console.signin import ConsoleSessions

__all__ = [
    "BASE",
    "Console",
    "ConsoleSessions",
    "ProviderRedirect",
    "ProviderSignIn",
    "UpstreamStatus",
    "console_routes",
]
