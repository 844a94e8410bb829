"""SLA calendars: wall time and business hours, exact to the second, across weekends, holidays and DST."""

from __future__ import annotations

import random
import time as clock
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from models.errors import InvalidInput
from router.calendar import advance, elapsed, is_working
from router.config import BusinessCalendar

SHANGHAI, BERLIN, SANTIAGO = ZoneInfo("Asia/Shanghai"), ZoneInfo("Europe/Berlin"), ZoneInfo("America/Santiago")
HOUR = 3600
EVERY_DAY = frozenset(range(7))
# 2024: the National Day week in China, Monday 30 September (a day off in this made-up calendar) to 7 October.
GOLDEN_WEEK = frozenset(date(2024, 9, 30) + timedelta(days=i) for i in range(8))
SH_OFFICE = BusinessCalendar(timezone="Asia/Shanghai", holidays=GOLDEN_WEEK)
BERLIN_OFFICE = BusinessCalendar(timezone="Europe/Berlin")


def sh(*args) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI).astimezone(UTC)


def berlin(*args, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold).astimezone(UTC)


# ---------------------------------------------------------------- worked examples


def test_design_default_p2_friday_afternoon_is_due_monday_noon():
    friday_5pm = sh(2024, 3, 15, 17, 0)
    due = advance(SH_OFFICE, "business", friday_5pm, 4 * HOUR)
    assert due == sh(2024, 3, 18, 12, 0)
    assert due.tzinfo is UTC
    assert elapsed(SH_OFFICE, "business", friday_5pm, due) == 4 * HOUR
    # 80 % of 4 h is 3 h 12 min: one hour on Friday, then 2 h 12 min into Monday.
    assert advance(SH_OFFICE, "business", friday_5pm, round(0.8 * 4 * HOUR)) == sh(2024, 3, 18, 11, 12)


def test_round_the_clock_is_plain_wall_time_even_over_a_weekend():
    saturday_3am = sh(2024, 3, 16, 3, 0)
    assert advance(SH_OFFICE, "24x7", saturday_3am, 15 * 60) == sh(2024, 3, 16, 3, 15)
    assert elapsed(SH_OFFICE, "24x7", saturday_3am, sh(2024, 3, 18, 3, 0)) == 48 * HOUR


def test_a_start_outside_hours_counts_from_the_next_opening():
    saturday = sh(2024, 3, 16, 10, 0)
    assert elapsed(SH_OFFICE, "business", saturday, sh(2024, 3, 18, 10, 0)) == HOUR
    assert advance(SH_OFFICE, "business", saturday, HOUR) == sh(2024, 3, 18, 10, 0)
    assert advance(SH_OFFICE, "business", saturday, 0) == sh(2024, 3, 18, 9, 0)  # the clock starts
    before_opening = sh(2024, 3, 19, 7, 30)
    assert advance(SH_OFFICE, "business", before_opening, 30 * 60) == sh(2024, 3, 19, 9, 30)
    after_closing = sh(2024, 3, 19, 20, 0)
    assert advance(SH_OFFICE, "business", after_closing, 30 * 60) == sh(2024, 3, 20, 9, 30)
    assert elapsed(SH_OFFICE, "business", after_closing, sh(2024, 3, 20, 8, 59)) == 0


def test_a_target_that_ends_at_closing_time_is_due_at_the_closing():
    assert advance(SH_OFFICE, "business", sh(2024, 3, 15, 14, 0), 4 * HOUR) == sh(2024, 3, 15, 18, 0)
    assert advance(SH_OFFICE, "business", sh(2024, 3, 15, 14, 0), 4 * HOUR + 1) == sh(2024, 3, 18, 9, 0, 1)


def test_exact_to_the_second():
    last_second = sh(2024, 3, 15, 17, 59, 59)
    assert advance(SH_OFFICE, "business", last_second, 2) == sh(2024, 3, 18, 9, 0, 1)
    assert elapsed(SH_OFFICE, "business", last_second, sh(2024, 3, 18, 9, 0, 1)) == 2
    # Sub-second parts are dropped: resolution is one second.
    assert elapsed(SH_OFFICE, "business", sh(2024, 3, 15, 10, 0, 0, 999_999), sh(2024, 3, 15, 10, 0, 1)) == 1


