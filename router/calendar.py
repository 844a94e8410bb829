"""Time on an SLA calendar: plain wall time ("24x7") or working hours ("business").

Pure functions, exact to the second (inputs are truncated to the whole second), aware UTC
datetimes in and out. A business calendar counts the seconds that really pass while it is open:
working hours start–end on its weekdays, in its time zone, minus its holidays. They walk day by
day, never minute by minute, and remember each day's opening hours.

Two readings of "when" that the SLA needs:
- `elapsed(cal, kind, a, b)`: calendar seconds between a and b (negative when b < a, so that
  elapsed is additive in any order). A start outside hours counts nothing until the next opening.
- `advance(cal, kind, start, n)`: the instant at which a clock started at `start` has run n
  seconds. For n > 0 that is the earliest such instant, so a target that ends exactly at closing
  time is due at the closing, not the next morning; for n = 0 it is when the clock starts to run
  (start itself in working hours, else the next opening).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from models.errors import InvalidInput
from router.config import BusinessCalendar

ROUND_THE_CLOCK, BUSINESS = "24x7", "business"
KINDS = (ROUND_THE_CLOCK, BUSINESS)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_MIDNIGHT = time(0, 0)
# A calendar without a single working second in this many days is a configuration mistake,
# and without the limit `advance` on it would never return.
_MAX_IDLE_DAYS = 3660


def elapsed(cal: BusinessCalendar, kind: str, a: datetime, b: datetime) -> int:
    """Seconds on the `kind` calendar from a to b (negative when b is before a)."""
    sa, sb = _seconds(a, "a"), _seconds(b, "b")
    if _kind(kind) == ROUND_THE_CLOCK:
        return sb - sa
    if sb < sa:
        return -_business_elapsed(cal, sb, sa)
    return _business_elapsed(cal, sa, sb)


def advance(cal: BusinessCalendar, kind: str, start: datetime, seconds: int) -> datetime:
    """The instant at which a clock started at `start` has run `seconds` on the `kind` calendar."""
    if seconds < 0:
        raise InvalidInput("seconds", f"must not be negative, got {seconds}")
    s = _seconds(start, "start")
    if _kind(kind) == ROUND_THE_CLOCK:
        return _datetime(s + seconds)
    zone = zone_of(cal)
    day = _local_date(s, zone)
    remaining = seconds
    idle = 0
    while True:
        window = _window(cal, day)
        if window is not None and window[1] > s:
            lo = max(window[0], s)
            if remaining <= window[1] - lo:
                return _datetime(lo + remaining)
            remaining -= window[1] - lo
            idle = 0
        else:
            idle += 1
            if idle > _MAX_IDLE_DAYS:
                raise InvalidInput("calendar", f"no working time in {_MAX_IDLE_DAYS} days after {day}")
        day += timedelta(days=1)


def is_working(cal: BusinessCalendar, kind: str, at: datetime) -> bool:
    """Whether the clock runs at `at` (business hours include the opening, not the closing)."""
    if _kind(kind) == ROUND_THE_CLOCK:
        return True
    s = _seconds(at, "at")
    window = _window(cal, _local_date(s, zone_of(cal)))
    return window is not None and window[0] <= s < window[1]


def working_day_seconds(cal: BusinessCalendar) -> int:
    """The nominal length of one working day (09:00–18:00: 9 h), for describing targets in days."""
    end = 24 * 3600 if cal.end == _MIDNIGHT else cal.end.hour * 3600 + cal.end.minute * 60 + cal.end.second
    return end - (cal.start.hour * 3600 + cal.start.minute * 60 + cal.start.second)


def _business_elapsed(cal: BusinessCalendar, sa: int, sb: int) -> int:
    zone = zone_of(cal)
    day, last = _local_date(sa, zone), _local_date(sb, zone)
    total = 0
    while day <= last:
        window = _window(cal, day)
        if window is not None:
            total += max(0, min(window[1], sb) - max(window[0], sa))
        day += timedelta(days=1)
    return total


@lru_cache(maxsize=8192)
def is_business_day(cal: BusinessCalendar, day: date) -> bool:
    """A working day of the desk: one of its weekdays, not a holiday, with opening hours."""
    return _window(cal, day) is not None


def _window(cal: BusinessCalendar, day: date) -> tuple[int, int] | None:
    """(opening, closing) of `day` in epoch seconds, or None on a day off.

    The window lies inside its local day, so walking local dates visits every window once.
    """
    if day.weekday() not in cal.weekdays or day in cal.holidays:
        return None
    zone = zone_of(cal)
    opening = _first_instant_at(day, cal.start, zone)
    closing = _first_instant_at(day + timedelta(days=1), _MIDNIGHT, zone) if cal.end == _MIDNIGHT \
        else _first_instant_at(day, cal.end, zone)
    return (opening, closing) if closing > opening else None


def _first_instant_at(day: date, wall: time, zone: ZoneInfo) -> int:
    """The first instant at which the wall clock in `zone` shows `wall` on `day` (or later).

    A wall time that occurs twice (clocks go back) means its first occurrence. One that does
    not exist (clocks go forward over it) means the moment of the jump: an office that opens at
    02:30 on that night opens when the clocks show 03:00.
    """
    naive = datetime.combine(day, wall)
    first = _seconds(naive.replace(tzinfo=zone, fold=0), "wall time")
    if datetime.fromtimestamp(first, zone).replace(tzinfo=None) == naive:
        return first
    # In a gap: fold=1 reads the wall time with the offset after the jump, which lands before it.
    lo, hi = _seconds(naive.replace(tzinfo=zone, fold=1), "wall time"), first
    lo, hi = min(lo, hi), max(lo, hi)
    while lo < hi:  # the wall clock only jumps forward here, so "shows >= wall" is monotone
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid + 1
    return lo


@lru_cache(maxsize=64)
def zone_of(cal: BusinessCalendar) -> ZoneInfo:
    """The calendar's time zone, after checking that the calendar can be counted on at all."""
    try:
        zone = ZoneInfo(cal.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput("calendar.timezone", f"unknown time zone {cal.timezone!r}") from exc
    if not cal.weekdays or not set(cal.weekdays) <= set(range(7)):
        raise InvalidInput("calendar.weekdays",
                           f"must be a non-empty set of 0 (Monday) … 6, got {sorted(cal.weekdays)}")
    if cal.end != _MIDNIGHT and cal.end <= cal.start:
        raise InvalidInput("calendar.end", f"working hours must end after they start ({cal.start}–{cal.end}); "
                                           "use 00:00 as the end for 'until midnight'")
    return zone


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidInput("calendar", f"must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def _seconds(at: datetime, name: str) -> int:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput(name, "must be a timezone-aware datetime")
    return (at - _EPOCH) // _SECOND


def _datetime(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _local_date(seconds: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(seconds, zone).date()
