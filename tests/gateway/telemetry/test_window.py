"""`UpstreamWindow`: an upstream's last hour of calls for the console's upstreams page: calls,
errors, and p50/p99 to within one 1-2-5 step. A clock the test moves stands for the minutes."""

from __future__ import annotations

from gateway.telemetry.window import UpstreamWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_counts_calls_and_errors_and_bounds_the_quantiles() -> None:
    clock = Clock()
    window = UpstreamWindow(clock=clock)
    for _ in range(98):
        window.add("demo", True, 0.004)  # 4 ms: in the (2, 5] ms bucket
    window.add("demo", False, 0.3)  # 300 ms: (200, 500]
    window.add("demo", False, 1.5)  # 1.5 s: (1000, 2000]
    summary = window.summary("demo")
    assert (summary.calls, summary.errors) == (100, 2)
    assert summary.error_rate == 0.02
    assert summary.p50_ms == 5.0
    assert summary.p99_ms == 500.0
    assert window.summary("other").calls == 0 and window.summary("other").p50_ms is None


def test_calls_older_than_the_window_no_longer_count() -> None:
    clock = Clock()
    window = UpstreamWindow(minutes=60, clock=clock)
    window.add("demo", False, 10.0)
    clock.now += 30 * 60
    window.add("demo", True, 0.001)
    assert window.summary("demo").calls == 2
    clock.now += 31 * 60  # the first call is now 61 minutes old
    summary = window.summary("demo")
    assert (summary.calls, summary.errors, summary.p99_ms) == (1, 0, 1.0)
    clock.now += 60 * 60
    assert window.summary("demo").calls == 0
