"""Profiling the gateway process: wrap its command in py-spy or cProfile, then rank functions.

py-spy (preferred) samples the gateway from outside at a fixed rate. It runs with ``--gil``:
only samples of the thread holding the GIL count, i.e. Python code actually running
(py-spy's own idle detection counts threads blocked in ``queue.get`` / ``Condition.wait``
as busy on this machine). Time spent with the GIL released (socket syscalls, SQLite's C
code) is therefore missing from the shares. The raw output is collapsed stacks
(``root;...;leaf count``): a function's *self* share is the samples where it is the leaf;
its *total* share the samples where it appears (once per stack) below the event loop's
callback dispatch (``Handle._run``), so the table is not topped by ``run_forever`` and
friends. Stacks under the import machinery (start-up) are left out. Self shares are also
summed by package (h11, httpcore2, anyio, gateway, ...).

cProfile is the fallback when py-spy is missing; it profiles the whole process life and
measures wall time inside functions (the event loop's epoll wait left out; coroutine
"cumulative" times are per resumption).

Shares are also shown as milliseconds per call: share x the gateway CPU per call measured
from /proc during the window (under the profiler, so inflated by its overhead).
"""

from __future__ import annotations

import pstats
import shutil
import sys
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY_SPY_RATE_HZ = 250
CPROFILE_IDLE = {"<method 'poll' of 'select.epoll' objects>"}  # the event loop waiting: not work
EVENT_LOOP_DISPATCH = "Handle._run ("  # asyncio runs every task step and callback through it


@dataclass(frozen=True)
class Ranked:
    function: str
    self_share: float  # 0..1 of all gateway samples / profiled time
    total_share: float


def pick_profiler(requested: str) -> str:
    """`auto` is py-spy when it is installed, else cProfile."""
    if requested == "auto":
        return "py-spy" if py_spy() is not None else "cprofile"
    if requested == "py-spy" and py_spy() is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    return requested


def py_spy() -> str | None:
    beside_python = Path(sys.executable).parent / "py-spy"
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


def wrap(profiler: str, module_argv: list[str], output: Path) -> list[str]:
    """The command that runs `python -m <module_argv...>` under `profiler`, writing to `output`."""
    if profiler == "py-spy":
        spy = py_spy()
        assert spy is not None
        return [
            spy, "record", "--rate", str(PY_SPY_RATE_HZ), "--format", "raw", "--function", "--gil",
            "--output", str(output), "--", sys.executable, "-m", *module_argv,
        ]  # fmt: skip
    return [sys.executable, "-m", "cProfile", "-o", str(output), "-m", *module_argv]


def rank(profiler: str, output: Path) -> tuple[list[Ranked], int]:
    """Every function with its self and total share, and the number of samples/calls behind it."""
    return _rank_py_spy(output) if profiler == "py-spy" else _rank_cprofile(output)


def _rank_py_spy(output: Path) -> tuple[list[Ranked], int]:
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in output.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        if any("importlib._bootstrap" in frame for frame in frames):
            continue  # start-up imports, not request handling
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for frame in set(_below_event_loop(frames)):
            anywhere[frame] += count
    ranked = [Ranked(f, own[f] / total, anywhere[f] / total) for f in own | anywhere] if total else []
    return ranked, total


def _below_event_loop(frames: list[str]) -> list[str]:
    """The frames under the event loop's callback dispatch (so `total` is not topped by the loop itself)."""
    cut = max((i for i, frame in enumerate(frames) if frame.startswith(EVENT_LOOP_DISPATCH)), default=-1)
    return frames[cut + 1 :] or frames


def _rank_cprofile(output: Path) -> tuple[list[Ranked], int]:
    stats = pstats.Stats(str(output)).stats  # type: ignore[attr-defined]
    stats = {key: row for key, row in stats.items() if key[2] not in CPROFILE_IDLE}
    total_time = sum(row[2] for row in stats.values()) or 1.0
    ranked = [
        Ranked(_short(f"{name} ({file}:{line})"), row[2] / total_time, row[3] / total_time)
        for (file, line, name), row in stats.items()
    ]
    return ranked, sum(row[1] for row in stats.values())


_PREFIXES = (
    (f"({sysconfig.get_path('purelib')}/", "("),
    (f"({sysconfig.get_path('platlib')}/", "("),
    (f"({ROOT}/", "("),
    (f"({sysconfig.get_path('stdlib')}/", "(stdlib/"),
)


def _short(frame: str) -> str:
    """Shorten the file path inside a `function (path:line)` label."""
    for prefix, replacement in _PREFIXES:
        frame = frame.replace(prefix, replacement)
    return frame


def by_package(ranked: list[Ranked]) -> list[tuple[str, float]]:
    """Self share summed by the top-level package (or stdlib module) of each function's file."""
    shares: dict[str, float] = {}
    for r in ranked:
        package = _package(r.function)
        shares[package] = shares.get(package, 0.0) + r.self_share
    return sorted(shares.items(), key=lambda item: item[1], reverse=True)


def _package(function: str) -> str:
    """`h11` for `validate (h11/_util.py:84)`, `threading` for `Condition.wait (threading.py:295)`."""
    location = function.rpartition(" (")[2].removesuffix(")").rsplit(":", 1)[0].removeprefix("stdlib/")
    package = location.split("/", 1)[0].removesuffix(".py")
    return "(C builtins)" if package == "~" else package


def format_packages(ranked: list[Ranked], n: int, cpu_ms_per_call: float | None) -> str:
    per_call = cpu_ms_per_call or 0.0
    lines = [f"  {'self%':>6} {'ms/call':>8}  package"]
    lines += [
        f"  {share * 100:6.1f} {share * per_call:8.3f}  {name}" for name, share in by_package(ranked)[:n]
    ]
    return "\n".join(lines)


def top(ranked: list[Ranked], by: str, n: int) -> list[Ranked]:
    key = (lambda r: r.self_share) if by == "self" else (lambda r: r.total_share)
    return sorted(ranked, key=key, reverse=True)[:n]


def format_top(ranked: list[Ranked], by: str, n: int, cpu_ms_per_call: float | None) -> str:
    """A table of the top `n` functions by `by` (self or total), with estimated ms per call."""
    per_call = cpu_ms_per_call or 0.0
    lines = [f"  {'self%':>6} {'self ms/call':>12} {'total%':>7} {'total ms/call':>13}  function (file:line)"]
    for r in top(ranked, by, n):
        lines.append(
            f"  {r.self_share * 100:6.1f} {r.self_share * per_call:12.3f} "
            f"{r.total_share * 100:7.1f} {r.total_share * per_call:13.3f}  {r.function}"
        )
    return "\n".join(lines)
