# The reader's side of a full flash and of live health (issues 18.4, 18.5, 14.5), on the real
# Allowlist over the flash stand-in: a rebuild the flash cannot hold is refused with "flash full",
# the reader backs off on an exponential, bounded, jittered schedule without touching the flash
# again, says how much it needs and how much is free, and asks again when the wait is over or as
# soon as there is room. HEALTH reports go out on change and carry the memory figures.
import asyncio
import gc
import os
import time

import flashdev
from gv import memory
from gv.allowlist.store import Allowlist
from gv.compat import ticks_diff, ticks_ms
from gv.config import Config
from gv.sync import engine as E
from gv.sync import protocol as P
from gv.sync.engine import Sync
from mpt import eq, tmpdir
from test_sync_engine import CFG, TOPIC, Host, rec

HEAPSIZE = "512k"


class PubLink:  # an MQTT client stand-in that records what the engine publishes
    connected = True

    def __init__(self):
        self.subs = []
        self.out = []

    def subscribe(self, t):
        self.subs.append(t)

    async def publish(self, topic, msg, qos=0, retain=False, retry=True):
        self.out.append((topic, msg))
        return True

    def types(self):
        return [m[1] if t.endswith("out") or t.endswith("hello") else t for t, m in self.out]


def setup():
    dev = flashdev.FlashDev(blocks=128)
    flashdev.format_and_mount(dev, "/flash")
    al = Allowlist("/flash/al", dev).open()
    link = PubLink()
    s = Sync(Config(CFG), al, client=link)
    asyncio.run(s._on_connect())
    return dev, al, s, link


def fill(path="/flash/junk"):
    """Fill the filesystem until LittleFS says ENOSPC (a reader whose flash was filled)."""
    buf = bytes(4096)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(buf)
                f.flush()
        except OSError:
            pass


def snap(h, count, o, n=100, version=7):
    n = min(n, count - o)
    data = b"".join(rec(i) for i in range(o, o + n))
    return h.send(P.T_SNAP, P.snap_body(version, version, count, o, n, data))


def test_full_flash_refuses_backs_off_and_resumes_when_there_is_room():
    dev, al, s, link = setup()
    try:
        h = Host(s)
        h.send(P.T_DELTA, P.delta_body(1, 0, 1, [rec(1)]))
        eq(al.version, 1)
        s.retry_ms = (200, 800)
        fill()
        recs = 3000
        o = 0
        while not s.rejected and o < recs:  # the first shard page that reaches the flash fails
            snap(h, recs, o)
            o += 100
        eq(s.rejected.get(P.E_FULL), 1, (o, s.rejected, s.last_error))
        eq(s.rejected.get(P.E_STORE), None)
        eq(s.refusals, 1)
        wait = ticks_diff(s._retry_at, ticks_ms())
        eq(0 < wait <= 200, True, wait)
        # what it says: flash full, how much it needs, how much is free (not a wrapped count)
        hb = P.parse_health(s._health_body(s._health_bits()))
        eq(hb["health"] & P.H_FULL, P.H_FULL)
        eq(hb["need_flash"] > hb["free_flash"], True, hb)
        eq(hb["need_flash"] >= 3000 * 13, True, hb)
        eq(hb["flash_size"], 128 * 4096)
        eq(hb["free_flash"] <= hb["flash_size"], True, hb)
        # the rest of the host's window is refused without one flash write
        dev.reset_counters()
        for o in range(o, o + 700, 100):
            snap(h, recs, o)
        eq(s.rejected.get(P.E_FULL), 8)
        eq((dev.writes, dev.erases), (0, 0))
        # the gate keeps deciding on the last good version
        out = bytearray(16)
        eq((al.version, al.lookup(rec(1)[:8], out)), (1, True))
        # it does not ask again (nor re-HELLO for want of an answer) before the wait is over
        asyncio.run(s._send_owed())
        eq(s._want_sync, False)
        eq([m for t, m in link.out if m[1] == P.T_SYNC], [])
        # nothing freed: when a wait is over it waits longer (200, 400 ms) without a word; at the
        # longest wait (800 ms) it asks anyway
        syncs = []
        t0 = ticks_ms()
        while not syncs and ticks_diff(ticks_ms(), t0) < 3000:
            time.sleep_ms(20)
            asyncio.run(s._send_owed())
            syncs = [m for t, m in link.out if m[1] == P.T_SYNC]
        eq(len(syncs), 1)
        eq(s.refusals, 3)
        eq(ticks_diff(ticks_ms(), t0) >= 100 + 200 + 400, True)  # the lower halves of three waits
        eq(s._retry_at, None)
        # refused again (the host answers the SYNC from where the reader says): the wait stays
        # bounded at the longest
        o = s._state()[2]
        while s.refusals < 4 and o < recs:
            snap(h, recs, o)
            o += 100
        eq(s.refusals, 4, (s.rejected, s.last_error))
        for _ in range(20):
            s._refused(3000)
            wait = ticks_diff(s._retry_at, ticks_ms())
            eq(400 - 5 <= wait <= 800, True, wait)
        # room again (the junk removed): it asks at its next look, well before the wait is over
        os.remove("/flash/junk")
        s.retry_ms = (60000, 60000)
        s._refused(3000)
        s._room_at = ticks_ms() - E._ROOM_MS - 1
        s._back_off_due(ticks_ms())
        eq((s._retry_at, s._want_sync), (None, True))
        for o in range(s._state()[2], 3000, 100):
            snap(h, recs, o)
        eq((al.version, al.count, al.health), (7, 3000, "ok"), (s.rejected, s.last_error))
        eq((s.refusals, s.need_flash), (0, 0))
        eq(s._health_bits() & P.H_FULL, 0)
    finally:
        flashdev.umount("/flash")


