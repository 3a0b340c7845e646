# Rebuilds (SNAP) under bad chunks, end to end through the sync engine on the real store: a chunk
# that is rejected leaves the rebuild where it was (issue 18: the false grant of a blocked card),
# SNAP data is inflated and checked before a rebuild begins, and every reject says what happened.
import asyncio
import gc
import struct

import flashdev
from gv.allowlist.store import Allowlist
from gv.config import Config
from gv.sync import protocol as P
from gv.sync.engine import Sync
from mpt import eq

HEAPSIZE = "384k"  # the engine and the store compiled from source in the heap, two boots a test (the 128k figure is the bench's, from .mpy)
SECRET = bytes(range(32))
CFG = {"reader_id": "gate-01", "site": "site-a", "secret": SECRET.hex(),
       "site_keys": {"card": "00" * 16, "pin": "11" * 16}, "broker": {}}
HOST = P.Key(SECRET, "gate-01")
TOPIC = "gv/site-a/gate-01/in"
CHUNK = 100  # raw records a SNAP carries (a message is at most 2 KiB)


class Link:  # the engine's view of an MQTT client, without a network
    connected = False

    def subscribe(self, t):
        pass


def key(i):
    return struct.pack(">Q", (i + 1) << 40)  # increasing in i, distinct in the store's 52 bits


def status(i):
    return 3 if i == 4210 else 1  # the host's snapshot: card 4210 blocked, the rest active


def fill(buf, i0, n, corrupt=None):
    """Records i0 .. i0+n-1 of the host's snapshot into buf; corrupt(i, rec) may change one."""
    for j in range(n):
        i = i0 + j
        o = j * 16
        buf[o:o + 8] = key(i)
        buf[o + 8] = status(i)
        buf[o + 9] = 0
        buf[o + 10] = 0
        buf[o + 11] = 0xFF
        buf[o + 12] = 0xFF
        buf[o + 13] = buf[o + 14] = buf[o + 15] = 0
        if corrupt:
            corrupt(i, memoryview(buf)[o:o + 16])
    return memoryview(buf)[:n * 16]


class Reader:
    def __init__(self, dev=None, blocks=160):
        if dev is None:
            dev = flashdev.FlashDev(blocks=blocks)
            flashdev.format_and_mount(dev)
        else:
            flashdev.mount(dev)
        self.dev = dev
        self.al = Allowlist("/flash/al", dev).open()
        self.s = Sync(Config(CFG), self.al, client=Link())
        asyncio.run(self.s._on_connect())
        self.ctr = 100

    def send(self, typ, body):
        self.ctr += 1
        before = sum(self.s.rejected.values())
        self.s._on_message(TOPIC, P.seal(HOST, P.DIR_HOST, typ, self.s.nonce, self.ctr, body))
        return sum(self.s.rejected.values()) == before

    def reboot(self):
        dev = self.dev
        self.al = self.s = None
        gc.collect()
        flashdev.umount()
        self.__init__(dev)


def test_rejected_chunk_leaves_no_record_and_no_false_grant():
    total = 4400  # card 4210 lies in the first shard (4,224 cards): its chunk crosses the boundary
    buf = bytearray(CHUNK * 16)
    r = Reader()
    try:
        def chunk(o, corrupt=None):
            n = min(CHUNK, total - o)
            return P.snap_body(7, 7, total, o, n, fill(buf, o, n, corrupt))

        o = 0
        while o + CHUNK <= 4210:
            assert r.send(P.T_SNAP, chunk(o)), r.s.rejected
            o += CHUNK
        before = r.al.snapshot_progress()

        def bad(i, rec):  # a buggy host: 4210 active, and a status that does not exist later on
            if i == 4210:
                rec[8] = 1
            if i == o + 30:
                rec[8] = 7  # its 31st record: the first 30 complete the first shard

        assert not r.send(P.T_SNAP, chunk(o, bad))
        eq(r.s.rejected, {P.E_MALFORMED: 1})  # bad records are malformed, not a store error
        eq(r.al.snapshot_progress(), before)  # nothing of the chunk was kept
        # the reader reboots and resumes: the host sends from where the reader says it stands
        r.reboot()
        v, sv, so = r.s._state()
        eq(sv, 7)
        assert so <= o, (so, o)
        o = so
        while o < total:
            assert r.send(P.T_SNAP, chunk(o)), (o, r.s.rejected, r.s.last_error)
            o += CHUNK
        eq((r.al.version, r.al.count, r.al.health), (7, total, "ok"))
        out = bytearray(16)
        assert r.al.lookup(key(4210), out)
        eq(out[8] & 7, 3, "card 4210 must stay blocked")
        r.reboot()
        assert r.al.lookup(key(4210), out) and out[8] & 7 == 3
        eq((r.al.version, r.al.health), (7, "ok"))
    finally:
        flashdev.umount()


