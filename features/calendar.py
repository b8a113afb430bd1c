"""Calendar arithmetic in a client's time zone: quiet-hour windows and birthdays.

Times are epoch seconds (UTC); local dates and times of day are computed with zoneinfo, so
windows follow daylight-saving changes. Nothing here reads the clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from features.events import parse_birthday as parse_birthday  # moved: see there
from features.rules import DAY, QuietHours


@lru_cache(maxsize=512)
def _load(name: str) -> tzinfo | None:
    """The zone called `name` (UTC under any of its usual names), or None if unknown."""
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America" is a folder
        return None


def zone(name: str | None, default: str = "UTC") -> tzinfo:
    """The zone called `name`, else `default`, else UTC (unknown names never raise)."""
    for candidate in (name, default):
        found = _load(candidate) if candidate else None
        if found is not None:
            return found
    return UTC


def is_zone(name: str) -> bool:
    """Whether `name` is a time zone this machine knows (UTC always is)."""
    return _load(name) is not None


def _local_minutes(moment: datetime) -> float:
    return moment.hour * 60 + moment.minute + (moment.second + moment.microsecond / 1e6) / 60


def quiet_until(t: float, quiet: QuietHours, tz: tzinfo) -> float | None:
    """The end of the quiet window `t` falls in (epoch seconds), or None when `t` is not quiet.

    The window is [start, end) in local time; when start > end it spans midnight, e.g.
    21:00-09:00 covers 23:30 (ending at 09:00 the next day) and 02:00 (ending the same day).
    """
    if quiet.start == quiet.end:
        return None
    local = datetime.fromtimestamp(t, tz)
    minutes = _local_minutes(local)
    day = local.date()
    if quiet.start < quiet.end:
        if not quiet.start <= minutes < quiet.end:
            return None
    elif minutes >= quiet.start:
        day += timedelta(days=1)  # the evening part: the window ends tomorrow morning
    elif minutes >= quiet.end:
        return None
    return _first_instant_after(day, quiet.end, tz, t)


def _first_instant_after(day: date, minutes: int, tz: tzinfo, t: float) -> float:
    """The first instant after `t` at which the wall clock on `day` reads `minutes`: in a
    repeated hour (clocks going back) the occurrence still ahead of `t`; in a skipped hour
    (clocks going forward) the moment of the jump, when the wall clock passes it."""
    wall = datetime.combine(day, time(minutes // 60, minutes % 60))
    first, second = sorted(wall.replace(tzinfo=tz, fold=fold).timestamp() for fold in (0, 1))
    if datetime.fromtimestamp(first, tz).replace(tzinfo=None) == wall:  # it exists
        return first if first > t else second  # second: the repeated occurrence, or first
    low, high = first, second  # a gap: the wall clock jumps over `minutes` in between
    while high - low > 1:
        middle = (low + high) / 2
        if datetime.fromtimestamp(middle, tz).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return round(high)


def birthday_in(year: int, month: int, day: int) -> date:
    """The birthday's date in `year`; 29 February falls on the 28th in common years."""
    if month == 2 and day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return date(year, month, day)


@lru_cache(maxsize=4096)
def birthday_due(year: int, month: int, day: int, tz: tzinfo, at: int, offset: float) -> float:
    """When the greeting for the birthday in `year` is due: at local time `at` (minutes) on
    the birthday, `offset` seconds earlier (whole days are counted on the local calendar)."""
    days, seconds = divmod(offset, DAY)
    local_day = birthday_in(year, month, day) - timedelta(days=int(days))
    moment = datetime.combine(local_day, time(at // 60, at % 60), tzinfo=tz)
    return moment.timestamp() - seconds


def next_birthday(month: int, day: int, tz: tzinfo, at: int, offset: float, *,
                  after_year: int | None, not_before: float) -> tuple[int, float]:
    """The first birthday occurrence to greet: (year, due time).

    The first year after `after_year` (the last year greeted, if any) whose greeting is due
    at or after `not_before` (when the birthday became known or last changed): a greeting
    is for a birthday still to come then, never for one already past, so a birthday set
    again years later, or corrected to an earlier date, brings no burst of late greetings.
    """
    year = datetime.fromtimestamp(not_before, tz).year - 1
    if after_year is not None:
        year = max(year, after_year + 1)
    while True:
        due = birthday_due(year, month, day, tz, at, offset)
        if due >= not_before:
            return year, due
        year += 1
