# Hardware doubles for the gate runner and drivers (MicroPython tests): output pins, a key
# matrix, a PN532 with a scripted field, a watchdog.
from gv.gate import core


class FakePin:
    """A Pin-like output that records its level; on_change(level) is called on every change."""

    def __init__(self, on_change=None):
        self.v = 0
        self.changes = 0
        self.on_change = on_change

    def value(self, v=None):
        if v is None:
            return self.v
        v = 1 if v else 0
        if v != self.v:
            self.v = v
            self.changes += 1
            if self.on_change:
                self.on_change(v)


class Matrix:
    """A key matrix: rows are driven by the driver, a column reads low while the pressed key's row
    is driven low (pull-ups otherwise)."""

    def __init__(self, nrows, ncols):
        self.rows = [FakePin() for _ in range(nrows)]
        self.cols = [_ColPin(self, c) for c in range(ncols)]
        self.pressed = []  # (row, col) held down

    def press(self, r, c):
        self.pressed.append((r, c))

    def release(self):
        self.pressed = []


class _ColPin:
    def __init__(self, m, c):
        self.m = m
        self.c = c

    def value(self, v=None):
        for r, c in self.m.pressed:
            if c == self.c and self.m.rows[r].v == 0:
                return 0
        return 1


try:  # the codes a real driver returns (the runner maps them to the gate's)
    from gv.pn532.driver import NO_CARD, ONE_CARD, MANY_CARDS, ERROR
except ImportError:
    NO_CARD, ONE_CARD, MANY_CARDS, ERROR = core.NO_CARD, core.ONE_CARD, core.MANY_CARDS, core.ERROR


class FakePN532:
    """poll() returns what the test put in the field (with the driver's codes); error=True makes
    every poll an ERROR, as a dead or unplugged module does."""

    def __init__(self):
        self._buf = bytearray(10)
        self.uid = memoryview(self._buf)
        self.uid_len = 0
        self.field = []
        self.error = False
        self.polls = 0
        self.failures = 0

    def poll(self):
        self.polls += 1
        if self.error:
            self.failures += 1
            return ERROR
        if not self.field:
            return NO_CARD
        if len(self.field) > 1:
            return MANY_CARDS
        u = self.field[0]
        for i in range(len(u)):
            self._buf[i] = u[i]
        self.uid_len = len(u)
        return ONE_CARD


class FakeWDT:
    def __init__(self):
        self.feeds = 0

    def feed(self):
        self.feeds += 1
