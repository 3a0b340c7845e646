# The zero-allocation claims on a 32-bit MicroPython (small ints stop at 2^30 there), run by
# tests/test_heap32.py in the WebAssembly port: PN532 poll on every bus, allowlist lookups (page,
# in-place entry, delta log, absent) and a card held until the relay is on, all under
# micropython.heap_lock(). Not collected by the unix-port plugin (no test_ prefix): each check
# is a function the CPython test calls, one runPython call each.
import gc
import os

import micropython

import mpt

ROOT = "/h32"
A = b"\x04\xa1\xb2\xc3"


def _mkdirs(p):
    cur = ""
    for part in p.split("/"):
        if part:
            cur += "/" + part
            try:
                os.mkdir(cur)
            except OSError:
                pass


def small_ints():
    # what makes this port a fair 32-bit proxy: ticks wrap at 2^30, and 2^30 is a heap object
    import time

    mpt.eq(time.ticks_add(0, -1), (1 << 30) - 1)
    micropython.heap_lock()
    try:
        x = (1 << 29) + ((1 << 29) - 1)  # the largest small int: no heap
        try:
            y = x + 1
            big = False
        except MemoryError:
            big = True
    finally:
        micropython.heap_unlock()
    assert big, "2^30 is not a heap object here: this is not a 32-bit port"


def aes_stub():
    # the cryptolib stand-in this port needs gives FIPS-197's answer, heap-free
    import cryptolib

    a = cryptolib.aes(bytes(range(16)), 1)
    out = bytearray(16)
    inp = bytes.fromhex("00112233445566778899aabbccddeeff")
    micropython.heap_lock()
    try:
        a.encrypt(inp, out)
    finally:
        micropython.heap_unlock()
    mpt.eq(out.hex(), "69c4e0d86a7b0430d8cdb78070b4c55a")


def pn532_poll():
    import test_pn532_heap as t

    t.test_poll_heap_locked_i2c()
    t.test_poll_heap_locked_uart()
    t.test_poll_heap_locked_spi()
    t.test_heap_lock_would_catch_an_allocation()


class ImageDev:
    """A block device holding the store's pages where LittleFS would put them, read without
    allocating (as esp32.Partition.readblocks is). This port has no LittleFS, so the store runs
    on plain files; image() then moves its page index onto this device, and every lookup takes
    the board's path: one block read into the page buffer, no file opened."""

    def __init__(self, path, blocks):
        self.blocks = blocks
        self._f = open(path, "w+b")
        self._f.write(b"\xff" * (4096 * blocks))
        self._f.flush()

    def readblocks(self, n, buf, off=0):
        self._f.seek(n * 4096 + off)
        self._f.readinto(buf)

    def ioctl(self, op, arg):
        return self.blocks if op == 4 else 0


def image(al, dev):
    from gv.allowlist.layout import IX, BLOCK, _ptr_bytes
    from gv.allowlist.store import _file_off

    ix = al._ix
    for p in range(al._np):
        i = ix[p * IX + 7] | ix[p * IX + 8] << 8
        pno = ix[p * IX + 9]
        o = _ptr_bytes(pno)
        with open(al._p("s%08x" % al._st.tag(i)), "rb") as f:
            f.seek(_file_off(pno))
            data = f.read(BLOCK - o)
        dev._f.seek(p * BLOCK + o)
        dev._f.write(data)
        ix[p * IX + 7] = p & 0xFF
        ix[p * IX + 8] = p >> 8
        ix[p * IX + 9] = o
    dev._f.flush()
    al._dev = dev


def _store(n):
    from test_allowlist_fixture import SP, install
    from gv.allowlist.store import Allowlist

    root = ROOT + "/al%d" % n
    _mkdirs(root)
    al = Allowlist(root, None, SP).open()
    install(al, n, 1)
    mpt.eq(al.health, "ok")
    return al


