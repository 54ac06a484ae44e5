"""The console's pages: what an admin sees and does at `/admin/`, each scoped to the admin's
organisation. An id of another organisation's object is the same 404 as one that does not
exist; every POST needs the session's CSRF token; no secret is ever rendered (a new key's
secret once, on the page that creates it, and never again)."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from api.console.render import SIGNIN_HEADERS, STYLESHEET, pretty_json, redirect, render, when
from api.console.signin import COOKIE, SESSION_TTL_S, Admin, ConsoleSessions
from api.credentials import CredentialsApi, render_row
from api.cursor import CursorCodec
from api.errors import ProviderUnavailable, Refused, Throttled
from api.paging import page_body, read_limit, read_seek
from api.sessions import Authenticate, Caller, client_of, is_uuid
from store import ApiKey, CredentialFilter, Grant, RecordedSession, Seek, Store, utc_now

__all__ = ["BASE", "Console", "ProviderRedirect", "ProviderSignIn", "UpstreamStatus"]

logger = logging.getLogger(__name__)

BASE = "/admin"
_SIGNIN_CSRF = "mcpgw_console_signin"
_PAGE = 50
_MAX_KEY_CHARS = 200
_STATUSES = ("active", "pending", "needs_reauth", "needs_update", "orphaned")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?")
_LATEST_SEQ = 2**62  # above every row's seq: an `until` bound includes its whole millisecond


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """One configured upstream as the console shows it: its state and last error (as `/readyz`
    reports them) and its last hour of calls."""

    name: str
    transport: str
    state: str
    last_error: str | None
    last_error_at: str | None
    calls: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class ProviderRedirect:
    """Where to send the browser to sign in with an OpenID Connect provider, and the cookie that
    carries the sealed sign-in state to the provider's callback (set with the redirect)."""

    url: str
    cookie: str
    value: str
    max_age_s: int
    path: str


@dataclass(frozen=True, slots=True)
class ProviderSignIn:
    """The gateway's OpenID Connect providers as the console offers them: `labels` (name ->
    button label) and `begin`, which starts a sign-in for the console. The provider's callback
    is the gateway's (shared with the consent page); it hands an admin back to
    `Console.provider_signed_in`."""

    labels: Mapping[str, str]
    begin: Callable[[str], Awaitable[ProviderRedirect]]


