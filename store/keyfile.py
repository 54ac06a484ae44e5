"""The key file: where the keys that seal secrets at rest live, beside the database.

One key per line, ``<key id> <base64url key>``; the first line's key seals new secrets and
every listed key opens old ones, so rotating is "add a key at the top, re-seal, drop the old
one later". Comment lines start with ``#``. The file is created with mode 0600 on first use
(and the gateway warns: without this file the stored credentials cannot be read, so it must be
backed up with the database but never next to it in the same backup). It is replaced
atomically, so a running gateway that re-reads it never sees half a file.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from .errors import KeyFileError
from .sealing import KEY_BYTES, Keyring, new_key_id

__all__ = [
    "KeyFile",
    "add_current_key",
    "drop_keys_except",
    "load_keyring",
    "load_or_create_keyring",
]

_HEADER = (
    "# mcpgw secret keys. The first key seals new secrets; every key listed opens them.\n"
    "# Keep this file private and backed up: without it, stored credentials cannot be read.\n"
)


def _encode(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


def _decode(text: str) -> bytes:
    standard = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(standard + "=" * (-len(text) % 4), validate=True)  # no silent skipping


def load_keyring(path: Path) -> Keyring:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    keys: dict[str, bytes] = {}
    order: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            key_id, key = parts[0], _decode(parts[1])
            if len(parts) != 2:
                raise ValueError
        except (IndexError, ValueError, binascii.Error) as exc:
            raise KeyFileError(f"{path}:{number}: expected '<key id> <base64url key>'") from exc
        if key_id in keys:
            raise KeyFileError(f"{path}:{number}: key id {key_id!r} appears twice")
        keys[key_id] = key
        order.append(key_id)
    if not order:
        raise KeyFileError(f"{path}: holds no key")
    try:
        return Keyring(keys, order[0])
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc


def _write(path: Path, keyring: Keyring, order: list[str], *, exclusive: bool) -> None:
    body = _HEADER + "".join(f"{key_id} {_encode(keyring.keys[key_id])}\n" for key_id in order)
    target = path if exclusive else path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(target, flags, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    if not exclusive:
        os.replace(target, path)


def load_or_create_keyring(path: Path) -> tuple[Keyring, bool]:
    """The keyring in ``path``, creating the file with one new key if there is none; and
    whether it was created (the caller warns)."""
    key_id = new_key_id()
    keyring = Keyring({key_id: os.urandom(KEY_BYTES)}, key_id)
    try:
        _write(path, keyring, [key_id], exclusive=True)
    except FileExistsError:
        return load_keyring(path), False
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from exc
    return keyring, True


def add_current_key(path: Path) -> Keyring:
    """Put a new key at the top of ``path`` (it seals from now on; the others still open)."""
    old = load_keyring(path)
    key_id = new_key_id()
    keyring = Keyring({key_id: os.urandom(KEY_BYTES), **old.keys}, key_id)
    _write(path, keyring, [key_id, *old.keys], exclusive=False)
    return keyring


def drop_keys_except(path: Path, keep: set[str]) -> list[str]:
    """Remove from ``path`` every key but the current one and those in ``keep``; return the
    ids dropped. Run it only after re-sealing, with ``keep`` = the key ids values still use."""
    old = load_keyring(path)
    kept = [key_id for key_id in old.keys if key_id == old.current or key_id in keep]
    _write(path, Keyring({k: old.keys[k] for k in kept}, old.current), kept, exclusive=False)
    return [key_id for key_id in old.keys if key_id not in kept]


class KeyFile:
    """A key file as a ``KeySource``: re-read whenever its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Keyring:
        return load_keyring(self.path)

    def stamp(self) -> object:
        try:
            status = self.path.stat()
        except OSError:
            return None  # load() says what is wrong
        return (status.st_mtime_ns, status.st_size, status.st_ino)
