# The allowlist store on the flash stand-in: lookups (one block read, no heap), deltas, removals,
# compaction, reopen after a reboot, and the errors it must report rather than crash on.
import gc
import os
import micropython
import mpt
from gv.allowlist import record as R
from gv.allowlist.layout import IX
from gv.allowlist.store import Allowlist
from test_allowlist_fixture import (ROOT, SP, check, check_deltas_only, count, delta, deltas_only, fresh,
                                   install, key, rec, reopen)
from flashdev import umount

# 320k: these tests "reboot" several times in one process, each boot building a fresh store
# beside the last one's garbage; one store in a 128k heap is what the bench proves at 100k cards.
HEAPSIZE = "320k"
N = 1500


def lookup_no_heap(al, k, out):
    """al.lookup under heap_lock: a lookup that allocated would raise MemoryError."""
    micropython.heap_lock()
    try:
        return al.lookup(k, out)
    finally:
        micropython.heap_unlock()


def test_empty_store_denies_and_asks_for_resync():
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    mpt.eq(al.version, 0)
    mpt.eq(al.health, "empty")
    assert al.need_resync
    assert not al.lookup(key(1), bytearray(16))
    umount()


def test_snapshot_lookup_one_read_no_heap():
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    mpt.eq(al.health, "ok")
    assert not al.need_resync
    check(al, N, 1)
    k = bytearray(key(777))
    out = bytearray(16)
    absent = bytearray(key(N + 5))
    for kk, want in ((k, True), (absent, False)):
        dev.reset_counters()
        got = lookup_no_heap(al, kk, out)
        mpt.eq(got, want)
        assert dev.reads <= 1, dev.reads
    # after a reboot too
    al = None  # the old instance's buffers go before the new one is built
    al = reopen(dev)
    check(al, N, 1)
    umount()


def test_deltas_compaction_reopen():
    # the delta-file path (deltas that do not fit their pages' erased room)
    dev = fresh()
    al = Allowlist(ROOT, dev, SP, in_place=False).open()
    install(al, N, 1)
    for k in (1, 2, 3):
        assert al.apply_delta(k, k + 1, delta(N, k))
        check(al, N, k + 1)
    al = None  # the old instance's buffers go before the new one is built
    al = reopen(dev)
    check(al, N, 4)
    # a log entry must still be found without a flash read, and allocation-free
    out = bytearray(16)
    kk = bytearray(key(N + 1))  # added by delta 1, still in the log
    got = lookup_no_heap(al, kk, out)
    assert got
    steps = 0
    while al.compact_step():
        steps += 1
    assert steps > 2, steps
    mpt.eq(al._nlog, 0)
    check(al, N, 4)
    al = None  # the old instance's buffers go before the new one is built
    al = reopen(dev)
    check(al, N, 4)
    # nothing left behind: manifest and shard files only
    for name in os.listdir(ROOT):
        assert name == "m" or name[0] == "s", name
    umount()


def test_store_built_from_deltas_only_compacts_into_shards():
    # A reader that never had a snapshot: every card came by delta from version 0, so the store
    # has no shard file. Compaction must create the shards from the log, not drop the log.
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    deltas_only(al, 3, 10)
    mpt.eq(len(al._st), 0)
    check_deltas_only(al, 3, 10)
    assert al.compact_step()  # there is work to do
    while al.compact_step():
        pass
    mpt.eq(al._nlog, 0)
    assert len(al._st) >= 1
    check_deltas_only(al, 3, 10)
    al = None  # the old instance's buffers go before the new one is built
    al = reopen(dev)
    mpt.eq(al.health, "ok")
    check_deltas_only(al, 3, 10)
    # the next delta and compaction merge into the shards just made: one card changed, one removed
    r = rec(4, 9)
    assert al.apply_delta(3, 4, [(key(4), r), (key(7), None)])
    while al.compact_step():
        pass
    al = None
    al = reopen(dev)
    out = bytearray(16)
    assert al.lookup(key(4), out) and out == r
    assert not al.lookup(key(7), out)
    assert al.lookup(key(29), out) and out == rec(29, 3)
    mpt.eq(al.count, 29)
    mpt.eq(sum(1 for _ in al.items()), 29)
    for name in os.listdir(ROOT):
        assert name == "m" or name[0] == "s", name
    umount()


