"""The simulator speaks real PN532: adafruit's CircuitPython driver (CPython, Blinka in
OS-agnostic mode) talks to it over its UART class (a pyserial-like object), its I2C class (a
busio-like bus) and its SPI class (busio-like bus, LSB-first bytes bit-reversed by adafruit),
and gets exactly what the simulated field holds."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("BLINKA_OS_AGNOSTIC", "1")
ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "firmware", ROOT / "tools" / "sim"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from adafruit_pn532.i2c import PN532_I2C  # noqa: E402
from adafruit_pn532.spi import PN532_SPI  # noqa: E402
from adafruit_pn532.uart import PN532_UART  # noqa: E402
from pn532_sim import PN532Sim  # noqa: E402

CARDS = [bytes.fromhex("00000a1b"), bytes.fromhex("0004a1b2c3d400"), bytes.fromhex("08123456")]


class BusioSPI:
    """busio.SPI's face over the simulator's machine.SPI-like endpoint."""

    def __init__(self, ep):
        self.ep = ep

    def try_lock(self) -> bool:
        return True

    def unlock(self) -> None:
        pass

    def configure(self, **kw) -> None:
        pass

    def write(self, buf, start=0, end=None):
        self.ep.write(bytes(buf[start:end]))

    def readinto(self, buf, start=0, end=None, write_value=0):
        end = len(buf) if end is None else end
        tmp = bytearray(end - start)
        self.ep.readinto(tmp, write_value)
        buf[start:end] = tmp

    def write_readinto(self, out, inp, **kw):
        tmp = bytearray(len(inp))
        self.ep.write_readinto(bytes(out), tmp)
        inp[:] = tmp


class DigitalInOut:
    def __init__(self, pin):
        self.pin = pin

    def switch_to_output(self, value=False, **kw):
        self.pin.value(value)

    @property
    def value(self):
        return bool(self.pin.value())

    @value.setter
    def value(self, v):
        self.pin.value(1 if v else 0)


def _adafruit(bus: str, sim: PN532Sim):
    if bus == "uart":
        return PN532_UART(sim.serial())
    if bus == "i2c":
        return PN532_I2C(sim.i2c())
    return PN532_SPI(BusioSPI(sim.spi()), DigitalInOut(sim.cs_pin()))


@pytest.mark.parametrize("bus", ["uart", "i2c", "spi"])
def test_adafruit_reads_what_the_field_holds(bus):
    sim = PN532Sim(seed=3)
    pn = _adafruit(bus, sim)
    assert pn.firmware_version == (0x32, 0x01, 0x06, 0x07)
    pn.SAM_configuration()
    assert sim.sam
    assert pn.read_passive_target(timeout=0.05) is None  # empty field: nothing, no exception
    for uid in CARDS:
        sim.clear()
        sim.enter(uid, atqa=0x0044 if len(uid) == 7 else 0x0004, sak=0x08)
        got = pn.read_passive_target(timeout=0.5)
        assert got is not None and bytes(got) == uid  # leading zero bytes included
        assert bytes(got).hex() == uid.hex()
    sim.clear()
    assert pn.read_passive_target(timeout=0.05) is None


@pytest.mark.parametrize("bus", ["uart", "i2c"])
def test_adafruit_waits_for_a_card_that_arrives_later(bus):
    # with MxRtyPassiveActivation left at 0xFF the chip retries until a card comes: the answer
    # to the pending InListPassiveTarget arrives when it does
    sim = PN532Sim()
    pn = _adafruit(bus, sim)
    assert pn.listen_for_passive_target(timeout=0.2)
    assert pn.get_passive_target(timeout=0.02) is None
    sim.enter(CARDS[0])
    assert bytes(pn.get_passive_target(timeout=0.5)) == CARDS[0]


def test_adafruit_refuses_what_it_cannot_represent():
    # 10-byte UIDs are beyond adafruit's driver (it stops at 7): our driver alone covers them
    sim = PN532Sim()
    pn = _adafruit("uart", sim)
    sim.enter(bytes(range(10)))
    with pytest.raises(RuntimeError):
        pn.read_passive_target(timeout=0.5)


def test_adafruit_sees_the_chip_checksum_fault():
    sim = PN532Sim()
    pn = _adafruit("i2c", sim)
    sim.enter(CARDS[1])
    sim.fault("checksum")
    with pytest.raises(RuntimeError):
        pn.read_passive_target(timeout=0.5)
    assert bytes(pn.read_passive_target(timeout=0.5)) == CARDS[1]
