"""Per-identity credentials for upstreams: finding, refreshing, obtaining and retiring them.

The proxy asks `headers()` for what to send an upstream on a caller's behalf. Without a usable
credential it raises `AuthRequired` carrying the URL of a pending flow (15 minutes, bound to the
caller's binding, claimed once). The user opens that URL, sees whose credential it makes
(`owner`) and confirms in their browser (`pages.py`, `confirmation.py`); then an OAuth flow
redirects to the authorization server and comes back to `complete_oauth`, and a header flow
shows a form whose values `submit_headers` verifies with one upstream call before keeping them.
Both take only the browser that confirmed. Tokens are
refreshed on use, one refresh in flight per credential across every replica on the database
(`coordination.exclusive`, then the credential is read again: whoever waited uses what the one
before it stored); a refresh the server refuses (`invalid_grant`, 401) turns the credential
`needs_reauth`, a 5xx or network error does not, nor does a refusal of a refresh token that
another replica had rotated meanwhile.

What is sent is cached per replica for up to 30 s (`_CACHE_S`); whatever changes a credential
(connected again, deleted, a status change) is published on `CREDENTIAL_CHANGED`, and every
replica drops its cached headers for that binding, so none goes on sending a deleted credential.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import httpx2
from mcp.client.auth.utils import union_scopes

from gateway.background import every_once
from gateway.config import ToolFilter, UpstreamConfig
from gateway.credentials.binding import LOCAL_SUBJECT
from gateway.credentials.oauth import (
    OAuthUpstream,
    Tokens,
    document_url_for,
    new_pkce_secret,
    redirect_uri_for,
)
from gateway.credentials.own_token import OwnToken
from gateway.errors import (
    AuthRequired,
    CredentialError,
    FlowProblem,
    OAuthError,
    UpstreamError,
    UpstreamUnauthorized,
)
from gateway.principal import Principal
from store import AuthFlow, Binding, Credential, OAuthClient, Store, StoreError, utc_now
from store.coordination import Unsubscribe

logger = logging.getLogger(__name__)

FLOW_TTL = timedelta(minutes=15)
MAX_STEP_UPS = 2  # step-ups in a row after a sign-in: three sign-ins at most, as the suite allows
STEP_UP_WINDOW = timedelta(minutes=15)
_REFRESH_AHEAD = timedelta(seconds=60)  # refresh a token this long before it expires
_CACHE_S = 30.0
_MAINTAIN_S = 60.0
_LINK = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
MAINTENANCE_LEASE = "maintenance/credentials"
CREDENTIAL_CHANGED = "credentials/changed"
"""Coordination topic: a binding's credential changed; payload: the binding's fields, `upstream`
None for all of the subject's upstreams (a session's credentials, ended with it)."""

Verifier = Callable[[UpstreamConfig, Mapping[str, str]], Awaitable[None]]
Listener = Callable[[Binding], Awaitable[None]]
InBrowser = Callable[[AuthFlow], bool]  # whether the request comes from the browser that confirmed


@dataclass(frozen=True, slots=True)
class FlowOwner:
    """Whose credential a flow makes, as the connect page names it."""

    organisation: str  # the organisation's name
    mode: str  # user | vk | session | local (a key-less gateway's one person)
    name: str  # the user; the API key's display prefix; the session's client (name version)
    upstream: str


@dataclass(frozen=True, slots=True)
class _Cached:
    headers: Mapping[str, str]
    good_until: float  # monotonic


class CredentialBroker:
    def __init__(
        self,
        store: Store,
        upstreams: Mapping[str, UpstreamConfig],
        http: httpx2.AsyncClient,
        public_url: str,
        verify: Verifier,
        on_refresh: Callable[[str, str], None] | None = None,
    ) -> None:
        self._store = store
        self._on_refresh = on_refresh  # told (upstream, ok | refused | failed) of each refresh
        self._upstreams = upstreams
        self._public_url = public_url
        self._verify = verify
        self.redirect_uri = redirect_uri_for(public_url)
        self.document_url = document_url_for(public_url)
        self._oauth = {
            name: OAuthUpstream(config, http, store, self.redirect_uri, self.document_url)
            for name, config in upstreams.items()
            if config.auth.kind == "oauth"
        }
        # The gateway's own tokens (client credentials, enterprise-managed): one per upstream,
        # for every caller; the upstream's connector sends it (`gateway/app.py`).
        self.own_tokens = {
            name: OwnToken(
                config, http, OAuthUpstream(config, http, store, self.redirect_uri, self.document_url)
            )
            for name, config in upstreams.items()
            if config.auth.own_token
        }
        self._cache: dict[Binding, _Cached] = {}
        self._listeners: list[Listener] = []

    def listen(self) -> Unsubscribe:
        """Drop cached headers when any replica says a credential changed (`CREDENTIAL_CHANGED`)."""
        return self._store.coordination.subscribe(CREDENTIAL_CHANGED, self._heard_changed)

    async def _heard_changed(self, payload: Mapping[str, Any]) -> None:
        organisation, mode, subject = (
            payload.get("organisation_id"),
            payload.get("auth_mode"),
            payload.get("subject"),
        )
        upstream = payload.get("upstream")
        for binding in [
            b
            for b in self._cache
            if (b.organisation_id, b.auth_mode, b.subject) == (organisation, mode, subject)
            and upstream in (None, b.upstream)
        ]:
            self._cache.pop(binding, None)
        if payload.get("connected") and isinstance(upstream, str):
            fields = (organisation, upstream, mode, subject)
            if all(isinstance(f, str) for f in fields) and mode in ("user", "vk", "session"):
                await self._tell_connected(Binding(*fields))  # type: ignore[arg-type]

    async def _tell_connected(self, binding: Binding) -> None:
        """This replica's sessions of `binding` re-list their tools (and tell their hosts)."""
        for listener in self._listeners:
            await listener(binding)

    async def _changed(
        self, binding: Binding, *, every_upstream: bool = False, connected: bool = False
    ) -> None:
        """Forget `binding`'s cached headers here and on every other replica; `connected`: it
        has a fresh credential, and every replica's listeners (`on_connected`) hear of it."""
        self._cache.pop(binding, None)
        payload = {
            "organisation_id": binding.organisation_id,
            "auth_mode": binding.auth_mode,
            "subject": binding.subject,
            "upstream": None if every_upstream else binding.upstream,
            "connected": connected,
        }
        try:
            # Delivered here too, in memory, before it returns: this replica's listeners included.
            await self._store.coordination.publish(CREDENTIAL_CHANGED, payload)
        except StoreError as exc:  # the others' caches lapse within _CACHE_S anyway
            logger.warning("credentials: could not tell the other replicas of a change: %s", exc)
            if connected:
                await self._tell_connected(binding)

    def on_connected(self, listener: Listener) -> None:
        """Call `listener` when a binding gets a fresh credential (its sessions re-list tools)."""
        self._listeners.append(listener)

    def flow_url(self, flow: AuthFlow) -> str:
        """The flow's connect link. Its last part is a capability: kept sealed and hashed only."""
        return f"{self._public_url}/connect/{flow.secret['link']}"

    # -- using credentials ---------------------------------------------------------------------

    async def headers(self, upstream: str, binding: Binding) -> Mapping[str, str]:
        """What to send `upstream` for `binding`; `AuthRequired` when there is nothing usable."""
        cached = self._cache.get(binding)
        if cached is not None and cached.good_until > time.monotonic():
            return cached.headers
        config = self._upstreams[upstream]
        credential = await self._store.credentials.credential_for(binding)
        if credential is None:
            raise await self.auth_required(config, binding, "no credential yet: connect the account first")
        if credential.status == "orphaned":
            # The call got this far, so the policy lets this identity reach the upstream again.
            await self._set_status(credential, "active")
        elif credential.status != "active":
            raise await self.auth_required(config, binding, f"the credential is {credential.status}")
        if credential.kind == "header":
            return await self._header_values(config, credential)
        if _expiring(credential.expires_at):
            credential = await self._refresh(config, credential)
        return self._remember(credential, {"authorization": f"Bearer {credential.secret['access_token']}"})

    async def rejected(
        self,
        upstream: str,
        binding: Binding,
        sent: Mapping[str, str],
        *,
        final: bool = False,
        scope: str | None = None,
    ) -> None:
        """The upstream refused what `headers()` gave: return once a retry may work (a token was
        refreshed meanwhile or now); raise `AuthRequired` when the user must act (and always
        when `final`: the retry was refused too). `scope`: the refusal was a 403
        `insufficient_scope` naming it: the token stays good, and the user is asked to grant
        more (`_step_up`)."""
        refused_at = time.monotonic()
        self._cache.pop(binding, None)
        config = self._upstreams[upstream]
        credential = await self._store.credentials.credential_for(binding)
        if credential is None:
            raise await self.auth_required(config, binding, "no credential yet: connect the account first")
        if credential.kind == "token" and scope is not None:
            await self._step_up(config, credential, scope)
        if credential.kind == "token":
            if not final and sent.get("authorization") != f"Bearer {credential.secret['access_token']}":
                return  # already replaced since: try the new one
            await self._same_server(config, credential, refused_at)
            if not final and credential.secret.get("refresh_token"):
                await self._refresh(config, credential, force=True)
                return
        status = "needs_reauth" if credential.kind == "token" else "needs_update"
        await self._set_status(credential, status)
        raise await self.auth_required(
            config, binding, f"the upstream refused the credential; it is now {status}"
        )

    async def _same_server(self, config: UpstreamConfig, credential: Credential, refused_at: float) -> None:
        """A refused token may mean the upstream moved to another authorization server
        (SEP-2352): discovery is done again, and if its resource metadata names another server
        than the one the token came from, that token, its refresh token and the client are of
        no use there (nor may they be shown to it): the person connects again, with a client
        registered there (`OAuthUpstream.client`: one per server). A discovery that fails leaves
        the refusal to the refresh, as before."""
        oauth = self._oauth[config.name]
        try:
            server = await oauth.server(since=refused_at)
        except OAuthError as exc:
            logger.warning("upstream %s: discovery after a refused token failed: %s", config.name, exc)
            return
        client = None
        if credential.oauth_client_id is not None:
            client = await self._store.credentials.oauth_client_by_id(credential.oauth_client_id)
        if client is None or client.issuer == server.issuer:
            return
        logger.info(
            "upstream %s: its authorization server is now %s (was %s); the credential needs reauth",
            config.name,
            server.issuer,
            client.issuer,
        )
        await self._set_status(credential, "needs_reauth")
        raise await self.auth_required(
            config,
            credential.binding,
            f"the upstream's authorization server is now {server.issuer}: connect again",
        )

    async def _step_up(self, config: UpstreamConfig, credential: Credential, challenged: str) -> None:
        """Ask the user to authorise again, for the scope they hold and the one the upstream
        challenged with (SEP-2350: the union, so one call's scope does not cost another's).
        Refreshing cannot widen a token, so none is tried; the credential stays active for the
        calls it is good for. A challenge for nothing beyond what the last sign-in asked for is the upstream
        refusing outright, or the server not granting it: asking the person again would loop,
        so the call fails instead."""
        asked = credential.secret.get("requested_scope") or credential.secret.get("scope")
        if not isinstance(asked, str):
            asked = (await self._oauth[config.name].server()).scope
        wanted = union_scopes(asked, challenged) or challenged
        if asked and set(wanted.split()) == set(asked.split()):
            raise CredentialError(
                f"upstream {config.name!r} refuses this call for want of scope {challenged!r}, "
                f"which the last sign-in asked for already ({asked!r}); signing in again would "
                "not change that"
            )
        # Each challenge may name a scope never asked for, and the next one another: the person
        # would sign in again and again. At most MAX_STEP_UPS in a row within STEP_UP_WINDOW.
        now = utc_now()
        recent = [at for at in _step_up_times(credential.secret) if now - at < STEP_UP_WINDOW]
        if len(recent) >= MAX_STEP_UPS:
            minutes = int(STEP_UP_WINDOW.total_seconds() // 60)
            raise CredentialError(
                f"upstream {config.name!r} asks for more access again ({challenged!r}) after "
                f"{len(recent) + 1} sign-ins within {minutes} minutes; the gateway does not ask "
                "for another one now: try again later, or ask the upstream's owner which scopes it needs"
            )
        flow = await self.start_flow(
            config, credential.binding, reuse=True, scope=wanted, step_ups=[*recent, now]
        )
        raise AuthRequired(
            config.name,
            self.flow_url(flow),
            flow.id,
            reason=f"this call needs more access ({challenged}): authorise {wanted}",
        )

    async def _header_values(self, config: UpstreamConfig, credential: Credential) -> Mapping[str, str]:
        if {n.lower() for n in credential.header_names} != {n.lower() for n in config.auth.header_names}:
            await self._set_status(credential, "needs_update")
            raise await self.auth_required(
                config, credential.binding, "the upstream asks for other headers now"
            )
        values = {name: str(credential.secret[name]) for name in credential.header_names}
        return self._remember(credential, values)

    async def _set_status(self, credential: Credential, status: str) -> None:
        if await self._store.credentials.set_status(credential.id, status):
            await self._changed(credential.binding)

    def _remember(self, credential: Credential, headers: Mapping[str, str]) -> Mapping[str, str]:
        until = time.monotonic() + _CACHE_S
        if credential.expires_at is not None:
            left = (credential.expires_at - _REFRESH_AHEAD - utc_now()).total_seconds()
            until = min(until, time.monotonic() + left)
        self._cache[credential.binding] = _Cached(headers, until)
        return headers

    async def _refresh(self, config: UpstreamConfig, seen: Credential, *, force: bool = False) -> Credential:
        # One refresh per credential at a time on every replica: a rotating refresh token used
        # twice is refused the second time, which would cost the user their connection.
        async with self._store.coordination.exclusive(f"credentials/refresh/{seen.id}"):
            # Whoever held the lock before us (here or on another replica) may have refreshed
            # already: use theirs.
            current = await self._store.credentials.credential(seen.binding.organisation_id, seen.id)
            if current is None or current.status != "active":
                raise await self.auth_required(
                    config, seen.binding, "the credential was removed or needs reauth"
                )
            replaced = current.secret.get("access_token") != seen.secret.get("access_token")
            if not _expiring(current.expires_at) and (replaced or not force):
                return current  # still good: refreshed by whoever held the lock, or not due yet
            refresh_token = current.secret.get("refresh_token")
            if not refresh_token:
                await self._set_status(current, "needs_reauth")
                raise await self.auth_required(
                    config, seen.binding, "the token expired and cannot be refreshed"
                )
            oauth = self._oauth[config.name]
            try:
                server = await oauth.server()
                client = await self._client_of(oauth, current)
                if client.issuer != server.issuer:  # moved to another server since (SEP-2352)
                    await self._set_status(current, "needs_reauth")
                    raise await self.auth_required(
                        config, seen.binding, f"the upstream's authorization server is now {server.issuer}"
                    )
                tokens = await oauth.refresh(server, client, str(refresh_token))
            except OAuthError as exc:
                if exc.permanent and (rotated := await self._rotated_since(current)) is not None:
                    return rotated  # refused because someone else used the token first: theirs is good
                self._refreshed(config.name, "refused" if exc.permanent else "failed")
                if exc.permanent:
                    logger.info(
                        "upstream %s: refresh refused (%s); credential needs reauth", config.name, exc
                    )
                    await self._set_status(current, "needs_reauth")
                    raise await self.auth_required(
                        config, seen.binding, "the authorization server refused a refresh"
                    ) from None
                if not force and current.expires_at is not None and current.expires_at > utc_now():
                    logger.warning(
                        "upstream %s: refresh failed (%s); using the token until it expires", config.name, exc
                    )
                    return current
                raise
            self._refreshed(config.name, "ok")
            now = utc_now()
            # A refresh answer without `scope` keeps the scope granted (RFC 6749 5.1, 6).
            secret = {
                **tokens.as_secret(),
                "scope": tokens.scope or current.secret.get("scope"),
                "requested_scope": current.secret.get("requested_scope"),
                "step_ups": current.secret.get("step_ups"),
            }
            await self._store.credentials.refreshed(current.id, secret, tokens.expires_at, now)
            refreshed = await self._store.credentials.credential(seen.binding.organisation_id, seen.id)
            assert refreshed is not None
            return refreshed

    async def _rotated_since(self, used: Credential) -> Credential | None:
        """The credential as stored now, if its refresh token is no longer the one `used` held: a
        refresh made where the exclusive section could not reach (a replica that lost its database
        connection mid-refresh) rotated it, and a refusal of the old token says nothing of the new."""
        latest = await self._store.credentials.credential(used.binding.organisation_id, used.id)
        if latest is None or latest.status != "active":
            return None
        if latest.secret.get("refresh_token") == used.secret.get("refresh_token"):
            return None
        logger.info(
            "upstream %s: a refresh token rotated by another replica; using its tokens", used.binding.upstream
        )
        return latest

    def _refreshed(self, upstream: str, result: str) -> None:
        if self._on_refresh is not None:
            self._on_refresh(upstream, result)

    async def _client_of(self, oauth: OAuthUpstream, credential: Credential) -> OAuthClient:
        client = None
        if credential.oauth_client_id is not None:
            client = await self._store.credentials.oauth_client_by_id(credential.oauth_client_id)
        return client if client is not None else await oauth.client(await oauth.server())

    # -- flows ---------------------------------------------------------------------------------

    async def auth_required(self, config: UpstreamConfig, binding: Binding, reason: str) -> AuthRequired:
        flow = await self.start_flow(config, binding, reuse=True)
        return AuthRequired(config.name, self.flow_url(flow), flow.id, reason=reason)

    async def start_flow(
        self,
        config: UpstreamConfig,
        binding: Binding,
        *,
        reuse: bool,
        scope: str | None = None,
        step_ups: list[datetime] | None = None,
    ) -> AuthFlow:
        """A pending flow for `binding`: a live one from before if `reuse` and it has time left
        (and asks for the same `scope`: an OAuth flow's own, instead of discovery's). `step_ups`:
        when the step-ups in a row that this one ends were asked for, kept with its credential."""
        kind = _flow_kind(config)
        assert kind is not None, "only per-identity upstreams have flows"
        now = utc_now()
        if reuse:
            live = await self._store.credentials.live_flow(binding, kind, now + FLOW_TTL / 2)
            if live is not None and live.secret.get("scope") == scope:
                return live
        flow_id = str(uuid.uuid4())
        secret: dict[str, str] = {
            **(new_pkce_secret() if kind == "oauth" else {}),
            "link": secrets.token_urlsafe(32),
        }
        if scope is not None:
            secret["scope"] = scope
        if step_ups:
            secret["step_ups"] = " ".join(at.isoformat() for at in step_ups)
        await self._store.credentials.create_flow(
            flow_id, binding, kind, secret=secret, oauth_client_id=None, now=now, expires_at=now + FLOW_TTL
        )
        flow = await self._store.credentials.flow(flow_id)
        assert flow is not None
        return flow

    async def open_flow(self, link: str, caller: Principal | None) -> tuple[AuthFlow, UpstreamConfig]:
        """The flow behind a connect link, if it can still be used, by this caller."""
        flow = await self._store.credentials.flow_by_link(link) if _LINK.fullmatch(link) else None
        if flow is None:
            raise FlowProblem(404, "There is no such connection request.")
        config = self._upstreams.get(flow.binding.upstream)
        if config is None or _flow_kind(config) != flow.auth_kind:  # the upstream's auth changed since
            raise FlowProblem(404, "There is no such connection request.")
        if flow.claimed_at is not None:
            raise FlowProblem(400, "This connection request was already used. Ask for a new one.")
        if flow.expires_at <= utc_now():
            raise FlowProblem(410, "This connection request has expired. Call the tool again for a new one.")
        if caller is not None and not _same_identity(flow.binding, caller):
            raise FlowProblem(403, "This connection request belongs to someone else.")
        return flow, config

    async def owner(self, flow: AuthFlow) -> FlowOwner:
        binding = flow.binding
        organisation = await self._store.get_organisation(binding.organisation_id)
        org_name = organisation.name if organisation is not None else binding.organisation_id
        mode: str = binding.auth_mode
        name = binding.subject
        if mode == "session":
            session = await self._store.get_session(binding.organisation_id, binding.subject, api_key_id=None)
            client = () if session is None else (session.client_name, session.client_version)
            name = " ".join(part for part in client if part) or "an unnamed client"
        elif binding.subject == LOCAL_SUBJECT:
            mode, name = "local", ""
        elif mode == "vk":
            keys = await self._store.live_api_keys(binding.organisation_id, api_key_id=binding.subject)
            name = keys[0].prefix if keys else binding.subject
        return FlowOwner(org_name, mode, name, binding.upstream)

    async def authorize_url(self, flow: AuthFlow) -> str:
        oauth = self._oauth[flow.binding.upstream]
        server = await oauth.server()
        client = await oauth.client(server)
        return oauth.authorize_url(server, client, dict(flow.secret))

    async def complete_oauth(
        self, state: str, code: str | None, iss: str | None, error: str | None, in_browser: InBrowser
    ) -> Binding:
        flow = await self._store.credentials.flow_by_state(state)
        if flow is None:
            raise FlowProblem(400, "Unknown or already used state: start again from the tool.")
        if flow.claimed_at is not None:
            raise FlowProblem(400, "This authorisation was already completed (replayed state).")
        if flow.expires_at <= utc_now():
            raise FlowProblem(410, "This connection request has expired. Call the tool again for a new one.")
        if not await self._store.credentials.claim_flow(flow.id, utc_now()):
            raise FlowProblem(400, "This authorisation was already completed (replayed state).")
        if not in_browser(flow):
            # Spent, not left open: whoever sent this browser here may hold the callback URL too.
            logger.warning(
                "upstream %s: an authorisation came back to another browser than the one that "
                "confirmed its connect link; nothing was connected",
                flow.binding.upstream,
            )
            raise FlowProblem(
                403,
                "This authorisation came back to another browser than the one that confirmed the "
                "connect link, so nothing was connected and the link cannot be used any more. Call "
                "the tool again for a new link, and finish it in the browser where you confirm it.",
            )
        if error is not None or not code:
            raise FlowProblem(
                400, f"The authorization server did not authorise the gateway ({error or 'no code'})."
            )
        oauth = self._oauth.get(flow.binding.upstream)
        if oauth is None:
            raise FlowProblem(404, "There is no such connection request.")
        try:
            server = await oauth.server()
            oauth.check_issuer(server, iss)
            client = await oauth.client(server)
            tokens = await oauth.exchange(server, client, code, str(flow.secret["code_verifier"]))
        except OAuthError as exc:
            logger.warning("upstream %s: code exchange failed: %s", flow.binding.upstream, exc)
            raise FlowProblem(502, f"The gateway could not finish the authorisation: {exc}") from None
        requested = oauth.scope_of(server, dict(flow.secret))
        if tokens.scope is None:  # RFC 6749 5.1: then it is what was asked for
            tokens = replace(tokens, scope=requested)
        # What was asked for is kept too: a step-up asks for more, never for the same again.
        secret = {**tokens.as_secret(), "requested_scope": requested}
        if flow.secret.get("step_ups"):
            secret["step_ups"] = flow.secret["step_ups"]
        await self._keep(flow.binding, "token", secret, (), client.id, tokens)
        return flow.binding

    async def submit_headers(
        self, link: str, values: Mapping[str, str], caller: Principal | None, in_browser: InBrowser
    ) -> Binding:
        flow, config = await self.open_flow(link, caller)
        if flow.auth_kind != "headers":
            raise FlowProblem(400, "This connection request is not a header form.")
        if not in_browser(flow):
            raise FlowProblem(
                403,
                "These values come from another browser than the one that confirmed the connect "
                "link (or the confirmation expired): open the link again in this browser.",
            )
        given = {name.lower(): value.strip() for name, value in values.items()}
        kept = {name: given.get(name.lower(), "") for name in config.auth.header_names}  # undeclared: dropped
        missing = [name for name, value in kept.items() if not value]
        if missing:
            raise FlowProblem(400, f"Missing required header: {', '.join(missing)}.")
        if any(c in value for value in kept.values() for c in "\r\n\0"):
            raise FlowProblem(400, "A header value must not contain line breaks.")
        try:
            await self._verify(config, kept)
        except UpstreamUnauthorized:
            raise FlowProblem(422, f"{config.name} refused these values; nothing was stored.") from None
        except UpstreamError as exc:
            raise FlowProblem(
                502, f"Could not check the values with {config.name} ({exc.reason}); try again."
            ) from None
        if not await self._store.credentials.claim_flow(flow.id, utc_now()):
            raise FlowProblem(400, "This connection request was already used. Ask for a new one.")
        await self._keep(flow.binding, "header", kept, config.auth.header_names, None, None)
        return flow.binding

    async def reauthorise(self, credential_binding: Binding) -> AuthFlow:
        config = self._upstreams.get(credential_binding.upstream)
        if config is None or not config.auth.per_identity:
            raise FlowProblem(409, "The upstream is no longer configured for per-user credentials.")
        return await self.start_flow(config, credential_binding, reuse=False)

    async def _keep(
        self,
        binding: Binding,
        kind: str,
        secret: Mapping[str, object],
        names: tuple[str, ...],
        client_id: str | None,
        tokens: Tokens | None,
    ) -> None:
        await self._store.credentials.save(
            str(uuid.uuid4()),
            binding,
            kind=kind,
            secret=secret,
            header_names=names,
            oauth_client_id=client_id,
            expires_at=None if tokens is None else tokens.expires_at,
            now=utc_now(),
        )
        await self._changed(binding, connected=True)

    async def session_ended(self, organisation_id: str, session_id: str) -> None:
        """A session's own credentials (identity `session`) end with it."""
        if any(config.auth.identity == "session" for config in self._upstreams.values()):
            await self._store.credentials.delete_session_bindings(organisation_id, session_id)
            await self._changed(Binding(organisation_id, "", "session", session_id), every_upstream=True)

    async def forget(self, binding: Binding) -> None:
        """`binding`'s credential was deleted: no replica sends it again."""
        await self._changed(binding)

    # -- policy --------------------------------------------------------------------------------

    async def maintain(
        self, ran: Callable[[str], None] | None = None, interval_s: float = _MAINTAIN_S
    ) -> None:
        """Reconcile statuses at start and then every `interval_s`; drop flows long expired. One
        replica at a time does it (the holder of `MAINTENANCE_LEASE`): the answers are the
        database's, the same for all; each replica's cache hears of a change (`_changed`)."""
        coordination = self._store.coordination
        await every_once(
            coordination, MAINTENANCE_LEASE, interval_s, "credential maintenance", self._maintain_once, ran
        )

    async def _maintain_once(self) -> None:
        try:
            changed = await self.reconcile()
            if changed:
                logger.info("credentials: %d status change(s) after a policy check", changed)
            await self._store.credentials.prune_flows(utc_now() - timedelta(days=1))
        except StoreError as exc:
            logger.warning("credentials: maintenance skipped: %s", exc)

    async def reconcile(self) -> int:
        """Bring statuses in line with config and key policy: orphaned when the identity lost
        the upstream, back when it regained it, needs_update when declared headers changed."""
        changed = 0
        for credential_id, binding, status, names in await self._store.credentials.all_bindings():
            config = self._upstreams.get(binding.upstream)
            reachable = (
                config is not None and config.auth.per_identity and await self._reachable(binding, config)
            )
            target = status
            if not reachable:
                target = "orphaned"
            elif status == "orphaned":
                target = "active"
            if (
                config is not None
                and reachable
                and config.auth.kind == "user_headers"
                and target == "active"
                and {n.lower() for n in names} != {n.lower() for n in config.auth.header_names}
            ):
                target = "needs_update"
            if target != status and await self._store.credentials.set_status(credential_id, target):
                await self._changed(binding)
                changed += 1
        return changed

    async def _reachable(self, binding: Binding, config: UpstreamConfig) -> bool:
        if binding.subject == "local" or binding.auth_mode == "session":
            return True
        by = {"api_key_id": binding.subject} if binding.auth_mode == "vk" else {"user_id": binding.subject}
        keys = await self._store.live_api_keys(binding.organisation_id, **by)
        return any(_may_reach(ToolFilter(k.tools_allow, k.tools_deny), config.prefix) for k in keys)


def _may_reach(tools: ToolFilter, prefix: str) -> bool:
    """Whether a key's tool filter leaves any tool under `prefix` (globs checked as patterns)."""
    everything = prefix + "*"
    if any(fnmatchcase(everything, pattern) for pattern in tools.deny):
        return False  # a deny pattern that covers the whole prefix
    return any(fnmatchcase(everything, pattern) or pattern.startswith(prefix) for pattern in tools.allow)


def _flow_kind(config: UpstreamConfig) -> str | None:
    return {"oauth": "oauth", "user_headers": "headers"}.get(config.auth.kind)


def _step_up_times(secret: Mapping[str, Any]) -> list[datetime]:
    """When the step-ups that led to a credential were asked for (oldest first)."""
    kept = secret.get("step_ups")
    times = []
    for word in kept.split() if isinstance(kept, str) else ():
        try:
            times.append(datetime.fromisoformat(word))
        except ValueError:
            continue
    return times


def _expiring(expires_at: datetime | None) -> bool:
    return expires_at is not None and expires_at - _REFRESH_AHEAD <= utc_now()


def _same_identity(binding: Binding, caller: Principal) -> bool:
    if caller.organisation_id != binding.organisation_id:
        return False
    if binding.auth_mode == "user":
        return caller.user_id == binding.subject
    if binding.auth_mode == "vk":
        return caller.api_key_id == binding.subject
    return True  # a session has no other proof of identity than holding the URL
