"""The revocation marker: how every process on one SQLite file learns at once that a key was revoked.

A gateway keeps the API keys it has found in memory (`gateway/host/auth.py`), so that a call
costs no database read. A revocation must still hold from the very next request, and it often
comes from another process (`mcpgw keys revoke` writing the same file). Asking the database on
every request would cost ~0.07 ms of a ~0.4 ms call (a thread hop through aiosqlite); a `stat()`
of a small file costs ~1 µs. So each revocation, once its UPDATE has committed, appends a line
to `<database>-revoked`, and a reader compares the file's (size, mtime, inode) with what it saw
when it trusted a key: any difference and the key is looked up again.

Appending (rather than rewriting) makes the size grow with every revocation, so two revocations
within one tick of a coarse filesystem clock still tell apart; the file grows by one key id per
revocation, which stays small. The line is the key id, never anything secret.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StoreError, StoreUnavailable

__all__ = ["RevocationMarker"]

Generation = tuple[int, int, int] | None


class RevocationMarker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        """Create the file if there is none, so that readers `stat()` without failing."""
        try:
            os.close(os.open(self.path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))  # as the database
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path}: {exc.strerror or exc}") from exc

    def signal(self, key_id: str) -> None:
        """Tell every reader that keys were revoked (call after the revocation has committed)."""
        try:
            with open(self.path, "a", encoding="ascii") as marker:
                marker.write(f"{key_id}\n")
        except OSError as exc:
            raise StoreError(
                f"the key is revoked, but running gateways could not be told through {self.path} "
                f"({exc.strerror or exc}); they stop accepting it within 30 seconds"
            ) from exc

    def generation(self) -> Generation:
        """A value that changes whenever `signal` runs, in any process; None without the file."""
        try:
            found = os.stat(self.path)
        except OSError:
            return None
        return (found.st_size, found.st_mtime_ns, found.st_ino)
