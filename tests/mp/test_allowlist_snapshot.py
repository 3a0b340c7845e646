# Snapshot installs under bad input and failures (issue 18): a chunk is taken whole or not at all,
# headers past the hard limits are refused before anything is allocated or deleted, a power cut
# or an injected exception at every step of begin/chunk/end leaves a store that answers right at
# the old or the new version (in the same boot and after a reboot) and a state file that names
# only files that are there, and opening a store checks every file its manifest names.
import gc
import os
import mpt
from flashdev import FlashDev, format_and_mount, mount, umount
from gv.allowlist import snapshot as SN
from gv.allowlist.layout import MAX_VERSION, BadData
from gv.allowlist.store import Allowlist, _file_off
from test_allowlist_fixture import ROOT, SP, check, count, fresh, install, key, snapshot_chunks

HEAPSIZE = "320k"  # a fresh store per simulated boot, many boots per process, modules compiled from source (at 256k, with 512-byte LittleFS caches, a boot of the absurd-headers test found no 4 KB piece)
TIMEOUT = 300
N = 700  # SP=2 shards hold 528 cards: two shards a snapshot, one of them finished part-way
OLD = 2  # the live store's version in the prepared image
PART = 4  # a rebuild in progress in the prepared image (one finished shard in S)
NEW = 5  # the rebuild the host sends now


def files():
    return sorted(os.listdir(ROOT))


def snap_files_there(al):
    """Every shard file the state file S names is there, with its full size."""
    s = al._load_snap()
    if s is None:
        return True
    st = s[3]
    for i in range(len(st)):
        try:
            size = os.stat(al._p("s%08x" % st.tag(i)))[6]
        except OSError:
            return False
        if size != _file_off(al._pages_of(st.nrec(i))):
            return False
    return True


def index_files_there(al):
    """Every page the RAM index reads belongs to a shard file that is there (a deleted file's
    blocks still hold its pages until LittleFS gives them to another file)."""
    import struct
    hdr = bytearray(16)
    from gv.allowlist.layout import IX
    for p in range(al._np):
        e = p * IX
        al._dev.readblocks(al._ix[e + 7] | al._ix[e + 8] << 8, hdr, al._ix[e + 9])
        try:
            os.stat(al._p("s%08x" % struct.unpack_from("<I", hdr, 4)[0]))
        except OSError:
            return False
    return True


def chunks(v, skip=0):
    for c in snapshot_chunks(N, v, skip):
        yield bytes(c)


def feed(al, v, upto=None):
    """begin_snapshot(v) and chunks from where the store stands, up to upto records (all: end)."""
    got = al.begin_snapshot(v, count(N, v))
    sent = got
    for c in chunks(v, got):
        if upto is not None and sent + len(c) // 16 > upto:
            return
        al.snapshot_chunk(c)
        sent += len(c) // 16
    al.end_snapshot()


def prepare(cls=None):
    """Image: the store at OLD (a snapshot and a delta file), a rebuild of PART with its first
    shard finished and recorded in S. Returns dev, path."""
    from test_allowlist_fixture import delta
    if cls is None:
        dev = fresh(blocks=64)
    else:
        dev = cls(blocks=64)
        format_and_mount(dev)
    al = Allowlist(ROOT, dev, SP, in_place=False).open()
    install(al, N, 1)
    assert al.apply_delta(1, 2, delta(N, 1))
    feed(al, PART, upto=600)
    mpt.eq(al.snapshot_progress(), (PART, count(N, PART), 528))
    al = None
    umount()
    path = mpt.tmpdir() + "/snap.img"
    dev.save(path)
    return dev, path


def boot(dev):
    gc.collect()
    umount()
    dev.restore()
    mount(dev)
    return Allowlist(ROOT, dev, SP, in_place=False).open()


