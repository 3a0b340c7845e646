# Test kit for the gate (MicroPython): a dict-backed allowlist double with the store's
# lookup(key8, rec16), the real Keyer, EventLog and Lockouts on the flash stand-in, and a driver
# that presents cards to the state machine poll by poll at explicit tick values.
import gc
from flashdev import FlashDev, format_and_mount, mount, umount
from gv.allowlist import record as R
from gv import events as E
from gv.gate import core
from gv.gate import signals as S
from gv.gate.clock import Clock
from gv.gate.lockout import Lockouts

from gv.compat import ticks_add

CARD_KEY = bytes(range(16))
PIN_KEY = bytes(range(16, 32))
NATIVE_PERIOD = ticks_add(0, -1) + 1  # 2**62 on the 64-bit unix port
ESP32_PERIOD = 1 << 30  # MicroPython's ticks period on the ESP32 (small-int range)
PERIOD = NATIVE_PERIOD


def wrap(t):
    return t & (PERIOD - 1)


def use_ticks_period(period):
    """Make the gate modules use ticks that wrap at `period` (the ESP32's 2**30 on the unix port,
    whose own ticks wrap at 2**62), so wrap-around timelines are tested as the board sees them."""
    global PERIOD
    PERIOD = period
    half = period // 2

    def t_add(t, d):
        return (t + d) & (period - 1)

    def t_diff(a, b):
        return ((a - b + half) & (period - 1)) - half

    import sys

    for name in ("gv.gate.core", "gv.gate.lockout", "gv.gate.window", "gv.gate.clock",
                 "gv.drivers.outputs", "gv.gate.runner"):
        m = sys.modules.get(name)  # the ones this test loaded (import the rest before calling)
        if m is None:
            continue
        if hasattr(m, "ticks_add"):
            m.ticks_add = t_add
        if hasattr(m, "ticks_diff"):
            m.ticks_diff = t_diff


class DictAllowlist:
    def __init__(self):
        self.recs = {}
        self.lookups = 0

    def lookup(self, key8, rec16):
        self.lookups += 1
        r = self.recs.get(bytes(key8))
        if r is None:
            return False
        rec16[:] = r
        return True


_DEV = []


def shared_dev():
    """One flash stand-in per process, reformatted for each Kit (a fresh device per Kit would
    pile up in a 128k heap)."""
    if not _DEV:
        _DEV.append(FlashDev(blocks=64))
    umount()
    format_and_mount(_DEV[0])
    return _DEV[0]


class Kit:
    def __init__(self, cfg=None, now=0, dev=None):
        if dev is None:
            dev = shared_dev()
        self.dev = dev
        self.keyer = R.Keyer(CARD_KEY, PIN_KEY)
        self.al = DictAllowlist()
        self.cfg = cfg or {}
        self.now = wrap(now)
        self.boot()

    def boot(self, al=None):
        """A (re)boot: fresh RAM objects over the same flash; the ticks origin is whatever now is."""
        self.ev = E.EventLog("/flash/ev")
        self.lk = Lockouts("/flash/lock")  # the Gate sets its tries and lengths from the config
        self.clock = Clock(self.now)
        self.gate = core.Gate(self.cfg, al or self.al, self.keyer, self.ev, self.lk, self.clock)
        self.lk.load(self.now)

    def reboot(self):
        umount()
        mount(self.dev)
        self.boot()

    def power_cycle(self):
        """After a power cut: everything from before the cut (unmount, files a failed write left
        open and their finalizers) meets dead flash; then power returns and the reader boots."""
        umount()
        gc.collect()
        self.dev.restore()
        mount(self.dev)
        self.boot()

    def add(self, uid, status=R.ACTIVE, flags=0, vf=R.NO_START, vu=R.NO_END, pin=None):
        k = bytearray(8)
        self.keyer.uid_key(uid, len(uid), k)
        ver = self.keyer.pin_verifier(uid, len(uid), pin) if pin else b"\x00\x00\x00"
        self.al.recs[bytes(k)] = R.pack(bytes(k), status, flags, vf, vu, ver)
        return bytes(k)

    def real_allowlist(self, records):
        """The real gv.allowlist.store.Allowlist on this flash, holding records [(uid, status,
        flags, pin)], installed in the gate. Returns it (apply further deltas to it)."""
        from gv.allowlist.store import Allowlist
        al = Allowlist("/flash/al", self.dev).open()
        al.apply_delta(al.version, al.version + 1, self.records(records))
        self.gate.allowlist = al
        return al

    def records(self, records):
        out = []
        for uid, status, flags, pin in records:
            k = self.key8(uid)
            ver = self.keyer.pin_verifier(uid, len(uid), pin) if pin else b"\x00\x00\x00"
            out.append((bytes(k), R.pack(bytes(k), status, flags, R.NO_START, R.NO_END, ver)))
        out.sort()
        return out

    def key8(self, uid):
        k = bytearray(8)
        self.keyer.uid_key(uid, len(uid), k)
        return k

    # -- time and inputs --
    def advance(self, ms):
        self.now = wrap(self.now + ms)

    def poll(self, status, uid=None):
        return self.gate.poll(self.now, status, uid, len(uid) if uid else 0)

    def tick(self):
        return self.gate.tick(self.now)

    def present(self, uid, ms, step=50, leave=True):
        """Hold uid in the field for ms (a poll every step ms), then take it away. Returns the
        signals that were not S_NONE."""
        sigs = []
        t = 0
        while True:
            s = self.poll(core.ONE_CARD, uid)
            if s:
                sigs.append(s)
            s = self.tick()
            if s:
                sigs.append(s)
            if t >= ms:
                break
            self.advance(step)
            t += step
        if leave:
            sigs += self.away(step)
        return sigs

    def away(self, step=50, polls=3):
        sigs = []
        for _ in range(polls):
            self.advance(step)
            s = self.poll(core.NO_CARD)
            if s:
                sigs.append(s)
            s = self.tick()
            if s:
                sigs.append(s)
        return sigs

    def wait(self, ms, step=100):
        sigs = []
        for _ in range(ms // step):
            self.advance(step)
            s = self.poll(core.NO_CARD)
            if s:
                sigs.append(s)
            s = self.tick()
            if s:
                sigs.append(s)
        return sigs

    def keys(self, text, step=300):
        sigs = []
        for ch in text:
            self.advance(step)
            s = self.gate.key(self.now, ch)
            if s:
                sigs.append(s)
        return sigs

    def try_pin(self, uid, pin):
        """Present uid, type pin and '#' if a PIN is asked for, take the card away; returns the
        last signal."""
        sigs = self.present(uid, 600)
        if sigs == [S.S_PIN_PROMPT]:
            sigs += self.keys(pin + "#")
            self.away()
        return sigs[-1]

    def events(self):
        return [E.unpack(b) for _, b in self.ev.pending(200)]

    def decisions(self):
        return [(d["kind"], d["result"], d["reason"]) for d in self.events() if d["kind"] != E.K_BOOT]
