"""Secrets never reach the record: which keys and values are redacted, and that JSON stays JSON."""

from __future__ import annotations

import json
import time

import pytest

from gateway.recording.redaction import REDACTED, Redactor

redactor = Redactor()


@pytest.mark.parametrize(
    "key",
    ["password", "Authorization", "x-api-key", "apiKey", "API_KEY", "apikey", "access_token", "refreshToken",
     "client_secret", "Cookie", "privateKey", "db_password", "X-Auth-Token", "credentials"],
)  # fmt: skip
def test_values_under_secret_looking_keys_are_replaced_whatever_their_type(key: str) -> None:
    for value in ("s3cr3t", 12345, {"nested": "x"}, ["a", "b"]):
        text, truncated = redactor.render({key: value, "kept": "visible"})
        assert json.loads(text or "") == {key: REDACTED, "kept": "visible"} and not truncated


@pytest.mark.parametrize(
    "key",
    ["max_tokens", "tokenizer", "author", "keyboard", "monkey", "passage", "oauth_flow", "bypass",
     "pass_through", "pass_rate", "compass"],
)  # fmt: skip
def test_keys_that_only_contain_a_secret_word_as_part_of_another_are_kept(key: str) -> None:
    text, _ = redactor.render({key: "value"})
    assert json.loads(text or "") == {key: "value"}


@pytest.mark.parametrize(
    "secret",
    [
        "Bearer abcdefghijklmnop0123",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        "sk-proj-abcdefghijklmnopqrstuvwx",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxb-1234567890-abcdefghij",
        "AKIAIOSFODNN7EXAMPLE",
        "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
        "sk_live_abcdefghijklmnop1234",
        "glpat-abcdefghijklmnopqrst",
        "mgw_abcdefghijklmnopqrstuvwxyz0123456789",
        "mga_abcdefghijklmnopqrstuvwxyz0123456789",  # a signed-in host's access token
        "mgr_abcdefghijklmnopqrstuvwxyz0123456789",  # its refresh token
        "mgc_abcdefghijklmnopqrstuvwxyz0123456789",  # an authorization code
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0BAQEF\n-----END PRIVATE KEY-----",
    ],
)
def test_secret_looking_values_are_replaced_anywhere_in_text(secret: str) -> None:
    text, _ = redactor.render({"content": [{"type": "text", "text": f"before {secret} after"}]})
    assert secret not in (text or "")
    assert json.loads(text or "")["content"][0]["text"] == f"before {REDACTED} after"


def test_json_carried_in_a_string_is_redacted_as_structure() -> None:
    inner = json.dumps({"user": "ada", "password": "hunter2", "list": [{"token": "t"}]})
    text, _ = redactor.render({"payload": inner, "not_json": "{half"})
    decoded = json.loads(text or "")
    assert json.loads(decoded["payload"]) == {
        "user": "ada",
        "password": REDACTED,
        "list": [{"token": REDACTED}],
    }
    assert decoded["not_json"] == "{half"


def test_configured_patterns_apply_to_each_string_and_keep_the_json_valid() -> None:
    custom = Redactor(patterns=[r"secret=\S+"])
    text, _ = custom.render({"a": 'secret=abc" tail', "b": ["secret=xyz"], "c": "no"})
    assert json.loads(text or "") == {"a": f"{REDACTED} tail", "b": [REDACTED], "c": "no"}


def test_nothing_is_copied_when_nothing_is_secret() -> None:
    value = {"a": [1, {"b": "c"}], "d": "e"}
    assert redactor.clean(value) is value


@pytest.mark.parametrize("limit", [10, 11, 12, 13])
def test_a_value_over_the_cap_is_cut_at_a_character_boundary_and_flagged(limit: int) -> None:
    capped = Redactor(max_bytes=limit)
    text, truncated = capped.render({"t": "ééééééé"})
    assert truncated and text is not None
    assert len(text.encode()) <= limit and text.startswith('{"t":"é')
    assert capped.render({"t": "é"}) == ('{"t":"é"}', False)


def test_none_stays_none() -> None:
    assert redactor.render(None) == (None, False)