class Console:
    def __init__(
        self,
        store: Store,
        codec: CursorCodec,
        authenticate: Authenticate,
        sessions: ConsoleSessions,
        credentials: CredentialsApi,
        upstreams: Callable[[], Sequence[UpstreamStatus]],
        *,
        secure_cookies: bool,
        providers: ProviderSignIn | None = None,
    ) -> None:
        self._store = store
        self._codec = codec
        self._authenticate = authenticate
        self._sessions = sessions
        self._credentials = credentials
        self._upstreams = upstreams
        self._secure = secure_cookies
        self._providers = providers

    # -- signing in and out --------------------------------------------------------------------

    async def signed_in(self, request: Request) -> Admin | None:
        return await self._sessions.admin(request.cookies.get(COOKIE))

    async def signin_page(self, request: Request) -> Response:
        if await self.signed_in(request) is not None:
            return redirect(f"{BASE}/sessions")
        return self._signin_form(None, 200)

    def _signin_form(self, problem: str | None, status: int) -> Response:
        csrf = secrets.token_urlsafe(24)
        labels = {} if self._providers is None else dict(self._providers.labels)
        response = render(
            "signin.html",
            status,
            headers=SIGNIN_HEADERS,
            problem=problem,
            csrf=csrf,
            admin=None,
            providers=labels,
        )
        response.set_cookie(
            _SIGNIN_CSRF, csrf, max_age=3600, path=BASE, secure=self._secure, httponly=True, samesite="strict"
        )
        return response

    async def sign_in(self, request: Request) -> Response:
        form = await _form(request)
        posted, cookie = form.get("csrf"), request.cookies.get(_SIGNIN_CSRF, "")
        if not (
            isinstance(posted, str) and cookie and secrets.compare_digest(posted.encode(), cookie.encode())
        ):
            return self._signin_form("This form had expired; sign in again.", 403)
        provider = form.get("provider")
        if isinstance(provider, str):
            return await self._to_provider(provider)
        key = form.get("api_key")
        if not isinstance(key, str) or not key.strip() or len(key) > _MAX_KEY_CHARS:
            return self._signin_form("Enter an admin API key.", 400)
        try:
            caller = await self._authenticate({"x-api-key": key.strip()}, client_of(request))
        except Throttled as exc:
            response = self._signin_form("Too many failed attempts from here; try again later.", 429)
            response.headers["retry-after"] = str(exc.retry_after_s)
            return response
        if caller is None or caller.api_key_id is None or getattr(caller, "grant_id", None) is not None:
            return self._signin_form("That API key is not valid.", 401)
        if not caller.is_admin:
            return self._signin_form("That API key is not an admin's: the console is for admins.", 403)
        logger.info("console: key %s of organisation %s signed in", caller.api_key_id, caller.organisation_id)
        return self._open_session(
            redirect(f"{BASE}/sessions"), caller.organisation_id, caller.api_key_id, caller.user_id
        )

    async def _to_provider(self, provider: str) -> Response:
        if self._providers is None or provider not in self._providers.labels:
            return self._signin_form("That sign-in method is not offered here.", 400)
        try:
            begun = await self._providers.begin(provider)
        except ProviderUnavailable as exc:
            return self._signin_form(f"Signing in that way is not possible now: {exc}", 502)
        response = redirect(begun.url)
        # SameSite=Lax: the provider's redirect back is a top-level GET from its site.
        response.set_cookie(
            begun.cookie,
            begun.value,
            max_age=begun.max_age_s,
            path=begun.path,
            secure=self._secure,
            httponly=True,
            samesite="lax",
        )
        return response

    def provider_signed_in(self, caller: Caller, who: str) -> Response:
        """The answer to the provider's callback for a console sign-in: `caller` is what the
        person signs in as (`who`: their e-mail or user id). A page that moves on to the console
        rather than a redirect: the callback is reached from the provider's site, and a browser
        withholds a SameSite=Strict cookie on every redirect of such a navigation."""
        if caller.api_key_id is None or not caller.is_admin:
            detail = f"{who} is not an admin of their organisation: the console is for admins."
            return render("error.html", 403, admin=None, title="Not an admin", detail=detail)
        logger.info("console: %s of organisation %s signed in with a provider", who, caller.organisation_id)
        page = render("entered.html", admin=None, who=who)
        return self._open_session(page, caller.organisation_id, caller.api_key_id, caller.user_id)

    def _open_session(
        self, response: Response, organisation_id: str, api_key_id: str, user_id: str | None
    ) -> Response:
        _, value = self._sessions.open_session(organisation_id, api_key_id, user_id)
        response.set_cookie(
            COOKIE,
            value,
            max_age=SESSION_TTL_S,
            path=BASE,
            secure=self._secure,
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(_SIGNIN_CSRF, path=BASE)
        return response

    async def sign_out(self, request: Request, admin: Admin) -> Response:
        response = redirect(f"{BASE}/signin")
        response.delete_cookie(COOKIE, path=BASE)
        return response

    def stylesheet(self, request: Request) -> Response:
        return Response(STYLESHEET, media_type="text/css", headers={"cache-control": "max-age=3600"})

    # -- sessions ------------------------------------------------------------------------------

    async def sessions(self, request: Request, admin: Admin) -> Response:
        query = request.query_params
        keys = await self._keys(admin)
        user = query.get("user", "").strip()
        key_id = query.get("key", "").strip()
        since, until = _moment(query.get("since")), _moment(query.get("until"))
        if key_id and key_id not in keys:
            raise Refused(404, "NotFound", "No such API key in this organisation.")
        user_keys: list[ApiKey] = []
        if user and not key_id:
            user_keys = [key for key in keys.values() if key.user_id == user]
            if len(user_keys) == 1:
                key_id = user_keys[0].id
        sessions: list[RecordedSession] = []
        cursors: dict[str, str | None] = {"next": None, "previous": None}
        choose_key = bool(user) and not key_id
        client = query.get("client", "").strip() or None
        if not (user and not user_keys and not key_id) and not choose_key:
            # The API's own scope string: a cursor from either pages the other. A client filter
            # (the API has none) is a query of its own.
            parts = ("sessions", admin.organisation_id, key_id or "*")
            scope = "|".join((*parts, "client", client) if client else parts)
            seek = read_seek(query, self._codec, scope)
            starts_at_until = False
            if seek.key is None and until is not None:
                seek, starts_at_until = Seek((int(until.timestamp() * 1000), _LATEST_SEQ)), True
            page = await self._store.list_sessions(
                admin.organisation_id,
                api_key_id=key_id or None,
                client_name=client,
                seek=seek,
                limit=read_limit(query, _PAGE),
            )
            body = page_body(
                page, codec=self._codec, scope=scope, incoming=query.get("Cursor"), render=lambda s: {}
            )
            cursors = body["meta"]["cursors"]
            if starts_at_until:  # the first page of the range: what is newer is outside it
                cursors["previous"] = None
            sessions = list(page.rows)
            if since is not None and any(s.last_call_at < since for s in sessions):
                # Newest first: past the first older row, every row is older.
                sessions = [s for s in sessions if s.last_call_at >= since]
                cursors["next"] = None
        filters = {"user": user, "key": query.get("key", ""), "client": client or ""}
        filters["since"] = query.get("since", "")
        filters["until"] = query.get("until", "")
        filters["Limit"] = query.get("Limit", "")
        kept = {name: value for name, value in filters.items() if value}
        return render(
            "sessions.html",
            admin=admin,
            sessions=sessions,
            keys=keys,
            filters=filters,
            kept=kept,
            cursors=cursors,
            user_keys=user_keys if choose_key else [],
            unknown_user=bool(user) and not user_keys and not key_id,
        )

    async def session(self, request: Request, admin: Admin) -> Response:
        session_id = request.path_params["sessionId"]
        found = None
        if is_uuid(session_id):
            found = await self._store.get_session(admin.organisation_id, session_id, api_key_id=None)
        if found is None:
            raise Refused(404, "Mcp.SessionNotFound", "No such session in this organisation.")
        scope = "|".join(("invocations", found.id, admin.organisation_id, "*"))
        query = request.query_params
        page = await self._store.list_invocations(
            found.id, seek=read_seek(query, self._codec, scope), limit=read_limit(query, _PAGE)
        )
        body = page_body(
            page,
            codec=self._codec,
            scope=scope,
            incoming=request.query_params.get("Cursor"),
            render=lambda call: {},
        )
        slowest = max((call.duration_ms for call in page.rows), default=0)
        calls = [
            {
                "call": call,
                "arguments": pretty_json(call.arguments_json),
                "result": pretty_json(call.result_json),
            }
            for call in page.rows
        ]
        keys = await self._keys(admin)
        return render(
            "session.html",
            admin=admin,
            session=found,
            key=keys.get(found.api_key_id or ""),
            calls=calls,
            slowest=max(slowest, 1),
            cursors=body["meta"]["cursors"],
            kept={"Limit": query["Limit"]} if query.get("Limit") else {},
        )

    # -- keys ----------------------------------------------------------------------------------

    async def keys(self, request: Request, admin: Admin) -> Response:
        keys = await self._store.list_api_keys(admin.organisation_id)
        return render("keys.html", admin=admin, keys=keys, created=None)

    async def create_key(self, request: Request, admin: Admin, form: FormData) -> Response:
        user = _text(form, "user")
        allow = _globs(form, "tools_allow") or ["*"]
        deny = _globs(form, "tools_deny")
        created = await self._store.create_api_key(
            admin.organisation_id,
            user_id=user or None,
            is_admin=form.get("admin") == "on",
            tools_allow=allow,
            tools_deny=deny,
        )
        logger.info("console: key %s created by key %s", created.key.id, admin.api_key_id)
        keys = await self._store.list_api_keys(admin.organisation_id)
        return render("keys.html", 201, admin=admin, keys=keys, created=created)

    async def confirm_revoke_key(self, request: Request, admin: Admin) -> Response:
        key = await self._key(admin, request.path_params["keyId"])
        return render(
            "confirm.html", admin=admin, what=f"Revoke API key {key.prefix}…", detail=_key_words(key)
        )

    async def revoke_key(self, request: Request, admin: Admin, form: FormData) -> Response:
        key = await self._key(admin, request.path_params["keyId"])
        await self._store.revoke_api_key(key.id)  # every cache of it is purged from the next request
        logger.info("console: key %s revoked by key %s", key.id, admin.api_key_id)
        return redirect(f"{BASE}/keys")

    # -- credentials ---------------------------------------------------------------------------

    async def credentials(self, request: Request, admin: Admin) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in _STATUSES:
            raise Refused(400, "invalid_filter", f"status must be one of {', '.join(_STATUSES)}.")
        cursor = request.query_params.get("cursor")
        rows, following = await self._credentials.page(admin, CredentialFilter(status=status), cursor, _PAGE)
        shown = [render_row(row, admin) for row in rows]
        return render(
            "credentials.html",
            admin=admin,
            rows=shown,
            chosen=status,
            statuses=_STATUSES,
            following=following,
        )

    async def confirm_credential(self, request: Request, admin: Admin) -> Response:
        action = _action(request)
        row = await self._credentials.row(admin, request.path_params["id"])
        rendered = render_row(row, admin)
        verb = "Re-authorise" if action == "reauth" else "Delete"
        detail = (
            f"{rendered['kind']} for {row.binding.upstream} ({row.binding.auth_mode} {row.binding.subject})"
        )
        return render("confirm.html", admin=admin, what=f"{verb} this credential", detail=detail)

    async def act_on_credential(self, request: Request, admin: Admin, form: FormData) -> Response:
        action = _action(request)
        row = await self._credentials.row(admin, request.path_params["id"])
        if action == "delete":
            await self._credentials.remove(admin, row)
            return redirect(f"{BASE}/credentials")
        _, kind, url = await self._credentials.start_reauth(admin, row)
        return render("reauth.html", admin=admin, row=render_row(row, admin), kind=kind, url=url)

    # -- upstreams and sign-ins ----------------------------------------------------------------

    async def upstreams(self, request: Request, admin: Admin) -> Response:
        return render("upstreams.html", admin=admin, upstreams=self._upstreams())

    async def grants(self, request: Request, admin: Admin) -> Response:
        grants = await self._store.signin.grants(admin.organisation_id)
        return render("grants.html", admin=admin, grants=grants)

    async def confirm_revoke_grant(self, request: Request, admin: Admin) -> Response:
        grant = await self._grant(admin, request.path_params["grantId"])
        who = grant.user_id or grant.key_prefix or grant.api_key_id
        detail = (
            f"{grant.client_name or grant.client_row_id} signed in as {who}, since {when(grant.created_at)}"
        )
        return render("confirm.html", admin=admin, what="Revoke this sign-in", detail=detail)

    async def revoke_grant(self, request: Request, admin: Admin, form: FormData) -> Response:
        grant = await self._grant(admin, request.path_params["grantId"])
        await self._store.signin.revoke_grant(grant.id, "revoked", utc_now())
        return redirect(f"{BASE}/grants")

    # -- lookups -------------------------------------------------------------------------------

    async def _keys(self, admin: Admin) -> dict[str, ApiKey]:
        return {key.id: key for key in await self._store.list_api_keys(admin.organisation_id)}

    async def _key(self, admin: Admin, key_id: str) -> ApiKey:
        key = (await self._keys(admin)).get(key_id)
        if key is None:
            raise Refused(404, "Keys.KeyNotFound", "No such API key in this organisation.")
        return key

    async def _grant(self, admin: Admin, grant_id: str) -> Grant:
        for grant in await self._store.signin.grants(admin.organisation_id):
            if grant.id == grant_id:
                return grant
        raise Refused(404, "Grants.GrantNotFound", "No such sign-in in this organisation.")


async def _form(request: Request) -> FormData:
    return await request.form(max_files=0, max_fields=20, max_part_size=64 * 1024)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip()[:200] if isinstance(value, str) else ""


def _globs(form: FormData, name: str) -> list[str]:
    return [part.strip() for part in _text(form, name).split(",") if part.strip()]


def _key_words(key: ApiKey) -> str:
    owner = f"user {key.user_id}" if key.user_id else "no user"
    return f"{'admin' if key.is_admin else 'API'} key {key.prefix}… ({owner}), created {when(key.created_at)}"


def _moment(raw: str | None) -> datetime | None:
    if not raw:
        return None
    if not _TIME.fullmatch(raw.strip()):
        raise Refused(400, "InvalidTime", "Times are YYYY-MM-DDTHH:MM (UTC).")
    try:
        return datetime.fromisoformat(raw.strip()).replace(tzinfo=UTC)
    except ValueError as exc:
        raise Refused(400, "InvalidTime", "Times are YYYY-MM-DDTHH:MM (UTC).") from exc


def _action(request: Request) -> str:
    action: str = request.path_params["action"]
    if action not in ("reauth", "delete"):
        raise Refused(404, "NotFound", "Nothing here.")
    return action