def test_delta_only_store_larger_than_a_shard_splits():
    # 1000 cards by delta alone: more than one shard holds (SP=2: 763), so the first compaction
    # both creates and splits; the index it splices must equal the one a reboot builds.
    dev = fresh()
    al = Allowlist(ROOT, dev, SP, log_records=1024).open()  # a log that takes 1000 cards
    deltas_only(al, 1, 1000)
    while al.compact_step():
        pass
    assert len(al._st) == 2, len(al._st)
    check_deltas_only(al, 1, 1000)
    ix = bytes(al._ix[:al._np * IX])
    al = None
    al = reopen(dev, log_records=1024)
    mpt.eq(al.health, "ok")
    mpt.eq(bytes(al._ix[:al._np * IX]), ix, "index spliced == index rebuilt at boot")
    check_deltas_only(al, 1, 1000)
    umount()


def test_delta_only_store_overflowing_log_compacts_first():
    # apply_delta itself compacts when the log would overflow: on a store with no shard yet that
    # compaction must keep the 600 cards already in the log as well.
    dev = fresh()
    al = Allowlist(ROOT, dev, SP, log_records=1024).open()
    deltas_only(al, 2, 600)
    check_deltas_only(al, 2, 600)
    mpt.eq(len(al._st), 1)
    mpt.eq(al._nlog, 600)
    al = None
    al = reopen(dev, log_records=1024)
    check_deltas_only(al, 2, 600)
    umount()


def test_a_store_that_leaves_folding_to_its_owner_refuses_an_overflowing_delta_untouched():
    # fold_inline False (the reader's sync engine): a delta that fits only after a compaction
    # raises LogFull before anything is written, says compaction is due (though the log is not
    # half full), and fits once the log is folded step by step; no compaction inside the call.
    from gv.allowlist.layout import LogFull
    dev = fresh()
    # not in place (as on encrypted flash): every delta goes through the log
    al = Allowlist(ROOT, dev, SP, in_place=False, log_records=64).open()
    al.fold_inline = False
    deltas_only(al, 1, 30)  # 30 of 64 in the log: not half full, and 30 + 40 overflows
    assert not al.compaction_due()
    files = sorted(os.listdir(ROOT))
    buf = bytearray(40 * 16)
    for j in range(40):
        buf[j * 16:j * 16 + 16] = rec(30 + j, 2)
    dev.reset_counters()
    try:
        al.apply_delta(1, 2, buf)
        raise AssertionError("an overflowing delta was taken")
    except LogFull as e:
        assert "fold" in str(e), e
    mpt.eq((al.version, al._nlog, dev.writes, dev.erases), (1, 30, 0, 0))
    mpt.eq(sorted(os.listdir(ROOT)), files, "nothing written")
    check_deltas_only(al, 1, 30)
    assert al.compaction_due()
    steps = 0
    while al.compact_step():
        steps += 1
    assert steps > 1, steps  # bounded steps, each a page write or a manifest switch
    assert not al.compaction_due()
    mpt.eq(al._nlog, 0)
    assert al.apply_delta(1, 2, buf)
    out = bytearray(16)
    for i in range(72):
        found = al.lookup(key(i), out)
        mpt.eq(found, i < 70, "card %d" % i)
        if found:
            mpt.eq(bytes(out), rec(i, 1 if i < 30 else 2), "card %d" % i)
    mpt.eq(al.count, 70)
    # the default (tools, a store with no compactor beside it) folds inside the call
    al.fold_inline = True
    for j in range(40):
        buf[j * 16:j * 16 + 16] = rec(70 + j, 3)
    assert al.apply_delta(2, 3, buf)
    mpt.eq((al.version, al.count, al._nlog), (3, 110, 40))
    umount()


def test_delta_during_compaction():
    dev = fresh()
    al = Allowlist(ROOT, dev, SP, in_place=False).open()
    install(al, N, 1)
    assert al.apply_delta(1, 2, delta(N, 1))
    assert al.compact_step()
    assert al.apply_delta(2, 3, delta(N, 2))
    while al.compact_step():
        pass
    check(al, N, 3)
    al = None  # the old instance's buffers go before the new one is built
    al = reopen(dev)
    check(al, N, 3)
    umount()


def test_lookups_between_compaction_steps():
    # Compaction merges its source page in the lookup's buffer and reads it again at every
    # step; a lookup between steps (another shard's page) must not leak into the merge, and
    # every lookup during the run answers as before it.
    from test_allowlist_fixture import state
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    for k in (1, 2):
        assert al.apply_delta(k, k + 1, delta(N, k))  # in place: entries on the pages merged
    assert al._nlog == 0, "the deltas went in place"
    al.want_compaction()
    out = bytearray(16)
    steps = 0
    j = 0
    while al.compact_step():
        steps += 1
        for _ in range(3):
            i = (j * 613) % (N + 60)
            j += 1
            want = state(N, i, 3)
            got = al.lookup(key(i), out)
            mpt.eq(got, want is not None, i)
            if want is not None:
                mpt.eq(bytes(out[8:]), bytes(want[8:]), i)
    assert steps > 20, steps
    check(al, N, 3)
    al = None
    al = reopen(dev)
    check(al, N, 3)
    umount()


