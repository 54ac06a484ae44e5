"""The store's exceptions: one tree, in `store/errors.py`, under `StoreError`."""

from __future__ import annotations

from store import StoreError
from tests.exception_trees import defined_exceptions, misplaced


def test_every_exception_of_the_store_is_in_its_documented_tree() -> None:
    assert misplaced("store") == []


def test_every_store_exception_is_a_store_error_so_callers_catching_the_root_miss_none() -> None:
    for name, exception in defined_exceptions("store").items():
        assert issubclass(exception, StoreError), name