def test_three_business_days_resolution_spans_the_weekend():
    # 27 business hours from Friday 17:00: 1 h Friday, 9 h Monday, 9 h Tuesday, 8 h Wednesday.
    assert advance(SH_OFFICE, "business", sh(2024, 3, 15, 17, 0), 27 * HOUR) == sh(2024, 3, 20, 17, 0)


def test_holidays_are_skipped():
    # Friday 27 September 17:00 + 4 h: Monday 30 September starts the holiday week; back on Tuesday 8 October.
    friday = sh(2024, 9, 27, 17, 0)
    assert advance(SH_OFFICE, "business", friday, 4 * HOUR) == sh(2024, 10, 8, 12, 0)
    assert elapsed(SH_OFFICE, "business", friday, sh(2024, 10, 7, 23, 0)) == HOUR
    assert not is_working(SH_OFFICE, "business", sh(2024, 10, 2, 10, 0))
    assert is_working(SH_OFFICE, "business", sh(2024, 10, 8, 10, 0))
    plain = BusinessCalendar(timezone="Asia/Shanghai")
    assert advance(plain, "business", friday, 4 * HOUR) == sh(2024, 9, 30, 12, 0)


def test_another_time_zone_another_working_week():
    # A Berlin office that also works Saturday mornings, 08:30–12:30.
    cal = BusinessCalendar(timezone="Europe/Berlin", start=time(8, 30), end=time(12, 30), weekdays=frozenset({5}))
    assert advance(cal, "business", berlin(2024, 6, 3, 10, 0), 5 * HOUR) == berlin(2024, 6, 15, 9, 30)


# ---------------------------------------------------------------- DST


def test_dst_spring_forward_keeps_business_hours_in_local_time():
    # Friday 29 March 2024 17:00 CET (UTC+1); the clocks go forward on Sunday; Monday is CEST (UTC+2).
    friday = berlin(2024, 3, 29, 17, 0)
    due = advance(BERLIN_OFFICE, "business", friday, 4 * HOUR)
    assert due == berlin(2024, 4, 1, 12, 0) == datetime(2024, 4, 1, 10, 0, tzinfo=UTC)
    assert elapsed(BERLIN_OFFICE, "business", friday, due) == 4 * HOUR


def test_dst_fall_back_keeps_business_hours_in_local_time():
    friday = berlin(2024, 10, 25, 17, 0)  # CEST, UTC+2
    assert advance(BERLIN_OFFICE, "business", friday, 4 * HOUR) == datetime(2024, 10, 28, 11, 0, tzinfo=UTC)


def test_round_the_clock_over_dst_counts_real_seconds():
    saturday_noon = berlin(2024, 3, 30, 12, 0)
    assert advance(BERLIN_OFFICE, "24x7", saturday_noon, 24 * HOUR) == berlin(2024, 3, 31, 13, 0)


def test_a_day_of_hours_that_spans_the_change_counts_the_hours_that_really_pass():
    all_day = BusinessCalendar(timezone="Europe/Berlin", start=time(0), end=time(0), weekdays=EVERY_DAY)
    assert elapsed(all_day, "business", berlin(2024, 3, 31, 0, 0), berlin(2024, 4, 1, 0, 0)) == 23 * HOUR
    assert elapsed(all_day, "business", berlin(2024, 10, 27, 0, 0), berlin(2024, 10, 28, 0, 0)) == 25 * HOUR
    night = BusinessCalendar(timezone="Europe/Berlin", start=time(1), end=time(4), weekdays=EVERY_DAY)
    assert elapsed(night, "business", berlin(2024, 3, 31, 0, 0), berlin(2024, 3, 31, 12, 0)) == 2 * HOUR
    assert elapsed(night, "business", berlin(2024, 10, 27, 0, 0), berlin(2024, 10, 27, 12, 0)) == 4 * HOUR
    # The second 02:30 of the night the clocks go back is 2.5 h after 01:00 CEST.
    assert advance(night, "business", berlin(2024, 10, 27, 1, 0), int(2.5 * HOUR)) == berlin(2024, 10, 27, 2, 30, fold=1)


