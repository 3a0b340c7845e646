# Wall clock for events and validity dates: seconds since 2020-01-01 UTC once the host (or NTP)
# has set it. Until then it keeps a *lower bound* of the wall clock when one is known: the last
# time it was set or saved, restored from flash after a power cut (real time can only be later),
# plus the uptime since. Kept in ticks so it never allocates; every value stays a small int on
# 32-bit ports (seconds since 2020 pass 2**30 only in 2054).
import os
import struct

from gv.compat import const, ticks_diff, ticks_ms
from gv.events import crc32

DAY_S = const(86400)
SAVE_EVERY_S = const(600)  # how often a running reader moves its saved bound forward

# what an event's t means (gv.events flags): the same bits
F_CLOCK_SET = const(1)  # t is wall time
F_FLOOR = const(2)  # t is a lower bound of wall time (the saved bound + uptime)


class Clock:
    def __init__(self, now=None):
        self._last = ticks_ms() if now is None else now
        self._up_s = 0  # uptime seconds, accumulated across ticks wrap-arounds (a small int for decades)
        self._rem = 0  # and the milliseconds not yet a whole second
        self._offset = None  # wall seconds minus uptime seconds, once set
        self._floor = None  # a lower bound of (wall seconds minus uptime seconds), if known

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
        self._floor = None

    def restore(self, bound_s, now=None):
        """A lower bound of the wall clock right now (saved before a power cut)."""
        if self._offset is None and bound_s > 0:
            self._advance(ticks_ms() if now is None else now)
            f = bound_s - self._up_s
            if self._floor is None or f > self._floor:
                self._floor = f

    def is_set(self):
        return self._offset is not None

    def flags(self):
        """How far seconds() can be trusted: F_CLOCK_SET, F_FLOOR or 0 (uptime)."""
        if self._offset is not None:
            return F_CLOCK_SET
        return F_FLOOR if self._floor is not None else 0

    def uptime_s(self, now):
        self._advance(now)
        return self._up_s

    def seconds(self, now):
        """Seconds since 2020-01-01 UTC if set; else the lower bound if known; else uptime
        seconds (see flags)."""
        self._advance(now)
        s = self._up_s
        if self._offset is not None:
            return s + self._offset
        return s + self._floor if self._floor is not None else s

    def bound(self, now):
        """Seconds since 2020 that the wall clock is at least (0 if nothing is known)."""
        return self.seconds(now) if self.flags() else 0

    def day(self, now):
        """Day number since 2020-01-01 (the allowlist's dates), or -1 if the clock is not set."""
        if self._offset is None:
            return -1
        return self.seconds(now) // DAY_S

    def floor_day(self, now):
        """The day it is at least (set or bounded clock), or -1 when nothing is known."""
        if self._offset is None and self._floor is None:
            return -1
        return self.seconds(now) // DAY_S


# ---- the bound on flash: 8 bytes, seconds since 2020 u32 + CRC-32, written temp + rename ----
def load_bound(path):
    """The saved lower bound (seconds since 2020), or 0 if none or unreadable."""
    try:
        with open(path, "rb") as f:
            b = f.read(16)
    except OSError:
        return 0
    if len(b) != 8 or struct.unpack_from("<I", b, 4)[0] != crc32(b[:4]) & 0xFFFFFFFF:
        return 0
    return struct.unpack_from("<I", b, 0)[0]


def save_bound(path, seconds, force=False):
    """Save a lower bound. The running reader's saves only move it forward; the host's
    authenticated time (force) replaces it, so a wrong time once set can be taken back."""
    if seconds <= 0 or (not force and seconds <= load_bound(path)):
        return False
    b = bytearray(8)
    struct.pack_into("<I", b, 0, seconds)
    struct.pack_into("<I", b, 4, crc32(memoryview(b)[:4]) & 0xFFFFFFFF)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b)
    os.rename(tmp, path)
    return True
