"""The client under test for `conformance client`: mcpgw, as the client of the scenario's server.

The suite runs `python scripts/conformance_client.py <server-url>` once per scenario, with
MCP_CONFORMANCE_SCENARIO (the scenario's name), MCP_CONFORMANCE_PROTOCOL_VERSION (the revision)
and, for some scenarios, MCP_CONFORMANCE_CONTEXT (JSON: a pre-registered client, ...). This
driver makes the gateway the client the suite watches:

1. It writes a config naming `<server-url>` as an `http` upstream with `prefix: ""`; for the
   `auth/*` scenarios with per-user OAuth (`auth: {kind: oauth, identity: user}`, the context's
   client id and secret when it has them), a user-bound API key, and `public_url` set so the
   connect link and the OAuth redirect URI point at this gateway. The client-credentials and
   enterprise-managed scenarios (OWN_TOKEN_SCENARIOS) get `kind: client_credentials` or
   `kind: enterprise_managed` from the context instead (its private key and id_token written
   to files), and nobody signs in.
2. It starts `mcpgw serve` on an ephemeral loopback port and acts as a host through it with the
   MCP Python SDK's client (a 2025-11-25 session by default, as most hosts are today;
   MCPGW_HOST_MODE=2026-07-28 makes it a stateless host): it lists the tools, calls each one with
   the arguments the context's `toolCalls` name for it (else arguments made from its input
   schema), and, when a call answers with the gateway's connect link
   (`_meta["mcpgw/connect"]`), opens that link as a browser would (it confirms whose credential
   the link makes, then every redirect is followed: the scenario's authorization server
   redirects straight back without a consent page), then lists
   and calls again. It stops after MAX_SIGN_INS sign-ins, the limit of a person who gives up.
3. It stops the gateway. The gateway's log is kept in MCPGW_CONFORMANCE_LOG_DIR when set
   (scripts/conformance.py sets it to the run's directory), else in a temporary directory.

Exit status 0 when the host's steps all answered, 1 otherwise: the suite judges the scenario
from what its server saw; the exit status only tells whether the host got through.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client

STARTUP_S = 60.0
STEP_S = 30.0
MAX_SIGN_INS = 4
CONNECT_META_KEY = "mcpgw/connect"
CIMD_URL = "https://conformance-test.local/client-metadata.json"
# Scenarios where the gateway holds a token of its own for the upstream (no person signs in).
OWN_TOKEN_SCENARIOS = frozenset(
    {
        "auth/client-credentials-basic",
        "auth/client-credentials-jwt",
        "auth/enterprise-managed-authorization",
    }
)
# json-schema-2020-12-preservation: the host passes the focal tool's inputSchema to the echo tool.
SCHEMA_ECHO_TOOL = "json_schema_echo"
SCHEMA_FOCAL_TOOL = "json_schema_2020_12_tool"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: conformance_client.py <server-url>", file=sys.stderr)
        return 2
    url = argv[0]
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    mode = os.environ.get("MCPGW_HOST_MODE", "legacy")
    logs = Path(os.environ.get("MCPGW_CONFORMANCE_LOG_DIR") or tempfile.mkdtemp(prefix="mcpgw-cc-"))
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mcpgw-cc-") as directory:
        work = Path(directory)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config, env = write_config(work, base, port, url, scenario, context)
        key = create_key(config, env) if scenario.startswith("auth/") else None
        log = logs / f"gateway-{scenario.replace('/', '_') or 'scenario'}.log"
        with log.open("w") as stderr:
            mcpgw = Path(sys.executable).parent / "mcpgw"
            child = subprocess.Popen(
                [str(mcpgw), "serve", "--config", str(config)], cwd=work, env=env, stderr=stderr
            )
            try:
                wait_healthy(f"{base}/healthz")
                return asyncio.run(act_as_host(f"{base}/mcp", key, mode, context))
            finally:
                child.terminate()
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def write_config(
    work: Path, base: str, port: int, url: str, scenario: str, context: dict[str, Any]
) -> tuple[Path, dict[str, str]]:
    env = {**os.environ}
    upstream = f"{{name: conformance, transport: http, url: '{url}', prefix: ''"
    if scenario in OWN_TOKEN_SCENARIOS:
        upstream += f", auth: {{{own_token_auth(work, scenario, context, env)}}}"
        host_auth = "auth: {required: true}\n"
    elif scenario.startswith("auth/"):
        # The suite's authorization servers expect this client id metadata document URL (its
        # own example client's); they do not fetch it. Without it the gateway offers its own,
        # <public_url>/oauth/client-metadata.json, which the suite counts as the wrong one.
        auth = f"kind: oauth, identity: user, client_metadata_url: '{CIMD_URL}'"
        if context.get("client_id"):
            auth += f", client_id: '{context['client_id']}'"
        if context.get("client_secret"):
            env["CONFORMANCE_CLIENT_SECRET"] = str(context["client_secret"])
            auth += ", client_secret: '${CONFORMANCE_CLIENT_SECRET}'"
        upstream += f", auth: {{{auth}}}"
        host_auth = "auth: {required: true}\n"
    else:
        host_auth = "auth: {required: false}\n"
    config = work / "gateway.yaml"
    config.write_text(
        "# Generated by scripts/conformance_client.py for one conformance client scenario.\n"
        "database: ./gateway.db\n"
        f"public_url: {base}\n"
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"{host_auth}"
        "upstreams:\n"
        f"  - {upstream}}}\n"
    )
    return config, env


def own_token_auth(work: Path, scenario: str, context: dict[str, Any], env: dict[str, str]) -> str:
    """The upstream's `auth` for a scenario where the gateway gets a token of its own: client
    credentials (the context's secret, or its private key written to a file) or
    enterprise-managed authorization (the context's id_token written where the IdP exchange
    reads it, as a sidecar renewing it would)."""
    auth = f"client_id: '{context['client_id']}'"
    if context.get("client_secret"):
        env["CONFORMANCE_CLIENT_SECRET"] = str(context["client_secret"])
        auth += ", client_secret: '${CONFORMANCE_CLIENT_SECRET}'"
    if context.get("private_key_pem"):
        key = work / "client-key.pem"
        key.write_text(str(context["private_key_pem"]))
        key.chmod(0o600)
        auth += f", private_key_file: '{key}', signing_alg: {context.get('signing_algorithm', 'ES256')}"
    if scenario == "auth/enterprise-managed-authorization":
        assertion = work / "id-token.jwt"
        assertion.write_text(str(context["idp_id_token"]))
        idp = (
            f"token_endpoint: '{context['idp_token_endpoint']}', client_id: '{context['idp_client_id']}', "
            f"assertion_file: '{assertion}'"
        )
        return f"kind: enterprise_managed, {auth}, idp: {{{idp}}}"
    return f"kind: client_credentials, {auth}"


def create_key(config: Path, env: dict[str, str]) -> str:
    mcpgw = Path(sys.executable).parent / "mcpgw"
    done = subprocess.run(
        [str(mcpgw), "keys", "create", "--config", str(config), "--org", "default", "--user", "conformance"],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    created = json.loads(done.stdout)
    secret: str = created.get("key") or created["secret"]
    return secret


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=5).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)  # a script polling a child process it started; not a test
    raise SystemExit(f"mcpgw did not answer {url} within {STARTUP_S:g}s")


async def act_as_host(url: str, key: str | None, mode: str, context: dict[str, Any]) -> int:
    headers = {"x-api-key": key} if key else {}
    # Arguments the scenario names for its tools (`toolCalls`: http-custom-headers' values that
    # need Base64, a null to be left out of the headers), used as given instead of made up.
    given = {
        str(call["name"]): call.get("arguments") or {}
        for call in context.get("toolCalls") or []
        if isinstance(call, dict) and "name" in call
    }
    sign_ins = 0
    async with (
        httpx2.AsyncClient(headers=headers, timeout=STEP_S) as http,
        httpx2.AsyncClient(follow_redirects=True, timeout=STEP_S) as browser,
        Client(
            streamable_http_client(url, http_client=http),
            mode=mode,  # type: ignore[arg-type]
            elicitation_callback=accept_empty,
        ) as client,
    ):
        while True:
            listed = await asyncio.wait_for(client.list_tools(), STEP_S)
            print(f"tools: {[tool.name for tool in listed.tools]}", file=sys.stderr)
            link = None
            schemas = {tool.name: tool.input_schema for tool in listed.tools}
            for tool in listed.tools:
                arguments = given[tool.name] if tool.name in given else example(tool.input_schema)
                if tool.name == SCHEMA_ECHO_TOOL and SCHEMA_FOCAL_TOOL in schemas:
                    # The scenario's own instruction: the focal tool's schema, verbatim, as
                    # the host received it, so that its server sees what the gateway kept.
                    arguments = {"schema": schemas[SCHEMA_FOCAL_TOOL]}
                result = await asyncio.wait_for(client.call_tool(tool.name, arguments), STEP_S)
                meta = result.meta or {}
                print(f"call {tool.name}({arguments}): error={result.is_error}", file=sys.stderr)
                if isinstance(meta.get(CONNECT_META_KEY), dict):
                    link = str(meta[CONNECT_META_KEY]["url"])
                    break
            if link is None:
                return 0
            if sign_ins == MAX_SIGN_INS:
                print(f"gave up after {sign_ins} sign-ins", file=sys.stderr)
                return 1
            sign_ins += 1
            landed = await sign_in(browser, link)
            print(f"sign-in {sign_ins}: {landed.status_code} at {landed.url}", file=sys.stderr)
            if landed.status_code != 200:
                print(landed.text[:500], file=sys.stderr)
                return 1


async def sign_in(browser: httpx2.AsyncClient, link: str) -> httpx2.Response:
    """Open a connect link as a person would: the page says whose credential it makes, the
    person confirms (its form, posted with the page's hidden fields), and every redirect after
    that is followed (the scenario's authorization server redirects straight back)."""
    page = await browser.get(link)
    form = _ConfirmForm()
    form.feed(page.text)
    if page.status_code != 200 or form.action is None:
        return page
    return await browser.post(urljoin(str(page.url), form.action), data=form.hidden)


class _ConfirmForm(HTMLParser):
    """The first form of a page: where it posts and its hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action, self._inside = attributes.get("action", ""), True
        elif tag == "input" and self._inside and attributes.get("type") == "hidden":
            self.hidden[attributes.get("name", "")] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


async def accept_empty(
    context: ClientRequestContext, params: types.ElicitRequestParams
) -> types.ElicitResult:
    """A host that accepts whatever it is asked, filling in nothing: defaults are the client's
    (the gateway's) to apply."""
    return types.ElicitResult(action="accept", content={})


def example(schema: Any) -> Any:
    """A value that fits a JSON Schema well enough for a scenario's tool: its default, example,
    const or first enum value, else one of its type; an object gets every property."""
    if not isinstance(schema, dict):
        return None
    for word in ("default", "const"):
        if word in schema:
            return schema[word]
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        return {name: example(sub) for name, sub in (schema.get("properties") or {}).items()}
    return {"string": "test", "integer": 1, "number": 1, "boolean": True, "array": [], "null": None}.get(
        str(kind), "test"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
