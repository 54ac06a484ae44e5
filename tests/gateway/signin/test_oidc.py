"""Signing in with the organisation's own OpenID Connect provider (issue 13, item 4), against a
real provider: `oidc-provider` started from `tests/node` on a loopback port.

Each test plays the browser: it opens the URL `OidcSignIn.begin` gives, signs in and consents
on the provider's pages, and hands the provider's redirect back to `OidcSignIn.finish` with the
cookie value `begin` gave, as the gateway's callback route will.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc.jwk import KeySet

from gateway.config import OidcProviderConfig
from gateway.errors import OidcRefused, OidcUnavailable
from gateway.signin.oidc import CALLBACK_PATH, OidcSignIn, SignedInUser, identity_key, validate_id_token
from store import FixedKeys, Keyring, Sealer, open_sqlite_store
from tests.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    RunningProvider,
    abort_at,
    running_oidc_provider,
    sign_in_at,
)

pytestmark = pytest.mark.usefixtures("node_modules")

PUBLIC_URL = "https://gateway.example.com"
CALLBACK = f"{PUBLIC_URL}{CALLBACK_PATH}"
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"email": "Alice@Example.com", "email_verified": True, "name": "Alice", "groups": ["staff"]},
    "erin": {"email": "erin@example.com", "email_verified": True, "groups": ["staff", "mcpgw-admins"]},
    "bob": {"email": "bob@elsewhere.org", "email_verified": True, "name": "Bob"},
    "carol": {"email": "carol@example.com", "email_verified": False, "name": "Carol"},
    "dave": {"email": "dave@mail.example.net", "email_verified": False, "org": "acme"},
    "nomail": {"name": "No Mail"},
}


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[RunningProvider]:
    async with running_oidc_provider([CALLBACK], ACCOUNTS) as running:
        yield running


@pytest.fixture(scope="module")
async def other_provider() -> AsyncIterator[RunningProvider]:
    """A second, unrelated provider: another issuer and another signing key."""
    async with running_oidc_provider([CALLBACK], ACCOUNTS) as running:
        yield running


def config_for(provider: RunningProvider, **changes: Any) -> OidcProviderConfig:
    config = OidcProviderConfig(
        name="corp",
        display_name="Corp SSO",
        issuer=provider.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scopes=("openid", "email", "profile", "groups"),
        organisation_claim="org",
        organisations={"acme": "acme-org"},
        domains={"example.com": "example-org"},
        admin_claim="groups",
        admin_values=("mcpgw-admins",),
    )
    return replace(config, **changes)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=10.0, limits=httpx2.Limits(max_keepalive_connections=0)) as client:
        yield client


def sealer() -> Sealer:
    return Sealer(FixedKeys(Keyring({"k1": os.urandom(32)}, "k1")))


@pytest.fixture
def sign_in(provider: RunningProvider, http: httpx2.AsyncClient) -> OidcSignIn:
    return OidcSignIn((config_for(provider),), public_url=PUBLIC_URL, http=http, sealer=sealer())


async def signed_in_as(sign_in: OidcSignIn, login: str, pending: str = "pending-1") -> SignedInUser:
    """`login` signs in through the browser from start to end."""
    begun = await sign_in.begin("corp", pending)
    return await sign_in.finish(await callback_for(begun.url, login), begun.stored_state)


async def callback_for(url: str, login: str) -> dict[str, str]:
    """The query of the provider's redirect back to the gateway, once `login` has signed in."""
    async with httpx2.AsyncClient(timeout=10.0) as browser:
        back = await sign_in_at(browser, url, login, CALLBACK)
    return query_of(back.headers["location"])


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


# --- who signs in ---------------------------------------------------------------------------------


async def test_a_person_of_a_mapped_domain_signs_in_as_a_user_of_its_organisation(
    sign_in: OidcSignIn,
) -> None:
    user = await signed_in_as(sign_in, "alice", pending="consent-42")
    assert user == SignedInUser(
        provider="corp",
        pending_authorization_id="consent-42",
        organisation="example-org",
        user_id="alice@example.com",
        subject="alice",
        email="alice@example.com",
        name="Alice",
        admin=False,
    )


async def test_a_person_in_the_admin_group_signs_in_as_an_admin(sign_in: OidcSignIn) -> None:
    user = await signed_in_as(sign_in, "erin")
    assert (user.organisation, user.user_id, user.admin) == ("example-org", "erin@example.com", True)


