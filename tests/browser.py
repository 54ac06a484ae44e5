"""A real browser for the console tests: Debian's `chromium`, driven by playwright-core
(`tests/node/console_browser.mjs`).

`chromium_path()` finds it, and installs it where it can: as root with apt-get (a CI machine
or container starting clean runs `scripts/test`, and nothing else installs it), `apt-get
install chromium`, after an `apt-get update` if the package is not yet known. Where it is
missing and cannot be installed (not root, no apt-get, no network), the browser tests are
skipped, saying so; they are never skipped where it is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.apt import apt_get, apt_lock

__all__ = ["BrowserUnavailable", "chromium_path"]

INSTALL_TIMEOUT_S = 900.0
_failed: list[str] = []  # why the install failed, once tried in this process


class BrowserUnavailable(RuntimeError):
    """chromium is not installed and cannot be: the message says why and what to do."""


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    return apt_get(*args, timeout_s=INSTALL_TIMEOUT_S)


def chromium_path() -> str:
    """The chromium executable, installed first if need be and possible."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise BrowserUnavailable(
            "the console's browser tests need chromium, which is not installed and cannot be installed "
            "here (that needs root and apt-get): run `apt-get install chromium` as root, or set CHROMIUM "
            "to a chromium executable"
        )
    with apt_lock():  # parallel workers and runs install once
        if found := shutil.which("chromium"):
            return found
        if _failed:  # tried while this waited for the lock (tests/packages.py's thread)
            raise BrowserUnavailable(_failed[0])
        done = _apt("install", "-y", "--no-install-recommends", "chromium")
        if done.returncode != 0:
            _apt("update")
            done = _apt("install", "-y", "--no-install-recommends", "chromium")
        if done.returncode != 0 or (found := shutil.which("chromium")) is None:
            _failed.append(f"apt-get install chromium failed ({done.returncode}):\n{done.stderr}")
            raise BrowserUnavailable(_failed[0])
    return found
