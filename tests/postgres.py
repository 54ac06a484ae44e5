"""A real PostgreSQL server for the tests: `initdb` and `pg_ctl` from the machine's packages, in a
temporary directory, on a free loopback port, with its unix socket in that directory too.

As root (CI, these machines) the server runs as the `postgres` user, through `runuser`: PostgreSQL
refuses to run as root. Where no binaries are found, `apt-get install -y postgresql` is tried once
(as root only); where that fails too, the tests that need a server are skipped, saying why.

The server takes password logins (SCRAM) over TCP and trusts its unix socket, which only the
test's directory holds: the tests' own set-up (creating and dropping databases) goes through the
socket with `psql`, the gateway under test through TCP with a user and a password, as in a
deployment. `fsync` is off: nothing here survives the machine going down, and the tests kill the
gateway, never the server's machine (a commit is still acknowledged only once the server has it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.apt import apt_get, apt_lock

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bindir"]

SUPERUSER = "mcpgw_test"
_START_TIMEOUT_S = 60
_apt_tried = False


class PostgresUnavailable(Exception):
    """No PostgreSQL binaries here, and none could be installed: the reason, for a skip."""


def _candidates() -> list[Path]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_of, reverse=True)
    on_path = shutil.which("initdb")
    return [Path(path).parent for path in found] + ([Path(on_path).parent] if on_path else [])


def _version_of(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def find_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory, installing the package first if need be."""
    global _apt_tried
    candidates = _candidates()
    if not candidates and os.geteuid() == 0 and shutil.which("apt-get"):
        # The lock first, then `_apt_tried`: this process may be installing it in another thread
        # (tests/packages.py), and a test that asks meanwhile waits for that to end.
        with apt_lock():  # the other test workers wait, then find it installed
            if not (candidates := _candidates()) and not _apt_tried:
                _apt_tried = True
                apt_get("install", "-y", "-q", "postgresql", timeout_s=600)
                candidates = _candidates()
    if not candidates:
        why = "apt-get install postgresql failed" if _apt_tried else "not root, so it was not installed"
        raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) on this machine ({why})")
    return candidates[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; `start()` it, `stop()` it, `start()` it again."""

    bindir: Path = field(default_factory=find_bindir)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = 0
    root: Path = field(init=False)
    _databases: int = 0

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mcpgw-pg-"))
        self.root.chmod(0o700)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bindir / program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if self._as_postgres else command

    def _run(self, program: str, *args: str, input_text: str | None = None) -> str:
        done = subprocess.run(
            self._command(program, *args),
            cwd=self.root,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def start(self) -> None:
        """Start the server (on its old port if it ran before) and wait until it takes connections."""
        self.port = self.port or _free_port()
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "start", "-w", "-t", str(_START_TIMEOUT_S), "-D", str(self.data),
                  "-l", str(self.log_file), "-o", options)  # fmt: skip

    def stop(self) -> None:
        """Stop the server at once: open connections are cut, as when a database goes away."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` as the superuser over the unix socket; its unaligned, tuples-only output."""
        return self._run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
            "-p", str(self.port), "-U", SUPERUSER, "-d", database, input_text=sql,
        )  # fmt: skip

    def url(self, database: str = "postgres", *, user: str = SUPERUSER, password: bool = True) -> str:
        """A `postgresql://` URL to `database` over TCP, with the password in it unless told not to."""
        secret = f":{self.password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, template: str = "template0") -> str:
        """A new, empty database (or a copy of `template`); its name."""
        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}_{secrets.token_hex(3)}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
