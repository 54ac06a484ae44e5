"""Secrets at rest: AES-256-GCM under named keys, so keys can rotate.

A sealed value is ``v1`` + key id + nonce + ciphertext-and-tag, all in one bytes value:

    b"\\x01" | len(key_id) (1 byte) | key_id (ASCII) | nonce (12 bytes) | ciphertext + 16-byte tag

The key id says which key opens it, so a keyring holding the old and the new key opens both
while rows are re-sealed under the new one. Each value is sealed with *associated data* naming
where it belongs (table, row id, column), so a ciphertext copied into another row or column
does not open. The cryptography itself is `cryptography`'s AESGCM; nothing here is hand-rolled
beyond the framing.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import SealError

__all__ = [
    "KEY_BYTES",
    "FixedKeys",
    "KeySource",
    "Keyring",
    "Sealer",
    "key_id_for",
    "new_key_id",
]

KEY_BYTES = 32
_VERSION = 1
_NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_key_id() -> str:
    return "k" + os.urandom(6).hex()


def key_id_for(key: bytes) -> str:
    """A stable id for a key given in the config: the same key always gets the same id, and
    the id reveals nothing useful about the key (a truncated hash of it)."""
    return "c" + hashlib.sha256(b"mcpgw key id\0" + key).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Keyring:
    """Keys by id; ``current`` seals, every key opens."""

    keys: Mapping[str, bytes] = field(repr=False)
    current: str

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"the current key {self.current!r} is not in the keyring")
        for key_id, key in self.keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"bad key id {key_id!r}: 1-64 letters, digits, '_' or '-'")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} is {len(key)} bytes, not {KEY_BYTES}")

    def seal(self, plaintext: bytes, where: str) -> bytes:
        """Encrypt ``plaintext`` under the current key, bound to ``where`` (``credentials/<id>/token``)."""
        nonce = os.urandom(_NONCE_BYTES)  # random 96-bit nonces: fine far beyond our volumes per key
        sealed = AESGCM(self.keys[self.current]).encrypt(nonce, plaintext, where.encode())
        key_id = self.current.encode("ascii")
        return bytes([_VERSION, len(key_id)]) + key_id + nonce + sealed

    def key_id_of(self, sealed: bytes) -> str:
        if len(sealed) < 2 or sealed[0] != _VERSION:
            raise SealError("not a sealed value")
        return sealed[2 : 2 + sealed[1]].decode("ascii", "replace")

    def open(self, sealed: bytes, where: str) -> bytes:
        """Decrypt a value sealed for ``where``; ``SealError`` if it is not one this keyring opens."""
        key_id = self.key_id_of(sealed)
        key = self.keys.get(key_id)
        if key is None:
            raise SealError(f"sealed under key {key_id!r}, which this keyring does not hold")
        start = 2 + sealed[1]
        nonce, body = sealed[start : start + _NONCE_BYTES], sealed[start + _NONCE_BYTES :]
        try:
            return AESGCM(key).decrypt(nonce, body, where.encode())
        except InvalidTag as exc:
            raise SealError(f"a value sealed for another place, or tampered with ({where})") from exc

    def needs_resealing(self, sealed: bytes) -> bool:
        return self.key_id_of(sealed) != self.current


class KeySource(Protocol):
    def load(self) -> Keyring:
        """The keyring as it is now; raises ``StoreError`` when it cannot be read."""
        ...

    def stamp(self) -> object:
        """Something that changes when the keys change (a file's mtime), cheap to ask for."""
        ...


class Sealer:
    """The keyring in use, re-read when its source changes.

    ``mcpgw secrets rotate`` rewrites the key file beside a running gateway: the gateway then
    seals with the new key from its next write on and opens values already re-sealed under it,
    with no restart.
    """

    def __init__(self, source: KeySource) -> None:
        self._source = source
        self._stamp = source.stamp()
        self._keyring = source.load()

    @property
    def keyring(self) -> Keyring:
        stamp = self._source.stamp()
        if stamp != self._stamp:
            self._keyring, self._stamp = self._source.load(), stamp
        return self._keyring

    def seal(self, plaintext: bytes, where: str) -> bytes:
        return self.keyring.seal(plaintext, where)

    def open(self, sealed: bytes, where: str) -> bytes:
        return self.keyring.open(sealed, where)


@dataclass(frozen=True, slots=True)
class FixedKeys:
    """Keys given by the config (or its environment): they change only with a restart."""

    keyring: Keyring

    def load(self) -> Keyring:
        return self.keyring

    def stamp(self) -> object:
        return None
