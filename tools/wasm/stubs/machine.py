# `machine` for the 32-bit WebAssembly MicroPython (heap figures and heap_lock proofs only; never
# deployed). Pins remember their level; the buses lead to whatever the probe plugs in
# (BUS["i2c"] etc.: a PN532 simulator's endpoint or a replaying tape); WDT and reset do nothing.
BUS = {}


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 2
    IRQ_RISING = 1

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self._v = 1 if pull == 1 else 0
        if value is not None:
            self._v = 1 if value else 0

    def init(self, mode=-1, pull=-1, value=None):
        if value is not None:
            self._v = 1 if value else 0

    def value(self, v=None):
        if v is None:
            return self._v
        self._v = 1 if v else 0

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self._v = 1

    def off(self):
        self._v = 0

    def irq(self, handler=None, trigger=0):
        return None


def _bus(kind):
    b = BUS.get(kind)
    if b is None:
        raise OSError(19)  # ENODEV: nothing on this bus
    return b


def I2C(*a, **kw):
    return _bus("i2c")


def UART(*a, **kw):
    return _bus("uart")


def SPI(*a, **kw):
    return _bus("spi")


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        pass


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def reset_cause():
    return PWRON_RESET


def reset():
    raise SystemExit("machine.reset()")


def unique_id():
    return b"\x24\x0a\xc4\x00\x00\x01"


def freq(*a):
    return 240000000
