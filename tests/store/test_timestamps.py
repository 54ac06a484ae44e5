from datetime import UTC, datetime, timedelta, timezone

import pytest

from store._timestamps import format_timestamp, parse_timestamp, utc_now


def test_timestamp_is_utc_text_with_milliseconds() -> None:
    moment = datetime(2026, 11, 21, 6, 45, 7, 123456, tzinfo=timezone(timedelta(hours=1)))

    assert format_timestamp(moment) == "2026-11-21T05:45:07.123Z"


def test_parsed_timestamp_is_aware_utc_and_round_trips() -> None:
    parsed = parse_timestamp("2026-11-21T05:45:07.123Z")

    assert parsed == datetime(2026, 11, 21, 5, 45, 7, 123000, tzinfo=UTC)
    assert parsed.tzinfo is UTC
    assert format_timestamp(parsed) == "2026-11-21T05:45:07.123Z"


def test_timestamp_text_sorts_in_time_order() -> None:
    moments = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=7**n) for n in range(12)]

    assert sorted(format_timestamp(m) for m in moments) == [format_timestamp(m) for m in moments]


def test_now_has_millisecond_precision_so_it_survives_storage() -> None:
    now = utc_now()

    assert now.microsecond % 1000 == 0
    assert parse_timestamp(format_timestamp(now)) == now


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError):
        format_timestamp(datetime(2026, 11, 21))