async def test_the_organisation_claim_places_a_person_whatever_their_email(
    provider: RunningProvider, http: httpx2.AsyncClient
) -> None:
    by_subject = config_for(provider, user_claim="sub")
    sign_in = OidcSignIn((by_subject,), public_url=PUBLIC_URL, http=http, sealer=sealer())
    user = await signed_in_as(sign_in, "dave")
    assert (user.organisation, user.user_id, user.email) == ("acme-org", "dave", None)


async def test_the_begin_url_asks_for_a_code_with_pkce_s256_state_and_nonce(sign_in: OidcSignIn) -> None:
    begun = await sign_in.begin("corp", "p")
    asked = query_of(begun.url)
    assert asked["response_type"] == "code" and asked["client_id"] == CLIENT_ID
    assert asked["redirect_uri"] == CALLBACK
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert len(asked["state"]) >= 32 and len(asked["nonce"]) >= 32
    assert asked["scope"].split() == ["openid", "email", "profile", "groups"]
    # Nothing that proves the sign-in travels in the URL or shows in the cookie.
    for secret in (asked["state"], asked["nonce"]):
        assert secret not in base64.urlsafe_b64decode(begun.stored_state + "==").decode("latin-1")
    assert begun.max_age_s == 600


async def test_a_first_sign_in_creates_the_identity_and_the_next_one_reuses_it(
    sign_in: OidcSignIn, tmp_path: Path
) -> None:
    async with open_sqlite_store(tmp_path / "mcpgw.db") as store:
        first = await identity_key(store, await signed_in_as(sign_in, "alice"))
        again = await identity_key(store, await signed_in_as(sign_in, "alice"))
        admin = await identity_key(store, await signed_in_as(sign_in, "erin"))
        organisation = await store.find_organisation("example-org")
        assert organisation is not None
        assert (first.organisation_id, first.user_id, first.is_admin) == (
            organisation.id,
            "alice@example.com",
            False,
        )
        assert again.id == first.id
        assert (admin.user_id, admin.is_admin) == ("erin@example.com", True)
        assert [key.id for key in await store.live_api_keys(organisation.id)] == [first.id, admin.id]


# --- who is refused -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("login", "reason", "words"),
    [
        ("bob", "unmapped", "no organisation on this gateway takes people from elsewhere.org"),
        ("carol", "email_unverified", "Corp SSO has not verified carol@example.com"),
        ("nomail", "missing_claim", "its answer has no 'email'"),
    ],
)
async def test_a_person_no_organisation_takes_is_refused_saying_why(
    sign_in: OidcSignIn, login: str, reason: str, words: str
) -> None:
    with pytest.raises(OidcRefused) as refused:
        await signed_in_as(sign_in, login)
    assert refused.value.reason == reason
    assert words in refused.value.message


async def test_an_unverified_email_does_not_place_a_person_by_its_domain(
    provider: RunningProvider, http: httpx2.AsyncClient
) -> None:
    """Even when the user id is not the e-mail, an unverified address maps to no organisation."""
    by_subject = config_for(provider, user_claim="sub")
    sign_in = OidcSignIn((by_subject,), public_url=PUBLIC_URL, http=http, sealer=sealer())
    with pytest.raises(OidcRefused) as refused:
        await signed_in_as(sign_in, "carol")
    assert refused.value.reason == "email_unverified"
    assert "cannot be used to find your organisation by its domain" in refused.value.message


async def test_a_person_who_cancels_at_the_provider_is_told_they_did_not_sign_in(sign_in: OidcSignIn) -> None:
    begun = await sign_in.begin("corp", "p")
    async with httpx2.AsyncClient(timeout=10.0) as browser:
        back = await abort_at(browser, begun.url, CALLBACK)
    params = query_of(back.headers["location"])
    assert params["error"] == "access_denied"
    with pytest.raises(OidcRefused) as refused:
        await sign_in.finish(params, begun.stored_state)
    assert (refused.value.reason, refused.value.message) == (
        "provider_error",
        "you did not sign in with Corp SSO",
    )


# --- the state between begin and finish -----------------------------------------------------------


