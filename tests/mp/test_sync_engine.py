# The reader's sync engine on the real Allowlist (flash stand-in), fed sealed messages directly:
# order, duplicates, gaps, replays, stale sessions, forgeries, rebuild resume, and a seeded
# 10,000-payload fuzz that must leave the reader running with nothing applied. (The MQTT link
# is replaced by a stand-in that only records subscriptions: the link itself is proven against
# a real broker in tests/test_sync_e2e.py.)
import asyncio
import gc
import os
import random

import flashdev
from gv.allowlist.store import Allowlist
from gv.config import Config
from gv.sync import protocol as P
from gv.sync.engine import Sync
from mpt import eq

HEAPSIZE = "512k"  # modules compiled from source fragment the heap; the 128k figure is the bench's (.mpy)
SECRET = bytes(range(32))
CFG = {"reader_id": "gate-01", "site": "site-a", "secret": SECRET.hex(),
       "site_keys": {"card": "00" * 16, "pin": "11" * 16}, "broker": {}}
HOST = P.Key(SECRET, "gate-01")
TOPIC = "gv/site-a/gate-01/in"


class Link:  # the engine's view of an MQTT client, without a network
    connected = False

    def __init__(self):
        self.subs = []

    def subscribe(self, t):
        self.subs.append(t)


def rec(i, status=1):
    k = bytes([i >> 8, i & 255, 1, 2, 3, 4, 5, 6])
    return k + bytes([status, 0, 0, 0xFF, 0xFF, 0, 0, 0])


def setup(root="/flash"):
    dev = flashdev.FlashDev(blocks=128)
    flashdev.format_and_mount(dev, root)
    al = Allowlist(root + "/al", dev).open()
    s = Sync(Config(CFG), al, client=Link())
    asyncio.run(s._on_connect())
    return dev, al, s


class Host:
    def __init__(self, sync, key=HOST):
        self.sync, self.key, self.ctr = sync, key, 100

    def msg(self, typ, body, nonce=None, ctr=None):
        if ctr is None:
            self.ctr += 1
            ctr = self.ctr
        return P.seal(self.key, P.DIR_HOST, typ, nonce or self.sync.nonce, ctr, body)

    def send(self, typ, body, **kw):
        m = self.msg(typ, body, **kw)
        self.sync._on_message(TOPIC, m)
        return m


def total_rejected(s):
    return sum(s.rejected.values())


def test_deltas_in_order_duplicates_gaps():
    dev, al, s = setup()
    try:
        h = Host(s)
        h.send(P.T_DELTA, P.delta_body(1, 0, 1, [rec(1), rec(2)]))
        eq(al.version, 1)
        eq(s._want_ack, True)
        out = bytearray(16)
        eq(al.lookup(rec(2)[:8], out), True)
        h.send(P.T_DELTA, P.delta_body(2, 1, 2, [(rec(2)[:8], None)]))
        eq((al.version, al.lookup(rec(2)[:8], out)), (2, False))
        h.send(P.T_DELTA, P.delta_body(2, 1, 2, [rec(9)]))  # a duplicate: ignored, acked
        eq((al.version, al.lookup(rec(9)[:8], out)), (2, False))
        s._want_sync = False
        h.send(P.T_DELTA, P.delta_body(5, 4, 5, [rec(5)]))  # a gap: not applied, ask
        eq((al.version, s._want_sync), (2, True))
        eq(total_rejected(s), 0)
    finally:
        flashdev.umount("/flash")


def test_replayed_stale_forged_tampered_are_rejected():
    dev, al, s = setup()
    try:
        h = Host(s)
        m = h.send(P.T_DELTA, P.delta_body(1, 0, 1, [rec(1)]))
        eq(al.version, 1)
        s._on_message(TOPIC, m)  # replay in the same session
        eq(s.rejected.get(P.E_REPLAY), 1)
        old = h.msg(P.T_DELTA, P.delta_body(2, 1, 2, [rec(2)]))
        asyncio.run(s._on_connect())  # reconnect: a new session
        s._on_message(TOPIC, old)
        eq(s.rejected.get(P.E_SESSION), 1)
        thief = Host(s, P.Key(bytes(32), "gate-01"))  # someone else's secret
        thief.send(P.T_DELTA, P.delta_body(2, 1, 2, [rec(3)]))
        other = Host(s, P.Key(SECRET, "gate-02"))  # right secret, other reader's id
        other.send(P.T_DELTA, P.delta_body(2, 1, 2, [rec(3)]))
        t = bytearray(h.msg(P.T_DELTA, P.delta_body(2, 1, 2, [rec(4)])))
        t[P.HDR + 20] ^= 0x01
        s._on_message(TOPIC, bytes(t))
        eq(s.rejected.get(P.E_MAC), 3)
        s._on_message("gv/site-a/gate-02/in", h.msg(P.T_DELTA, P.delta_body(2, 1, 2, [rec(5)])))
        eq(s.rejected.get(P.E_TYPE), 1)
        eq(al.version, 1)
        eq(len(s._rej) > 0, True)  # reports queued for the host
    finally:
        flashdev.umount("/flash")


