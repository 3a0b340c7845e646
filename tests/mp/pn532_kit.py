# Helpers for the PN532 tests: a driver on a simulated chip on any bus, and a bus tape that
# records a simulated session and replays it without allocating (for heap_lock proofs).
from pn532_sim import PN532Sim
from gv.pn532.driver import PN532
from gv.pn532 import transport


def rig(bus="i2c", rst=True, fast=False, **simkw):
    sim = PN532Sim(**simkw)
    if bus == "i2c":
        t = transport.I2CTransport(sim.i2c())
    elif bus == "uart":
        t = transport.UARTTransport(sim.uart())
    else:
        t = transport.SPITransport(sim.spi(), sim.cs_pin())
    pn = PN532(t, rst=sim.reset_pin() if rst else None)
    if fast:
        shrink(pn)
    return sim, pn


def shrink(pn):
    """Millisecond timeouts so thousands of faulty exchanges run in seconds."""
    pn.ack_ms = 2
    pn.resp_ms = 3
    pn.cfg_ms = 3
    pn.rst_low_ms = 0
    pn.boot_ms = 0
    pn.backoff_ms = 0


class Tape:
    """Wraps a simulator endpoint; records every call's answer. replay() then serves the same
    answers from preallocated objects: a bus that allocates nothing."""

    def __init__(self, ep):
        self.ep = ep
        self.log = []
        self.i = 0
        self.replaying = False

    def replay(self):
        self.replaying = True
        self.i = 0

    def _next(self):
        v = self.log[self.i]
        self.i += 1
        return v

    def _copy(self, src, dst):
        for j in range(len(src)):
            dst[j] = src[j]

    # I2C
    def writeto(self, addr, buf, stop=True):
        if self.replaying:
            return self._next()
        r = self.ep.writeto(addr, buf)
        self.log.append(r)
        return r

    def readfrom_into(self, addr, buf, stop=True):
        if self.replaying:
            self._copy(self._next(), buf)
            return
        self.ep.readfrom_into(addr, buf)
        self.log.append(bytes(buf))

    # UART
    def write(self, buf):
        if self.replaying:
            return self._next()
        r = self.ep.write(buf)
        self.log.append(r)
        return r

    def any(self):
        if self.replaying:
            return self._next()
        r = self.ep.any()
        self.log.append(r)
        return r

    def readinto(self, buf, n=None):
        if self.replaying:
            src = self._next()
            if src is None:
                return None
            self._copy(src, buf)
            return len(src)
        r = self.ep.readinto(buf, n)
        self.log.append(None if not r else bytes(buf[:r]))
        return r

    # SPI
    def write_readinto(self, w, r):
        if self.replaying:
            self._copy(self._next(), r)
            return
        self.ep.write_readinto(w, r)
        self.log.append(bytes(r))


class TapePin:
    def __init__(self, pin):
        self.pin = pin
        self.replaying = False

    def value(self, v=None):
        if self.replaying:
            return 1 if v is None else None
        return self.pin.value(v)

    def replay(self):
        self.replaying = True


def taped_rig(bus):
    """(sim, pn, tapes): a begun driver whose bus is recorded until tapes are replayed."""
    sim = PN532Sim()
    if bus == "i2c":
        ep = Tape(sim.i2c())
        t = transport.I2CTransport(ep)
        tapes = [ep]
    elif bus == "uart":
        ep = Tape(sim.uart())
        t = transport.UARTTransport(ep)
        tapes = [ep]
    else:
        ep = Tape(sim.spi())
        cs = TapePin(sim.cs_pin())
        t = transport.SPITransport(ep, cs)
        tapes = [ep, cs]
    pn = PN532(t)
    # a replay must see exactly the recorded calls: generous timeouts so a loaded machine that
    # deschedules us for a few ms cannot turn a recorded wait into a timeout
    pn.ack_ms = pn.resp_ms = pn.cfg_ms = 2000
    if not pn.begin():
        raise AssertionError("begin failed: " + pn.last_error)
    for tp in tapes:
        if isinstance(tp, Tape):
            tp.log = []
    return sim, pn, tapes