@pytest.mark.parametrize(
    "key",
    ["pwd", "PWD", "passcode", "pass_code", "Pass-Code", "private", "private_key", "PRIVATE-KEY",
     "privateKey", "session_key", "sessionKey", "SESSION-KEY", "signature", "X-Hub-Signature",
     "accessKey", "access_key", "AccessKEY", "aws_access_key_id", "credentials", "Credentials",
     "api-key", "Api_Key", "APIKEY", "pass", "PASS", "db_pass", "smtpPass", "user-pass"],
)  # fmt: skip
def test_key_rules_ignore_case_and_separators(key: str) -> None:
    text, _ = redactor.render({key: "s3cr3t-value", "kept": "visible"})
    assert json.loads(text or "") == {key: REDACTED, "kept": "visible"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgres://bob:hunter2@db.internal:5432/app", "postgres://[REDACTED]@db.internal:5432/app"),
        ("see https://user:p%40ss@example.com/x and more", "see https://[REDACTED]@example.com/x and more"),
        ("https://example.com/a@b", "https://example.com/a@b"),  # no credentials: kept
    ],
)
def test_credentials_inside_urls_are_replaced(url: str, shown: str) -> None:
    text, _ = redactor.render({"dsn": url})
    assert json.loads(text or "") == {"dsn": shown}


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("password=hunter2-correct-horse", "password=[REDACTED]"),
        ("connecting with PWD: 'abc def' now", "connecting with PWD: [REDACTED] now"),
        ("GET /cb?code=1&access_token=abc123&x=1", "GET /cb?code=1&access_token=[REDACTED]&x=1"),
        ("max_tokens=512 temperature=0.2", "max_tokens=512 temperature=0.2"),
        # Free text: a value runs to whitespace or a quote, ampersands and all...
        ("password=Tr0ub4dor&3xyz", "password=[REDACTED]"),
        (
            "login failed: password=Tr0ub4dor&3xyz for ada, retrying",
            "login failed: password=[REDACTED] for ada, retrying",
        ),
        ("secret=a;b,c&d:e", "secret=[REDACTED]"),
        # ...up to a separator that starts the next pair, or ends the value (`, ` or `;` at the end).
        ("user=ada,password=p&ss;w0rd,db=main", "user=ada,password=[REDACTED],db=main"),
        ("token=abc, next=1; pwd=x;", "token=[REDACTED], next=1; pwd=[REDACTED];"),
        ("a=1&token=abc&b=2", "a=1&token=[REDACTED]&b=2"),
        # A query string encodes a literal & (%26): its values end at the next &.
        ("GET /cb?state=s&password=Tr0ub4dor%263xyz&x=1", "GET /cb?state=s&password=[REDACTED]&x=1"),
    ],
)
def test_secret_looking_assignments_in_text_are_replaced(line: str, shown: str) -> None:
    assert redactor.redact_text(line) == shown


def test_values_nested_deeper_than_the_record_keeps_are_cut_and_flagged() -> None:
    value: object = "bottom"
    for _ in range(1000):
        value = {"next": value}
    text, truncated = redactor.render(value)
    assert truncated and text is not None and "[TRUNCATED: nested too deep]" in text
    json.loads(text)  # still JSON: the cut is a marker, not a broken end


@pytest.mark.parametrize(
    "text", ["a" * 2_000_000, "a:" * 1_000_000, "://" + "a" * 2_000_000, "k=v&" * 500_000]
)
def test_long_text_costs_time_in_proportion_to_what_is_kept(text: str) -> None:
    started = time.process_time()
    rendered, truncated = redactor.render({"text": text})
    assert truncated and rendered is not None
    assert time.process_time() - started < 0.5  # quadratic backtracking took seconds on 16 KB


def test_a_secret_that_straddles_the_cap_is_redacted_not_cut() -> None:
    capped = Redactor(max_bytes=100)
    secret = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"
    text, truncated = capped.render({"t": "x" * 80 + " " + secret + " " + "y" * 100_000})
    assert truncated and text is not None and "sk-ant" not in text


def test_the_value_of_a_name_value_pair_with_a_secret_name_is_replaced() -> None:
    headers = [["X-Api-Key", "k-123"], ["Accept", "application/json"], ["authorization", 7]]
    har = [{"name": "Cookie", "value": "sid=1"}, {"name": "Accept", "value": "*/*"}]
    text, _ = redactor.render(
        {"headers": headers, "har": har, "pair": ["token", "t-1"], "three": ["token", "a", "b"]}
    )
    assert json.loads(text or "") == {
        "headers": [["X-Api-Key", REDACTED], ["Accept", "application/json"], ["authorization", REDACTED]],
        "har": [{"name": "Cookie", "value": REDACTED}, {"name": "Accept", "value": "*/*"}],
        "pair": ["token", REDACTED],
        "three": ["token", "a", "b"],  # not a pair
    }
    carried, _ = redactor.render({"text": json.dumps({"headers": [["X-Api-Key", "k-456"]]})})
    assert "k-456" not in (carried or "")
