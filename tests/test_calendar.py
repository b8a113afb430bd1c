"""Calendar arithmetic: quiet-hour windows (across midnight, DST) and birthdays (29 Feb)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from features.calendar import (
    birthday_due,
    birthday_in,
    is_zone,
    next_birthday,
    parse_birthday,
    quiet_until,
    zone,
)
from features.rules import DAY, QuietHours

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

NIGHT = QuietHours(21 * 60, 9 * 60)
LUNCH = QuietHours(12 * 60, 14 * 60)
LONDON = ZoneInfo("Europe/London")


def at(text: str, tz: object = UTC) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()  # type: ignore[arg-type]


def iso(seconds: float | None, tz: object = UTC) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz).isoformat()  # type: ignore[arg-type]


@pytest.mark.parametrize(("moment", "until"), [
    ("2024-05-01T20:59:59", None),
    ("2024-05-01T21:00:00", "2024-05-02T09:00:00+00:00"),
    ("2024-05-01T23:59:59", "2024-05-02T09:00:00+00:00"),
    ("2024-05-02T00:00:00", "2024-05-02T09:00:00+00:00"),
    ("2024-05-02T08:59:59", "2024-05-02T09:00:00+00:00"),
    ("2024-05-02T09:00:00", None),
    ("2024-05-02T13:00:00", None),
    ("2024-12-31T22:00:00", "2025-01-01T09:00:00+00:00"),  # across the year's end
])
def test_quiet_hours_across_midnight(moment: str, until: str | None) -> None:
    assert iso(quiet_until(at(moment), NIGHT, UTC)) == until


@pytest.mark.parametrize(("moment", "until"), [
    ("2024-05-01T11:59:00", None),
    ("2024-05-01T12:00:00", "2024-05-01T14:00:00+00:00"),
    ("2024-05-01T13:30:00", "2024-05-01T14:00:00+00:00"),
    ("2024-05-01T14:00:00", None),
    ("2024-05-01T23:00:00", None),
])
def test_quiet_hours_within_a_day(moment: str, until: str | None) -> None:
    assert iso(quiet_until(at(moment), LUNCH, UTC)) == until


def test_quiet_hours_in_the_clients_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    # 13:00 UTC is 22:00 in Tokyo: quiet until 09:00 Tokyo, which is 00:00 UTC
    assert iso(quiet_until(at("2024-05-01T13:00:00"), NIGHT, tokyo)) == (
        "2024-05-02T00:00:00+00:00")
    assert quiet_until(at("2024-05-01T13:00:00"), NIGHT, UTC) is None


def test_quiet_hours_over_a_daylight_saving_change() -> None:
    # London springs forward on 2024-03-31 at 01:00 GMT: the night is an hour shorter
    start = at("2024-03-30T21:30:00", LONDON)
    end = quiet_until(start, NIGHT, LONDON)
    assert iso(end, LONDON) == "2024-03-31T09:00:00+01:00"
    assert end is not None and end - start == 10.5 * 3600
    # and falls back on 2024-10-27: an hour longer
    start = at("2024-10-26T21:30:00", LONDON)
    end = quiet_until(start, NIGHT, LONDON)
    assert end is not None and end - start == 12.5 * 3600


def test_a_window_end_in_a_skipped_hour_never_goes_backwards() -> None:
    gap = QuietHours(0, 90)  # 00:00-01:30, but 01:00-02:00 does not exist on 2024-03-31
    moment = at("2024-03-31T00:30:00", LONDON)
    end = quiet_until(moment, gap, LONDON)
    assert end is not None and end > moment
    assert iso(end) == "2024-03-31T01:00:00+00:00"  # the jump: the wall clock passes 01:30


def test_empty_window_is_never_quiet() -> None:
    assert quiet_until(at("2024-05-01T10:00:00"), QuietHours(600, 600), UTC) is None


def test_birthday_dates() -> None:
    assert birthday_in(2024, 2, 29) == date(2024, 2, 29)
    assert birthday_in(2025, 2, 29) == date(2025, 2, 28)
    assert birthday_in(2100, 2, 29) == date(2100, 2, 28)  # not a leap year
    assert birthday_in(2025, 12, 31) == date(2025, 12, 31)


def test_birthday_due() -> None:
    assert iso(birthday_due(2025, 3, 10, UTC, 600, 0.0)) == "2025-03-10T10:00:00+00:00"
    assert iso(birthday_due(2025, 3, 10, UTC, 600, 3 * DAY)) == "2025-03-07T10:00:00+00:00"
    assert iso(birthday_due(2025, 3, 10, UTC, 600, 3 * DAY + 3600)) == (
        "2025-03-07T09:00:00+00:00")
    # three days before 1 April in London crosses the clocks going forward: still 10:00 local
    assert iso(birthday_due(2024, 4, 1, LONDON, 600, 3 * DAY), LONDON) == (
        "2024-03-29T10:00:00+00:00")
    assert iso(birthday_due(2025, 1, 2, UTC, 0, 5 * DAY)) == "2024-12-28T00:00:00+00:00"


def test_next_birthday() -> None:
    known = at("2024-06-01T00:00:00")
    assert next_birthday(7, 1, UTC, 600, 0.0, after_year=None, not_before=known) == (
        2024, at("2024-07-01T10:00:00"))
    assert next_birthday(5, 1, UTC, 600, 0.0, after_year=None, not_before=known) == (
        2025, at("2025-05-01T10:00:00"))
    assert next_birthday(5, 1, UTC, 600, 0.0, after_year=2024, not_before=known) == (
        2025, at("2025-05-01T10:00:00"))
    # the greeting a few days ahead of a birthday early in January falls in December
    assert next_birthday(1, 2, UTC, 600, 5 * DAY, after_year=None,
                         not_before=at("2024-12-01T00:00:00")) == (
        2025, at("2024-12-28T10:00:00"))


def test_next_birthday_after_a_year_greeted_is_still_to_come() -> None:
    """The year after the last greeted, unless its greeting was already due when the
    birthday became known (set again, or corrected): then the first still to come."""
    known = at("2026-11-14T00:00:00")
    assert next_birthday(11, 20, UTC, 600, 0.0, after_year=2023, not_before=known) == (
        2026, at("2026-11-20T10:00:00"))
    corrected = at("2024-01-10T00:00:00")  # greeted 20 Nov 2023, then set to 5 January
    assert next_birthday(1, 5, UTC, 600, 0.0, after_year=2023, not_before=corrected) == (
        2025, at("2025-01-05T10:00:00"))
    # a greeting already made this year is never made again, even if known long before
    assert next_birthday(11, 20, UTC, 600, 0.0, after_year=2026,
                         not_before=at("2020-01-01T00:00:00")) == (
        2027, at("2027-11-20T10:00:00"))


def test_parse_birthday() -> None:
    assert parse_birthday("1990-04-01") == (1990, 4, 1)
    assert parse_birthday("1990-04-01T00:00:00Z") == (1990, 4, 1)
    assert parse_birthday("2000-02-29") == (2000, 2, 29)
    for bad in ("1990-02-30", "01.04.1990", "", None, 19900401):
        assert parse_birthday(bad) is None


def test_zones() -> None:
    assert zone("Europe/London") == LONDON
    assert zone(None) is UTC and zone("UTC") is UTC
    assert zone("Mars/Base", "Asia/Tokyo") == ZoneInfo("Asia/Tokyo")
    assert zone("Mars/Base", "Mars/Moon") is UTC
    assert zone("../../etc/passwd") is UTC
    assert is_zone("Europe/London") and is_zone("UTC") and not is_zone("Mars/Base")


BERLIN = zone("Europe/Berlin")
LATE_NIGHT = QuietHours(22 * 60, 2 * 60 + 30)  # 22:00-02:30


def test_the_repeated_hour_of_a_fall_back_night_is_quiet_until_its_second_2_30() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:10 CET is 01:10 UTC
    end = quiet_until(at("2026-10-25T01:10:00"), LATE_NIGHT, BERLIN)
    assert iso(end) == "2026-10-25T01:30:00+00:00"  # 02:30 CET


def test_a_window_ending_in_the_skipped_hour_ends_at_the_jump() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never happens
    end = quiet_until(at("2026-03-29T00:30:00"), LATE_NIGHT, BERLIN)
    assert iso(end) == "2026-03-29T01:00:00+00:00"


def test_a_zone_name_that_is_a_folder_or_too_long_is_unknown_not_an_error() -> None:
    """`ZoneInfo("America")` raises IsADirectoryError and a long name OSError: a client's
    `timezone` trait like that made its profile read answer 503 and `crmflow export` fail."""
    for name in ("America", "Europe/", "x" * 300):
        assert not is_zone(name)
        assert zone(name, "Europe/Paris") == ZoneInfo("Europe/Paris")