class _WrappedOs:  # statvfs as MicroPython's LittleFS gave it on a full flash
    def __init__(self, bfree):
        self.bfree = bfree

    def statvfs(self, path):
        return (4096, 4096, 512, self.bfree, self.bfree, 0, 0, 0, 0, 255)

    urandom = staticmethod(os.urandom)


def test_free_flash_is_clamped_to_the_partition():
    class Al:
        root = "/"

    keep = E.os
    try:
        E.os = _WrappedOs(2 ** 32 - 20)
        eq(E._flash(Al()), (0, 512 * 4096))
        E.os = _WrappedOs(100)
        eq(E._flash(Al()), (100 * 4096, 512 * 4096))
    finally:
        E.os = keep


def test_health_report_on_change_periodic_and_memory_figures():
    dev, al, s, link = setup()
    try:
        bits = [P.H_CLOCK]
        s.health = lambda: bits[0]
        memory.record(P.M_BOOT)
        asyncio.run(s._send_owed())
        eq([m[1] for t, m in link.out if t != s.t_status], [P.T_HELLO, P.T_HEALTH])
        hmsg = link.out[-1][1]
        typ, nonce, ctr, body = P.unseal(P.Key(bytes(range(32)), "gate-01"), P.DIR_READER, hmsg)
        hb = P.parse_health(body)
        eq(hb["health"] & P.H_CLOCK, P.H_CLOCK)
        eq(sorted(hb["mem"]), ["boot", "now", "tls"])
        gc_free, gc_big, idf_free, idf_big = hb["mem"]["now"]
        eq(0 < gc_big <= gc_free, True, hb["mem"])
        eq((idf_free, idf_big), (P.UNKNOWN, P.UNKNOWN))  # no ESP-IDF heap on the unix port
        # nothing changed: nothing sent; a change: sent at once
        n = len(link.out)
        asyncio.run(s._send_owed())
        eq(len(link.out), n)
        bits[0] = 0
        asyncio.run(s._send_owed())
        eq(len(link.out), n + 1)
        eq(P.parse_health(P.unseal(s.key, P.DIR_READER, link.out[-1][1])[3])["health"], 0)
        # periodic: once HEALTH_S has passed without a change
        s._h_at = ticks_ms() - E._HEALTH_MS - 1
        asyncio.run(s._send_owed())
        eq(len(link.out), n + 2)
        # the rebuild's low point is recorded as it goes
        h = Host(s)
        recs = 200
        snap(h, recs, 0)
        snap(h, recs, 100)
        eq(al.version, 7)
        eq(P.M_REBUILD in memory.stages, True)
    finally:
        flashdev.umount("/flash")


def test_tls_waits_for_esp_idf_heap_and_memory_errors_survive_a_reboot():
    keep = memory._idf_info
    try:
        eq(memory.tls_room(), True)  # unknown (unix port): never held back
        memory._idf_info = lambda kind: [(100000, 30000, 12000, 9000), (20000, 9000, 8000, 1000)]
        eq(memory.idf(), (39000, 12000))
        # no trial allocations where a failed one would grow the GC heap out of the ESP-IDF one
        eq(memory.gc_largest(), P.UNKNOWN)
        before = memory.tls_deferred
        eq(memory.tls_room(), False)
        eq(memory.tls_deferred, before + 1)
        memory._idf_info = lambda kind: [(200000, 60000, 30000, 20000)]
        eq(memory.tls_room(), True)
    finally:
        memory._idf_info = keep
    path = tmpdir() + "/memerr"
    memory.errors = 0
    memory.load(path)
    eq(memory.errors, 0)
    memory.note_error("sync apply")
    memory.note_error("gate", persist=False)
    memory.note_error("app")
    memory.errors, memory.last_error = 0, ""  # the reboot
    eq(memory.load(path), 3)  # the next write keeps the count of unpersisted ones too
    eq(memory.last_error, "app")
    memory._path = None
    # a reader that had a MemoryError says so in its health bits
    dev, al, s, link = setup()
    try:
        eq(s._health_bits() & P.H_MEMORY, P.H_MEMORY)
        memory.errors = 0
        memory.tls_deferred = 0
        eq(s._health_bits() & P.H_MEMORY, 0)
    finally:
        flashdev.umount("/flash")