def test_rebuild_chunks_resume_after_reboot():
    dev, al, s = setup()
    try:
        h = Host(s)
        recs = [rec(i) for i in range(300)]
        data = b"".join(recs)
        h.send(P.T_SNAP, P.snap_body(7, 7, 300, 0, 100, data[:1600]))
        h.send(P.T_SNAP, P.snap_body(7, 7, 300, 200, 100, data[3200:]))  # skipped a chunk
        eq(s.rejected.get(P.E_ORDER), 1, (s.rejected, s.last_error))
        eq(s._state(), (0, 7, 100))
        h.send(P.T_SNAP, P.snap_body(7, 7, 300, 100, 100, data[1600:3200]))
        # "reboot": a new engine on the reopened store resumes from the durable progress (the
        # old one's buffers go first, as a reboot frees them)
        al = s = h = None
        gc.collect()
        flashdev.umount("/flash")
        flashdev.mount(dev, "/flash")
        al = Allowlist("/flash/al", dev).open()
        s = Sync(Config(CFG), al, client=Link())
        asyncio.run(s._on_connect())
        v, sv, done = s._state()
        eq((v, sv), (0, 7))
        h = Host(s)
        for o in range(done, 300, 100):
            h.send(P.T_SNAP, P.snap_body(7, 7, 300, o, min(100, 300 - o), data[o * 16:o * 16 + 1600]))
        eq((al.version, al.count, s._state()), (7, 300, (7, 0, 0)))
        out = bytearray(16)
        eq(al.lookup(rec(299)[:8], out), True)
        eq(total_rejected(s), 0)
    finally:
        flashdev.umount("/flash")


def test_fuzz_10000_payloads_nothing_applied():
    dev, al, s = setup()
    try:
        h = Host(s)
        h.send(P.T_DELTA, P.delta_body(1, 0, 1, [rec(1)]))
        eq(al.version, 1)
        random.seed(5)
        rng = random
        good = [h.msg(P.T_DELTA, P.delta_body(2, 1, 2, [rec(2)])),
                h.msg(P.T_SNAP, P.snap_body(9, 9, 1, 0, 1, rec(3))),
                h.msg(P.T_CMD, P.cmd_body(P.C_OPEN))]
        before = total_rejected(s)
        n = 10000
        for i in range(n):
            kind = i % 4
            if kind == 0:  # random bytes of any length
                m = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))
            elif kind == 1:  # a genuine message with bits flipped
                m = bytearray(good[i % 3])
                while m == good[i % 3]:  # flips that cancel out would be the genuine message
                    for _ in range(rng.randint(1, 4)):
                        j = rng.randint(0, len(m) - 1)
                        m[j] ^= 1 << rng.randint(0, 7)
            elif kind == 2:  # a plausible header, a random body and MAC
                m = bytes([1, rng.choice((1, 2, 3, 4, 9))]) + s.nonce + bytes(
                    rng.getrandbits(8) for _ in range(8 + rng.randint(16, 60)))
            else:  # genuine messages truncated or extended
                g = good[i % 3]
                m = g[:rng.randint(0, len(g) - 1)] if i & 4 else g + bytes([rng.getrandbits(8)])
            s._on_message(TOPIC, m)
        eq(total_rejected(s) - before, n)
        eq((al.version, al.count, s.commands), (1, 1, 0))
        eq(al.snapshot_progress(), None)
        eq(len(s._rej) <= len(P.ERRORS), True)  # reports are coalesced, not queued per message
    finally:
        flashdev.umount("/flash")


def test_replay_window_takes_interleaved_instances_refuses_old():
    dev, al, s = setup()
    try:
        eq([s._fresh(c) for c in (10, 30, 20, 30, 20)], [True, True, True, False, False])
        for c in range(100, 140):  # push 10, 20, 30 out of the 32-counter window
            s._fresh(c)
        eq([s._fresh(c) for c in (30, 107, 108, 141)], [False, False, False, True])
        asyncio.run(s._on_connect())
        eq(s._fresh(10), True)  # a new session starts a new window (old ones fail the nonce)
    finally:
        flashdev.umount("/flash")


class IdleLink(Link):  # a link that never connects: the engine's own tasks run beside it
    async def run(self):
        while True:
            await asyncio.sleep_ms(1000)


def through_log(blocks):
    """A reader with nothing in place (as on encrypted flash) and a 64-record delta log, its
    engine on a link that never connects: (dev, allowlist, engine, host)."""
    dev = flashdev.FlashDev(blocks=blocks)
    flashdev.format_and_mount(dev, "/flash")
    al = Allowlist("/flash/al", dev, in_place=False, log_records=64).open()
    s = Sync(Config(CFG), al, client=IdleLink())
    asyncio.run(s._on_connect())
    return dev, al, s, Host(s)


