"""`mcpgw grants list|revoke` beside a running gateway with host sign-in: an operator sees who
signed in with which client, and a revoked sign-in's token is refused on the very next request."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx2

from tests.gateway.cli.commands import run_mcpgw
from tests.gateway.signin.browser import TIMEOUT, create_key, redeem, register, sign_in, signin_gateway
from tests.harness import INITIALIZE

PING = INITIALIZE


async def test_grants_list_shows_a_sign_in_and_revoke_ends_it_at_once(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    async with signin_gateway(tmp_path) as gateway, httpx2.AsyncClient() as http:
        key = await create_key(gateway, "ada")
        with anyio.fail_after(TIMEOUT):
            client = await register(http, gateway.base_url, client_name="Claude")
            code, verifier = await sign_in(http, gateway.base_url, client.client_id, key)
            access = (await redeem(http, gateway.base_url, client, code, verifier)).json()["access_token"]
            headers = {"authorization": f"Bearer {access}", "accept": "application/json"}
            assert (await http.post(gateway.url, json=PING, headers=headers)).status_code == 200

        code_, out, err = await run_mcpgw(
            "grants", "list", "--config", str(config), "--org", "default", "--json"
        )
        assert code_ == 0, err
        (grant,) = json.loads(out)
        assert grant["userId"] == "ada" and grant["clientName"] == "Claude"
        assert grant["resource"] == gateway.url and grant["revokedAt"] is None
        assert access not in out

        code_, out, err = await run_mcpgw("grants", "revoke", grant["grantId"], "--config", str(config))
        assert code_ == 0, err
        with anyio.fail_after(TIMEOUT):
            refused = await http.post(gateway.url, json=PING, headers=headers)
        assert refused.status_code == 401

        code_, out, err = await run_mcpgw("grants", "list", "--config", str(config), "--org", "default")
        assert code_ == 0, err
        assert "Claude" in out and "(revoked)" in out
        code_, _, err = await run_mcpgw("grants", "revoke", grant["grantId"], "--config", str(config))
        assert code_ == 1 and "no live sign-in" in err