def test_hours_that_open_inside_the_skipped_hour_open_when_the_clocks_jump():
    cal = BusinessCalendar(timezone="Europe/Berlin", start=time(2, 30), end=time(4), weekdays=EVERY_DAY)
    assert advance(cal, "business", berlin(2024, 3, 31, 0, 0), 0) == berlin(2024, 3, 31, 3, 0)
    assert elapsed(cal, "business", berlin(2024, 3, 31, 0, 0), berlin(2024, 3, 31, 12, 0)) == HOUR
    # America/Santiago skips midnight itself (00:00 → 01:00 on 8 September 2024).
    chile = BusinessCalendar(timezone="America/Santiago", start=time(0), end=time(0), weekdays=EVERY_DAY)
    start = datetime(2024, 9, 7, 12, 0, tzinfo=SANTIAGO)
    assert elapsed(chile, "business", start, start + timedelta(days=1)) == 23 * HOUR  # same wall time, one hour less
    assert advance(chile, "business", start, 24 * HOUR) == datetime(2024, 9, 8, 13, 0, tzinfo=SANTIAGO)


# ---------------------------------------------------------------- datetimes in and out


def test_aware_datetimes_in_any_zone_utc_out():
    local = datetime(2024, 3, 15, 17, 0, tzinfo=SHANGHAI)
    out = advance(SH_OFFICE, "business", local, 4 * HOUR)
    assert out.tzinfo is UTC and out == sh(2024, 3, 18, 12, 0)
    assert advance(SH_OFFICE, "24x7", local, 60).tzinfo is UTC


@pytest.mark.parametrize("call", [
    lambda: elapsed(SH_OFFICE, "business", datetime(2024, 3, 15, 9), sh(2024, 3, 15, 10, 0)),
    lambda: advance(SH_OFFICE, "24x7", datetime(2024, 3, 15, 9), 60),
    lambda: advance(SH_OFFICE, "business", sh(2024, 3, 15, 9, 0), -1),
    lambda: advance(SH_OFFICE, "weekdays", sh(2024, 3, 15, 9, 0), 60),
    lambda: elapsed(BusinessCalendar(timezone="Mars/Olympus"), "business", sh(2024, 3, 15, 9, 0), sh(2024, 3, 16, 9, 0)),
    lambda: advance(BusinessCalendar(weekdays=frozenset()), "business", sh(2024, 3, 15, 9, 0), 60),
    lambda: advance(BusinessCalendar(start=time(18), end=time(9)), "business", sh(2024, 3, 15, 9, 0), 60),
], ids=["naive", "naive-24x7", "negative", "unknown-kind", "unknown-zone", "no-weekdays", "end-before-start"])
def test_bad_input_is_refused_clearly(call):
    with pytest.raises(InvalidInput):
        call()


def test_a_calendar_with_no_working_time_is_refused_not_looped_on():
    mondays = frozenset(date(2024, 1, 1) + timedelta(weeks=i) for i in range(600))
    cal = BusinessCalendar(weekdays=frozenset({0}), holidays=mondays)
    with pytest.raises(InvalidInput, match="no working time"):
        advance(cal, "business", sh(2024, 1, 1, 9, 0), 60)


# ---------------------------------------------------------------- properties


CALENDARS = [
    (SH_OFFICE, datetime(2024, 9, 30, tzinfo=UTC)),
    (BERLIN_OFFICE, datetime(2024, 3, 31, tzinfo=UTC)),
    (BERLIN_OFFICE, datetime(2024, 10, 27, tzinfo=UTC)),
    (BusinessCalendar(timezone="Europe/Berlin", start=time(8, 30), end=time(17, 45),
                      weekdays=frozenset(range(6)), holidays=frozenset({date(2024, 4, 1)})), datetime(2024, 3, 31, tzinfo=UTC)),
    (BusinessCalendar(timezone="Europe/Berlin", start=time(0), end=time(0), weekdays=EVERY_DAY), datetime(2024, 10, 27, tzinfo=UTC)),
    (BusinessCalendar(timezone="America/Santiago", start=time(0), end=time(0), weekdays=EVERY_DAY), datetime(2024, 9, 8, tzinfo=UTC)),
]


