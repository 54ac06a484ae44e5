"""The gateway's exceptions: one tree, in `gateway/errors.py`, under `GatewayError`."""

from __future__ import annotations

from gateway.errors import GatewayError
from tests.exception_trees import defined_exceptions, misplaced


def test_every_exception_of_the_gateway_is_in_its_documented_tree() -> None:
    assert misplaced("gateway") == []


def test_every_public_gateway_exception_is_a_gateway_error() -> None:
    public = {name: cls for name, cls in defined_exceptions("gateway").items() if not name.startswith("_")}
    assert [name for name, cls in public.items() if not issubclass(cls, GatewayError)] == []
