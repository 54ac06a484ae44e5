"""The OS packages the collected tests need (PostgreSQL, HAProxy, chromium), installed in the
background from the end of collection on, rather than by the first test that needs each.

On a machine starting clean (CI) `apt-get install chromium` alone takes over two minutes; done by
the test that needs it, that worker waits the whole time. Started here, the installs run while the
first tests do, and a test that needs a package still missing waits on `tests/apt.py`'s lock and
then finds it installed. Each finder is the one the tests call (same checks, same install), in
the order the suite needs them; where one fails, the tests that need it fail or skip as they would
have, saying why. Where every package is installed nothing is started.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable

import pytest

from tests.browser import BrowserUnavailable, chromium_path
from tests.loadbalancer import LoadBalancerUnavailable, find_haproxy
from tests.postgres import PostgresUnavailable, find_bindir

__all__ = ["start_installing"]

# (a fixture that needs the package, its finder, what the finder raises when it cannot): the
# order is the order they are installed in, the most used first.
_NEEDS: tuple[tuple[str, Callable[[], object], type[Exception]], ...] = (
    ("postgres_server", find_bindir, PostgresUnavailable),
    ("haproxy", find_haproxy, LoadBalancerUnavailable),
    ("browse", chromium_path, BrowserUnavailable),
)


def start_installing(items: Iterable[pytest.Item]) -> threading.Thread | None:
    """Install, in a thread of its own, what the fixtures of `items` need; None if nothing is needed."""
    wanted = {name for item in items for name in getattr(item, "fixturenames", ())}
    finders = [(find, unavailable) for fixture, find, unavailable in _NEEDS if fixture in wanted]
    if not finders:
        return None

    def install() -> None:
        for find, unavailable in finders:
            # The test that needs it raises (or skips on) the same error when it asks.
            with contextlib.suppress(unavailable):
                find()

    # A daemon: a run that ends first (-x) does not wait for apt; dpkg finishes on its own.
    thread = threading.Thread(target=install, name="mcpgw-tests-packages", daemon=True)
    thread.start()
    return thread
