# The PN532's three host links, each behind the same small interface the driver uses:
#   wake()            bus-specific wake-up (HSU needs 0x55 + preamble; I2C/SPI: a touch of the bus)
#   flush()           drop stale input (HSU only; I2C/SPI frames are fetched on demand)
#   prepare(n)        reserve what sending an n-byte frame needs, so send() allocates nothing
#   send(frame)       write one host frame (raises OSError on a bus error)
#   ready()           True when the chip has an answer (status byte bit 0 / bytes waiting)
#   pull(size)        fetch (more of) the answer into .buf; returns the end index; frame bytes
#                     start at .off. size is READ_ACK, READ_SHORT or READ_FULL: fixed=True buses
#                     read that many bytes in one transfer (I2C/SPI cannot know the length
#                     first); the HSU just takes what has arrived.
# Nothing here allocates after construction and prepare().
from gv.compat import const

I2C_ADDR = const(0x24)
ACK_LEN = const(6)
RESP_MAX = const(80)  # frame bytes read for an answer: two targets, 10-byte UIDs, 16-byte ATS each
RESP_SHORT = const(28)  # one card, 7-byte UID, 6-byte ATS (a DESFire): the usual answer in one read
READ_ACK = const(0)
READ_SHORT = const(1)
READ_FULL = const(2)

_WAKE_HSU = b"\x55\x55" + bytes(14)  # 0x55 wakes the HSU, the zeros give it time (UM0701-02 §7.2.11)

# SPI: the PN532 shifts LSB first; machine.SPI on the ESP32 shifts MSB first, so bytes are
# bit-reversed by table (the chip's byte b travels as REV[b] on an MSB-first bus).
def _rev(b):
    r = 0
    for _ in range(8):
        r = (r << 1) | (b & 1)
        b >>= 1
    return r


REV = bytes(_rev(i) for i in range(256))
SPI_DW = const(0x01)  # data write
SPI_SR = const(0x02)  # status read
SPI_DR = const(0x03)  # data read


class I2CTransport:
    """machine.I2C at 0x24. Every read transfer starts with the status byte (bit 0 = ready).
    Give the bus a generous timeout (board file timeout_us, 200 ms): the PN532 stretches SCL
    well past the ESP32's default. A read straight after a command may be NACKed: ready()
    lets that OSError through and the driver treats it as 'not ready yet'."""

    fixed = True
    off = 1

    def __init__(self, i2c, addr=I2C_ADDR):
        self.i2c = i2c
        self.addr = addr
        self.buf = bytearray(1 + RESP_MAX)
        self._st = bytearray(1)
        mv = memoryview(self.buf)
        self._views = (mv[:1 + ACK_LEN], mv[:1 + RESP_SHORT], mv[:1 + RESP_MAX])

    def wake(self):
        try:  # an address match wakes a powered-down PN532
            self.i2c.readfrom_into(self.addr, self._st)
        except OSError:
            pass

    def flush(self):
        pass

    def prepare(self, n):
        pass

    def restart(self):
        pass

    def send(self, frame):
        self.i2c.writeto(self.addr, frame)

    def ready(self):
        self.i2c.readfrom_into(self.addr, self._st)
        return self._st[0] & 1 == 1

    def pull(self, size):
        v = self._views[size]
        self.i2c.readfrom_into(self.addr, v)
        if not self.buf[0] & 1:  # the status byte says this was not the answer
            return 1
        return len(v)


class UARTTransport:
    """machine.UART at 115200 8N1 (HSU). After power-on, reset or PowerDown the HSU sleeps
    and needs the 0x55 wake-up sequence before the first frame."""

    fixed = False
    off = 0

    def __init__(self, uart):
        self.uart = uart
        self.buf = bytearray(RESP_MAX)
        self._one = bytearray(1)
        self.n = 0

    def wake(self):
        self.uart.write(_WAKE_HSU)

    def flush(self):
        u = self.uart
        for _ in range(512):  # bounded: a babbling line cannot keep us here
            if not u.any():
                break
            u.readinto(self._one, 1)
        self.n = 0

    def prepare(self, n):
        pass

    def send(self, frame):
        self.n = 0
        self.uart.write(frame)

    def restart(self):
        self.n = 0

    def ready(self):
        return self.uart.any() > 0

    def pull(self, size):
        ack = size == READ_ACK
        u = self.uart
        buf = self.buf
        one = self._one
        n = self.n
        while n < len(buf) and u.any():
            if not u.readinto(one, 1):
                break
            buf[n] = one[0]
            n += 1
            # stop right after an ACK/NACK so the answer behind it stays in the UART for later
            if ack and n >= 5 and buf[n - 1] == 0 and buf[n - 4] == 0xFF and buf[n - 5] == 0 and (
                    (buf[n - 3] == 0 and buf[n - 2] == 0xFF) or (buf[n - 3] == 0xFF and buf[n - 2] == 0)):
                break
        self.n = n
        return n


class SPITransport:
    """machine.SPI (mode 0, <= 5 MHz) with a chip-select Pin. Every transfer starts with DW/SR/DR;
    bytes are bit-reversed unless the bus itself is LSB-first (lsb_first=True)."""

    fixed = True
    off = 1

    def __init__(self, spi, cs_pin, lsb_first=False):
        self.spi = spi
        self.cs = cs_pin
        self.rev = None if lsb_first else REV
        self.buf = bytearray(1 + RESP_MAX)
        self._tx = bytearray(1 + RESP_MAX)  # DR then zeros for reads; reused for writes
        self._sr = bytearray(2)
        self._st = bytearray(2)
        mv = memoryview(self.buf)
        tv = memoryview(self._tx)
        self._views = (mv[:1 + ACK_LEN], mv[:1 + RESP_SHORT], mv[:1 + RESP_MAX])
        self._txviews = (tv[:1 + ACK_LEN], tv[:1 + RESP_SHORT], tv[:1 + RESP_MAX])
        self._wviews = {}
        self._wbuf = bytearray(1 + RESP_MAX)
        self._sr[0] = self._b(SPI_SR)
        cs_pin.value(1)

    def _b(self, x):
        return self.rev[x] if self.rev else x

    def wake(self):
        self.cs.value(0)  # CS low wakes the chip from power-down
        self.spi.write(b"\x00")
        self.cs.value(1)

    def flush(self):
        pass

    def restart(self):
        pass

    def prepare(self, n):
        if n + 1 not in self._wviews:
            self._wviews[n + 1] = memoryview(self._wbuf)[:n + 1]

    def send(self, frame):
        w = self._wbuf
        n = len(frame)
        w[0] = self._b(SPI_DW)
        rev = self.rev
        for i in range(n):
            w[i + 1] = rev[frame[i]] if rev else frame[i]
        v = self._wviews.get(n + 1)
        if v is None:  # a size nobody prepared: allocates once, then cached
            self.prepare(n)
            v = self._wviews[n + 1]
        self.cs.value(0)
        try:
            self.spi.write(v)
        finally:
            self.cs.value(1)

    def ready(self):
        self.cs.value(0)
        try:
            self.spi.write_readinto(self._sr, self._st)
        finally:
            self.cs.value(1)
        return self._b(self._st[1]) & 1 == 1

    def pull(self, size):
        v = self._views[size]
        t = self._txviews[size]
        self._tx[0] = self._b(SPI_DR)
        self.cs.value(0)
        try:
            self.spi.write_readinto(t, v)
        finally:
            self.cs.value(1)
        rev = self.rev
        buf = self.buf
        if rev:
            for i in range(len(v)):
                buf[i] = rev[buf[i]]
        return len(v)

