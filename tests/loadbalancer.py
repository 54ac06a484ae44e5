"""A real load balancer for the tests: HAProxy from the machine's packages, round-robin and
without affinity, in front of gateway replicas, in a temporary directory.

`find_haproxy()` finds the `haproxy` binary; where there is none, `apt-get install haproxy` is
tried once (as root only, after an `apt-get update` if need be, as `tests/browser.py` does for
chromium: CI's clean machine gets it this way); where that fails too, the tests that need it
are skipped, saying why. Whatever service the package sets up (with Debian's config, which
listens nowhere) the tests leave alone: each test runs an HAProxy of its own.

`run_haproxy` serves a config on a listening socket the test bound (HAProxy's `bind fd@N`), so
a host can connect at once: the kernel queues the connection until HAProxy accepts it, as
`tests/harness.py` does for the gateway. HAProxy runs in the foreground (`-db`) and is stopped
with SIGTERM when the block ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process

from tests.apt import apt_get, apt_lock
from tests.harness import base_url_of, listening_socket, stop_process

__all__ = [
    "HAProxy",
    "LoadBalancerUnavailable",
    "find_haproxy",
    "haproxy_config",
    "run_haproxy",
    "serve_behind_haproxy",
]

_INSTALL_TIMEOUT_S = 600
_failed: list[str] = []  # why the install failed, once tried in this process


class LoadBalancerUnavailable(Exception):
    """No HAProxy here, and none could be installed: the reason, for a skip."""


def _on_path() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    return apt_get(*args, timeout_s=_INSTALL_TIMEOUT_S)


def find_haproxy() -> str:
    """The `haproxy` binary, installing Debian's package first if need be (as root with apt-get,
    after an `apt-get update` if the package is not yet known)."""
    if found := _on_path():
        return found
    if _failed:
        raise LoadBalancerUnavailable(_failed[0])
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise LoadBalancerUnavailable(
            "no haproxy binary on this machine, and it cannot be installed here (that needs root and "
            "apt-get): run `apt-get install haproxy` as root"
        )
    with apt_lock():  # parallel workers and runs install once
        if found := _on_path():
            return found
        if _failed:  # tried while this waited for the lock (tests/packages.py's thread)
            raise LoadBalancerUnavailable(_failed[0])
        done = _apt("install", "-y", "-q", "--no-install-recommends", "haproxy")
        if done.returncode != 0:
            _apt("update", "-q")
            done = _apt("install", "-y", "-q", "--no-install-recommends", "haproxy")
        if (found := _on_path()) is None:
            _failed.append(
                f"no haproxy binary, and apt-get install haproxy failed ({done.returncode}): {done.stderr}"
            )
            raise LoadBalancerUnavailable(_failed[0])
    return found


def haproxy_config(bind: str, replicas: Sequence[str], *, check_interval_ms: int = 200) -> str:
    """A round-robin HAProxy config without affinity: every request goes to the next replica
    that is ready, `GET /readyz` answering 200, checked every `check_interval_ms` (out after two
    failures in a row, a slow answer failing only after 5 s: a busy machine is not a down one).
    `replicas` are their base URLs (http://127.0.0.1:PORT); the frontend binds `bind` (an
    address, or `fd@N` for a listening socket inherited as file descriptor N). A refused
    connection is retried on the other replica (`option redispatch`): nothing reached the
    stopped one, so nothing runs twice.
    """
    servers = "\n".join(
        f"    server replica-{n} {url.removeprefix('http://')} check" for n, url in enumerate(replicas)
    )
    return f"""global
    maxconn 1000

defaults
    mode http
    option forwardfor
    option redispatch
    retries 2
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout check 5s

frontend mcp
    bind {bind}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {check_interval_ms}ms fall 2 rise 1
{servers}
"""


@dataclass(frozen=True, slots=True)
class HAProxy:
    process: Process
    base_url: str  # where hosts connect
    directory: Path  # its config, and what it printed

    @property
    def url(self) -> str:
        return f"{self.base_url}/mcp"

    @property
    def log(self) -> str:
        return (self.directory / "haproxy.log").read_text(errors="replace")


@asynccontextmanager
async def run_haproxy(config_text: str, frontend: socket.socket) -> AsyncIterator[HAProxy]:
    """Run HAProxy on `config_text`, whose frontend binds `fd@{frontend.fileno()}` (a listening
    socket from `tests.harness.listening_socket`), until the block ends; closes `frontend`. The
    config is checked first (`haproxy -c`), so a bad one fails saying why."""
    binary = find_haproxy()
    base_url = base_url_of(frontend)
    fd = frontend.fileno()
    directory = Path(tempfile.mkdtemp(prefix="mcpgw-haproxy-"))
    try:
        config = directory / "haproxy.cfg"
        config.write_text(config_text)
        with anyio.fail_after(30):
            checked = await anyio.run_process(
                [binary, "-c", "-q", "-f", str(config)], check=False, pass_fds=[fd]
            )
        if checked.returncode != 0:
            raise AssertionError(f"haproxy -c refused the config:\n{checked.stderr.decode()}\n{config_text}")
        with (directory / "haproxy.log").open("wb") as output:
            process = await anyio.open_process(
                [binary, "-db", "-f", str(config)],
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                pass_fds=[fd],
            )
        frontend.close()  # HAProxy has its own copy of the listening socket
        try:
            yield HAProxy(process, base_url, directory)
        finally:
            with anyio.CancelScope(shield=True):
                await stop_process(process)
    finally:
        frontend.close()
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def serve_behind_haproxy(
    replicas: Sequence[str], *, check_interval_ms: int = 200
) -> AsyncIterator[HAProxy]:
    """HAProxy round-robin over `replicas` (their base URLs), on an ephemeral loopback port."""
    frontend = listening_socket()
    config = haproxy_config(f"fd@{frontend.fileno()}", replicas, check_interval_ms=check_interval_ms)
    async with run_haproxy(config, frontend) as proxy:
        yield proxy
