# Wall clock for events and validity dates: seconds since 2020-01-01 UTC once the host (or NTP)
# has set it, uptime seconds until then. Kept in ticks so it never allocates.
from gv.compat import ticks_diff, ticks_ms

DAY_S = 86400


class Clock:
    def __init__(self, now=None):
        self._last = ticks_ms() if now is None else now
        self._up_s = 0  # uptime seconds, accumulated across ticks wrap-arounds (a small int for decades)
        self._rem = 0  # and the milliseconds not yet a whole second
        self._offset = None  # wall seconds minus uptime seconds, once set

    def _advance(self, now):
        d = ticks_diff(now, self._last)
        if d > 0:
            self._rem += d
            self._last = now
            if self._rem >= 1000:
                self._up_s += self._rem // 1000
                self._rem %= 1000

    def set(self, seconds_since_2020, now=None):
        """Set the wall clock (from the host's authenticated 'set clock' command or NTP)."""
        self._advance(ticks_ms() if now is None else now)
        self._offset = seconds_since_2020 - self._up_s

    def is_set(self):
        return self._offset is not None

    def uptime_s(self, now):
        self._advance(now)
        return self._up_s

    def seconds(self, now):
        """Seconds since 2020-01-01 UTC if set, else uptime seconds (see is_set)."""
        self._advance(now)
        s = self._up_s
        return s + self._offset if self._offset is not None else s

    def day(self, now):
        """Day number since 2020-01-01 (the allowlist's dates), or -1 if the clock is not set."""
        if self._offset is None:
            return -1
        return self.seconds(now) // DAY_S