def test_resend_after_a_rejected_chunk_is_taken_without_a_reboot():
    total = 700
    buf = bytearray(CHUNK * 16)
    r = Reader(blocks=64)
    try:
        assert r.send(P.T_SNAP, P.snap_body(3, 3, total, 0, CHUNK, fill(buf, 0, CHUNK)))

        def bad(i, rec):
            if i == CHUNK + 30:
                rec[8] = 0x17  # a flag the store cannot keep, at the chunk's 31st record
        assert not r.send(P.T_SNAP, P.snap_body(3, 3, total, CHUNK, CHUNK, fill(buf, CHUNK, CHUNK, bad)))
        o = CHUNK
        while o < total:
            n = min(CHUNK, total - o)
            assert r.send(P.T_SNAP, P.snap_body(3, 3, total, o, n, fill(buf, o, n))), r.s.rejected
            o += n
        eq((r.al.version, r.al.count, r.al.health), (3, total, "ok"))
    finally:
        flashdev.umount()


def adler32(d):
    a, b = 1, 0
    for x in d:
        a = (a + x) % 65521
        b = (b + a) % 65521
    return b << 16 | a


def zlib_stored(d):
    """d as a zlib stream of one stored block (what a host before the flag was retired sent)."""
    return (b"\x28\x15\x01" + struct.pack("<HH", len(d), len(d) ^ 0xFFFF) + bytes(d)
            + struct.pack(">I", adler32(d)))


def test_snap_data_checked_before_a_rebuild_begins_and_reasons_say_why():
    buf = bytearray(CHUNK * 16)
    r = Reader(blocks=64)
    try:
        good = bytes(fill(buf, 0, 50))
        # zlib chunks are retired (docs/protocol.md): a valid one is refused like a bad one,
        # and begins nothing
        assert not r.send(P.T_SNAP, P.snap_body(7, 7, 300, 0, 50, zlib_stored(good), P.F_ZLIB))
        eq((r.s.rejected, r.al.snapshot_progress(), r.s._state()), ({P.E_MALFORMED: 1}, None, (0, 0, 0)))
        assert r.send(P.T_SNAP, P.snap_body(7, 7, 300, 0, 50, good)), (r.s.rejected, r.s.last_error)
        prog = r.al.snapshot_progress()
        eq(r.s._state(), (0, 7, 50))
        z = bytearray(zlib_stored(good))
        z[40] ^= 0x10
        unsorted = good[16:32] + good[0:16]
        bad_status = bytearray(good[:32])
        bad_status[8] = 0
        cases = [
            (P.snap_body(8, 8, 300, 0, 50, bytes(z), P.F_ZLIB), P.E_MALFORMED),
            (P.snap_body(8, 8, 300, 0, 50, b"\x78\x9c junk", P.F_ZLIB), P.E_MALFORMED),
            (P.snap_body(7, 7, 300, 50, 50, zlib_stored(bytes(fill(bytearray(CHUNK * 16), 50, 50))), P.F_ZLIB), P.E_MALFORMED),
            (P.snap_body(7, 7, 300, 50, P.SNAP_MAX + 1, bytes(16 * (P.SNAP_MAX + 1))), P.E_MALFORMED),
            (P.snap_body(8, 8, 300, 0, 2, unsorted), P.E_MALFORMED),
            (P.snap_body(8, 8, 300, 0, 2, bytes(bad_status)), P.E_MALFORMED),
            (P.snap_body(8, 8, 0xFFFFFFFF, 0, 2, good[:32]), P.E_MALFORMED),  # absurd count
            (P.snap_body(8, 0, 300, 0, 2, good[:32]), P.E_MALFORMED),  # version 0
            (P.snap_body(7, 7, 300, 50, 0, b"x"), P.E_MALFORMED),  # no records, but data
            (P.snap_body(7, 7, 300, 50, 200, bytes(16 * 200)), P.E_MALFORMED),  # past a chunk
            (P.snap_body(7, 7, 300, 50, 2, good[:32]), P.E_MALFORMED),  # keys go back
        ]
        for i, (body, reason) in enumerate(cases):
            r.s.rejected = {}
            assert not r.send(P.T_SNAP, body), i
            eq(r.s.rejected, {reason: 1}, (i, r.s.last_error))
            eq((r.al.snapshot_progress(), r.s._state()), (prog, (0, 7, 50)), i)  # nothing began or moved
        # the rebuild in progress goes on from where it stood
        o = 50
        while o < 300:
            n = min(CHUNK, 300 - o)
            assert r.send(P.T_SNAP, P.snap_body(7, 7, 300, o, n, fill(buf, o, n))), (o, r.s.rejected)
            o += n
        eq((r.al.version, r.al.count, r.al.health), (7, 300, "ok"))
        assert r.send(P.T_SNAP, P.snap_body(9, 9, 50, 0, 50, good)), r.s.rejected
        eq((r.al.version, r.al.count), (9, 50))
        # a delta with a record that cannot be: malformed, nothing applied
        r.s.rejected = {}
        bad = bytearray(fill(buf, 400, 1))
        bad[8] = 6
        assert not r.send(P.T_DELTA, P.delta_body(10, 9, 10, [bytes(bad)]))
        eq((r.s.rejected, r.al.version), ({P.E_MALFORMED: 1}, 9))
        assert r.send(P.T_DELTA, P.delta_body(10, 9, 10, [bytes(fill(buf, 400, 1))]))
        eq(r.al.version, 10)
    finally:
        flashdev.umount()


