"""Capability profiles: the client capabilities that decide what an upstream lists, canonically."""

from __future__ import annotations

from gateway.upstream.profiles import EMPTY_PROFILE, capabilities_of, profile_of


def test_the_same_capabilities_in_any_order_make_one_profile() -> None:
    one = profile_of({"sampling": {"tools": {}}, "roots": {"listChanged": True}, "elicitation": {}})
    other = profile_of({"elicitation": {}, "roots": {"listChanged": True}, "sampling": {"tools": {}}})
    assert one == other
    assert hash(one) == hash(other)


def test_experimental_extensions_and_unknown_keys_make_no_profile_of_their_own() -> None:
    noisy: dict[str, object] = {
        "experimental": {"x": {}},
        "extensions": {"io.example/y": {}},
        "whatever": {},
        "sampling": {},
    }
    assert profile_of(noisy) == profile_of({"sampling": {}})
    assert profile_of({"experimental": {"x": {}}}) == EMPTY_PROFILE


def test_values_the_spec_does_not_allow_declare_nothing() -> None:
    assert profile_of({"sampling": True, "roots": {"listChanged": "yes"}, "elicitation": []}) == ("roots",)


def test_a_listing_session_declares_what_the_profile_holds() -> None:
    declared = {
        "roots": {"listChanged": True},
        "sampling": {"context": {}},
        "elicitation": {"form": {}, "url": {}},
        "tasks": {"requests": {"sampling": {"createMessage": {}}}},
    }
    assert capabilities_of(profile_of(declared)) == declared
    assert capabilities_of(EMPTY_PROFILE) == {}
