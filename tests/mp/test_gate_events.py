# The event ring (gv.events): codec vectors, pending/ack, reboot recovery, overflow with an
# 'events dropped' event, and a power cut at every block write of appends and acks.
import gc
import json
import os
import mpt
from flashdev import FlashDev, format_and_mount, mount, umount
from gv import events as E

TIMEOUT = 300


def _vectors():
    with open("docs/vectors/events.json") as f:
        return json.load(f)


def test_vectors_pack_and_unpack():
    v = _vectors()
    for c in v["events"]:
        uid = bytes.fromhex(c["uid"])
        flags = (E.F_CLOCK_SET if c["clock_set"] else 0) | (E.F_FLOOR if c["floor"] else 0)
        got = E.pack(c["seq"], c["kind"], c["result"], c["reason"], uid, len(uid), c["t"], flags, c["aux"])
        mpt.eq(got.hex(), c["hex"], "seq %d" % c["seq"])
        d = E.unpack(bytes.fromhex(c["hex"]))
        for k in ("seq", "kind", "result", "reason", "t", "clock_set", "floor", "aux"):
            mpt.eq(d[k], c[k], k)
        mpt.eq(d["uid"], uid)  # leading zero bytes are kept
        E.describe(got)
    for c in v["invalid"]:
        mpt.raises(E.EventError, E.unpack, bytes.fromhex(c["hex"]))
    mpt.raises(E.EventError, E.pack, 1, 1, 1, 0, bytes(11), 11, 0)


def _log(dev, **kw):
    return E.EventLog("/flash/ev", **kw)


def test_pending_ack_and_reboot():
    dev = FlashDev(blocks=64)
    format_and_mount(dev)
    log = _log(dev, seg_events=4, max_segments=8)
    uid = memoryview(bytearray(b"\x00\x07\x08\x09"))
    for i in range(10):
        mpt.eq(log.append(E.K_DECISION, E.R_GRANT, E.OK, uid, 4, 1000 + i, True), i + 1)
    p = log.pending(3)
    mpt.eq([s for s, _ in p], [1, 2, 3])
    d = E.unpack(p[0][1])
    mpt.eq((d["uid"], d["t"], d["clock_set"]), (b"\x00\x07\x08\x09", 1000, True))
    log.ack(6)
    mpt.eq([s for s, _ in log.pending(100)], [7, 8, 9, 10])
    mpt.eq(log.pending_count(), 4)
    umount()
    mount(dev)  # reboot: acknowledged stays acknowledged, numbering goes on
    log = _log(dev, seg_events=4, max_segments=8)
    mpt.eq(log.next_seq, 11)
    mpt.eq([s for s, _ in log.pending(100)], [7, 8, 9, 10])
    log.ack(10)
    mpt.eq(log.pending(100), [])
    umount()
    mount(dev)
    log = _log(dev, seg_events=4, max_segments=8)
    mpt.eq(log.next_seq, 11)  # even with every event acknowledged (and its segment gone)
    mpt.eq(log.append(E.K_BOOT, E.R_INFO, E.OK, b"", 0, 0), 11)
    log.ack(10 ** 6)  # an ack past the end acknowledges only what exists
    mpt.eq(log.acked, 11)
    umount()


def test_overflow_drops_oldest_and_says_so():
    dev = FlashDev(blocks=64)
    format_and_mount(dev)
    log = _log(dev, seg_events=4, max_segments=3)
    mpt.eq(log.capacity, 12)
    for i in range(20):
        log.append(E.K_DECISION, E.R_REFUSE, E.UNKNOWN, b"\x01\x02\x03\x04", 4, i)
    assert log.dropped > 0
    log.note_lost()
    evs = [E.unpack(b) for _, b in log.pending(100)]
    drops = [d for d in evs if d["kind"] == E.K_DROPPED]
    assert drops, evs
    seqs = [d["seq"] for d in evs]
    mpt.eq(seqs, sorted(seqs))
    assert len(evs) <= 12
    # Every event lost is counted exactly once, and the newest note carries the total.
    total = log.next_seq - 1
    mpt.eq(len(evs) + log.lost, total)
    mpt.eq(drops[-1]["aux"], log.lost)
    umount()