def _instants(rng: random.Random, anchor: datetime, n: int, *, step: int = 1) -> list[datetime]:
    """n sorted instants within four days of `anchor`, on multiples of `step` seconds."""
    span = 4 * 24 * HOUR // step
    return sorted(anchor + timedelta(seconds=step * rng.randint(-span, span)) for _ in range(n))


def _reference_elapsed(cal: BusinessCalendar, a: datetime, b: datetime) -> int:
    """Minute by minute, straight from the definition: the local wall clock shows working hours."""
    zone = ZoneInfo(cal.timezone)
    total, t = 0, a
    while t < b:
        local = t.astimezone(zone)
        in_hours = cal.start <= local.time() and (cal.end == time(0) or local.time() < cal.end)
        if local.weekday() in cal.weekdays and local.date() not in cal.holidays and in_hours:
            total += 60
        t += timedelta(minutes=1)
    return total


@pytest.mark.parametrize("cal,anchor", CALENDARS)
def test_elapsed_agrees_with_a_minute_by_minute_count(cal, anchor):
    rng = random.Random(f"{cal}{anchor}")
    for _ in range(25):
        a, b = _instants(rng, anchor, 2, step=60)
        assert elapsed(cal, "business", a, b) == _reference_elapsed(cal, a, b), (a, b)


@pytest.mark.parametrize("cal,anchor", CALENDARS)
def test_elapsed_is_additive(cal, anchor):
    rng = random.Random(f"add{cal}{anchor}")
    for _ in range(300):
        a, b, c = _instants(rng, anchor, 3)
        for kind in ("business", "24x7"):
            assert elapsed(cal, kind, a, b) + elapsed(cal, kind, b, c) == elapsed(cal, kind, a, c)
            assert elapsed(cal, kind, c, a) == -elapsed(cal, kind, a, c)


@pytest.mark.parametrize("cal,anchor", CALENDARS)
def test_advance_inverts_elapsed(cal, anchor):
    rng = random.Random(f"adv{cal}{anchor}")
    for _ in range(300):
        start, x = _instants(rng, anchor, 2)
        used = elapsed(cal, "business", start, x)
        landed = advance(cal, "business", start, used)
        # At x, or where nothing working lies between it and x: in working hours that is x itself.
        assert elapsed(cal, "business", start, landed) == used
        assert elapsed(cal, "business", min(landed, x), max(landed, x)) == 0
        if is_working(cal, "business", x) and used > 0:
            assert landed == x
        if not is_working(cal, "business", x):
            assert landed <= x or used == 0 and is_working(cal, "business", landed)
        # And the other way round: advance lands on the first instant that has used n seconds.
        n = rng.randint(1, 30 * HOUR)
        due = advance(cal, "business", start, n)
        assert elapsed(cal, "business", start, due) == n
        assert elapsed(cal, "business", start, due - timedelta(seconds=1)) == n - 1
        assert advance(cal, "24x7", start, n) - start == timedelta(seconds=n)


def test_fast_walks_day_by_day():
    # A cold cache: a fresh calendar (holidays make it a new key) over five years and back.
    cal = BusinessCalendar(timezone="Europe/Berlin", holidays=frozenset({date(1999, 1, 1)}))
    began = clock.perf_counter()
    five_years = elapsed(cal, "business", berlin(2024, 1, 1, 0, 0), berlin(2029, 1, 1, 0, 0))
    due = advance(cal, "business", berlin(2024, 1, 1, 0, 0), five_years)
    cold = clock.perf_counter() - began
    assert five_years == 1305 * 9 * HOUR  # 1,305 weekdays in 2024–2028
    assert due == berlin(2028, 12, 29, 18, 0)
    began = clock.perf_counter()
    for i in range(2000):
        advance(SH_OFFICE, "business", sh(2024, 3, 15, 17, 0) + timedelta(minutes=i), 27 * HOUR)
    warm = (clock.perf_counter() - began) / 2000
    assert cold < 1.0 and warm < 0.005, (cold, warm)