def test_busy_before_the_store_keeps_the_rebuild_a_flash_error_in_it_drops_to_durable():
    total = 1200  # one shard (4,224 cards): S names no finished shard until the end
    buf = bytearray(CHUNK * 16)
    r = Reader(blocks=64)
    try:
        def chunk(o):
            n = min(CHUNK, total - o)
            return P.snap_body(5, 5, total, o, n, fill(buf, o, n))

        for o in range(0, 300, CHUNK):
            assert r.send(P.T_SNAP, chunk(o))
        eq(r.s._state(), (0, 5, 300))
        # memory short before the store is reached: busy, and the rebuild stands where it was
        import gv.sync.engine as E
        real = E.check_records

        def short(*a):
            raise MemoryError
        E.check_records = short
        try:
            assert not r.send(P.T_SNAP, chunk(300))
        finally:
            E.check_records = real
        eq((r.s.rejected, r.s._state()), ({P.E_BUSY: 1}, (0, 5, 300)))
        assert r.send(P.T_SNAP, chunk(300)), r.s.rejected  # taken at once: no out-of-order round
        # the flash fails inside the store: the rebuild drops back to what is durable (nothing
        # yet: S holds no finished shard) and the host's resend from there completes it
        assert r.send(P.T_SNAP, chunk(400))
        r.dev.cut_power_after(0)  # chunk 500 fills the shard's second page: a flash write
        r.s.rejected = {}
        assert not r.send(P.T_SNAP, chunk(500))
        r.dev.restore()
        eq(r.s.rejected, {P.E_STORE: 1})
        v, sv, so = r.s._state()
        eq((sv, so), (5, 0))
        r.reboot()  # the file system after a device error waits for a reboot (test_allowlist_snapshot)
        v, sv, so = r.s._state()
        eq((sv, so), (5, 0))
        for o in range(so, total, CHUNK):
            assert r.send(P.T_SNAP, chunk(o)), (o, r.s.rejected, r.s.last_error)
        eq((r.al.version, r.al.count), (5, total))
        r.reboot()
        eq((r.al.version, r.al.count, r.al.health), (5, total, "ok"))
    finally:
        flashdev.umount()


def p13(recs):
    """16-byte records as the 13-byte flash records the host sends (F_P13)."""
    from gv.allowlist.pages import pack13
    n = len(recs) // 16
    out = bytearray(n * P.P13)
    for j in range(n):
        pack13(recs, 16 * j, out, P.P13 * j)
    return out


def test_flash_record_chunks_build_the_same_store_and_bad_ones_are_refused():
    total = 4400  # past a shard: chunks of both forms, one crossing the shard's end
    buf = bytearray(CHUNK * 16)
    r = Reader()
    try:
        good = p13(fill(buf, 0, 2))
        bad_status = bytearray(good)
        bad_status[6] = (bad_status[6] & 0xF1) | 6 << 1  # status 6 does not exist
        swapped = good[13:26] + good[0:13]
        for body in (P.snap_body(7, 7, total, 0, 2, bad_status, P.F_P13),
                     P.snap_body(7, 7, total, 0, 2, swapped, P.F_P13),
                     P.snap_body(7, 7, total, 0, 2, good[:25], P.F_P13),  # not 2 records
                     P.snap_body(7, 7, total, 0, P.SNAP_MAX13 + 1,
                                 bytes(P.P13 * (P.SNAP_MAX13 + 1)), P.F_P13)):
            r.s.rejected = {}
            assert not r.send(P.T_SNAP, body)
            eq((r.s.rejected, r.al.snapshot_progress()), ({P.E_MALFORMED: 1}, None))
        o = 0
        while o < total:
            n = min(CHUNK, total - o)
            recs = fill(buf, o, n)
            if (o // CHUNK) % 2:
                body = P.snap_body(7, 7, total, o, n, p13(recs), P.F_P13)
            else:
                body = P.snap_body(7, 7, total, o, n, recs)
            assert r.send(P.T_SNAP, body), (o, r.s.rejected, r.s.last_error)
            o += n
        eq((r.al.version, r.al.count, r.al.health), (7, total, "ok"))
        out = bytearray(16)
        for i in (0, 150, 4210, 4223, 4224, total - 1):
            assert r.al.lookup(key(i), out), i
            eq(bytes(out), bytes(fill(buf, i, 1)), i)
        r.reboot()
        assert r.al.lookup(key(4210), out) and out[8] & 7 == 3
    finally:
        flashdev.umount()
