"""The gateway as an OpenID Connect relying party: a person on the consent page signs in with
their organisation's provider, and comes back as a user of an organisation.

`OidcSignIn.begin` sends the browser to the provider (authorization code flow, PKCE S256,
`state` and `nonce`); `OidcSignIn.finish` takes the provider's callback, redeems the code,
validates the id_token (signature by the provider's JWKS, `iss`, `aud`, `azp`, `exp`, `iat`,
`nonce`: authlib's `CodeIDToken` over joserfc) and maps its claims to a `SignedInUser`, or
raises `OidcRefused` saying why not. `identity_key` then finds or, on the person's first
sign-in, creates what they sign in as.

Where the sign-in is kept between begin and finish: in the browser, as a cookie whose value is
sealed (AES-GCM, the gateway's sealing keys, `store/sealing.py`) and bound to its purpose. It
holds the provider, the pending authorization, `state`, `nonce`, the PKCE verifier and an
expiry. A cookie rather than a table because it is what binds the callback to the browser that
started it (a callback opened in another browser has no cookie: login CSRF fails), every
gateway process on the database opens it with the keys they already share, and it needs no
migration or pruning. The verifier and nonce never appear in a URL. A replayed callback fails
because the provider redeems a code once; the pending authorization is the consent page's, and
it is used up when the sign-in completes.

Every request to the provider goes through `Egress` (`gateway/credentials/egress.py`): https
(plain http only for a provider on loopback), no private addresses unless the provider's
`allow_private_addresses`, no redirects, bounded answers; only to the issuer's origin and the
origins its discovery document names for the token endpoint and keys. Discovery and keys are
cached for an hour; keys are fetched again (at most once a minute) when an id_token names a
key the cached set does not hold, so a provider's key rotation needs no restart.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.config import OidcProviderConfig
from gateway.credentials.egress import Egress, Origin, origin_of, redirect_note
from gateway.errors import OAuthError, OidcRefused, OidcUnavailable
from store import ApiKey, Sealer, SealError, Store

__all__ = [
    "CALLBACK_PATH",
    "STATE_COOKIE",
    "Begun",
    "OidcSignIn",
    "SignedInUser",
    "identity_key",
]

logger = logging.getLogger(__name__)

CALLBACK_PATH = "/signin/oidc/callback"  # the redirect URI registered at every provider
STATE_COOKIE = "mcpgw_oidc"
_SEALED_FOR = "signin/oidc/state"
_DISCOVERY_TTL_S = 3600.0
_KEYS_REFETCH_S = 60.0
_LEEWAY_S = 60  # clock skew allowed on exp/iat
# Asymmetric signatures only: an id_token MACed with the client secret proves less, and `none` nothing.
_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True, slots=True)
class SignedInUser:
    """Who the provider says the person is, mapped by the provider's config."""

    provider: str
    pending_authorization_id: str  # the consent page's request this sign-in is for
    organisation: str  # the organisation's name, as `mcpgw keys create --org` takes it
    user_id: str
    subject: str  # the provider's `sub`
    email: str | None  # only a verified one
    name: str | None
    admin: bool


@dataclass(frozen=True, slots=True)
class Begun:
    """Where to send the browser, and what it must bring back: set `stored_state` as the cookie
    `STATE_COOKIE` (HttpOnly, SameSite=Lax so that the provider's redirect carries it, Secure on
    https, Path=`CALLBACK_PATH`, Max-Age=`max_age_s`) with the redirect to `url`."""

    url: str
    stored_state: str
    max_age_s: int


