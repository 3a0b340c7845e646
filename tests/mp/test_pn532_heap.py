# poll() allocates nothing after start-up: a simulated session (no card, a card with a 7-byte
# UID, two cards, a 10-byte ISO14443-4 card, gone) is recorded, then replayed through the same
# driver under micropython.heap_lock(), on each bus. (The simulator itself allocates, so it is
# taped out of the locked section; the driver code path is byte-for-byte the same.)
import gc
import micropython

from mpt import eq
from pn532_kit import taped_rig
from gv.pn532.driver import NO_CARD, ONE_CARD, MANY_CARDS
from gv.pn532.uid import uid_hex_into

A = b"\x00\x04\xa1\xb2\xc3\xd4\xe5"
B = b"\x00\x00\x0a\x1b"
C = bytes(range(1, 11))
WANT = [NO_CARD, ONE_CARD, MANY_CARDS, ONE_CARD, NO_CARD]


def _session(bus):
    sim, pn, tapes = taped_rig(bus)
    steps = [lambda: None, lambda: sim.enter(A), lambda: sim.enter(B), lambda: (sim.clear(), sim.enter(C, sak=0x20)),
             lambda: sim.clear()]
    for s in steps:
        s()
        pn.poll()
    for tp in tapes:
        tp.replay()
    return pn, tapes[0]


def _locked(bus):
    pn, _ = _session(bus)
    res = [0] * len(WANT)
    lens = [0] * len(WANT)
    hexbuf = bytearray(20)
    gc.collect()
    before = gc.mem_alloc()
    micropython.heap_lock()
    try:
        for i in range(len(WANT)):
            res[i] = pn.poll()
            lens[i] = pn.uid_len
            uid_hex_into(pn.uid, pn.uid_len, hexbuf)
    finally:
        micropython.heap_unlock()
    after = gc.mem_alloc()
    eq(res, WANT, bus)
    eq(lens, [0, 7, 0, 10, 0], bus)
    eq(pn.errors, 0, bus)  # a MemoryError inside poll() would have shown up as an error
    eq(after - before, 0, bus)


def test_poll_heap_locked_i2c():
    _locked("i2c")


def test_poll_heap_locked_uart():
    _locked("uart")


def test_poll_heap_locked_spi():
    _locked("spi")


def test_heap_lock_would_catch_an_allocation():
    # the proof's own check: a bus that allocates under heap_lock makes poll() report ERROR
    pn, tape = _session("i2c")

    def allocating_copy(src, dst):
        tmp = bytearray(src)  # allocates
        for j in range(len(tmp)):
            dst[j] = tmp[j]

    tape._copy = allocating_copy
    micropython.heap_lock()
    try:
        r = pn.poll()
    finally:
        micropython.heap_unlock()
    eq(r, 3)
    eq(pn.errors, 1)