def test_large_partition_keeps_shards_in_four_directories():
    from gv.allowlist.layout import BIG_PART
    NB = 5000  # about 10 shards of SP pages
    dev = fresh(blocks=BIG_PART + 16)
    al = Allowlist(ROOT, dev, SP).open()
    install(al, NB, 1)
    assert al.apply_delta(1, 2, delta(NB, 1))
    al.want_compaction()
    while al.compact_step():
        pass
    check(al, NB, 2)
    root = sorted(os.listdir(ROOT))
    mpt.eq(root, ["h0", "h1", "h2", "h3", "m"])
    shards = 0
    for k in range(4):
        for name in os.listdir("%s/h%d" % (ROOT, k)):
            mpt.eq(int(name[1:], 16) % 4, k, name)
            shards += 1
    mpt.eq(shards, len(al._st))
    assert shards > 8, shards
    # what a cut leaves behind, in a directory and in the root, goes at the next boot
    for stray in ("/h1/s00000005", "/h2/x", "/s12345678"):
        with open(ROOT + stray, "wb") as f:
            f.write(b"left by a cut")
    al = None
    al = reopen(dev)
    mpt.eq(al.health, "ok")
    check(al, NB, 2)
    mpt.eq(sorted(os.listdir(ROOT)), root)
    mpt.eq(sum(len(os.listdir("%s/h%d" % (ROOT, k))) for k in range(4)), shards)
    umount()


def test_bad_deltas_rejected():
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    mpt.raises(ValueError, al.apply_delta, 2, 3, delta(N, 1))  # does not follow
    mpt.raises(ValueError, al.apply_delta, 1, 1, delta(N, 1))
    bad = R.pack(key(5), 1, 0, 0, 10)
    mpt.raises(ValueError, al.apply_delta, 1, 2, [(key(6), bad)])  # record key differs
    mpt.raises(ValueError, al.apply_delta, 1, 2, [(b"short", None)])
    broken = bytearray(bad)
    broken[8] = 7  # status 7 does not exist
    mpt.raises(ValueError, al.apply_delta, 1, 2, [(key(5), broken)])
    check(al, N, 1)
    umount()


def test_snapshot_must_be_sorted_and_complete():
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    a = R.pack(key(3), 1, 0, 0, 9)
    b = R.pack(key(2), 1, 0, 0, 9)
    al.begin_snapshot(2, 2)
    mpt.raises(ValueError, al.snapshot_chunk, a + b)
    al.begin_snapshot(2, 3)
    al.snapshot_chunk(b + a)
    mpt.raises(ValueError, al.end_snapshot)
    mpt.raises(ValueError, al.snapshot_chunk, b"x" * 15)
    al = None  # the old instance's buffers go before the new one is built
    al = reopen(dev)
    check(al, N, 1)
    umount()


def test_corrupt_shard_detected_rest_still_decides():
    N = 2500  # several shards
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    blk = al._ix[7] | al._ix[8] << 8  # flash block of the first page
    umount()
    buf = bytearray(dev.block_size)
    dev.readblocks(blk, buf)
    buf[200] ^= 0xFF  # a flipped bit inside the first page's records
    dev.writeblocks(blk, buf, 0)
    from flashdev import mount
    mount(dev)
    al = Allowlist(ROOT, dev, SP).open()
    assert al.health.startswith("corrupt"), al.health
    assert al.need_resync
    out = bytearray(16)
    assert not al.lookup(key(3), out)  # the damaged shard's cards are denied
    assert al.lookup(key(N - 2), out)  # the others still decide
    # a fresh snapshot repairs it
    install(al, N, 2)
    mpt.eq(al.health, "ok")
    check(al, N, 2)
    umount()


def test_corrupt_manifest_reported():
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    with open(ROOT + "/m/M", "r+b") as f:
        f.seek(5)
        f.write(b"\x99")
    al = Allowlist(ROOT, dev, SP).open()
    assert al.health.startswith("corrupt"), al.health
    assert al.need_resync
    assert not al.lookup(key(1), bytearray(16))
    umount()


