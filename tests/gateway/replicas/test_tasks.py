"""The tasks extension on replicas: a task started through one replica is polled, answered and
finished through the others, recorded as the one invocation row it is.

Task ids are sealed with the shared secret and name the upstream, the upstream's task, the
invocation row and the session (gateway/core/tasks.py), so no replica needs another's memory.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2

from tests.gateway.core.test_tasks import Host, recorded_calls, upstream_url, upstream_yaml
from tests.replicas import replica_configs, serve_replicas

TIMEOUT = 30.0
__all__ = ["upstream_url"]  # the fixture, shared with the single-gateway tests


async def test_a_task_started_on_one_replica_is_answered_and_finished_on_the_others(
    tmp_path: Path, postgres_url: str, upstream_url: str
) -> None:
    configs = replica_configs(
        tmp_path,
        postgres_url,
        upstream_yaml(upstream_url),
        replicas=3,
        extra_yaml="auth: {required: false}\n",
    )
    async with serve_replicas(configs) as (a, b, c), httpx2.AsyncClient(timeout=TIMEOUT) as http:
        on_a, on_b, on_c = Host(http, a.url), Host(http, b.url), Host(http, c.url)
        with anyio.fail_after(TIMEOUT):
            created = await on_a.call(
                "tools/call", {"name": "work__confirm_delete", "arguments": {"filename": "b.txt"}}
            )
            waiting = await on_b.until(created["taskId"], "input_required")
            [key] = waiting["inputRequests"]
            ack = await on_c.call(
                "tasks/update",
                {
                    "taskId": created["taskId"],
                    "inputResponses": {key: {"action": "accept", "content": {"confirm": True}}},
                },
            )
            assert ack["resultType"] == "complete", ack
            done = await on_b.until(created["taskId"], "completed")
        assert done["result"]["content"][0]["text"] == "Deleted b.txt"
        # One row, minted on A, finished by B when it saw the task end.
        [row] = await recorded_calls(c)
        assert (row.tool_name, row.outcome, row.success) == ("work__confirm_delete", "ok", True)
        assert "Deleted b.txt" in (row.result_json or "")


async def test_a_task_cancelled_through_another_replica_ends_cancelled_for_all(
    tmp_path: Path, postgres_url: str, upstream_url: str
) -> None:
    configs = replica_configs(
        tmp_path, postgres_url, upstream_yaml(upstream_url), extra_yaml="auth: {required: false}\n"
    )
    async with serve_replicas(configs) as (a, b), httpx2.AsyncClient(timeout=TIMEOUT) as http:
        on_a, on_b = Host(http, a.url), Host(http, b.url)
        with anyio.fail_after(TIMEOUT):
            created = await on_a.call(
                "tools/call", {"name": "work__slow_compute", "arguments": {"seconds": 60}}
            )
            await on_b.call("tasks/cancel", {"taskId": created["taskId"]})
            done = await on_a.until(created["taskId"], "completed", "failed", "cancelled")
        assert done["status"] == "cancelled"
        [row] = await recorded_calls(a)
        assert row.outcome == "cancelled"