def lookup():
    from test_allowlist_fixture import key, rec, state, ADD
    from gv.allowlist import record as R

    n = 600
    al = _store(n)
    # deltas: one that fits its page (in place, where the file store can: else the log), one
    # that adds cards (the RAM delta log)
    ch = []
    for i in (5, 77):
        k = key(i)
        ch.append((k, R.pack(k, R.BLOCKED, 0, 0, R.NO_END)))
    for i in range(n, n + ADD):
        ch.append((key(i), rec(i, 2)))
    ch.sort()
    assert al.apply_delta(1, 2, ch)
    dev = ImageDev(ROOT + "/flash.img", 64)
    image(al, dev)
    out = bytearray(16)
    cases = [(bytearray(key(300)), True), (bytearray(key(5)), True), (bytearray(key(n + 3)), True),
             (bytearray(key(n + ADD + 9)), False), (bytearray(8), False),
             (bytearray(b"\xff" * 8), False)]
    got = [False] * len(cases)
    gc.collect()
    before = gc.mem_alloc()
    micropython.heap_lock()
    try:
        for j in range(len(cases)):
            got[j] = al.lookup(cases[j][0], out)
            if j == 1:
                st = out[8] & 7
    finally:
        micropython.heap_unlock()
    mpt.eq(gc.mem_alloc() - before, 0)
    mpt.eq(got, [c[1] for c in cases])
    mpt.eq(st, R.BLOCKED)
    al.lookup(bytearray(key(300)), out)
    mpt.eq(bytes(out), state(n, 300, 1))


class _Log:
    """The event log with the heap let through for its write alone (it opens its file)."""

    def __init__(self, log):
        self.log = log
        self.writes = 0
        self.write_bytes = 0

    def append(self, kind, result, reason, uid, uid_len, t, clock_set=False, aux=0):
        micropython.heap_unlock()  # (named arguments: *args would build a tuple while locked)
        before = gc.mem_alloc()
        try:
            return self.log.append(kind, result, reason, uid, uid_len, t, clock_set, aux)
        finally:
            self.write_bytes += gc.mem_alloc() - before
            self.writes += 1
            micropython.heap_lock()

    def __getattr__(self, name):
        return getattr(self.log, name)


def grant():
    # a card held from its arrival until the relay is on, every loop pass under heap_lock but
    # the event write; ticks just short of the 2^30 wrap and a 2026 wall clock, as an ESP32
    # twelve days after boot has them
    from gate_hw import FakePin, FakePN532, FakeWDT
    from gv.allowlist import record as R
    from gv.allowlist.record import Keyer
    from gv.drivers.outputs import Buzzer, Leds, Relay
    from gv.events import EventLog
    from gv.gate.lockout import Lockouts
    from gv.gate.runner import GateRunner
    from gv.gate.clock import Clock

    keyer = Keyer(bytes(range(16)), bytes(range(16, 32)))
    k = bytearray(8)
    keyer.uid_key(A, len(A), k)
    al = _store(400)
    assert al.apply_delta(1, 2, [(bytes(k), R.pack(bytes(k), R.ACTIVE, 0, 0, R.NO_END))])
    dev = ImageDev(ROOT + "/flash2.img", 64)
    image(al, dev)
    _mkdirs(ROOT + "/ev")
    ev = EventLog(ROOT + "/ev")
    lk = Lockouts(ROOT + "/lock")
    now = (1 << 30) - 250
    clock = Clock(now)
    clock.set(7 * 365 * 86400, now)
    pn = FakePN532()
    relay_pin = FakePin()
    log = _Log(ev)
    runner = GateRunner({"hold_ms": 500, "open_ms": 3000}, pn, al, keyer, log, lk,
                        Relay(relay_pin), Leds(FakePin(), FakePin()), Buzzer(FakePin()), None,
                        FakeWDT(), clock, log=lambda s: None)
    runner.boot(now)
    log.writes = log.write_bytes = 0
    pn.field = [A]
    passes = 0
    total = 0
    gc.collect()
    while not relay_pin.v and passes < 100:
        now = (now + 10) & ((1 << 30) - 1)
        before = gc.mem_alloc()
        micropython.heap_lock()
        try:
            runner.step(now)
        finally:
            micropython.heap_unlock()
        total += gc.mem_alloc() - before
        passes += 1
    assert relay_pin.v, (passes, runner.faults, runner.last_fault)
    mpt.eq(runner.faults, 0)
    mpt.eq(log.writes, 1)
    mpt.eq(total - log.write_bytes, 0)
    assert now < 1000, now  # the ticks wrapped while the card was held


def run(name):
    import wasm_port  # noqa: F401 - os.urandom, binascii as on an ESP32

    _mkdirs(ROOT)
    globals()[name]()
    print("HEAP32 PASS", name)