def _host_upload(log, host, batch=8):
    """What the sync link does when it is back: note the loss, upload, the host acks. The host
    keeps the numbers it received and the largest loss total a note told it ("lost" key)."""
    if log.dropped:
        log.note_lost()
    while True:
        p = log.pending(batch)
        if not p:
            return
        for s, b in p:
            d = E.unpack(b)
            host[s] = 1
            if d["kind"] == E.K_DROPPED:
                host["lost"] = max(host.get("lost", 0), d["aux"])
        log.ack(p[-1][0])
        p = None


def _host_lost(host):
    return host.get("lost", 0)


def _received(host):
    return len(host) - (1 if "lost" in host else 0)


def test_loss_accounting_is_exact_over_ten_rings_and_reboots():
    # 12x a 64-event ring made offline, with reboots in between and host visits: what the host
    # is told it lost equals the sequence numbers it never received, drop notes stay a small
    # part of the ring, and the health bit survives a reboot until the host has heard.
    dev = FlashDev(blocks=96)
    format_and_mount(dev)
    kw = {"seg_events": 4, "max_segments": 16}
    log = _log(dev, **kw)
    host = {}
    uid = b"\x04\x11\x22\x33"
    n = 0
    for round_ in range(4):
        for i in range(192):  # three rings' worth per outage
            log.append(E.K_DECISION, E.R_GRANT, E.OK, uid, 4, n)
            n += 1
        notes = [1 for _, b in log.pending(100) if b[1] == E.K_DROPPED]
        assert len(notes) <= 2, (round_, len(notes))  # one per trip round the ring
        lost = log.lost
        assert log.dropped > 0
        umount()
        mount(dev)  # power cut during the outage: the count and the health bit survive
        log = _log(dev, **kw)
        mpt.eq(log.lost, lost)
        assert log.dropped > 0
        if round_ != 2:  # one outage runs straight into the next one
            _host_upload(log, host)
            missing = (log.next_seq - 1) - _received(host)
            mpt.eq(_host_lost(host), missing, "round %d" % round_)
            mpt.eq(log.dropped, 0)  # the host has heard: the bit clears
            umount()
            mount(dev)
            log = _log(dev, **kw)
            mpt.eq(log.dropped, 0)
    assert n >= 10 * log.capacity
    mpt.eq(_host_lost(host), (log.next_seq - 1) - _received(host))
    umount()


def test_ack_file_of_format_one_still_reads():
    import struct

    dev = FlashDev(blocks=32)
    format_and_mount(dev)
    log = _log(dev, seg_events=4, max_segments=4)
    for i in range(6):
        log.append(E.K_DECISION, E.R_GRANT, E.OK, b"\x01", 1, i)
    with open("/flash/ev/ack", "wb") as f:  # 8 bytes: seq + CRC, as format 1 wrote it
        f.write(struct.pack("<II", 3, E.crc32(struct.pack("<I", 3)) & 0xFFFFFFFF))
    umount()
    mount(dev)
    log = _log(dev, seg_events=4, max_segments=4)
    mpt.eq((log.acked, log.lost, log.dropped), (3, 0, 0))
    mpt.eq([s for s, _ in log.pending(10)], [4, 5, 6])
    umount()


def _scenario(log):
    """Appends and acks; returns the seqs that append() returned and the last ack done."""
    done, acked = [], 0
    for i in range(9):
        done.append(log.append(E.K_DECISION, E.R_GRANT, E.OK, b"\xaa\xbb\xcc\xdd", 4, i))
        if i == 5:
            log.ack(4)
            acked = 4
    return done, acked