def test_a_memory_error_in_the_gate_keeps_the_door_shut_and_is_counted_across_a_reboot():
    from test_gate_runner import A, Rig, _Broken

    path = tmpdir() + "/memerr-gate"
    memory.errors = 0
    memory.load(path)
    rig = Rig()

    class NoHeap(_Broken):
        def lookup(self, *a):
            raise MemoryError("memory allocation failed")

    rig.runner.gate.allowlist = NoHeap(rig.kit.al)
    rig.pn.field = [A]
    rig.run(1000)
    eq(rig.relay_on(), False)
    eq(rig.relay_closed_after_seq, [])
    eq(memory.errors >= 1, True)
    n = memory.errors
    memory.errors, memory.last_error = 0, ""  # the reboot
    eq(memory.load(path), n)
    eq(memory.last_error, "gate")
    memory._path = None
    memory.errors = 0


def test_no_tls_connect_the_esp_idf_heap_cannot_hold():
    # the link's own check before a TLS connect: no socket is even opened, the attempt fails
    # (its backoff applies) and the deferral is counted for the health report
    from gv.sync.mqtt import MQTTClient, MQTTError

    keep = memory._idf_info
    memory.tls_deferred = 0
    try:
        memory._idf_info = lambda kind: [(60000, 20000, 9000, 5000)]
        c = MQTTClient("gate-01", "127.0.0.1", 1, ssl=object())
        c.before_tls = memory.tls_room
        try:
            asyncio.run(c._open())
            raise AssertionError("connected without heap for the handshake")
        except MQTTError as e:
            eq("ESP-IDF heap" in str(e), True, e)
        eq(memory.tls_deferred, 1)
        # a link without TLS is never held back for it
        c2 = MQTTClient("gate-01", "127.0.0.1", 1, connect_timeout_ms=500)
        c2.before_tls = memory.tls_room
        try:
            asyncio.run(c2._open())
        except MQTTError as e:
            raise AssertionError("plain link held back: %s" % e)
        except OSError:
            pass  # nothing listens on port 1: the connect itself was tried
        eq(memory.tls_deferred, 1)
    finally:
        memory._idf_info = keep
        memory.tls_deferred = 0


class _Pins:  # a stand-in `machine`: what the app's last resort drives
    Pin = None
    driven = []
    resets = 0

    class WDT:
        def __init__(self, timeout=0):
            pass

        def feed(self):
            pass


class _Pin:
    OUT = 1
    IN = 0

    def __init__(self, pin, mode=None, value=None):
        _Pins.driven.append((pin, value))


class _Reset(Exception):
    pass


def _reset():
    _Pins.resets += 1
    raise _Reset()


def test_a_memory_error_anywhere_in_the_app_shuts_the_door_counts_and_reboots():
    import sys

    _Pins.Pin = _Pin
    _Pins.reset = staticmethod(_reset)
    keep = sys.modules.get("machine")
    sys.modules["machine"] = _Pins
    try:
        from gv import app

        app.machine = _Pins
        app.FATAL_PAUSE_MS = 0
        app.FATAL_PATH = tmpdir() + "/fatal.json"  # not the unix port's own root
        path = tmpdir() + "/memerr-app"
        memory.errors = 0
        memory.load(path)

        class Cfg:
            pass

        board = {"relay": {"pin": 23, "active_high": False}}
        app.C.load_board = lambda: board
        app.C.load = lambda: Cfg()

        def no_heap(b, c):
            raise MemoryError("memory allocation failed, allocating 4096 bytes")

        app.Reader = no_heap
        try:
            app.main()
            raise AssertionError("no reboot")
        except _Reset:
            pass
        eq(_Pins.driven, [(23, 1)])  # active-low relay: driven to its off level
        eq(_Pins.resets, 1)
        memory.errors = 0  # the reboot
        eq(memory.load(path), 1)
        eq(memory.last_error, "app")
    finally:
        memory._path = None
        memory.errors = 0
        if keep is None:
            del sys.modules["machine"]
        else:
            sys.modules["machine"] = keep
