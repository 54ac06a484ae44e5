"""Child processes for the benchmark: start, wait for readiness with deadlines, always stop.

Every child gets its own session (process group) so a terminal Ctrl-C reaches only
bench/run.py, which then stops the children itself, in reverse start order: SIGTERM to the
child's group, then SIGKILL if it has not exited within a grace period. Output goes to log
files (never to an unread pipe, which could fill up and stall the child).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.02
STOP_GRACE_S = 10.0


class StartupError(RuntimeError):
    """A child did not become ready; the message carries the tail of its log."""


class Processes:
    """Owns the children it starts; stops every one still running on exit (errors and Ctrl-C too)."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for child in reversed(self._children):
            stop(child)

    def spawn(
        self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            child = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
            )
        self._children.append(child)
        return child


def stop(child: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it outlives `grace_s`."""
    if child.poll() is not None:
        return
    _signal_group(child, signal.SIGTERM)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _signal_group(child, signal.SIGKILL)
        child.wait(timeout=grace_s)


def _signal_group(child: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, sig)  # start_new_session: the group id is the child's pid


def log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_for_line(child: subprocess.Popen[bytes], log: Path, prefix: str, timeout_s: float) -> str:
    """Poll `log` until a line starting with `prefix` appears; fail if the child exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        if child.poll() is not None:
            break
        time.sleep(POLL_S)
    raise StartupError(f"no {prefix!r} line from {child.args!r} (exit code {child.poll()}):\n{log_tail(log)}")


def wait_for_http(child: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> None:
    """Retry GET `url` until it answers 200; fail if the child exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(POLL_S)
    raise StartupError(f"{url} did not answer (exit code {child.poll()}):\n{log_tail(log)}")


def child_pid(parent: int, timeout_s: float) -> int:
    """The first child of `parent` (e.g. the gateway under py-spy), polling until it exists."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(POLL_S)
    raise StartupError(f"process {parent} started no child within {timeout_s} s")


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git_describe() -> str | None:
    """`git describe` of the checkout, for the results (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