def _flip_last_byte(stored: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(stored + "=="))
    raw[-1] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@pytest.mark.parametrize(
    "tampering",
    ["state parameter", "state not ascii", "cookie bytes", "no cookie", "another sign-in's cookie"],
)
async def test_a_callback_that_does_not_belong_to_this_browsers_sign_in_is_refused(
    sign_in: OidcSignIn, tampering: str
) -> None:
    begun = await sign_in.begin("corp", "p")
    params = await callback_for(begun.url, "alice")
    forged, stored = dict(params), begun.stored_state
    if tampering == "state parameter":
        forged["state"] = generate_token(32)
    elif tampering == "state not ascii":  # the sign-in fuzzers' find: compare_digest raised TypeError
        forged["state"] = "\u0080" + params["state"][1:]
    elif tampering == "cookie bytes":
        stored = _flip_last_byte(begun.stored_state)
    elif tampering == "no cookie":
        stored = ""
    else:
        stored = (await sign_in.begin("corp", "p")).stored_state
    with pytest.raises(OidcRefused) as refused:
        await sign_in.finish(forged, stored or None)
    assert refused.value.reason == "state"
    assert "start signing in again" in refused.value.message
    # The untouched callback still signs the person in: the refusal was the tampering's doing.
    assert (await sign_in.finish(params, begun.stored_state)).user_id == "alice@example.com"


async def test_a_replayed_callback_is_refused(sign_in: OidcSignIn) -> None:
    begun = await sign_in.begin("corp", "p")
    params = await callback_for(begun.url, "alice")
    assert (await sign_in.finish(params, begun.stored_state)).user_id == "alice@example.com"
    with pytest.raises(OidcRefused) as refused:
        await sign_in.finish(params, begun.stored_state)
    assert refused.value.reason == "code"


async def test_a_callback_after_the_state_expired_is_refused(
    provider: RunningProvider, http: httpx2.AsyncClient
) -> None:
    now = [1_000_000.0]
    sign_in = OidcSignIn(
        (config_for(provider),), public_url=PUBLIC_URL, http=http, sealer=sealer(), clock=lambda: now[0]
    )
    begun = await sign_in.begin("corp", "p")
    params = await callback_for(begun.url, "alice")
    now[0] += 601
    with pytest.raises(OidcRefused) as refused:
        await sign_in.finish(params, begun.stored_state)
    assert refused.value.reason == "expired"


async def test_an_answer_naming_another_issuer_is_refused(
    sign_in: OidcSignIn, other_provider: RunningProvider
) -> None:
    """RFC 9207: the provider puts `iss` in its answer; one from another provider is a mix-up."""
    begun = await sign_in.begin("corp", "p")
    params = await callback_for(begun.url, "alice")
    assert "iss" in params
    with pytest.raises(OidcRefused) as refused:
        await sign_in.finish({**params, "iss": other_provider.issuer}, begun.stored_state)
    assert refused.value.reason == "state" and "another provider" in refused.value.message


# --- the id_token ---------------------------------------------------------------------------------


