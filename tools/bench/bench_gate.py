"""Gate figures measured inside the MicroPython unix port (-X heapsize=HEAP): heap allocated
from 'card held long enough' to 'relay on' outside the event write (heap locked around all the
rest), what the event write itself allocates, and the flash block writes/erases per decision on
the LittleFS stand-in (real allowlist store, real event ring)."""
import json
import os
import subprocess
import tempfile
from pathlib import Path

from tools import mpy
from tools.bench import metric

HEAP = "160k"  # see run(): 128k no longer holds store, event log, gate and their bytecode
N = 2500  # grants measured: more than the ring holds, so the overflow steady state is included

_SETUP = r"""
import gc
from flashdev import FlashDev, format_and_mount, umount
from gv.allowlist import record as R
from gv.allowlist.store import Allowlist
dev = FlashDev(path=IMAGE)
format_and_mount(dev)
al = Allowlist("/flash/al", dev).open()
keyer = R.Keyer(bytes(range(16)), bytes(range(16, 32)))
keys = []
PIN_UID = b"\x04\xa1\xb2\xc4"  # asks for its PIN (F_PIN), 4711
pk = bytearray(8)
keyer.uid_key(PIN_UID, 4, pk)
for i in range(1000):  # 1,000 cards installed as a snapshot; the bench card is uid 04a1b2c3
    kk = bytearray(8)
    keyer.uid_key(b"\x04\xa1\xb2\xc3" if i == 0 else bytes([1, i >> 8, i & 255, 7]), 4, kk)
    keys.append(bytes(kk))
keys.append(bytes(pk))
keys.sort()
ver = keyer.pin_verifier(PIN_UID, 4, "4711")


def rec(k):
    if k == pk:
        return R.pack(k, R.ACTIVE, R.F_PIN, 0, 0xFFFF, ver)
    return R.pack(k, R.ACTIVE, 0, 0, 0xFFFF)


al.begin_snapshot(10, len(keys))
for j in range(0, len(keys), 100):
    al.snapshot_chunk(b"".join(rec(k) for k in keys[j:j + 100]))
al.end_snapshot()
umount()
dev.close()
print("SETUP", al.version)
"""

# What both measurements start with: boot like a reader whose allowlist was synced before.
_BOOT = r"""
import gc, micropython, time
from flashdev import FlashDev, mount
from gv.allowlist import record as R
from gv.allowlist.store import Allowlist
dev = FlashDev(path=IMAGE)
mount(dev)
al = Allowlist("/flash/al", dev).open()  # first, as at boot: its 4 KB buffers need a whole heap
from gv import events as E
ev = E.EventLog("/flash/ev")  # and the event ring's index (2 KB) while the heap is young
from gv.gate import core
from gv.gate.clock import Clock
from gv.gate.lockout import Lockouts
from gv.drivers.outputs import Relay

class Pin:
    v = 0
    def value(self, v=None):
        if v is not None:
            self.v = v

class Log:
    def __init__(self, log):
        self.log = log
        self.heap = 0
        self.writes = 0
    def append(self, kind, result, reason, uid, uid_len, t, clock_set=False, aux=0):
        micropython.heap_unlock()
        b = gc.mem_alloc()
        try:
            return self.log.append(kind, result, reason, uid, uid_len, t, clock_set, aux)
        finally:
            self.heap += gc.mem_alloc() - b
            self.writes += 1
            micropython.heap_lock()

assert al.version == 10 and al.health == "ok", (al.version, al.health)
keyer = R.Keyer(bytes(range(16)), bytes(range(16, 32)))
uid = bytearray(b"\x04\xa1\xb2\xc3")
"""

# The measurement boots like a reader whose allowlist was synced before: open the store, decide.
_CODE = _BOOT + r"""
log = Log(ev)
lk = Lockouts("/flash/lock")
lk.load(0)
clock = Clock(0)
clock.set(R.days(2026, 11, 29) * 86400, 0)
gate = core.Gate({"hold_ms": 500}, al, keyer, log, lk, clock)
relay = Relay(Pin())
uidmv = memoryview(uid)
now = 0
heap_other = 0
writes = erases = progs = 0
us = 0
gc.collect()
free = gc.mem_free()
for n in range(NDEC):
    for t in range(0, 500, 50):  # held: polls until the last one completes hold_ms
        gate.poll(now, core.ONE_CARD, uidmv, 4)
        now += 50
    gc.collect()
    gc.disable()
    w0, e0, b0 = dev.writes, dev.erases, dev.bytes_written
    h0 = log.heap
    a = gc.mem_alloc()
    t0 = time.ticks_us()
    micropython.heap_lock()
    try:
        sig = gate.poll(now, core.ONE_CARD, uidmv, 4)  # held long enough: decide ...
        if sig == 1:
            relay.pulse(now, 3000)  # ... and the relay is on
    finally:
        micropython.heap_unlock()
    us += time.ticks_diff(time.ticks_us(), t0)
    total = gc.mem_alloc() - a
    gc.enable()
    assert sig == 1 and relay.is_on, sig
    heap_other += total - (log.heap - h0)
    writes += dev.writes - w0
    erases += dev.erases - e0
    progs += dev.bytes_written - b0
    relay.off()
    for t in range(3):
        now += 50
        gate.poll(now, core.NO_CARD, None, 0)
lw = dev.writes
lk.pin_attempt(bytes(8), now)
lock_writes = dev.writes - lw
print("BENCH", {"heap_other": heap_other, "heap_event": log.heap // log.writes,
       "writes": writes / NDEC, "erases": erases / NDEC, "bytes": progs / NDEC, "us": us // NDEC,
       "lock_writes": lock_writes, "capacity": ev.capacity, "free": free})
"""


