# Matrix keypad (3x4 or 4x4): rows are outputs, columns inputs with pull-ups. scan(now) drives
# one row low at a time and reads the columns; it never sleeps, so the gate loop calls it every
# few ms. A key counts once it reads the same for `debounce_ms`; one press gives one key, and
# nothing while two keys are held (a ghosting matrix can't tell which).
from gv.compat import ticks_diff

NO_KEY = -1
_MANY = -2


def _pins(pins, out):
    import machine

    res = []
    for p in pins:
        if isinstance(p, int):
            p = (machine.Pin(p, machine.Pin.OUT, value=1) if out
                 else machine.Pin(p, machine.Pin.IN, machine.Pin.PULL_UP))
        res.append(p)
    return res


class Keypad:
    def __init__(self, row_pins, col_pins, keys, debounce_ms=30):
        if len(keys) != len(row_pins) * len(col_pins):
            raise ValueError("keys must name every row x column")
        self.rows = _pins(row_pins, True)
        self.cols = _pins(col_pins, False)
        self.keys = keys
        self.debounce_ms = debounce_ms
        self._raw = NO_KEY  # what the matrix reads now
        self._since = 0  # when _raw last changed
        self._stable = NO_KEY  # the debounced key
        for r in self.rows:
            r.value(1)

    def _read(self):
        found = NO_KEY
        rows, cols = self.rows, self.cols
        nc = len(cols)
        for ri in range(len(rows)):  # range loops allocate nothing; enumerate would
            r = rows[ri]
            r.value(0)
            for ci in range(nc):
                if not cols[ci].value():
                    found = ri * nc + ci if found == NO_KEY else _MANY
            r.value(1)
        return found

    def scan(self, now):
        """The key just pressed (a one-character str) or None."""
        raw = self._read()
        if raw != self._raw:
            self._raw = raw
            self._since = now
            return None
        if raw == self._stable or ticks_diff(now, self._since) < self.debounce_ms:
            return None
        was, self._stable = self._stable, raw
        if raw >= 0 and was == NO_KEY:  # a key after a two-key chord waits for a full release
            return self.keys[raw]
        return None