def test_chunk_all_or_nothing_then_resend_taken():
    dev = fresh()
    al = Allowlist(ROOT, dev, SP).open()
    install(al, N, 1)
    total = count(N, 3)
    al.begin_snapshot(3, total)
    cs = list(chunks(3))
    for c in cs[:5]:
        al.snapshot_chunk(c)  # 500 records: the first shard (528) is not finished yet
    before = (al.snapshot_progress(), SN._received(al._snap), files(), bytes(al._snap["lk"]))
    for at, how in ((30, "status"), (30, "flag"), (31, "order"), (0, "order"), (60, "length")):
        bad = bytearray(cs[5])
        o = at * 16
        if how == "status":
            bad[o + 8] = 6
        elif how == "flag":
            bad[o + 8] |= 0x10
        elif how == "order":  # a record that does not follow the one before (or the last chunk)
            bad[o:o + 8] = key(0)
        else:
            bad = bad[:o + 7]
        e = mpt.raises(BadData, al.snapshot_chunk, bad)
        mpt.eq((al.snapshot_progress(), SN._received(al._snap), files(), bytes(al._snap["lk"])),
               before, "%s at %d (%s)" % (how, at, e))
    # a chunk that would pass the announced count, and an early end: refused, nothing moves
    mpt.raises(BadData, al.snapshot_chunk, b"".join(cs[5:]) + cs[-1][-16:])
    mpt.raises(BadData, al.end_snapshot)
    mpt.eq(SN._received(al._snap), 500)
    for c in cs[5:]:  # the host's correct resend
        al.snapshot_chunk(c)
    al.end_snapshot()
    check(al, N, 3)
    al = None
    al = boot(dev)
    check(al, N, 3)
    umount()


def test_resumed_rebuild_checks_order_against_what_flash_holds():
    dev, path = prepare()
    mount(dev)
    al = Allowlist(ROOT, dev, SP).open()
    got = al.begin_snapshot(PART, count(N, PART))
    mpt.eq(got, 528)
    cs = list(chunks(PART, 0))
    # the first chunk again, at the resume point: its keys do not follow the durable records
    mpt.raises(BadData, al.snapshot_chunk, cs[0])
    mpt.eq(SN._received(al._snap), 528)
    for c in chunks(PART, got):
        al.snapshot_chunk(c)
    al.end_snapshot()
    check(al, N, PART)
    umount()


def test_absurd_headers_refused_before_anything_changes():
    huge = [(key(1), None)] * 4097  # one past MAX_DELTA (taken first, while the heap is whole)
    dev, path = prepare()
    mount(dev)
    al = Allowlist(ROOT, dev, SP, in_place=False).open()
    prog = al.snapshot_progress()
    names = files()
    top = SN.max_cards(al)
    assert 0 < top < 64 * 264 + 1, top  # the partition's pages bound it
    for v, n in ((NEW, 1 << 31), (NEW, top + 1), (NEW, -1), (0, 10), (MAX_VERSION + 1, 10), (-3, 10)):
        mpt.raises(BadData, al.begin_snapshot, v, n)
        mpt.eq((al.snapshot_progress(), files()), (prog, names), (v, n))
    for frm, to in ((OLD, MAX_VERSION + 1), (OLD, OLD), (OLD, OLD - 1), (-1, OLD)):
        mpt.raises(BadData, al.apply_delta, frm, to, [(key(1), None)])
    # a delta past MAX_DELTA (4,096 cards) is refused before a buffer for it is taken
    mpt.raises(BadData, al.apply_delta, OLD, OLD + 1, huge)  # 64 KB it never takes
    huge = None
    mpt.eq((al.version, al.snapshot_progress(), files()), (OLD, prog, names))
    check(al, N, OLD)
    # the case: after a huge count was refused, the rebuild resumes and installs whole
    al = None
    al = boot(dev)
    mpt.eq(al.snapshot_progress(), prog)
    feed(al, PART)
    mpt.eq(al.health, "ok")
    check(al, N, PART)
    al = None
    al = boot(dev)
    mpt.eq(al.health, "ok")
    check(al, N, PART)
    umount()


def _after_failure(al, dev, where):
    """The store a failure left, in the same boot and after a reboot: at OLD or NEW with every
    answer right, S naming only files that are there; then the host's resend installs NEW."""
    assert al.version in (OLD, NEW), (where, al.version)
    if al.health == "ok":
        check(al, N, al.version)
    assert snap_files_there(al), where
    feed(al, NEW)  # the host resends from where the store says it stands
    mpt.eq(al.health, "ok", where)
    check(al, N, NEW)
    al = None
    al = boot(dev)
    mpt.eq((al.version, al.health), (NEW, "ok"), where)
    check(al, N, NEW)
    assert snap_files_there(al), where
    return al