def test_power_cut_at_every_write():
    dev = FlashDev(blocks=32)
    format_and_mount(dev)
    log = _log(dev, seg_events=4, max_segments=4)
    log.append(E.K_BOOT, E.R_INFO, E.OK, b"", 0, 0)
    umount()
    image = mpt.tmpdir() + "/ev.img"
    dev.save(image)
    mount(dev)
    start = dev.writes
    _scenario(_log(dev, seg_events=4, max_segments=4))
    total = dev.writes - start
    umount()
    assert total > 10, total
    for n in range(total + 1):
        dev.restore()
        dev.load(image)
        mount(dev)
        dev.cut_power_after(n)
        done, acked = [], 0
        try:
            log = _log(dev, seg_events=4, max_segments=4)
            done, acked = _scenario(log)
        except OSError:
            pass
        umount()
        gc.collect()  # files a failed write left open meet dead flash, as on a real cut
        dev.restore()
        mount(dev)
        log = _log(dev, seg_events=4, max_segments=4)
        got = [s for s, _ in log.pending(100)]
        mpt.eq(got, sorted(got), "order at cut %d" % n)
        for s in done:  # every event append() returned is on flash unless acknowledged
            assert s in got or s <= log.acked, (n, s, got, log.acked)
        assert log.acked >= acked, (n, log.acked, acked)
        mpt.eq(log.corrupt, 0)
        # Numbering never goes back: the next event gets a fresh number.
        assert log.next_seq > max(got + [log.acked]), (n, log.next_seq, got)
        umount()


def test_garbage_in_segments_is_skipped_never_raised():
    import random

    dev = FlashDev(blocks=64)
    format_and_mount(dev)
    log = _log(dev, seg_events=4, max_segments=8)
    for i in range(10):
        log.append(E.K_DECISION, E.R_GRANT, E.OK, b"\x01\x02\x03\x04", 4, i)
    random.seed(7)
    names = sorted(os.listdir("/flash/ev"))
    seg = "/flash/ev/" + [n for n in names if n.endswith(".ev")][1]
    with open(seg, "r+b") as f:
        f.seek(40)
        f.write(bytes(random.getrandbits(8) for _ in range(20)))
    with open("/flash/ev/zz.ev", "wb") as f:  # a stray file with a name that isn't a segment
        f.write(b"junk")
    with open("/flash/ev/ack", "wb") as f:  # a torn ack file: events are offered again
        f.write(b"\x05\x00")
    umount()
    mount(dev)
    log = _log(dev, seg_events=4, max_segments=8)
    got = [s for s, _ in log.pending(100)]
    mpt.eq(log.corrupt, 1)
    mpt.eq(got, [1, 2, 3, 4, 5, 7, 8, 9, 10])  # event 6 was hit, the rest are intact
    mpt.eq(log.next_seq, 11)
    umount()


def test_segment_ring_keeps_numbers_across_its_16_bit_offsets():
    # the ring of segment numbers keeps 16-bit offsets from a base: numbers climbing far past
    # 2^16 (a reader's lifetime of events), pops, and a boot scan's out-of-order pushes give
    # exactly what a plain list would
    r = E._Ring(8)
    model = []
    seq = 0xFFF0
    for step in range(3000):
        if len(model) == 8 or (model and step % 3 == 0):
            mpt.eq(r.pop(), model.pop(0), step)
        seq += 1 + step % 37
        r.push(seq)
        model.append(seq)
        mpt.eq([r.get(i) for i in range(r.n)], model, step)
    assert seq > 0x10000 * 1.5
    r2 = E._Ring(4)
    for v in (300000, 299990, 300010, 299980):  # out of order, as a directory lists them
        r2.push(v)
    mpt.eq([r2.get(i) for i in range(4)], [299980, 299990, 300000, 300010])
    r3 = E._Ring(4)
    r3.push(5)
    mpt.raises(OverflowError, r3.push, 5 + 0x10000)


def test_a_stray_segment_far_from_the_others_is_removed_at_boot():
    dev = FlashDev(blocks=64)
    format_and_mount(dev)
    try:
        log = _log(dev)
        uid = bytearray(b"\x04\x01\x02\x03")
        for i in range(10):
            log.append(E.K_DECISION, E.R_GRANT, E.OK, uid, 4, 1000 + i)
        for stray in (0x7F000000, 0x7F000010):  # not this log's: far above its three segments
            with open("/flash/ev/" + E._seg_name(stray), "wb") as f:
                f.write(bytes(32))
        log = _log(dev)
        mpt.eq(log.next_seq, 11)
        mpt.eq([s for s, _ in log.pending(20)], list(range(1, 11)))
        mpt.eq(sorted(n for n in os.listdir("/flash/ev") if n.endswith(".ev")),
               [E._seg_name(1), E._seg_name(5), E._seg_name(9)])
    finally:
        umount()