@dataclass(frozen=True, slots=True)
class _Provider:
    """What discovery learnt about one provider, and its keys."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    basic_auth: bool  # client_secret_basic, else client_secret_post
    iss_in_response: bool  # RFC 9207: its authorization responses carry `iss`
    algorithms: tuple[str, ...]
    keys: KeySet
    fetched_at: float  # by the sign-in's clock
    keys_fetched_at: float

    def origins(self, issuer: str) -> frozenset[Origin]:
        urls = (issuer, self.token_endpoint, self.jwks_uri)
        return frozenset(origin_of(httpx2.URL(url)) for url in urls)


class OidcSignIn:
    """The configured providers, with their discovery cached (one per gateway)."""

    def __init__(
        self,
        providers: tuple[OidcProviderConfig, ...],
        *,
        public_url: str,
        http: httpx2.AsyncClient,
        sealer: Sealer,
        state_ttl_s: int = 600,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.providers = {provider.name: provider for provider in providers}
        self.redirect_uri = f"{public_url.rstrip('/')}{CALLBACK_PATH}"
        self._http = http
        self._sealer = sealer
        self._state_ttl_s = state_ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._discovered: dict[str, _Provider] = {}

    # -- the two steps -------------------------------------------------------------------------

    async def begin(self, provider: str, pending_authorization_id: str) -> Begun:
        """Start signing a person in with `provider` for the consent page's pending request."""
        config = self._config(provider)
        found = await self._provider(config)
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
        url = prepare_grant_uri(
            found.authorization_endpoint,
            config.client_id,
            "code",
            redirect_uri=self.redirect_uri,
            scope=" ".join(config.scopes),
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),  # type: ignore[no-untyped-call]
            code_challenge_method="S256",
        )
        kept = {
            "provider": provider,
            "pending": pending_authorization_id,
            "state": state,
            "nonce": nonce,
            "verifier": verifier,
            "expires_at": self._clock() + self._state_ttl_s,
        }
        sealed = self._sealer.seal(json.dumps(kept).encode(), _SEALED_FOR)
        stored = base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")
        return Begun(url=url, stored_state=stored, max_age_s=self._state_ttl_s)

    async def finish(self, params: Mapping[str, str], stored_state: str | None) -> SignedInUser:
        """The person, from the provider's callback (`params`: its query) and the cookie that
        `begin` had set (`stored_state`; None when the browser brought none)."""
        kept = self._opened(stored_state)
        provider = kept["provider"]
        config = self._config(provider)
        # As bytes: compare_digest refuses str that is not ASCII, which any callback may hold.
        if not hmac.compare_digest(params.get("state", "").encode(), str(kept["state"]).encode()):
            raise OidcRefused(provider, "state", _START_AGAIN)
        if kept["expires_at"] <= self._clock():
            raise OidcRefused(provider, "expired", "the sign-in took too long; start again from the app")
        found = await self._provider(config)
        # RFC 9207: an answer naming another issuer comes from another provider (a mix-up attack).
        iss = params.get("iss")
        if (iss is not None or found.iss_in_response) and iss != config.issuer:
            raise OidcRefused(provider, "state", "the answer came from another provider than the one asked")
        if "error" in params:
            error = params["error"][:100]
            if error == "access_denied":
                message = f"you did not sign in with {config.label}"
            else:
                description = params.get("error_description", "")[:300]
                message = f"{config.label} refused the sign-in ({error}: {description})"
            raise OidcRefused(provider, "provider_error", message)
        code = params.get("code")
        if not code:
            raise OidcRefused(provider, "state", f"{config.label} sent no authorization code")
        id_token = await self._redeem(config, found, code, kept["verifier"])
        claims = await self._validated(config, found, id_token, kept["nonce"])
        return _person(config, kept["pending"], claims)

    # -- state ---------------------------------------------------------------------------------

    def _opened(self, stored_state: str | None) -> dict[str, Any]:
        if not stored_state:
            raise OidcRefused("", "state", _START_AGAIN)
        try:
            sealed = base64.urlsafe_b64decode(stored_state + "=" * (-len(stored_state) % 4))
            kept = json.loads(self._sealer.open(sealed, _SEALED_FOR))
        except (binascii.Error, ValueError, SealError) as exc:
            raise OidcRefused("", "state", _START_AGAIN) from exc
        if not isinstance(kept, dict):
            raise OidcRefused("", "state", _START_AGAIN)
        return kept

    def _config(self, provider: str) -> OidcProviderConfig:
        config = self.providers.get(provider)
        if config is None:
            raise OidcRefused(provider, "unknown_provider", f"no sign-in provider is called {provider!r}")
        return config

    # -- the provider --------------------------------------------------------------------------

    async def _provider(self, config: OidcProviderConfig, *, fresh_keys: bool = False) -> _Provider:
        now = self._clock()
        found = self._discovered.get(config.name)
        if found is None or now - found.fetched_at > _DISCOVERY_TTL_S:
            found = await self._discover(config)
        elif fresh_keys and now - found.keys_fetched_at > _KEYS_REFETCH_S:
            keys = await self._keys(config, found.jwks_uri, found.origins(config.issuer))
            found = replace(found, keys=keys, keys_fetched_at=now)
        self._discovered[config.name] = found
        return found

    async def _discover(self, config: OidcProviderConfig) -> _Provider:
        url = f"{config.issuer}/.well-known/openid-configuration"
        issuer_origin = frozenset({origin_of(httpx2.URL(config.issuer))})
        metadata = await self._get_json(config, url, issuer_origin, "its discovery document")
        # OpenID Connect Discovery 1.0 section 4.3: the issuer must be exactly the one asked.
        if metadata.get("issuer") != config.issuer:
            raise OidcUnavailable(
                config.name,
                f"{config.label}'s discovery document names issuer {metadata.get('issuer')!r}, "
                f"not {config.issuer!r}; check host_sign_in.oidc issuer",
            )
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = metadata.get(name)
            if not isinstance(value, str) or urlsplit(value).scheme not in ("https", "http"):
                raise OidcUnavailable(config.name, f"{config.label}'s discovery document has no {name}")
            endpoints[name] = value
        methods = metadata.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise OidcUnavailable(config.name, f"{config.label} does not offer PKCE with S256")
        auth_methods = metadata.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        basic = not isinstance(auth_methods, list) or "client_secret_basic" in auth_methods
        offered = metadata.get("id_token_signing_alg_values_supported", ["RS256"])
        algorithms = tuple(alg for alg in _ALGORITHMS if isinstance(offered, list) and alg in offered)
        if not algorithms:
            raise OidcUnavailable(
                config.name, f"{config.label} signs id_tokens with no algorithm accepted here"
            )
        now = self._clock()
        found = _Provider(
            authorization_endpoint=endpoints["authorization_endpoint"],
            token_endpoint=endpoints["token_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
            basic_auth=basic,
            iss_in_response=metadata.get("authorization_response_iss_parameter_supported") is True,
            algorithms=algorithms,
            keys=KeySet([]),
            fetched_at=now,
            keys_fetched_at=now,
        )
        for name in ("token_endpoint", "jwks_uri"):  # no plain http beside an https issuer
            self._egress(config).check_url(httpx2.URL(endpoints[name]), found.origins(config.issuer))
        keys = await self._keys(config, found.jwks_uri, found.origins(config.issuer))
        return replace(found, keys=keys, keys_fetched_at=now)

    async def _keys(self, config: OidcProviderConfig, jwks_uri: str, allowed: frozenset[Origin]) -> KeySet:
        document = await self._get_json(config, jwks_uri, allowed, "its keys (jwks_uri)")
        try:
            return KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OidcUnavailable(
                config.name, f"{config.label}'s keys (jwks_uri) cannot be read: {exc}"
            ) from exc

    async def _redeem(self, config: OidcProviderConfig, found: _Provider, code: str, verifier: str) -> str:
        """The id_token the provider gives for `code`."""
        body = {"redirect_uri": self.redirect_uri, "code_verifier": verifier}
        auth: httpx2.Auth | None = None
        if found.basic_auth:
            auth = httpx2.BasicAuth(config.client_id, config.client_secret)
        else:
            body |= {"client_id": config.client_id, "client_secret": config.client_secret}
        request = httpx2.Request(
            "POST",
            found.token_endpoint,
            content=prepare_token_request("authorization_code", code=code, **body).encode(),
            headers={"content-type": "application/x-www-form-urlencoded", "accept": "application/json"},
        )
        response = await self._send(config, request, found.origins(config.issuer), auth, "its token endpoint")
        answer = _json_object(response)
        if response.status_code == 400 and answer is not None and answer.get("error") == "invalid_grant":
            # Used already (a replayed callback), expired, or not this sign-in's (PKCE).
            raise OidcRefused(
                config.name, "code", f"{config.label} did not accept this sign-in; {_START_AGAIN}"
            )
        if response.status_code != 200 or answer is None:
            error = answer.get("error") if answer is not None else None
            raise OidcUnavailable(
                config.name,
                f"{config.label}'s token endpoint answered HTTP {response.status_code}"
                + (f" ({str(error)[:100]})" if error else "")
                + redirect_note(found.token_endpoint, response),
            )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise OidcUnavailable(config.name, f"{config.label} sent no id_token (is openid in scopes?)")
        return id_token

    async def _validated(
        self, config: OidcProviderConfig, found: _Provider, id_token: str, nonce: str
    ) -> Mapping[str, Any]:
        try:
            return validate_id_token(id_token, found.keys, config, nonce, found.algorithms, self._clock())
        except OidcRefused:
            if not _names_unknown_key(id_token, found.keys):
                raise
        # Signed with a key the cached set lacks: the provider may have rotated its keys.
        found = await self._provider(config, fresh_keys=True)
        return validate_id_token(id_token, found.keys, config, nonce, found.algorithms, self._clock())

    # -- HTTP ----------------------------------------------------------------------------------

    def _egress(self, config: OidcProviderConfig) -> Egress:
        return Egress(f"oidc:{config.name}", config.issuer, config.allow_private_addresses)

    async def _get_json(
        self, config: OidcProviderConfig, url: str, allowed: frozenset[Origin], what: str
    ) -> dict[str, Any]:
        request = httpx2.Request("GET", url, headers={"accept": "application/json"})
        response = await self._send(config, request, allowed, None, what)
        answer = _json_object(response)
        if response.status_code != 200 or answer is None:
            raise OidcUnavailable(
                config.name,
                f"{config.label}: {what} at {url} answered HTTP {response.status_code}"
                + ("" if answer is not None or response.status_code != 200 else " that is not a JSON object")
                + redirect_note(url, response),
            )
        return answer

    async def _send(
        self,
        config: OidcProviderConfig,
        request: httpx2.Request,
        allowed: frozenset[Origin],
        auth: httpx2.Auth | None,
        what: str,
    ) -> httpx2.Response:
        try:
            with anyio.fail_after(self._timeout_s):
                return await self._egress(config).send(self._http, request, allowed, auth)
        except TimeoutError as exc:
            raise OidcUnavailable(config.name, f"{config.label}: {what} did not answer in time") from exc
        except OAuthError as exc:  # EgressRefused, or a name that does not resolve
            raise OidcUnavailable(config.name, f"{config.label}: {what}: {exc}") from exc
        except httpx2.HTTPError as exc:
            raise OidcUnavailable(
                config.name, f"{config.label}: {what} could not be reached ({type(exc).__name__})"
            ) from exc


def validate_id_token(
    id_token: str,
    keys: KeySet,
    config: OidcProviderConfig,
    nonce: str,
    algorithms: tuple[str, ...] = _ALGORITHMS,
    now: float | None = None,
) -> Mapping[str, Any]:
    """The id_token's claims if its signature is one of `keys` and its `iss`, `aud`, `azp`,
    `exp`, `iat` and `nonce` are what this sign-in expects (OpenID Connect Core 3.1.3.7)."""
    try:
        token = jwt.decode(id_token, keys, algorithms=list(algorithms))
        claims = CodeIDToken(
            token.claims,
            dict(token.header),
            options={
                "iss": {"essential": True, "value": config.issuer},
                "aud": {"essential": True, "value": config.client_id},
                "nonce": {"essential": True},
            },
            params={"nonce": nonce, "client_id": config.client_id},
        )
        claims.validate(now=int(now if now is not None else time.time()), leeway=_LEEWAY_S)
    except (JoseError, ValueError) as exc:
        logger.warning("an id_token from OIDC provider %r was refused: %s", config.name, _describe(exc))
        raise OidcRefused(
            config.name, "id_token", f"{config.label}'s answer could not be verified; {_START_AGAIN}"
        ) from exc
    return dict(claims)


def _person(config: OidcProviderConfig, pending: str, claims: Mapping[str, Any]) -> SignedInUser:
    """Who `claims` say the person is, by `config`'s mapping; `OidcRefused` when they say too little."""
    provider = config.name
    verified = claims.get("email_verified") in (True, "true")  # some providers send a string
    raw_email = claims.get("email")
    email = raw_email.strip().lower() if isinstance(raw_email, str) and "@" in raw_email else None
    if config.user_claim == "email":
        if email is None:
            raise OidcRefused(provider, "missing_claim", _missing(config, "email"))
        if not verified:
            raise OidcRefused(provider, "email_unverified", _unverified(config, email, "to sign you in"))
        user_id = email
    else:
        value = claims.get(config.user_claim)
        if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
            raise OidcRefused(provider, "missing_claim", _missing(config, config.user_claim))
        user_id = str(value).strip()
    organisation = None
    if config.organisation_claim is not None:
        values = _values(claims.get(config.organisation_claim))
        mapped = {config.organisations[value] for value in values if value in config.organisations}
        if len(mapped) > 1:
            raise OidcRefused(
                provider,
                "ambiguous",
                f"your {config.organisation_claim} place you in several organisations "
                f"({', '.join(sorted(mapped))}); ask your administrator to settle on one",
            )
        organisation = next(iter(mapped), None)
    if organisation is None and config.domains:
        if email is None:
            raise OidcRefused(provider, "missing_claim", _missing(config, "email"))
        if not verified:
            raise OidcRefused(
                provider,
                "email_unverified",
                _unverified(config, email, "to find your organisation by its domain"),
            )
        organisation = config.domains.get(email.rpartition("@")[2])
        if organisation is None:
            raise OidcRefused(
                provider,
                "unmapped",
                f"no organisation on this gateway takes people from {email.rpartition('@')[2]}; "
                "ask your administrator to add your domain",
            )
    if organisation is None:
        raise OidcRefused(
            provider,
            "unmapped",
            f"{config.label} does not place you in an organisation on this gateway "
            f"(no known {config.organisation_claim}); ask your administrator",
        )
    admin = config.admin_claim is not None and bool(
        set(_values(claims.get(config.admin_claim))) & set(config.admin_values)
    )
    name = claims.get("name")
    return SignedInUser(
        provider=provider,
        pending_authorization_id=pending,
        organisation=organisation,
        user_id=user_id,
        subject=str(claims.get("sub", "")),
        email=email if verified else None,
        name=name if isinstance(name, str) else None,
        admin=admin,
    )


async def identity_key(store: Store, user: SignedInUser) -> ApiKey:
    """What the person signs in as: the oldest live key bound to them in their organisation with
    their admin standing, else (their first sign-in) a new one, whose secret nobody ever sees.
    Users exist only as the `user_id` of keys and records; a key is the identity an access
    token carries (organisation, user, tool filters, admin), so an admin narrows what a person
    may use with `mcpgw keys create --user` before their first sign-in, and ends every sign-in
    made with a key by revoking it."""
    organisation = await store.ensure_organisation(user.organisation)
    keys = await store.live_api_keys(organisation.id, user_id=user.user_id)
    fitting = sorted((key for key in keys if key.is_admin == user.admin), key=lambda key: key.created_at)
    if fitting:
        return fitting[0]
    created = await store.create_api_key(organisation.id, user_id=user.user_id, is_admin=user.admin)
    logger.info(
        "first sign-in of %r (organisation %r) through OIDC provider %r: created key %s",
        user.user_id,
        user.organisation,
        user.provider,
        created.key.id,
    )
    return created.key


_START_AGAIN = "start signing in again from the app"


def _missing(config: OidcProviderConfig, claim: str) -> str:
    return (
        f"{config.label} did not say who you are: its answer has no {claim!r}; "
        "ask your administrator to release it to the gateway"
    )


def _unverified(config: OidcProviderConfig, email: str, purpose: str) -> str:
    return f"{config.label} has not verified {email}, so it cannot be used {purpose}"


def _values(claim: object) -> list[str]:
    """A claim's values: a string is one, a list of strings (groups) several."""
    if isinstance(claim, str):
        return [claim]
    if isinstance(claim, list):
        return [value for value in claim if isinstance(value, str)]
    return []


def _json_object(response: httpx2.Response) -> dict[str, Any] | None:
    try:
        value = json.loads(response.content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _names_unknown_key(id_token: str, keys: KeySet) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(id_token.split(".")[0] + "=="))
    except (ValueError, binascii.Error):
        return False
    kid = header.get("kid") if isinstance(header, dict) else None
    return isinstance(kid, str) and all(key.kid != kid for key in keys)


def _describe(exc: Exception) -> str:
    """What was wrong with a token, without the token."""
    return f"{type(exc).__name__}: {getattr(exc, 'description', '') or exc}"[:200]