def test_power_cut_at_every_write_of_a_rebuild_replacing_one_in_progress():
    dev, path = prepare()
    mount(dev)
    al = Allowlist(ROOT, dev, SP, in_place=False).open()
    start = dev.writes
    feed(al, NEW)
    total = dev.writes - start
    al = None
    assert total > 10, total
    seen = {OLD: 0, NEW: 0}
    for n in range(total):
        dev.restore()
        dev.load(path)
        al = boot(dev)
        dev.cut_power_after(n)
        try:
            feed(al, NEW)  # (a cut in the clean-up after the switch is not reported)
            mpt.eq(al.version, NEW, "not cut at write %d of %d" % (n, total))
        except OSError:  # PowerCut, or LittleFS's EIO for it
            pass
        al = None
        al = boot(dev)
        mpt.eq(dev.nor_violations, 0)
        mpt.eq(al.health, "ok", "cut %d" % n)
        assert al.version in seen, (n, al.version)
        seen[al.version] += 1
        check(al, N, al.version)
        assert snap_files_there(al), "cut %d: S names a file that is not there" % n
        p = al.snapshot_progress()
        if p is not None and p[0] == PART:
            mpt.eq(p[2], 528)  # cut before the new S: the old rebuild is still whole
        al = _after_failure(al, dev, "cut %d" % n)
        al = None
    assert seen[OLD] > 0 and seen[NEW] > 0, seen
    print("cuts", seen)
    umount()


class Injected(Exception):
    pass


def _wrap(fn, counter, at, exc):
    def w(*a, **kw):
        counter[0] += 1
        if counter[0] == at:
            raise exc
        return fn(*a, **kw)
    return w


# every step of begin_snapshot / snapshot_chunk / end_snapshot: module functions and classes
# the snapshot code calls, and the store methods it calls
MOD_STEPS = ("check_header", "_last_key", "ShardTable", "_save_snap", "_ShardWriter", "_rm",
             "check_records", "_names")
AL_STEPS = ("_load_snap", "_write_manifest", "_build_index", "_storage_failed", "_wbuf", "_p")


def _inject(al, name, at, exc):
    counter = [0]
    if name in MOD_STEPS:
        orig = getattr(SN, name)
        setattr(SN, name, _wrap(orig, counter, at, exc))
        return counter, lambda: setattr(SN, name, orig)
    setattr(al, name, _wrap(getattr(al, name), counter, at, exc))
    return counter, lambda: delattr(al, name)


def test_exception_at_every_step_of_a_rebuild():
    dev, path = prepare()
    runs = 0
    for name in MOD_STEPS + AL_STEPS:
        calls = None
        at = 1
        while calls is None or at <= calls:
            for exc in (MemoryError(), OSError(5), Injected()):
                dev.load(path)
                al = boot(dev)
                counter, undo = _inject(al, name, at if calls is not None else 0, exc)
                raised = False
                try:
                    feed(al, NEW)
                except (MemoryError, OSError, Injected):
                    raised = True
                finally:
                    undo()
                if calls is None:  # the first run counts the calls (at 0: none fails)
                    calls = counter[0]
                    break
                if not raised:  # a failed clean-up after the switch is not reported
                    mpt.eq(al.version, NEW, (name, at))
                _after_failure(al, dev, "%s #%d %r" % (name, at, exc))
                al = None
                runs += 1
            at += 1
    assert runs > 60, runs
    print("injected runs", runs)
    umount()


class Flaky(FlashDev):
    """One write refused (a fresh OSError each time), then the flash works again."""
    fail_at = None

    def writeblocks(self, block, buf, offset=None):
        if self.fail_at is not None and self.writes >= self.fail_at:
            self.fail_at = None
            raise OSError(5)
        return FlashDev.writeblocks(self, block, buf, offset)


def test_transient_flash_error_at_every_write():
    # The flash refuses one write (not a power cut: the process goes on, the flash works again).
    # In the same boot the store answers from the block device alone; the resend waits for a
    # reboot, as the reader's file system must (the error went through LittleFS's C code:
    # MicroPython's block device calls are not guarded, and the unix port was seen to crash
    # using the same mount again).
    dev, path = prepare(Flaky)
    mount(dev)
    al = Allowlist(ROOT, dev, SP, in_place=False).open()
    start = dev.writes
    feed(al, NEW)
    total = dev.writes - start
    al = None
    failed = 0
    for n in range(total):
        dev.load(path)
        al = boot(dev)
        dev.fail_at = dev.writes + n
        try:
            feed(al, NEW)
        except OSError:
            failed += 1
        assert al.version in (OLD, NEW), (n, al.version)
        if al.health == "ok" or al.version == OLD:
            check(al, N, al.version)  # lookups and the ordered walk: block reads, no file system
        al = None
        al = boot(dev)
        al = _after_failure(al, dev, "write %d" % n)
        al = None
    assert failed > 3, failed
    umount()


