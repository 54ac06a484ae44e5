"""The `Store` protocol is the seam a second backend implements: it names no implementation."""

from __future__ import annotations

import inspect
import re
import typing

import store
from store import CredentialStore, Store
from store._credentials import CredentialSql


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(value)
        for name, value in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }


def test_credentials_are_reached_through_a_public_protocol_not_the_sqlite_class() -> None:
    accessor = vars(Store)["credentials"]
    assert isinstance(accessor, property) and accessor.fget is not None
    assert typing.get_type_hints(accessor.fget)["return"] is CredentialStore
    assert "CredentialStore" in store.__all__
    assert "CredentialSql" not in store.__all__


def test_the_sqlite_credentials_offer_exactly_the_protocols_methods_with_its_signatures() -> None:
    assert _methods(CredentialSql) == _methods(CredentialStore)


def test_the_credential_protocol_says_nothing_of_one_backend() -> None:
    assert not re.search(r"\bsql", inspect.getsource(CredentialStore), re.IGNORECASE)
