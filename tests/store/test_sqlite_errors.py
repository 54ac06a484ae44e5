import sqlite3

import pytest

from store import StoreError, StoreUnavailable
from store._sqlite_errors import translate, translated


def _error(cls: type[sqlite3.Error], code: int) -> sqlite3.Error:
    exc = cls("message from sqlite")
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_error(sqlite3.OperationalError, sqlite3.SQLITE_BUSY), StoreUnavailable),
        (_error(sqlite3.OperationalError, 261), StoreUnavailable),  # SQLITE_BUSY_RECOVERY
        (_error(sqlite3.OperationalError, sqlite3.SQLITE_CANTOPEN), StoreUnavailable),
        (_error(sqlite3.OperationalError, sqlite3.SQLITE_FULL), StoreUnavailable),
        (_error(sqlite3.OperationalError, sqlite3.SQLITE_ERROR), StoreError),
        (_error(sqlite3.IntegrityError, sqlite3.SQLITE_CONSTRAINT_UNIQUE), StoreError),
        (_error(sqlite3.DatabaseError, sqlite3.SQLITE_CORRUPT), StoreError),
        (sqlite3.ProgrammingError("no code"), StoreError),
    ],
)
def test_sqlite_errors_become_store_errors_by_result_code(
    error: sqlite3.Error, expected: type[StoreError]
) -> None:
    assert type(translate(error, "doing it")) is expected


def test_translated_block_raises_from_the_sqlite_error() -> None:
    error = _error(sqlite3.OperationalError, sqlite3.SQLITE_BUSY)

    with pytest.raises(StoreUnavailable) as caught, translated("doing it"):
        raise error

    assert str(caught.value) == "doing it: message from sqlite"
    assert caught.value.__cause__ is error


def test_other_exceptions_pass_through_untranslated() -> None:
    with pytest.raises(KeyError), translated("doing it"):
        raise KeyError("x")
