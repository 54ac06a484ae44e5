"""Debian packages the tests install for themselves (chromium, haproxy, postgresql), as root.

Every test process that installs takes one file lock first, whatever the package: the suite runs
in parallel workers (pytest-xdist), and two `apt-get` runs at once fail on dpkg's own lock (or, for
`apt-get update`, on the lists' lock) rather than wait. `DPkg::Lock::Timeout` still covers an apt
run of someone else's on the machine.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["apt_get", "apt_lock"]

_LOCK = Path(tempfile.gettempdir()) / "mcpgw-tests-apt.lock"


@contextmanager
def apt_lock() -> Iterator[None]:
    """Held while this process looks for a package and installs it: another worker waits, then
    finds it installed."""
    with _LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def apt_get(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """`apt-get ARGS`, non-interactive, its output captured; call it inside `apt_lock()`."""
    return subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        timeout=timeout_s,
    )