def test_a_delta_that_needs_the_log_folded_waits_for_the_compactor_not_the_gate():
    # Not in place (encrypted flash), a small log: a delta that overflows it used to fold the
    # whole log inside the message handler, the gate waiting for every page write. The running
    # engine refuses it as busy without a write, folds the log a step at a time in its
    # compactor, and then asks for it again.
    dev, al, s, h = through_log(128)

    def body(frm, to, first, n):
        return P.delta_body(to, frm, to, [rec(i) for i in range(first, first + n)])

    async def main():
        task = asyncio.create_task(s.run())
        await asyncio.sleep_ms(0)
        eq(al.fold_inline, False)  # the running engine folds the log itself
        h.send(P.T_DELTA, body(0, 1, 0, 30))
        eq((al.version, al._nlog), (1, 30))
        dev.reset_counters()
        h.send(P.T_DELTA, body(1, 2, 30, 40))  # 30 + 40 > 64
        eq((al.version, al._nlog, dev.writes, dev.erases), (1, 30, 0, 0), s.last_error)
        eq((s.rejected.get(P.E_BUSY), s._fold_wait, s._want_sync), (1, True, False))
        # what follows meanwhile waits too: no SYNC whose answer would only wait again, and no
        # HELLO for an answer set aside (a reconnect's HELLO is answered with deltas meanwhile)
        s._asked = 1
        h.send(P.T_DELTA, body(2, 3, 70, 5))
        eq((al.version, s._want_sync, total_rejected(s), s._asked), (1, False, 1, None))
        steps = [0]
        real = al.compact_step

        def counted():
            steps[0] += 1
            return real()
        al.compact_step = counted
        for _ in range(100):  # the compactor looks every second
            if s._want_sync:
                break
            await asyncio.sleep_ms(100)
        eq((s._want_sync, s._fold_wait, al._nlog), (True, False, 0))
        assert steps[0] > 1, steps  # a page write per step, yielding between them
        # the host's answer to the SYNC: the delta again, now taken
        h.send(P.T_DELTA, body(1, 2, 30, 40))
        h.send(P.T_DELTA, body(2, 3, 70, 5))
        eq((al.version, al.count), (3, 75))
        task.cancel()
        await asyncio.sleep_ms(0)

    try:
        asyncio.run(main())
        out = bytearray(16)
        for i in (0, 29, 30, 69, 74):
            eq(al.lookup(rec(i)[:8], out), True, "card %d" % i)
        eq(total_rejected(s), 1)
    finally:
        flashdev.umount("/flash")


def test_a_fold_the_flash_has_no_room_for_backs_off_as_flash_full():
    # The fold rewrites shards before it drops the old ones: on a flash too full for that, the
    # reader does not loop (busy, fold, fail, SYNC, busy...): it backs off and says flash full,
    # as for any update refused for room, and asks again once there is room.
    dev, al, s, h = through_log(64)
    s.retry_ms = (200, 400)
    recs = [rec(i) for i in range(400)]
    for o in range(0, 400, 100):
        h.send(P.T_SNAP, P.snap_body(1, 1, 400, o, 100, b"".join(recs[o:o + 100])))
    h.send(P.T_DELTA, P.delta_body(2, 1, 2, [rec(i, 3) for i in range(0, 300, 10)]))
    eq((al.version, al._nlog), (2, 30))
    # the flash filled with files of a block each, until one is refused (a file cut off by
    # ENOSPC is not kept, and LittleFS's free count is an estimate: fill until it refuses)
    n = 0
    try:
        while True:
            with open("/flash/fill%d" % n, "wb") as f:
                f.write(bytearray(4096))
            n += 1
    except OSError:
        pass
    assert n > 0

    async def main():
        task = asyncio.create_task(s.run())
        await asyncio.sleep_ms(0)
        h.send(P.T_DELTA, P.delta_body(3, 2, 3, [rec(i, 4) for i in range(5, 405, 10)]))
        eq((al.version, s._fold_wait), (2, True), s.last_error)
        for _ in range(60):
            if s._retry_at is not None:
                break
            await asyncio.sleep_ms(100)
        # backing off, flash full said, no SYNC that would fold and fail again
        eq((s._retry_at is not None, s._want_sync, s._fold_wait), (True, False, False),
           (al.health, s.last_error))
        eq(s.rejected.get(P.E_FULL), 1)
        assert al.health.startswith("full"), al.health
        eq(al.version, 2)
        out = bytearray(16)
        eq(al.lookup(rec(10)[:8], out), True)  # the gate still decides on version 2
        eq(out[8], rec(10, 3)[8])
        task.cancel()
        await asyncio.sleep_ms(0)

    try:
        asyncio.run(main())
    finally:
        flashdev.umount("/flash")


def test_wifi_supervisor_is_a_no_op_on_the_unix_port():
    from gv.sync.wifi import WiFi

    w = WiFi("site-wifi", "secret")
    eq(w.available, False)  # no `network` module here: the host's network is up already
    asyncio.run(w.run())  # returns at once instead of supervising
    eq((w.isconnected(), w.joins), (True, 0))