def test_full_flash_keeps_last_good_version():
    dev = fresh(blocks=24)  # 96 KB: a snapshot of N fits once, not twice
    al = Allowlist(ROOT, dev, SP, in_place=False).open()
    install(al, N, 1)
    fill_flash()
    ok = al.apply_delta(1, 2, delta(N, 1))
    if ok:  # a small delta may still fit: then the next one must not
        ok = al.apply_delta(2, 3, delta(N, 2))
        v = 3 if ok else 2
    else:
        v = 1
    assert not ok
    assert al.health.startswith("full"), al.health
    assert al.need_resync
    check(al, N, v)
    mpt.raises(OSError, install, al, N, v + 1)
    check(al, N, v)
    al = None  # the old instance's buffers go before the new one is built
    al = reopen(dev)
    check(al, N, v)
    mpt.eq(al.count, count(N, v))
    umount()


def test_inserts_split_a_shard():
    import struct
    from test_allowlist_fixture import STEP, rec
    dev = fresh()
    al = Allowlist(ROOT, dev, SP, log_records=1024)  # 600 cards that do not fit their page: the log
    al.open()
    install(al, N, 1)
    before = len(al._st)
    def added(j):  # 600 cards all between cards 0 and 1: one shard takes them all
        r = bytearray(rec(j, 9))
        struct.pack_into(">Q", r, 0, STEP + ((j + 1) << 32))
        return r

    buf = bytearray(600 * 16)
    for j in range(600):
        buf[j * 16:j * 16 + 16] = added(j)
    assert al.apply_delta(1, 2, buf)
    buf = None
    while al.compact_step():
        pass
    assert len(al._st) > before, (before, len(al._st))
    out = bytearray(16)
    for j in range(600):
        r = added(j)
        assert al.lookup(r[0:8], out) and out == r
    mpt.eq(al.count, N + 600)
    mpt.eq(sum(1 for _ in al.items()), N + 600)
    ix = bytes(al._ix[:al._np * IX])  # spliced step by step during compaction
    al = None
    al = reopen(dev, log_records=1024)
    mpt.eq(al.health, "ok")
    mpt.eq(bytes(al._ix[:al._np * IX]), ix, "index spliced == index rebuilt at boot")
    for j in range(0, 600, 7):
        r = added(j)
        assert al.lookup(r[0:8], out) and out == r
    umount()


def test_without_block_device_same_answers():
    # Allowlist(root) as the app builds it where no flash partition object is found: pages are
    # read through the filesystem instead of straight from the block device.
    dev = fresh()
    al = Allowlist(ROOT, None, SP).open()
    assert al._dev is None
    install(al, N, 1)
    assert al.apply_delta(1, 2, delta(N, 1))
    check(al, N, 2)
    while al.compact_step():
        pass
    check(al, N, 2)
    al = None
    gc.collect()
    umount()
    from flashdev import mount
    mount(dev)
    al = Allowlist(ROOT, None, SP).open()
    mpt.eq(al.health, "ok")
    check(al, N, 2)
    umount()


def fill_flash():
    """Write a file until LittleFS refuses: no free block left."""
    filler = b"\xa5" * 4096
    with open("/flash/filler", "wb") as f:
        while True:
            try:
                f.write(filler)
                f.flush()
            except OSError:
                break


def _restatus(r, st):
    b = bytearray(r)
    b[8] = (b[8] & 0xF8) | st
    return bytes(b)


def test_in_place_delta_programs_a_few_bytes_and_no_file():
    # A delta whose cards have room in their pages is programmed into the pages' erased ends:
    # no delta file, no manifest rewrite, a few bytes a card; lookups stay one read, no heap.
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    files = sorted(os.listdir(ROOT))
    cards = [(key(i), _restatus(rec(i, 0), 3)) for i in range(0, N, 50)]  # blocked: overrides
    cards += [(key(i), rec(i, 5)) for i in range(7, N, 101)]  # other fields too: appended
    cards += [(key(i), None) for i in range(9, N, 203)]  # removed: overrides
    cards.sort()
    dev.reset_counters()
    assert al.apply_delta(1, 2, cards)
    mpt.eq(al._nlog, 0)
    mpt.eq(sorted(os.listdir(ROOT)), files, "no file written")
    mpt.eq(dev.nor_violations, 0)
    assert dev.bytes_written <= 20 * len(cards) + 64, (dev.bytes_written, len(cards))
    want = {}
    for k, r in cards:
        want[k] = r
    out = bytearray(16)
    for k, r in cards:
        kb = bytearray(k)
        dev.reset_counters()
        got = lookup_no_heap(al, kb, out)
        assert dev.reads == 1, dev.reads
        mpt.eq(got, r is not None)
        if r is not None:
            mpt.eq(bytes(out), R.as_stored(r))
    assert al.lookup(key(1), out) and bytes(out) == rec(1, 0)  # untouched neighbour
    mpt.eq(al.count, N - len([1 for _, r in cards if r is None]))
    al = None
    al = reopen(dev)
    mpt.eq((al.version, al.health), (2, "ok"))
    for k, r in cards:
        mpt.eq(al.lookup(k, out), r is not None)
        if r is not None:
            mpt.eq(bytes(out), R.as_stored(r))
    mpt.eq(al.count, N - len([1 for _, r in cards if r is None]))
    # compaction folds the entries into rewritten pages: same answers, pages clean again
    al.want_compaction()
    while al.compact_step():
        pass
    from gv.allowlist.layout import PAGE_HDR, entry_span, page_n
    for p in range(al._np):
        o = al._read_page(p)
        n = page_n(al._page, o)
        mpt.eq(entry_span(al._page, o + PAGE_HDR, n)[0:2], (0, 0), "page %d still has entries" % p)
    for k, r in cards:
        mpt.eq(al.lookup(k, out), r is not None)
    umount()