def test_open_fails_closed_on_a_missing_or_short_shard_file():
    for how in ("gone", "short"):
        dev = fresh()
        al = Allowlist(ROOT, dev, SP).open()
        install(al, 1500, 1)  # three shards
        victim = al._p("s%08x" % al._st.tag(1))
        al = None
        if how == "gone":
            os.remove(victim)  # its blocks still hold its pages: only the file system knows
        else:
            with open(victim, "r+b") as f:
                f.seek(0, 2)
                size = f.tell()
            os.rename(victim, victim + ".x")
            with open(victim + ".x", "rb") as src, open(victim, "wb") as dst:
                dst.write(src.read(size - 4096))
            os.remove(victim + ".x")
        al = boot(dev)
        assert al.health.startswith("corrupt"), (how, al.health)
        assert al.need_resync, how
        out = bytearray(16)
        assert not al.lookup(key(600), out), how  # the missing shard's cards are denied
        assert al.lookup(key(10), out), how  # the others still decide
        install(al, 1500, 2)  # a resend repairs it
        mpt.eq(al.health, "ok")
        check(al, 1500, 2)
        al = None
        umount()


def test_state_file_naming_missing_or_live_shards_is_dropped():
    dev, path = prepare()
    mount(dev)
    al = Allowlist(ROOT, dev, SP).open()
    s = al._load_snap()
    os.remove(al._p("s%08x" % s[3].tag(0)))
    al = None
    al = boot(dev)
    mpt.eq((al.snapshot_progress(), al.health), (None, "ok"))
    check(al, N, OLD)
    # a cut between the manifest switch and S's removal: S names shards the manifest now names
    dev.load(path)
    al = boot(dev)
    got = al.begin_snapshot(PART, count(N, PART))
    for c in chunks(PART, got):
        al.snapshot_chunk(c)
    with open(al._p("S"), "rb") as f:
        stale = f.read()
    al.end_snapshot()
    with open(al._p("S"), "wb") as f:
        f.write(stale)
    al = None
    al = boot(dev)
    mpt.eq((al.version, al.health, al.snapshot_progress()), (PART, "ok", None))
    check(al, N, PART)
    feed(al, NEW)  # the next rebuild deletes nothing the store still needs
    al = None
    al = boot(dev)
    mpt.eq(al.health, "ok")
    check(al, N, NEW)
    umount()


def test_rebuild_begun_during_a_compaction_then_failing_keeps_every_answer():
    # A rebuild stops a compaction wherever it is, perhaps after the manifest switched to a
    # shard's new files but before the index follows (lookups still read the old file's pages,
    # which no table names any more); a flash error in the rebuild then deletes what no table
    # names. The answers must stay right at every step the compaction can be stopped at.
    from flashdev import format_and_mount
    from test_allowlist_fixture import delta

    dev = Flaky(blocks=64)
    format_and_mount(dev)
    al = Allowlist(ROOT, dev, SP, in_place=False).open()
    install(al, N, 1)
    assert al.apply_delta(1, 2, delta(N, 1))
    al = None
    umount()
    path = mpt.tmpdir() + "/compact.img"
    dev.save(path)
    mount(dev)
    al = Allowlist(ROOT, dev, SP, in_place=False).open()
    steps = 0
    while al.compact_step():
        steps += 1
    al = None
    assert steps > 4, steps
    for k in range(1, steps + 1):
        dev.load(path)
        al = boot(dev)
        for _ in range(k):
            al.compact_step()
        al.begin_snapshot(NEW, count(N, NEW))
        cs = chunks(NEW)
        for c in cs:
            al.snapshot_chunk(c)
            if al.snapshot_progress()[2]:  # a shard is finished: S names it
                break
        dev.fail_at = dev.writes
        try:
            for c in cs:
                al.snapshot_chunk(c)
            al.end_snapshot()  # its last page is the rest's first write
        except OSError:
            pass
        assert dev.fail_at is None, "no write refused"
        check(al, N, OLD)  # same boot: every answer from the store as it was
        assert index_files_there(al), "step %d: the index reads pages of a deleted file" % k
        al = None
        al = boot(dev)  # (see test_transient_flash_error_at_every_write)
        check(al, N, OLD)
        # the host resends: the rebuild's new files take whatever blocks are free, and until it
        # is installed every answer is still the old version's
        got = al.begin_snapshot(NEW, count(N, NEW))
        left = list(chunks(NEW, got))
        for c in left[:-1]:
            al.snapshot_chunk(c)
        check(al, N, OLD)
        al.snapshot_chunk(left[-1])
        al.end_snapshot()
        check(al, N, NEW)
        al = None
        al = boot(dev)
        mpt.eq(al.health, "ok", k)
        check(al, N, NEW)
        al = None
    umount()
