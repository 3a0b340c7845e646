# A PN532 that answers byte for byte over I2C (status byte first), HSU/UART (with wake-up) and
# SPI (LSB first, DW/SR/DR prefixes), with an RF field of ISO14443A cards and injectable faults.
# Runs under MicroPython and CPython. Independent of gv.pn532 on purpose: the driver is proven
# against this and this is proven against adafruit's driver (tests/test_pn532_adafruit.py).
#
#   sim = PN532Sim()
#   sim.enter(b"\x00\x0a\x1b\x2c", atqa=0x0004, sak=0x08)   sim.leave(uid)   sim.clear()
#   sim.leave_mid_command(uid)   the card leaves while the next InListPassiveTarget runs
#   sim.i2c() sim.uart() sim.spi() sim.cs_pin() sim.reset_pin() sim.irq_pin() sim.serial()
#   sim.fault(kind, count=1)     kinds below; sim.bytes_in / bytes_out count bus bytes
try:
    from time import sleep_ms, ticks_ms, ticks_diff
except ImportError:  # CPython
    import time as _t

    def sleep_ms(ms):
        _t.sleep(ms / 1000)

    def ticks_ms():
        return int(_t.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

ADDR = 0x24
ACK = b"\x00\x00\xff\x00\xff\x00"
NACK = b"\x00\x00\xff\xff\x00\x00"
ERROR_FRAME = b"\x00\x00\xff\x01\xff\x7f\x81\x00"
FIRMWARE = (0x32, 0x01, 0x06, 0x07)  # PN532, v1.6, ISO18092 + ISO14443A + ISO14443B
DEFAULT_ATS = b"\x06\x75\x77\x81\x02\x80"  # a DESFire EV1's ATS (TL counts itself)
ENODEV = 19  # machine.I2C: address NACK
ETIMEDOUT = 116  # machine.I2C: SCL held low past the bus timeout

# checksum: next answer's DCS is wrong; nack: I2C NACKs the next read (address), UART/SPI send a
#   NACK frame instead of the ACK; no_ack: the next command is lost (no ACK, no answer);
# hang: the chip stops answering anything until RSTPD_N is pulsed; stretch: the next I2C read
#   holds SCL for stretch_ms (OSError ETIMEDOUT if the bus timeout is shorter), other buses
#   answer stretch_ms late; garbage: the next read returns random bytes; truncate: the next
#   answer is cut short; flip: one byte of the next answer is changed; prefix: random bytes
#   before the next answer.
FAULTS = ("checksum", "nack", "no_ack", "hang", "stretch", "garbage", "truncate", "flip", "prefix")


def _rev(b):
    r = 0
    for _ in range(8):
        r = (r << 1) | (b & 1)
        b >>= 1
    return r


REV = bytes(_rev(i) for i in range(256))


def encode(data):
    """A normal or extended information frame around data (TFI included)."""
    n = len(data)
    if n < 255:
        head = bytes((0, 0, 0xFF, n, (-n) & 0xFF))
    else:
        hi, lo = n >> 8, n & 0xFF
        head = bytes((0, 0, 0xFF, 0xFF, 0xFF, hi, lo, (-(hi + lo)) & 0xFF))
    return head + bytes(data) + bytes(((-sum(data)) & 0xFF, 0))


class _Card:
    def __init__(self, uid, atqa, sak, ats):
        self.uid = bytes(uid)
        self.atqa = atqa
        self.sak = sak
        self.ats = ats


class PN532Sim:
    def __init__(self, seed=1, busy_reads=1, stretch_ms=60, firmware=FIRMWARE):
        self.cards = []
        self.busy_reads = busy_reads  # status polls answered "busy" after each command
        self.stretch_ms = stretch_ms
        self.firmware = firmware
        self._rng = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1
        self._faults = {}
        self.bytes_in = 0  # host -> chip bytes on the bus (I2C data bytes, UART bytes, SPI bytes)
        self.bytes_out = 0  # chip -> host bytes
        self.transfers = 0  # bus transactions (I2C start..stop, SPI CS low..high)
        self.commands = {}  # command code -> count
        self.resets = 0
        self._leaving = []
        self._power_on()

    # ---------------- state ----------------
    def _power_on(self):
        self._out = []  # frames waiting for the host, head first
        self._busy = 0
        self._late_until = None
        self._last = None  # last answer, resent on NACK
        self._waiting = None  # InListPassiveTarget params while retrying forever for a card
        self._rx = b""  # host frame being received (HSU stream / SPI DW)
        self.max_retries = 0xFF  # MxRtyPassiveActivation: 0xFF = forever
        self.sam = False
        self.hung = False
        self.in_reset = False
        self.asleep = True  # HSU needs 0x55 after power-on/reset; I2C/SPI wake on any access
        self.powered_down = False
        self.targets = 0

    def _rand(self):
        x = self._rng
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._rng = x
        return x

    def _take(self, kind):
        n = self._faults.get(kind, 0)
        if n:
            self._faults[kind] = n - 1
            return True
        return False

    # ---------------- the field ----------------
    def enter(self, uid, atqa=0x0004, sak=0x08, ats=None):
        uid = bytes(uid)
        if len(uid) not in (4, 7, 10) or uid[0] == 0x88:
            raise ValueError("an ISO14443A UID is 4, 7 or 10 bytes and never starts with 0x88")
        self.leave(uid)
        if ats is None and sak & 0x20:
            ats = DEFAULT_ATS
        self.cards.append(_Card(uid, atqa, sak, ats))
        if self._waiting is not None:  # the chip was retrying forever: now it finds the card
            self._answer_list(self._waiting)

    def leave(self, uid):
        uid = bytes(uid)
        self.cards = [c for c in self.cards if c.uid != uid]

    def leave_mid_command(self, uid):
        self._leaving.append(bytes(uid))

    def clear(self):
        self.cards = []

    def field(self):
        return [c.uid for c in self.cards]

    def fault(self, kind, count=1):
        if kind not in FAULTS:
            raise ValueError("unknown PN532 fault: %s" % kind)
        if kind == "hang":
            self.hung = True
            return
        self._faults[kind] = self._faults.get(kind, 0) + count

    def _faults_pending(self):
        for v in self._faults.values():
            if v:
                return True
        return False

    def clear_faults(self):
        self._faults = {}
        self.hung = False

    # ---------------- pins ----------------
    def _rst(self, v):
        if not v and not self.in_reset:
            self.in_reset = True
            self.resets += 1
            self._power_on()
            self.in_reset = True
        elif v and self.in_reset:
            self._power_on()

    def reset_pin(self):
        return _Pin(self._rst, lambda: 1 - int(self.in_reset))

    def irq_pin(self):
        """P70_IRQ: low while an answer is waiting."""
        return _Pin(None, lambda: 0 if self._poll_ready() else 1)  # busy window as for status polls

    # ---------------- host frames in ----------------
    def _host_bytes(self, data):
        """HSU / SPI-DW / I2C-write bytes from the host; processes every complete frame."""
        if self.in_reset or self.hung:
            return
        rx = self._rx + bytes(data)  # (MicroPython bytearrays cannot del slices: re-slice)
        while True:
            i = 0
            while i + 1 < len(rx) and not (rx[i] == 0 and rx[i + 1] == 0xFF):
                i += 1
            if i + 1 >= len(rx):
                self._rx = rx[-1:]  # wake-up bytes, noise; the last byte may start 00 FF
                return
            rx = rx[i:]
            self._rx = rx
            if len(rx) < 4:
                return
            ln, lcs = rx[2], rx[3]
            if ln == 0 and lcs == 0xFF:  # ACK from the host: abort the running command
                self._out = []
                self._waiting = None
                rx = rx[5:]
                continue
            if ln == 0xFF and lcs == 0:  # NACK: resend the last answer
                rx = rx[5:]
                if self._last is not None:
                    self._out = [self._last]
                    self._busy = self.busy_reads
                continue
            if ln == 0xFF and lcs == 0xFF:
                if len(rx) < 7:
                    return
                if (rx[4] + rx[5] + rx[6]) & 0xFF:
                    rx = rx[2:]
                    continue
                ln = (rx[4] << 8) | rx[5]
                d = 7
            else:
                if (ln + lcs) & 0xFF:
                    rx = rx[2:]
                    continue
                d = 4
            if len(rx) < d + ln + 1:
                return
            data = bytes(rx[d:d + ln])
            ok = (sum(data) + rx[d + ln]) & 0xFF == 0
            rx = rx[d + ln + 1:]
            if rx and rx[0] == 0 and not (len(rx) > 1 and rx[1] == 0xFF):
                rx = rx[1:]  # postamble
            self._rx = rx
            if ok and ln >= 2 and data[0] == 0xD4:
                self._command(data)
            # a frame with a bad checksum is ignored (the host times out and retries)

    def _command(self, data):
        if self._take("no_ack"):
            return
        self.commands[data[1]] = self.commands.get(data[1], 0) + 1
        self.powered_down = False
        self._waiting = None
        self._busy = self.busy_reads
        if self.bus != "i2c" and self._take("nack"):
            self._out = [NACK]  # the command is refused; the host must send it again
            return
        self._out = [ACK]
        cmd, p = data[1], data[2:]
        if cmd == 0x02:
            self._answer(bytes((0xD5, 0x03)) + bytes(self.firmware))
        elif cmd == 0x14 and len(p) >= 1:
            self.sam = True
            self._answer(b"\xd5\x15")
        elif cmd == 0x32 and len(p) >= 1:
            if p[0] == 0x05 and len(p) >= 4:
                self.max_retries = p[3]
            self._answer(b"\xd5\x33")
        elif cmd == 0x4A and len(p) >= 2 and 1 <= p[0] <= 2:
            if p[1] != 0x00:
                self._answer(b"\xd5\x4b\x00")  # only 106 kbps type A cards live in this field
            else:
                self._answer_list(p[0])
        elif cmd == 0x52 and len(p) >= 1:
            self.targets = 0
            self._answer(b"\xd5\x53\x00")
        elif cmd == 0x16 and len(p) >= 1:
            self._answer(b"\xd5\x17\x00")
            self.powered_down = True
        elif cmd == 0x00:
            self._answer(bytes((0xD5, 0x01)) + bytes(p))
        else:
            self._out.append(ERROR_FRAME)
            self._last = ERROR_FRAME

    def _answer_list(self, maxtg):
        for u in self._leaving:
            self.leave(u)
        self._leaving = []
        found = self.cards[:maxtg]
        if not found and self.max_retries == 0xFF:
            self._waiting = maxtg  # the chip keeps trying until a card comes or the host aborts
            return
        self._waiting = None
        out = bytearray((0xD5, 0x4B, len(found)))
        for i, c in enumerate(found):
            out += bytes((i + 1, c.atqa >> 8, c.atqa & 0xFF, c.sak, len(c.uid))) + c.uid
            if c.sak & 0x20:
                out += c.ats
        self.targets = len(found)
        self._answer(bytes(out))

    def _answer(self, data):
        f = encode(data)
        self._last = f
        if self._take("checksum"):
            f = f[:-2] + bytes(((f[-2] + 1 + self._rand() % 255) & 0xFF, 0))
        if self._take("truncate"):
            f = f[:self._rand() % (len(f) - 1) + 1]
            if self.bus != "uart":  # the chip lets go of SDA/MISO mid-frame: the pull-up reads 1s
                f += b"\xff" * 8
        if self._take("flip"):
            i = self._rand() % len(f)
            f = f[:i] + bytes((f[i] ^ (1 + self._rand() % 255),)) + f[i + 1:]
        if self._take("prefix"):
            f = bytes(self._rand() & 0xFF for _ in range(1 + self._rand() % 8)) + f
        if self._take("stretch"):
            self._late_until = ticks_ms() + self.stretch_ms
        self._out.append(f)

    # ---------------- frames out ----------------
    def _ready(self):
        if self.in_reset or self.hung or not self._out:
            return False
        if self._late_until is not None:
            if ticks_diff(ticks_ms(), self._late_until) < 0:
                return False
            self._late_until = None
        return True

    def _poll_ready(self):
        """A status poll: counts down the busy window after a command."""
        if self._busy > 0 and self._out:
            self._busy -= 1
            return False
        return self._ready()

    def _next_frame(self):
        """The head frame for a data read (consumed); random bytes if a garbage fault is due."""
        f = self._out.pop(0)
        if self._take("garbage"):
            f = bytes(self._rand() & 0xFF for _ in range(1 + self._rand() % 24))
        if f == ACK and self._out:
            self._busy = self.busy_reads  # the answer follows after the chip's processing time
        return f

    # ---------------- endpoints ----------------
    def i2c(self, timeout_us=200000):
        self.bus = "i2c"
        return _I2C(self, timeout_us)

    def uart(self):
        self.bus = "uart"
        return _UART(self)

    def serial(self):
        """A pyserial-like object over the HSU (write, read(n), in_waiting, reset_input_buffer)."""
        return _Serial(_UART(self))

    def spi(self):
        self.bus = "spi"
        if not hasattr(self, "_spi_ep"):
            self._spi_ep = _SPI(self)
        return self._spi_ep

    def cs_pin(self):
        s = self.spi()
        s.auto_cs = False
        return _Pin(s._cs, lambda: s.cs)


PN532Sim.bus = "i2c"  # the bus of the last endpoint handed out (decides how "nack" shows)


class _Pin:
    """machine.Pin-like: value(), value(v), on(), off(), __call__."""

    def __init__(self, setter, getter):
        self._set = setter
        self._get = getter

    def value(self, v=None):
        if v is None:
            return self._get()
        if self._set is not None:
            self._set(1 if v else 0)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def init(self, *a, **kw):
        pass


class _I2C:
    """machine.I2C-like (and enough of busio.I2C for adafruit_bus_device)."""

    def __init__(self, sim, timeout_us):
        self.sim = sim
        self.timeout_us = timeout_us

    def _start(self, addr):
        s = self.sim
        s.transfers += 1
        if addr != ADDR or s.in_reset:
            raise OSError(ENODEV)
        if s._take("stretch"):
            if s.stretch_ms * 1000 > self.timeout_us:
                sleep_ms(self.timeout_us // 1000)
                raise OSError(ETIMEDOUT)
            sleep_ms(s.stretch_ms)

    def scan(self):
        return [] if self.sim.in_reset else [ADDR]

    def writeto(self, addr, buf, stop=True, *, start=0, end=None):
        self._start(addr)
        data = bytes(buf[start:end])
        self.sim.bytes_in += len(data)
        self.sim._host_bytes(data)
        return len(data)

    def readfrom_into(self, addr, buf, stop=True, *, start=0, end=None):
        s = self.sim
        if s._out and s._busy > 0 and s._take("nack"):
            s.transfers += 1
            raise OSError(ENODEV)  # busy chip NACKs its address straight after a command
        self._start(addr)
        if end is None:
            end = len(buf)
        n = end - start
        if n <= 0:
            return
        s.bytes_out += n
        ready = s._poll_ready()
        buf[start] = 1 if ready else 0
        if n == 1:
            return  # a status read leaves the answer where it is
        if not ready:
            for i in range(start + 1, end):
                buf[i] = 0
            return
        f = s._next_frame()
        for i in range(1, n):
            buf[start + i] = f[i - 1] if i - 1 < len(f) else 0

    def readfrom(self, addr, n, stop=True):
        b = bytearray(n)
        self.readfrom_into(addr, b)
        return bytes(b)

    # busio.I2C locking, for adafruit_bus_device
    def try_lock(self):
        return True

    def unlock(self):
        pass


class _UART:
    """machine.UART-like HSU: write, read(n), readinto(buf[, n]), any()."""

    def __init__(self, sim):
        self.sim = sim
        self._pending = b""  # bytes of frames already on the wire

    def write(self, buf):
        s = self.sim
        data = bytes(buf)
        s.bytes_in += len(data)
        if s.in_reset or s.hung:
            return len(data)
        if s.asleep or s.powered_down:
            i = 0
            while i < len(data) and data[i] != 0x55:
                i += 1
            if i == len(data):
                return len(data)  # a sleeping HSU ignores everything but the 0x55 wake-up
            s.asleep = False
            s.powered_down = False
            data = data[i:]
        s._host_bytes(data)
        return len(data)

    def _fill(self):
        s = self.sim
        while s._out and s._poll_ready():
            self._pending += s._next_frame()

    def any(self):
        self._fill()
        return len(self._pending)

    def read(self, n=None):
        self._fill()
        if not self._pending:
            return None
        if n is None:
            n = len(self._pending)
        out = bytes(self._pending[:n])
        self._pending = self._pending[n:]
        self.sim.bytes_out += len(out)
        return out

    def readinto(self, buf, nbytes=None):
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        data = self.read(n)
        if not data:
            return None
        for i in range(len(data)):
            buf[i] = data[i]
        return len(data)

    def reset_input_buffer(self):
        self._pending = b""


class _Serial:
    """pyserial-like face of the HSU, for adafruit's PN532_UART and the enrolment bridge."""

    def __init__(self, uart):
        self.u = uart

    def write(self, data):
        return self.u.write(data)

    def read(self, n=1):
        return self.u.read(n) or b""

    @property
    def in_waiting(self):
        return self.u.any()

    def reset_input_buffer(self):
        self.u.reset_input_buffer()


class _SPI:
    """machine.SPI-like (MSB-first wire): the PN532's LSB-first bytes travel bit-reversed."""

    def __init__(self, sim):
        self.sim = sim
        self.cs = 1
        self._op = None
        self._frame = None
        self._pos = 0
        self._dw = bytearray()

    def _cs(self, v):
        if v == self.cs:
            return
        self.cs = v
        if v == 0:
            self.sim.transfers += 1
            self._op = None
            self._frame = None
            self._pos = 0
            self._dw = bytearray()
        else:
            if self._op == 0x01 and self._dw:
                self.sim._host_bytes(bytes(self._dw))
            self._op = None

    def _xfer(self, wbyte):
        s = self.sim
        if self.cs:
            return 0xFF  # not selected: MISO floats high
        s.bytes_in += 1
        s.bytes_out += 1
        if s.in_reset or s.hung:
            return 0
        b = REV[wbyte]
        if self._op is None:
            self._op = b
            if b == 0x03 and s._ready():
                self._frame = s._next_frame()
            return 0
        if self._op == 0x01:
            self._dw.append(b)
            return 0
        if self._op == 0x02:
            return REV[1 if s._poll_ready() else 0]
        if self._op == 0x03:
            f = self._frame
            out = f[self._pos] if f is not None and self._pos < len(f) else 0
            self._pos += 1
            return REV[out]
        return 0

    # Until cs_pin() is asked for (a harness that does not route the chip-select line), each
    # call is one whole CS-low transaction, which is how gv.pn532.transport uses the bus.
    auto_cs = True

    def _begin(self):
        if self.auto_cs:
            self._cs(0)

    def _end(self):
        if self.auto_cs:
            self._cs(1)

    def write(self, buf):
        self._begin()
        for b in buf:
            self._xfer(b)
        self._end()

    def read(self, n, write=0):
        self._begin()
        out = bytes(self._xfer(write) for _ in range(n))
        self._end()
        return out

    def readinto(self, buf, write=0):
        self._begin()
        for i in range(len(buf)):
            buf[i] = self._xfer(write)
        self._end()

    def write_readinto(self, wbuf, rbuf):
        self._begin()
        for i in range(len(wbuf)):
            rbuf[i] = self._xfer(wbuf[i])
        self._end()

    def init(self, *a, **kw):
        pass

    def deinit(self):
        pass
