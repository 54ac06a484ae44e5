"""What each replica keeps in memory for speed, and what must still agree across replicas: the
key cache (a key revoked through one replica is refused by the others as soon as they hear the
revocation's NOTIFY, not after their 30 s of caching), and the secrets that seal what the
gateway mints (a listing cursor minted by one replica is accepted by another)."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest

from store import open_postgres_store
from tests.harness import demo_stdio_yaml
from tests.replicas import replica_configs, serve_replicas

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def configs_for(tmp_path: Path, postgres_url: str) -> list[Path]:
    return replica_configs(
        tmp_path, postgres_url, demo_stdio_yaml(sessions="shared"), extra_yaml="auth: {required: true}\n"
    )


async def test_a_key_revoked_through_one_replica_is_refused_by_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    """B has the key in memory (answered without a lookup); it is revoked through A's API. A
    answers once B has dropped its cached keys, so B's very next request with it is refused."""
    async with open_postgres_store(postgres_url) as store:
        org = await store.ensure_organisation("default")
        host = await store.create_api_key(org.id, user_id="ada")
        admin = await store.create_api_key(org.id, is_admin=True)
    async with serve_replicas(configs_for(tmp_path, postgres_url)) as (a, b), httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            headers = {**ACCEPT, "x-api-key": host.secret}
            for _ in range(2):  # looked up, then answered from B's memory
                assert (await http.post(b.url, json=INITIALIZE, headers=headers)).status_code == 200
            revoked = await http.post(
                f"{a.base_url}/mcp/{org.id}/keys/{host.key.id}/revoke", headers={"x-api-key": admin.secret}
            )
            assert revoked.status_code in (200, 204), revoked.text
            refused = await http.post(b.url, json=INITIALIZE, headers=headers)
        assert refused.status_code == 401
        assert "revoked" in refused.json()["error"]["message"]


async def test_a_listing_cursor_minted_by_one_replica_is_accepted_by_another(
    tmp_path: Path, postgres_url: str
) -> None:
    async with open_postgres_store(postgres_url) as store:
        org = await store.ensure_organisation("default")
        admin = await store.create_api_key(org.id, is_admin=True)
    async with serve_replicas(configs_for(tmp_path, postgres_url)) as (a, b), httpx2.AsyncClient() as http:
        with anyio.fail_after(TIMEOUT):
            headers = {**ACCEPT, "x-api-key": admin.secret}
            for replica in (a, b, a):  # three sessions, recorded in the one database
                assert (await http.post(replica.url, json=INITIALIZE, headers=headers)).status_code == 200
            listing = f"/mcp/{org.id}/sessions"
            first = await http.get(f"{a.base_url}{listing}", params={"Limit": 2}, headers=headers)
            assert first.status_code == 200, first.text
            cursor = first.json()["meta"]["cursors"]["next"]
            assert cursor
            second = await http.get(
                f"{b.base_url}{listing}", params={"Limit": 2, "Cursor": cursor}, headers=headers
            )
        assert second.status_code == 200, second.text
        seen = [s["id"] for s in first.json()["data"]] + [s["id"] for s in second.json()["data"]]
        assert len(seen) == len(set(seen)) == 3