# PIN decisions in a process of their own (flash writes only; the heap claim is the grant path).
_PIN = _BOOT + r"""
log = ev  # no heap locking here
lk = Lockouts("/flash/lock")
lk.load(0)
clock = Clock(0)
clock.set(R.days(2026, 11, 29) * 86400, 0)
gate = core.Gate({"hold_ms": 500}, al, keyer, log, lk, clock)
relay = Relay(Pin())
uidmv = memoryview(uid)
now = 0
# PIN grants (policy "card", a card with F_PIN): event + the try saved before the check + reset
pin_uid = memoryview(bytearray(b"\x04\xa1\xb2\xc4"))
pin_writes = 0
for n in range(20):
    for t in range(0, 550, 50):
        sig = gate.poll(now, core.ONE_CARD, pin_uid, 4)
        now += 50
    assert sig == 4, sig  # the PIN prompt
    for ch in "4711":
        gate.key(now, ch)
        now += 300
    w0 = dev.writes
    sig = gate.key(now, "#")
    pin_writes += dev.writes - w0
    assert sig == 1, sig
    for t in range(3):
        now += 50
        gate.poll(now, core.NO_CARD, None, 0)
print("BENCH", {"pin_writes": pin_writes / 20})
"""


def _compile(out_dir: Path) -> None:
    """The firmware as the reader runs it: .mpy files from mpy-cross (compiling source on a
    128 KB heap needs large contiguous blocks no booted reader has to spare)."""
    for src in (mpy.FIRMWARE / "gv").rglob("*.py"):
        dst = out_dir / src.relative_to(mpy.FIRMWARE).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy.mpy_cross_bin(), "-o", str(dst), str(src)], check=True,
                       cwd=mpy.FIRMWARE)


def _mp(code: str, image: str, heap: str, mpy_dir: str, name: str) -> str:
    # The script is compiled to .mpy too: compiling it on the 128k heap would itself crowd out
    # what is measured.
    src = Path(mpy_dir) / (name + ".py")
    src.write_text("IMAGE = %r\nNDEC = %d\n" % (image, N) + code)
    subprocess.run([mpy.mpy_cross_bin(), "-o", str(src.with_suffix(".mpy")), str(src)], check=True)
    src.unlink()
    path = os.pathsep.join([".frozen", mpy_dir] + mpy.MPY_PATH[1:])
    out = mpy.run_mp(["-c", "import " + name], heapsize=heap, timeout=600, env={"MICROPYPATH": path})
    if out.returncode:
        raise RuntimeError("gate bench failed:\n" + out.stdout + out.stderr)
    return out.stdout


def run() -> dict:
    with tempfile.TemporaryDirectory() as d:
        image = str(Path(d) / "flash.img")
        _compile(Path(d) / "mpy")
        mpy_dir = str(Path(d) / "mpy")
        _mp(_SETUP, image, "512k", mpy_dir, "gate_bench_setup")  # (the sync is not what is measured)
        # 128k no longer holds store + event log + gate + their bytecode since the allowlist grew
        # (docs/virtual-board.md, "Heap"); the figures are per decision, so a larger heap changes
        # none of them, and the free heap at boot is reported for that heap size.
        stdout = _mp(_CODE, image, HEAP, mpy_dir, "gate_bench")
        pin_out = _mp(_PIN, image, HEAP, mpy_dir, "gate_bench_pin")
    line = [x for x in stdout.splitlines() if x.startswith("BENCH ")]
    r = json.loads(line[0][6:].replace("'", '"'))
    pl = [x for x in pin_out.splitlines() if x.startswith("BENCH ")]
    r.update(json.loads(pl[0][6:].replace("'", '"')))
    return {
        "gate.decision_heap_bytes": metric(r["heap_other"], "bytes",
                                           "0 from card held to relay on, outside the event write (sum over %d grants)" % N),
        "gate.event_write_heap_bytes": metric(r["heap_event"], "bytes", "the event write itself (open/write/close)"),
        "gate.flash_writes_per_decision": metric(round(r["writes"], 2), "blocks",
                                                 "block programs per grant (LittleFS stand-in, %d grants)" % N),
        "gate.flash_erases_per_decision": metric(round(r["erases"], 3), "blocks", "block erases per grant"),
        "gate.flash_bytes_per_decision": metric(round(r["bytes"], 1), "bytes", "bytes programmed per grant"),
        "gate.flash_writes_per_pin_decision": metric(round(r["pin_writes"], 2), "blocks",
                                                     "PIN grant: try saved before the check, reset after, event"),
        "gate.lockout_save_flash_writes": metric(r["lock_writes"], "blocks", "one lockout save (temp + rename)"),
        "gate.decision_us_unix": metric(r["us"], "us", "unix port, informational"),
        "gate.heap_free_after_boot_" + HEAP: metric(r["free"], "bytes", "store + event log + gate up, -X heapsize=" + HEAP),
        "events.capacity": metric(r["capacity"], "events", "unacknowledged events kept on flash"),
    }