def test_page_out_of_room_falls_back_to_the_log_then_compacts():
    # One page's cards changed over and over: its erased room runs out, the delta that does not
    # fit goes to a delta file and the log, compaction is due and rewrites the shard.
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    v = 1
    went_to_log = False
    due_at = None
    i = 0
    while v < 400 and not went_to_log:
        st = 1 + v % 5
        d = [(key(j), _restatus(rec(j, 0), st)) for j in (i % 40, 40 + i % 40)]
        assert al.apply_delta(v, v + 1, d), al.health
        v += 1
        i += 1
        went_to_log = al._nlog > 0
        if due_at is None and al.compaction_due():
            due_at = v
    assert went_to_log, "the page never ran out of room"
    assert due_at is not None and due_at < v, (due_at, v)  # asked for compaction before it ran out
    assert al.compaction_due()
    out = bytearray(16)
    for j in range(80):
        assert al.lookup(key(j), out)
    expect = {}
    for j in range(80):
        al.lookup(key(j), out)
        expect[j] = bytes(out)
    while al.compact_step():
        pass
    assert not al.compaction_due(), (al._need, al._nlog, al.health)
    mpt.eq(al._nlog, 0)
    for j in range(N):
        assert al.lookup(key(j), out)
        if j < 80:
            mpt.eq(bytes(out), expect[j])
        else:
            mpt.eq(bytes(out), rec(j, 0))
    al = None
    al = reopen(dev)
    mpt.eq(al.version, v)
    assert al.lookup(key(3), out) and bytes(out) == expect[3]
    mpt.eq(al.count, N)
    umount()


def test_in_place_delta_needs_no_free_flash():
    dev = fresh(blocks=24)  # 96 KB: a snapshot of N fits once, not twice
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    fill_flash()
    d = [(key(i), _restatus(rec(i, 0), 3)) for i in range(0, N, 100)]
    assert al.apply_delta(1, 2, d), al.health  # no free block needed
    mpt.eq(al.health, "ok")
    al = None
    al = reopen(dev)
    out = bytearray(16)
    assert al.lookup(key(100), out) and out[8] & 7 == 3
    umount()


def test_pages_are_matched_to_shards_by_tag_bytes_even_when_low_bits_collide():
    # the index build finds a page's shard by its tag's low 24 bits (a small int), then checks
    # the 4th byte; two shards sharing the low 24 bits are told apart by hand
    import struct
    from gv.allowlist.layout import ShardTable, _Shard
    from gv.allowlist.store import _shard_at
    st = ShardTable(4)
    tags_ = (0x01ABCDEF, 0xF2ABCDEF, 0x00123456)
    for t in tags_:
        st.append(_Shard(bytes(8), t, 1, 0, b"", 1))
    tags = {}
    for i in range(3):
        e = i * 20 + 8
        k = st.buf[e] | st.buf[e + 1] << 8 | st.buf[e + 2] << 16
        tags[k] = -1 if k in tags else i
    p = bytearray(4)
    for want, t in enumerate(tags_):
        struct.pack_into("<I", p, 0, t)
        mpt.eq(_shard_at(tags, st.buf, 3, p, 0), want, hex(t))
    for t in (0x03ABCDEF, 0x01123456, 0x00000001):  # one byte off, or unknown
        struct.pack_into("<I", p, 0, t)
        mpt.eq(_shard_at(tags, st.buf, 3, p, 0), -1, hex(t))
