# The zero-allocation claims on a 32-bit MicroPython (small ints stop at 2^30 there), run by
# tests/test_heap32.py in the WebAssembly port: PN532 poll on every bus, allowlist lookups (page,
# in-place entry, delta log, absent) and a card held until the relay is on, all under
# micropython.heap_lock(). The store lives on flashfs (LittleFS's data layout on a RAM flash, the
# store's block device as esp32.Partition is on the board). Not collected by the unix-port plugin (no test_ prefix): each check
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


_F = {}


def _flash():
    """LittleFS's data layout on a 512-block RAM flash, mounted at /flash (tools/wasm/stubs/
    flashfs.py: this port has no LittleFS). The store gets its block device as on the board: it
    finds its pages by their headers, reads them with readblocks (no heap, as
    esp32.Partition.readblocks) and programs small deltas into them."""
    if "dev" not in _F:
        import flashfs

        _F["dev"], _F["fs"] = flashfs.mount("/flash", "/flash.img", 512)
        _mkdirs("/flash/h32")
    return _F["dev"]


def _store(n):
    from test_allowlist_fixture import SP, install
    from gv.allowlist.store import Allowlist

    root = "/flash/h32/al%d" % n
    _mkdirs(root)
    al = Allowlist(root, _flash(), SP).open()
    install(al, n, 1)
    mpt.eq(al.health, "ok")
    return al


def flashfs_layout():
    # the LittleFS stand-in the store's checks and the heap bench run on: files where LittleFS
    # puts them (data block n > 0 after its CTZ pointers), blocks erased when allocated and not
    # when freed, atomic rename, a full device refused, NOR programs, reads and writes heap-free
    import flashfs
    from gv.allowlist.layout import _ptr_bytes

    dev, fs = flashfs.mount("/fl2", "/fl2.img", 16)
    free0 = os.statvfs("/fl2")[3]
    mpt.eq(free0, 14)  # the root's metadata pair taken
    data = bytearray(3 * 4096)
    for i in range(len(data)):
        data[i] = (i * 7 + i // 256) & 0xFF
    with open("/fl2/a.tmp", "wb") as f:
        f.write(data)
    os.rename("/fl2/a.tmp", "/fl2/a")
    mpt.eq(os.stat("/fl2/a")[6], len(data))
    with open("/fl2/a", "rb") as f:
        mpt.eq(f.read(), bytes(data))
    e = fs._find("/a")
    b0 = fs._first[e]
    b1 = fs._next[b0]
    b2 = fs._next[b1]
    blk = bytearray(4096)
    dev.readblocks(b1, blk, 0)
    mpt.eq(bytes(blk[0:4]), bytes([b0, 0, 0, 0]))  # data block 1: one pointer, to block 0
    o = _ptr_bytes(1)
    mpt.eq(bytes(blk[o:o + 8]), bytes(data[4096:4104]))
    dev.readblocks(b2, blk, 0)
    mpt.eq(bytes(blk[0:8]), bytes([b1, 0, 0, 0, b0, 0, 0, 0]))  # block 2: to blocks 1 and 0
    off = 4096 + 4096 - _ptr_bytes(1)
    mpt.eq(bytes(blk[_ptr_bytes(2):_ptr_bytes(2) + 8]), bytes(data[off:off + 8]))
    mpt.eq(os.statvfs("/fl2")[3], free0 - 4)  # 12,288 bytes and pointers: four blocks
    # a rename over a file frees its blocks; they keep their bytes until reused
    with open("/fl2/b", "wb") as f:
        f.write(b"new")
    os.rename("/fl2/b", "/fl2/a")
    mpt.eq(os.statvfs("/fl2")[3], free0 - 1)
    dev.readblocks(b1, blk, 0)
    mpt.eq(bytes(blk[o:o + 8]), bytes(data[4096:4104]))
    with open("/fl2/a", "rb") as f:
        mpt.eq(f.read(), b"new")
    mpt.eq(sorted(os.listdir("/fl2")), ["a"])
    # NOR: a program only clears bits (on an erased block no file holds)
    nb = 0
    while fs._used[nb]:
        nb += 1
    dev.ioctl(6, nb)
    one = bytearray(1)
    one[0] = 0x0F
    dev.writeblocks(nb, one, 5)
    one[0] = 0xF3
    dev.writeblocks(nb, one, 5)
    dev.readblocks(nb, one, 5)
    mpt.eq(one[0], 0x03)
    mpt.eq(dev.nor_violations, 1)
    # reads, writes and block reads allocate nothing
    g = open("/fl2/c", "wb")
    mv = memoryview(blk)[:4092]
    r = open("/fl2/a", "rb")
    gc.collect()
    before = gc.mem_alloc()
    micropython.heap_lock()
    try:
        g.write(blk)
        g.write(mv)  # block 1 holds 4,088: 4 bytes go on to block 2
        dev.readblocks(3, blk, 0)
        r.seek(0)
        r.readinto(mv)
    finally:
        micropython.heap_unlock()
    mpt.eq(gc.mem_alloc() - before, 0)
    g.close()
    r.close()
    mpt.eq(os.stat("/fl2/c")[6], 4096 + 4092)
    # a full device: ENOSPC
    try:
        with open("/fl2/d", "wb") as f:
            for _ in range(20):
                f.write(blk)
        full = False
    except OSError as ex:
        full = ex.args[0] == 28
    assert full
    os.remove("/fl2/d")
    os.remove("/fl2/c")
    mpt.eq(os.statvfs("/fl2")[3], free0 - 1)


def lookup():
    from test_allowlist_fixture import key, rec, state, ADD
    from gv.allowlist import record as R

    n = 600
    al = _store(n)
    # deltas: one programmed into its pages (status overrides), one that adds cards through the
    # RAM delta log (in-place writes off for it)
    ch = []
    for i in (5, 77):
        k = key(i)
        ch.append((k, R.pack(k, R.BLOCKED, 0, 0, R.NO_END)))
    programs = _flash().programs
    assert al.apply_delta(1, 2, ch)
    assert _flash().programs > programs and not al._nlog, "the first delta did not go in place"
    ch = [(key(i), rec(i, 2)) for i in range(n, n + ADD)]
    al.in_place = False
    assert al.apply_delta(2, 3, ch)
    al.in_place = True
    mpt.eq(al._nlog, ADD)
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
    mpt.eq(_flash().nor_violations, 0)


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
