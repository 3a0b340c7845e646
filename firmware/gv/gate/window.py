# A sliding-window counter of events over wrap-safe ticks, in a preallocated ring.
from gv.compat import ticks_diff


class Window:
    def __init__(self, count, window_ms):
        self.count = count  # threshold: this many within window_ms
        self.window_ms = window_ms
        self._t = [0] * count
        self._n = 0
        self._i = 0

    def add(self, now):
        """Record an occurrence at now; True when `count` fall within the window."""
        self._t[self._i] = now
        self._i = (self._i + 1) % self.count
        if self._n < self.count:
            self._n += 1
        if self._n < self.count:
            return False
        oldest = self._t[self._i]  # the ring is full: the next slot holds the oldest
        return ticks_diff(now, oldest) < self.window_ms

    def clear(self):
        self._n = 0
        self._i = 0
