"""How hard the fuzz suite pushes: a short deterministic run by default, a long one on request.

`MCPGW_FUZZ=long` turns on the long run: many more examples per property, fresh random ones
each time (pass `--hypothesis-seed=N` to repeat one), and more schemathesis cases. The default
run draws the same examples every time (derandomized, no example database), so CI is
deterministic and the whole suite stays well under a minute.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("MCPGW_FUZZ", "").strip().lower() == "long"

REQUEST_DEADLINE_S = 5.0
"""No request may take longer than this to be answered in full (open-ended streams: to start)."""

EXAMPLES = 4000 if LONG else 250
"""Examples per property-based test."""

SIGNIN_EXAMPLES = 1000 if LONG else 80
"""Examples per sign-in endpoint class (test_signin_endpoints.py): each is a request or two, and
a normal sign-in follows every class."""

SCHEMATHESIS_EXAMPLES = 400 if LONG else 20
"""Schemathesis's `--max-examples`, per API operation and caller."""

RSS_GROWTH_LIMIT = (192 if LONG else 48) * 1024 * 1024
"""How far the gateway's resident memory may grow over the suite (measured: 2-3 MiB in the default
run, under 6 MiB in the long one). Every session a fuzzer opens stays until it is idle, so the
bound grows with the run."""


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # each request has its own deadline (REQUEST_DEADLINE_S)
        derandomize=not LONG,
        database=None,
        print_blob=LONG,
        # Bodies near the size limit are the point; the session-wide checks run per test, on purpose.
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
    )
