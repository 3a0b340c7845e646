"""Time in one form everywhere: UTC, ISO 8601 text that sorts as text."""
from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc
EPOCH_2020 = dt.datetime(2020, 1, 1, tzinfo=UTC)
DAY0 = dt.date(2020, 1, 1)


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso(t: dt.datetime) -> str:
    # isoformat is C-fast; same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ") for UTC
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def now_iso() -> str:
    return iso(now())


def parse_iso(s: str) -> dt.datetime:
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    t = dt.datetime.fromisoformat(s)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_day(s: str) -> dt.date:
    """YYYY-MM-DD, or 'today'."""
    if s == "today":
        return now().date()
    return dt.date.fromisoformat(s)


def days_since_2020(d: dt.date) -> int:
    """The allowlist record's date form, clamped to what 16 bits hold."""
    return max(0, min(0xFFFF, (d - DAY0).days))


def from_reader_seconds(t: int) -> dt.datetime:
    """A reader event time (seconds since 2020-01-01 UTC, when its clock is set)."""
    return EPOCH_2020 + dt.timedelta(seconds=t)


def add_years(d: dt.date, years: int) -> dt.date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)
