# Door relay, status LEDs and buzzer. Nothing here ever sleeps: pulses and patterns are
# deadlines on wrap-safe ticks, advanced by update(now) from the gate loop.
# Pins may be pin numbers (a machine.Pin is made) or Pin-like objects with value().
from gv.compat import ticks_add, ticks_diff


def _pin(p, value):
    if p is None:
        return None
    if isinstance(p, int):
        import machine

        return machine.Pin(p, machine.Pin.OUT, value=value)
    p.value(value)
    return p


class Relay:
    """The door strike. Starts (and fails) off: off() is what every error path calls."""

    def __init__(self, pin, active_high=True):
        self._on = 1 if active_high else 0
        self._off = 0 if active_high else 1
        self._pin = _pin(pin, self._off)
        self.is_on = False
        self._until = 0
        self.pulses = 0

    def on(self):
        self._pin.value(self._on)
        self.is_on = True

    def off(self):
        self.is_on = False
        if self._pin is not None:
            self._pin.value(self._off)

    def pulse(self, now, ms):
        """Open for ms from now (a new pulse restarts the time)."""
        self._until = ticks_add(now, ms)
        self.pulses += 1
        self.on()

    def update(self, now):
        if self.is_on and ticks_diff(now, self._until) >= 0:
            self.off()


_HOLD = (1,)  # a one-step pattern whose step length hold() sets through _next


class Blink:
    """One on/off output played as a pattern: a tuple of ms durations alternating on, off, on, ...
    An empty tuple means off; repeat=True loops until replaced."""

    def __init__(self, pin):
        self._pin = _pin(pin, 0)
        self._pat = ()
        self._i = 0
        self._next = 0
        self._repeat = False
        self.is_on = False

    def _set(self, v):
        self.is_on = bool(v)
        if self._pin is not None:
            self._pin.value(1 if v else 0)

    def play(self, now, pattern, repeat=False):
        self._pat = pattern or ()
        self._repeat = repeat and bool(pattern)
        self._i = 0
        if self._pat:
            self._next = ticks_add(now, self._pat[0])
            self._set(self._pat[0] > 0)
        else:
            self._set(0)

    def hold(self, now, ms):
        """On for ms (the grant's green follows the relay); allocates nothing."""
        self._pat = _HOLD
        self._repeat = False
        self._i = 0
        self._next = ticks_add(now, ms)
        self._set(1)

    def stop(self):
        self._pat = ()
        self._set(0)

    def busy(self):
        return bool(self._pat)

    def update(self, now):
        pat = self._pat
        while pat and ticks_diff(now, self._next) >= 0:
            self._i += 1
            if self._i >= len(pat):
                if not self._repeat:
                    self._pat = ()
                    self._set(0)
                    return
                self._i = 0
            d = pat[self._i]
            self._next = ticks_add(self._next, d)
            self._set(not (self._i & 1) and d > 0)


class Leds:
    def __init__(self, green_pin, red_pin):
        self.green = Blink(green_pin)
        self.red = Blink(red_pin)

    def play(self, now, green, red, repeat=False):
        self.green.play(now, green, repeat)
        self.red.play(now, red, repeat)

    def off(self):
        self.green.stop()
        self.red.stop()

    def update(self, now):
        self.green.update(now)
        self.red.update(now)


class Buzzer(Blink):
    """A buzzer on a plain on/off pin (an active buzzer, or a driver stage with its own tone)."""
