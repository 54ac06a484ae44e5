"""The console's routes under `/admin`, each wrapped once: a request without a console session
is sent to sign in (a GET) or refused (a POST, 403); a POST without the session's CSRF token is
refused (403); a refusal anywhere is an HTML page with its status, never a 500 or a stack."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.console.pages import BASE, Console, _form
from api.console.render import redirect, render
from api.console.signin import Admin
from api.errors import Refused, Throttled
from store import StoreUnavailable

__all__ = ["console_routes"]

logger = logging.getLogger(__name__)

Provide = Callable[[Request], Console]
Reader = Callable[[Console, Request, Admin], Awaitable[Response]]
Writer = Callable[[Console, Request, Admin, FormData], Awaitable[Response]]


def _refusal(exc: Exception, admin: Admin | None) -> Response:
    match exc:
        case Refused(status=status, detail=detail):
            return render(
                "error.html", status, admin=admin, title=_TITLES.get(status, "Refused"), detail=detail
            )
        case Throttled(retry_after_s=retry_after_s):
            response = render(
                "error.html", 429, admin=admin, title="Too many attempts", detail="Try again later."
            )
            response.headers["retry-after"] = str(retry_after_s)
            return response
        case StoreUnavailable():
            return render(
                "error.html", 503, admin=admin, title="Unavailable", detail="The database is unavailable."
            )
        case _:
            return render(
                "error.html", 500, admin=admin, title="Failed", detail="The request failed; it is logged."
            )


_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Not possible"}


async def _guard(request: Request, step: Callable[[], Awaitable[Response]], admin: Admin | None) -> Response:
    try:
        return await step()
    except (Refused, Throttled, StoreUnavailable) as exc:
        return _refusal(exc, admin)
    except Exception as exc:  # the boundary: a bug still answers a page, logged
        logger.exception("console: %s %s failed", request.method, request.url.path)
        return _refusal(exc, admin)


def console_routes(console: Provide) -> list[BaseRoute]:
    def reading(handler: Reader) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            served = console(request)
            admin = await served.signed_in(request)
            if admin is None:
                return redirect(f"{BASE}/signin")
            return await _guard(request, lambda: handler(served, request, admin), admin)

        return endpoint

    def writing(handler: Writer) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            served = console(request)
            admin = await served.signed_in(request)
            if admin is None:
                detail = "You are not signed in to the console (or your session has ended)."
                return render("error.html", 403, admin=None, title="Not signed in", detail=detail)

            async def step() -> Response:
                form = await _form(request)
                if not admin.csrf_ok(form.get("csrf")):
                    detail = "This form is not from your console session; open the page again."
                    return render("error.html", 403, admin=admin, title="Not allowed", detail=detail)
                return await handler(served, request, admin, form)

            return await _guard(request, step, admin)

        return endpoint

    def both(read: Reader, write: Writer) -> Callable[[Request], Awaitable[Response]]:
        get, post = reading(read), writing(write)

        async def endpoint(request: Request) -> Response:
            return await (post if request.method == "POST" else get)(request)

        return endpoint

    async def home(request: Request) -> Response:
        return redirect(f"{BASE}/sessions")

    async def signin(request: Request) -> Response:
        served = console(request)
        if request.method == "POST":
            return await _guard(request, lambda: served.sign_in(request), None)
        return await _guard(request, lambda: served.signin_page(request), None)

    async def stylesheet(request: Request) -> Response:
        return console(request).stylesheet(request)

    async def sign_out(served: Console, request: Request, admin: Admin, form: FormData) -> Response:
        return await served.sign_out(request, admin)

    get, post = ["GET", "HEAD"], ["POST"]
    return [
        Route(BASE, home, methods=get),
        Route(f"{BASE}/", home, methods=get),
        Route(f"{BASE}/console.css", stylesheet, methods=get),
        Route(f"{BASE}/signin", signin, methods=[*get, *post]),
        Route(f"{BASE}/signout", writing(sign_out), methods=post),
        Route(f"{BASE}/sessions", reading(Console.sessions), methods=get),
        Route(f"{BASE}/sessions/{{sessionId}}", reading(Console.session), methods=get),
        Route(f"{BASE}/keys", both(Console.keys, Console.create_key), methods=[*get, *post]),
        Route(
            f"{BASE}/keys/{{keyId}}/revoke",
            both(Console.confirm_revoke_key, Console.revoke_key),
            methods=[*get, *post],
        ),
        Route(f"{BASE}/credentials", reading(Console.credentials), methods=get),
        Route(
            f"{BASE}/credentials/{{id}}/{{action:str}}",
            both(Console.confirm_credential, Console.act_on_credential),
            methods=[*get, *post],
        ),
        Route(f"{BASE}/upstreams", reading(Console.upstreams), methods=get),
        Route(f"{BASE}/grants", reading(Console.grants), methods=get),
        Route(
            f"{BASE}/grants/{{grantId}}/revoke",
            both(Console.confirm_revoke_grant, Console.revoke_grant),
            methods=[*get, *post],
        ),
    ]
