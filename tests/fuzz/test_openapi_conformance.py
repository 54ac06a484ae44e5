"""Schemathesis against `/openapi.json`: the API answers exactly as its document says.

For an admin key, a plain key of the same organisation and no key at all: no server errors,
no status code, content type, header or body the document does not describe, no schema-valid
request refused (other than with a forged cursor, see `schemathesis_hooks.py`), no invalid one
accepted, no answer slower than the deadline. Path parameters are drawn mostly from ids that
exist (organisations, recorded sessions, credential rows), so the runs reach past the 404s.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from tests.fuzz.budget import LONG, REQUEST_DEADLINE_S, SCHEMATHESIS_EXAMPLES
from tests.fuzz.world import TALLY, World
from tests.harness import ROOT

RUN_TIMEOUT_S = 1800.0 if LONG else 120.0


def _config(world: World, path: Path) -> Path:
    def values(items: list[str]) -> str:
        return json.dumps(items)

    orgs = [world.fuzz.organisation_id, world.stranger.organisation_id]
    path.write_text(
        f"""
[cache]
enabled = false

[dictionaries.organisations]
values = {values(orgs)}
[dictionaries.sessions]
values = {values(world.session_ids)}
[dictionaries.rows]
values = {values(world.credential_ids)}

[parameters]
"path.organisationId" = {{ dictionary = "organisations", probability = 0.9 }}
"path.sessionId" = {{ dictionary = "sessions", probability = 0.8 }}
"path.id" = {{ dictionary = "rows", probability = 0.8 }}
"""
    )
    return path


@pytest.mark.parametrize("caller", ["admin", "fuzz", "nobody"])
async def test_the_api_answers_only_as_its_openapi_document_says(
    fuzz_world: World, tmp_path: Path, caller: str
) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(_config(fuzz_world, tmp_path / "schemathesis.toml")),
        "run",
        f"{fuzz_world.gateway.base_url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",  # replaced by the hooks' check, which knows about cursors
        "--max-examples",
        str(SCHEMATHESIS_EXAMPLES),
        "--max-response-time",
        str(REQUEST_DEADLINE_S),
        "--request-timeout",
        str(REQUEST_DEADLINE_S * 2),
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    # Deterministic by default (it implies no example database); the long run explores afresh.
    command += ["--generation-database", "none"] if LONG else ["--seed", "1", "--generation-deterministic"]
    if caller != "nobody":
        command += ["--header", f"Authorization: Bearer {fuzz_world.caller(caller).key}"]
    operations = 10
    if caller == "admin":
        # An admin's revocation works: following the key ids the listing answers, it would revoke
        # the keys this world runs on (the canary's, its own). tests/api/test_keys_api.py has it.
        command += ["--exclude-operation-id", "revokeApiKey"]
        operations -= 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.fuzz.schemathesis_hooks"}
    with anyio.fail_after(RUN_TIMEOUT_S):
        run = await anyio.run_process(command, cwd=ROOT, env=env, check=False)
    output = run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")
    assert report.exists(), output
    result = json.loads(report.read_text())
    TALLY.schemathesis_cases += result["test_cases"]["generated"]
    assert result["failures"] == [] and result["errors"] == [], output
    assert (result["operations"]["tested"], result["operations"]["total"]) == (operations, 10), output
    assert run.returncode == 0, output
