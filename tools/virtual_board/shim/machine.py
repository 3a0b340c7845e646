# Board-support shim: the `machine` module of a virtual ESP32 on the unix port.
# Buses lead to the PN532 simulator, keypad pins to a simulated key matrix, output pins
# (relay, LEDs, buzzer) are reported to the launcher, and WDT/reset end the interpreter so
# the launcher restarts it like a reboot. Never deployed to a real board.
import time

import vboard
from pn532_sim import PN532Sim  # now: after boot the host filesystem is gone

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
_CAUSES = {"power-on": PWRON_RESET, "hard": HARD_RESET, "wdt": WDT_RESET, "soft": SOFT_RESET}

_board = vboard.BOARD
_pins = {}  # number -> Pin, for the key matrix
_pressed = None  # (row_pin, col_pin) of the key held down
_sim = None


def _get_sim():
    global _sim
    if _sim is None:
        _sim = PN532Sim()
    return _sim


def _names():
    """Output pin number -> (device, detail, active level)."""
    out = {}
    relay = _board.get("relay") or {}
    if relay.get("pin") is not None:
        out[relay["pin"]] = ("relay", None, 1 if relay.get("active_high", True) else 0)
    for color, pin in (_board.get("leds") or {}).items():
        if pin is not None:
            out[pin] = ("led", color, 1)
    buz = _board.get("buzzer") or {}
    if buz.get("pin") is not None:
        out[buz["pin"]] = ("buzzer", None, 1)
    return out


_OUTPUTS = _names()
_PN = _board.get("pn532") or {}


def _keymap():
    kp = _board.get("keypad") or {}
    rows, cols, keys = kp.get("rows", []), kp.get("cols", []), kp.get("keys", "")
    m = {}
    for r, rp in enumerate(rows):
        for c, cp in enumerate(cols):
            i = r * len(cols) + c
            if i < len(keys):
                m[keys[i]] = (rp, cp)
    return m


_KEYS = _keymap()


def _command(line):
    global _pressed
    parts = line.split()
    if not parts:
        return
    op = parts[0]
    if op == "enter":
        uid = bytes.fromhex(parts[1])
        atqa = int(parts[2], 16) if len(parts) > 2 else 0x0004
        sak = int(parts[3], 16) if len(parts) > 3 else 0x08
        _get_sim().enter(uid, atqa=atqa, sak=sak)
    elif op == "leave":
        if len(parts) > 1 and parts[1] != "all":
            _get_sim().leave(bytes.fromhex(parts[1]))
        else:
            _get_sim().clear()
    elif op == "down":
        _pressed = _KEYS.get(parts[1])
    elif op == "up":
        _pressed = None
    elif op == "fault":
        _get_sim().fault(parts[1], int(parts[2]) if len(parts) > 2 else 1)


vboard.on_command(_command)


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
        self._mode = self.IN
        self._pull = None
        self._v = 0
        self._reset = None
        self._irq = None
        if _PN.get("rst") == id:
            self._reset = _get_sim().reset_pin()
        if _PN.get("irq") == id:
            self._irq = _get_sim().irq_pin()
        _pins[id] = self
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self.value(value)

    def _input(self):
        if _pressed is not None and self.id in _pressed:
            other = _pins.get(_pressed[1] if self.id == _pressed[0] else _pressed[0])
            if other is not None and other._mode != self.IN:
                return other._v
        return 0 if self._pull == self.PULL_DOWN else 1

    def value(self, v=None):
        vboard.poll()
        if v is None:
            if self._irq is not None:
                return self._irq.value()
            return self._v if self._mode != self.IN else self._input()
        v = 1 if v else 0
        changed = v != self._v
        self._v = v
        if self._reset is not None:
            self._reset.value(v)
        if changed and self.id in _OUTPUTS:
            dev, detail, active = _OUTPUTS[self.id]
            ev = {"dev": dev, "on": v == active}
            if detail:
                ev["color"] = detail
            vboard.send(ev)
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=0):
        return None


class Signal:
    def __init__(self, pin, invert=False):
        self._pin = pin
        self._inv = invert

    def value(self, v=None):
        if v is None:
            return self._pin.value() ^ self._inv
        self._pin.value((1 if v else 0) ^ self._inv)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class PWM:
    def __init__(self, pin, freq=0, duty_u16=0, **kw):
        self._pin = pin if isinstance(pin, Pin) else Pin(pin, Pin.OUT)
        self._freq = freq
        self.duty_u16(duty_u16)

    def freq(self, f=None):
        if f is None:
            return self._freq
        self._freq = f

    def duty_u16(self, d=None):
        if d is None:
            return 65535 if self._pin._v else 0
        self._pin.value(1 if d else 0)

    def duty(self, d=None):
        if d is None:
            return 1023 if self._pin._v else 0
        self._pin.value(1 if d else 0)

    def deinit(self):
        self._pin.value(0)


class _Bus:
    """Delegates to a simulator endpoint, taking in launcher commands on every transfer."""

    def __init__(self, ep):
        self._ep = ep

    def __getattr__(self, name):
        attr = getattr(self._ep, name)
        if callable(attr):
            def call(*a, **kw):
                vboard.poll()
                return attr(*a, **kw)
            return call
        return attr


def I2C(id=0, scl=None, sda=None, freq=400000, timeout=50000):
    if _PN.get("bus") == "i2c":
        return _Bus(_get_sim().i2c())
    raise OSError(19)  # ENODEV: nothing else is on this virtual bus


SoftI2C = I2C


def UART(id=1, baudrate=115200, tx=None, rx=None, **kw):
    if _PN.get("bus") == "uart":
        return _Bus(_get_sim().uart())
    raise OSError(19)


def SPI(id=1, baudrate=1000000, sck=None, mosi=None, miso=None, **kw):
    if _PN.get("bus") == "spi":
        return _Bus(_get_sim().spi())
    raise OSError(19)


SoftSPI = SPI


class WDT:
    """Tells the launcher when it starts and when it is fed; the launcher reboots a starved board."""
    _last = 0

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        WDT._last = time.ticks_ms()
        vboard.send({"wdt": "start", "timeout": timeout})

    def feed(self):
        vboard.poll()
        now = time.ticks_ms()
        if time.ticks_diff(now, WDT._last) >= 250:  # a feed line four times a second is plenty
            WDT._last = now
            vboard.send({"wdt": "feed"})


def reset():
    vboard.reboot("hard")


def soft_reset():
    vboard.reboot("soft")


def reset_cause():
    return _CAUSES.get(vboard.reset_cause(), PWRON_RESET)


def unique_id():
    return b"\x24\x0a\xc4" + (_board.get("name", "vb").encode() + b"\x00\x00\x00")[:3]


def freq(f=None):
    return 240000000 if f is None else None


def idle():
    vboard.poll()


def lightsleep(ms=0):
    time.sleep_ms(ms)


def disable_irq():
    return 0


def enable_irq(state=0):
    return None
