"""Work that must happen once across replicas (retention pruning here; sign-in and credential
upkeep go the same way): one replica at a time does it, the holder of the task's lease, and
another takes over once the holder stops. What each replica ran is in its own /metrics
(`mcpgw_maintenance_rounds_total`), which is how an operator tells which replica prunes."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.recording.store_recorder import RETENTION_LEASE
from tests.harness import RunningGateway, demo_stdio_yaml, serve_gateway
from tests.replicas import replica_configs

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0
INTERVAL_S = 0.5


def rounds(replica: RunningGateway) -> float:
    """The retention rounds this replica ran, by its own metrics."""
    exposition = replica.gateway.metrics.exposition().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "mcpgw_maintenance_rounds_total" and sample.labels["task"] == RETENTION_LEASE
    )


async def until(predicate: Callable[[], bool]) -> None:
    """Poll the replicas' counts: rounds run on a schedule, with nothing to wait on from outside."""
    with anyio.fail_after(TIMEOUT):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def test_one_replica_prunes_and_another_takes_over_when_it_stops(
    tmp_path: Path, postgres_url: str
) -> None:
    configs = replica_configs(
        tmp_path,
        postgres_url,
        demo_stdio_yaml(sessions="shared"),
        extra_yaml=(
            "auth: {required: false}\n"
            f"recording: {{retention: {{max_invocations: 100, interval_s: {INTERVAL_S}}}}}\n"
        ),
    )
    async with AsyncExitStack() as first, AsyncExitStack() as second:
        a = await first.enter_async_context(serve_gateway(configs[0]))
        b = await second.enter_async_context(serve_gateway(configs[1]))
        await until(lambda: max(rounds(a), rounds(b)) >= 4)
        holder, other = (a, b) if rounds(a) else (b, a)
        assert rounds(other) == 0  # every round of the other found the lease held
        stop = first if holder is a else second
        await stop.aclose()
        await until(lambda: rounds(other) >= 2)