async def real_id_token(provider: RunningProvider, login: str, nonce: str) -> str:
    """An id_token the provider issues for `login` with `nonce`, obtained by the test as a
    relying party of its own (so that the gateway's checks can be given other expectations)."""
    async with httpx2.AsyncClient(timeout=10.0) as browser:
        metadata = (await browser.get(f"{provider.issuer}/.well-known/openid-configuration")).json()
        verifier = generate_token(64)
        url = prepare_grant_uri(
            metadata["authorization_endpoint"],
            CLIENT_ID,
            "code",
            redirect_uri=CALLBACK,
            scope="openid email",
            state="s",
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),  # type: ignore[no-untyped-call]
            code_challenge_method="S256",
        )
        code = query_of((await sign_in_at(browser, url, login, CALLBACK)).headers["location"])["code"]
        answer = await browser.post(
            metadata["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": CALLBACK,
                "code_verifier": verifier,
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        answer.raise_for_status()
        id_token = answer.json()["id_token"]
        assert isinstance(id_token, str)
        return id_token


async def keys_of(provider: RunningProvider) -> KeySet:
    async with httpx2.AsyncClient(timeout=10.0) as client:
        return KeySet.import_key_set((await client.get(f"{provider.issuer}/jwks")).json())


@pytest.mark.parametrize("wrong", ["signing key", "issuer", "audience", "nonce"])
async def test_an_id_token_for_another_sign_in_or_signed_by_another_key_is_refused(
    provider: RunningProvider, other_provider: RunningProvider, wrong: str
) -> None:
    """The id_token is real (from the provider); what it is checked against is another sign-in's:
    the other provider's keys (it signs with a key of its own), its issuer, another client's id,
    another nonce. PKCE keeps a real provider from sending these through `finish` itself."""
    id_token = await real_id_token(provider, "alice", nonce="n-1")
    config, keys, nonce = config_for(provider), await keys_of(provider), "n-1"
    assert validate_id_token(id_token, keys, config, nonce)["email"] == "Alice@Example.com"
    if wrong == "signing key":
        keys = await keys_of(other_provider)
    elif wrong == "issuer":
        config = config_for(provider, issuer=other_provider.issuer)
    elif wrong == "audience":
        config = config_for(provider, client_id="another-client")
    else:
        nonce = "n-2"
    with pytest.raises(OidcRefused) as refused:
        validate_id_token(id_token, keys, config, nonce)
    assert refused.value.reason == "id_token"
    assert id_token not in refused.value.message


async def test_a_provider_that_rotated_its_signing_key_is_trusted_once_its_keys_are_fetched_again(
    http: httpx2.AsyncClient,
) -> None:
    """The provider is started again on its port with a new key (its issuer unchanged), while
    the gateway holds its discovery and keys: an id_token naming the new key fetches them anew."""
    now = [time.time()]
    async with running_oidc_provider([CALLBACK], ACCOUNTS) as before:
        config = config_for(before)
        sign_in = OidcSignIn(
            (config,), public_url=PUBLIC_URL, http=http, sealer=sealer(), clock=lambda: now[0]
        )
        assert (await signed_in_as(sign_in, "alice")).user_id == "alice@example.com"
        old_kids = {key.kid for key in await keys_of(before)}
    async with running_oidc_provider([CALLBACK], ACCOUNTS, port=before.port) as after:
        assert after.issuer == before.issuer
        assert {key.kid for key in await keys_of(after)}.isdisjoint(old_kids)
        now[0] += 61  # past the minute within which keys are not fetched again
        assert (await signed_in_as(sign_in, "alice")).user_id == "alice@example.com"


# --- the provider cannot be used ------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("case", ["wrong path", "nothing listening", "another issuer"])
async def test_a_provider_whose_discovery_fails_is_a_clear_error(
    provider: RunningProvider, http: httpx2.AsyncClient, case: str
) -> None:
    if case == "wrong path":
        issuer, words = f"{provider.issuer}/tenant", "discovery document at"
    elif case == "nothing listening":
        issuer, words = f"http://127.0.0.1:{_closed_port()}", "could not be reached"
    else:  # the same provider, named by another host: its document says 127.0.0.1
        issuer, words = f"http://localhost:{provider.port}", f"names issuer '{provider.issuer}'"
    sign_in = OidcSignIn(
        (config_for(provider, issuer=issuer),), public_url=PUBLIC_URL, http=http, sealer=sealer()
    )
    with pytest.raises(OidcUnavailable) as failed:
        await sign_in.begin("corp", "p")
    assert failed.value.provider == "corp"
    assert words in failed.value.message and failed.value.message.startswith("Corp SSO")
    if case == "wrong path":
        assert "HTTP 404" in failed.value.message


async def test_a_provider_on_a_private_address_is_not_fetched_unless_allowed(
    http: httpx2.AsyncClient, provider: RunningProvider
) -> None:
    """The egress rules hold for providers as for upstreams' authorization servers."""
    config = config_for(provider, issuer="https://10.255.255.1:9")
    sign_in = OidcSignIn((config,), public_url=PUBLIC_URL, http=http, sealer=sealer())
    with anyio.fail_after(10), pytest.raises(OidcUnavailable) as failed:
        await sign_in.begin("corp", "p")
    assert "a private address" in failed.value.message
    allowed = replace(config, allow_private_addresses=True)
    sign_in = OidcSignIn((allowed,), public_url=PUBLIC_URL, http=http, sealer=sealer(), timeout_s=0.5)
    with anyio.fail_after(10), pytest.raises(OidcUnavailable) as failed:
        await sign_in.begin("corp", "p")
    assert "private address" not in failed.value.message  # it was tried: nothing answers there
