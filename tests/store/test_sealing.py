"""Secrets at rest: AES-GCM values that open only in their own place, and a rotating key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from store import KeyFileError, SealError
from store.keyfile import add_current_key, load_keyring, load_or_create_keyring
from store.sealing import Keyring


def keyring(*ids: str) -> Keyring:
    return Keyring({key_id: os.urandom(32) for key_id in ids}, ids[0])


def test_a_sealed_value_opens_in_its_place_and_hides_the_plaintext() -> None:
    ring = keyring("k1")
    sealed = ring.seal(b"refresh-token-123", "credentials/abc/refresh_token")
    assert b"refresh-token-123" not in sealed
    assert ring.open(sealed, "credentials/abc/refresh_token") == b"refresh-token-123"
    assert ring.seal(b"same", "x") != ring.seal(b"same", "x")  # a fresh nonce each time


def test_a_value_copied_elsewhere_or_tampered_with_does_not_open() -> None:
    ring = keyring("k1")
    sealed = ring.seal(b"secret", "credentials/abc/token")
    with pytest.raises(SealError, match="another place"):
        ring.open(sealed, "credentials/xyz/token")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError):
        ring.open(flipped, "credentials/abc/token")
    with pytest.raises(SealError, match="not a sealed value"):
        ring.open(b"plain", "credentials/abc/token")


def test_old_keys_open_what_they_sealed_and_only_the_current_key_seals() -> None:
    old = keyring("old")
    sealed_before = old.seal(b"v", "p")
    rotated = Keyring({"new": os.urandom(32), **old.keys}, "new")
    assert rotated.open(sealed_before, "p") == b"v" and rotated.needs_resealing(sealed_before)
    assert rotated.key_id_of(rotated.seal(b"v", "p")) == "new"
    with pytest.raises(SealError, match="does not hold"):
        keyring("other").open(sealed_before, "p")


def test_the_key_file_is_created_private_once_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "mcpgw.keys"
    created, was_new = load_or_create_keyring(path)
    assert was_new and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, was_new = load_or_create_keyring(path)
    assert not was_new and again == created


def test_rotation_puts_a_new_sealing_key_first_and_keeps_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "mcpgw.keys"
    first, _ = load_or_create_keyring(path)
    sealed = first.seal(b"v", "p")
    rotated = add_current_key(path)
    assert rotated.current != first.current and load_keyring(path) == rotated
    assert rotated.open(sealed, "p") == b"v"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("k1\n", ":1: expected"),
        ("k1 !!!!\n", ":1: expected"),
        ("k1 AAAA\n", "is 3 bytes, not 32"),
        ("bad/id " + "A" * 43 + "\n", "bad key id"),
        ("k1 " + "A" * 43 + "\nk1 " + "B" * 43 + "\n", ":2: key id 'k1' appears twice"),
    ],
)
def test_a_malformed_key_file_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mcpgw.keys"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=message):
        load_keyring(path)


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read key file"):
        load_keyring(tmp_path / "absent.keys")
