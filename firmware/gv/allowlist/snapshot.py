# Full snapshot install, resumable after a power cut (functions on an Allowlist).
# New shard files are written beside the live ones; a small state file S (temp + rename after
# every finished shard) records them, so a cut loses at most the shard being written. The
# manifest switch in end_snapshot is the single moment the reader moves to the new version.
#
# What the host sends is checked before it touches anything: a header against hard limits
# (version, count: the partition's pages and the manifest's shard slots) before anything is
# allocated or deleted, a chunk whole (length, statuses, flags, order, the count it would reach)
# before its first record reaches a writer. A refused header or chunk raises BadData and leaves
# the rebuild exactly where it was, so the host's correct resend is taken. A flash error (or a
# MemoryError) part-way drops the rebuild back to what S holds (its durable progress) and deletes
# what S does not name. S never names a file that is not there: a new S is switched before the
# files of the rebuild it replaces are deleted, and open() drops an S whose files are missing.
import os
import struct
from binascii import crc32
from gv.allowlist.layout import (
    ENOSPC, FREC, IX, MAGIC_SNAP, MAX_SHARDS, MAX_VERSION, PAGE_HDR, PAGE_RECS, REC, SHARD_N, SNAP_HDR, BadData,
    ShardTable, _cmpk, _rm, is_page, same4, trunc_key,
)
from gv.allowlist.pages import _ShardWriter

ZERO8 = b"\x00" * 8


def _save_snap(self):
    sn = self._snap
    st = sn["st"]
    hdr = struct.pack(SNAP_HDR, MAGIC_SNAP, sn["version"], sn["count"], st.total(), len(st))
    tmp = self._p("S.tmp")
    with open(tmp, "wb") as f:
        f.write(hdr)
        crc = st.write(f, crc32(hdr))
        f.write(struct.pack("<I", crc))
    os.rename(tmp, self._p("S"))


def max_cards(self):
    """The most cards a snapshot may announce: what the RAM page index (one entry per flash block
    of the partition) and the manifest's shard slots can hold."""
    return min((len(self._ix) // IX) * PAGE_RECS, MAX_SHARDS * self._srecs)


def check_header(self, version, count):
    """BadData unless version and count are within the hard limits (nothing is touched)."""
    if not 0 < version <= MAX_VERSION:
        raise BadData("snapshot version %d out of range" % version)
    if not 0 <= count <= max_cards(self):
        raise BadData("snapshot of %d cards: this store holds at most %d" % (count, max_cards(self)))


def check_records(mv, lk=None, size=REC):
    """BadData unless mv holds whole records the store can keep, sorted strictly by their 52-bit
    key, the first above lk when given. No heap. size: REC, 16-byte records (status 1-5, no flag
    the store cannot keep), or FREC, 13-byte flash records (status 1-5; every other bit is a
    value the store keeps as it is)."""
    n = len(mv) // size
    if len(mv) % size:
        raise BadData("chunk is not whole records")
    for i in range(n):
        o = i * size
        if size == FREC:
            s = (mv[o + 6] >> 1) & 7
            if not 1 <= s <= 5:
                raise BadData("bad record status")
        else:
            s = mv[o + 8]
            if not 1 <= (s & 7) <= 5:
                raise BadData("bad record status")
            if s >> 4:
                raise BadData("record flag the store cannot keep")
        if i:
            c = _cmpk(mv, o - size, mv, o)
        elif lk is not None:
            c = _cmpk(lk, 0, mv, o)
        else:
            c = -1
        if c >= 0:
            raise BadData("snapshot records not sorted (or two cards share a 52-bit key)")
    return n


def check_state(self):
    """Boot: the state file S must name only shard files that are there, whole, and not the live
    store's (an S whose shards the manifest names is a rebuild switched to just before a cut:
    resuming it would delete live shards). Otherwise it goes and the rebuild starts again (its
    files are garbage for _collect_garbage)."""
    snap = self._load_snap()
    if snap is None:
        return
    st = snap[3]
    for i in range(len(st)):
        t = st.tag(i)
        if _names(self._st, t) or not self._shard_file_ok(t, st.nrec(i)):
            _rm(self._p("S"))
            return


def snapshot_progress(self):
    """(version, count, records_received_durably) of an unfinished snapshot, else None. After a
    cut, call begin_snapshot(version, count) again and send from record index received."""
    if self._snap is not None:
        s = self._snap
        return (s["version"], s["count"], s["st"].total())
    st = self._load_snap()
    return None if st is None else (st[0], st[1], st[2])


def _received(sn):
    # records taken by this rebuild so far (durable shards and the shard being written)
    w = sn["w"]
    return sn["st"].total() + (w.nrec if w is not None else 0)


def _last_key(self, st):
    # The 52-bit key of the last record S holds (its last shard's last page's last record), so a
    # resumed rebuild checks its first chunk against it. None when it cannot be read.
    i = len(st) - 1
    if i < 0 or not st.nrec(i):
        return None
    from gv.allowlist.store import _file_off
    p = self._pages_of(st.nrec(i)) - 1
    b = bytearray(PAGE_HDR)
    try:
        with open(self._p("s%08x" % st.tag(i)), "rb") as f:
            f.seek(_file_off(p))
            if f.readinto(b) != PAGE_HDR:
                return None
            n = b[10] | b[11] << 8
            if not 0 < n <= PAGE_RECS:
                return None
            f.seek(_file_off(p) + PAGE_HDR + (n - 1) * FREC)
            if f.readinto(memoryview(b)[:7]) != 7:
                return None
    except OSError:
        return None
    b[6] &= 0xF0
    b[7] = 0
    return b[0:8]


def abandon(self, e=None):
    """Drop the rebuild in RAM back to what S holds on flash (after a flash error or MemoryError
    part-way, e): the shard being written is deleted, and any shard S does not name too when
    LittleFS itself refused (full) or nothing failed on flash, else by the next boot: an error
    the block device raised went through LittleFS's C code (MicroPython's block device calls
    are not guarded), which may leave it pointing into a dead stack frame, so the file system
    is touched as little as possible until a reboot."""
    sn = self._snap
    self._snap = None
    dev_error = isinstance(e, OSError) and not (e.args and e.args[0] == ENOSPC)
    if sn is not None and sn["w"] is not None:
        sn["w"].abort()
    if self._cgen is None and not dev_error:  # (begin stops a compaction: no files of its own in flight)
        try:
            # a compaction that failed earlier may have left the index on a file no table
            # names any more: the index follows the manifest before the clean-up deletes it
            if self._build_index(verify=False):
                self.health = "corrupt: shard(s) missing or corrupt"
                self.need_resync = True
            self._collect_garbage()
        except (OSError, MemoryError):
            pass  # left for the next boot's collection


def stop_compaction(self):
    """Drop a compaction run wherever it stands. The manifest may already name a shard's new
    files while the index still reads the old file's pages, which nothing names any more (the
    next clean-up would delete them and LittleFS give their blocks to other files): the index
    follows the manifest first."""
    if self._cgen is None:
        return
    self._cgen = None
    self._cblk = None
    bad = self._build_index(verify=False)
    if bad:
        self.health = "corrupt: %d shard(s) missing or corrupt" % bad
        self.need_resync = True


def begin_snapshot(self, version, count):
    """Start (or resume, same version and count) installing a full snapshot of count records,
    sent sorted by key through snapshot_chunk. Returns the records already durably received.
    BadData (nothing touched) when version or count is past the hard limits."""
    check_header(self, version, count)
    prev = self._load_snap()
    resume = prev is not None and prev[0] == version and prev[1] == count
    lk = None
    if resume and len(prev[3]):
        lk = _last_key(self, prev[3])
        resume = lk is not None  # S's records cannot be read back: start afresh
    st = prev[3] if resume else ShardTable(count // self._srecs + 2)  # one allocation for the install
    # from here on the rebuild in RAM is replaced (and a compaction run stopped)
    stop_compaction(self)
    if self._snap is not None and self._snap["w"] is not None:
        self._snap["w"].abort()
    self._snap = None
    sn = {"version": version, "count": count, "st": st, "w": None,
          "lk": bytearray(8), "has_lk": lk is not None}
    if lk is not None:
        sn["lk"][0:8] = lk
    if not resume:
        # a new rebuild: its S (naming no shard yet) replaces the old one first, then the old
        # rebuild's files go (a cut between leaves them as garbage the next boot deletes)
        self._snap = sn
        try:
            _save_snap(self)
        except BaseException as e:  # noqa: B036 - the old S stays, naming files that are there
            self._snap = None
            if isinstance(e, OSError):
                self._storage_failed(e, (self._p("S.tmp"),))
            else:
                _rm(self._p("S.tmp"))
            raise
        if prev is not None:
            for i in range(len(prev[3])):
                if not _names_entry(self._st, prev[3], i):
                    _rm(self._p("s%08x" % prev[3].tag(i)))
    self._snap = sn
    return st.total()


def _names(st, tag):
    for i in range(len(st)):
        if st.tag(i) == tag:
            return True
    return False


def _names_entry(st, src, i):
    # st names the shard of src's entry i: its tag's bytes compared (tag() would make a tuple
    # and, past 2^30, a heap int for every pair of a table-by-table comparison)
    for j in range(len(st)):
        if same4(st.buf, j * SHARD_N + 8, src.buf, i * SHARD_N + 8):
            return True
    return False


def snapshot_chunk(self, records_bytes, size=REC):
    """Add records (16-byte ones, or with size=FREC 13-byte flash records; sorted by key,
    continuing the snapshot). All or nothing: BadData leaves the rebuild as it was; a flash
    error drops it back to S."""
    sn = self._snap
    if sn is None:
        raise BadData("no snapshot begun")
    mv = memoryview(records_bytes)
    lk = sn["lk"]
    n = check_records(mv, lk if sn["has_lk"] else None, size)
    if _received(sn) + n > sn["count"]:
        raise BadData("chunk past the %d records announced" % sn["count"])
    if not n:
        return
    try:
        for i in range(n):
            o = i * size
            w = sn["w"]
            if w is None:
                _key_at(lk, mv, o)
                w = sn["w"] = _ShardWriter(self._p, ZERO8 if not len(sn["st"]) else lk, self._wbuf(), self._sp)
            if size == FREC:
                w.add13(mv, o)
            else:
                w.add(mv, o)
            if w.full():
                sn["st"].append(_read_back(self, w.close()))
                sn["w"] = None
                _save_snap(self)
        _key_at(lk, mv, (n - 1) * size)
        sn["has_lk"] = True
    except BaseException as e:  # noqa: B036 - a flash error or MemoryError: back to S, then report
        abandon(self, e)
        if isinstance(e, OSError):
            self._storage_failed(e, (self._p("S.tmp"),))
        raise


def _key_at(lk, mv, o):
    # the 52-bit key of the record at mv[o:] into lk (8 bytes, the rest zero), without a slice
    for i in range(7):
        lk[i] = mv[o + i]
    trunc_key(lk, 0)


def _read_back(self, sh):
    """The shard just closed, read back from flash page by page and checked against what its
    writer wrote (each page's header and the crc of its records); OSError (EIO) if the flash
    does not hold it. One shard (at most SHARD_PAGES pages, a few ms) per call: so the index
    end_snapshot builds need not read every page again in one long step."""
    from gv.allowlist.layout import PK, page_cap
    from gv.allowlist.store import _file_off

    # A step of the rebuild's receive path: a memoryview and a crc a page are all it allocates
    # besides the file (a crc past 2^30 is a heap int on 32-bit, and every operation on one
    # makes another: the crc is compared as the 4 bytes the header holds, not by arithmetic)
    buf = self._rbuf
    mv = memoryview(buf)
    pk = sh.pk
    s8 = self._s8  # the shard's tag, then a page's crc, as the header holds them (LE)
    struct.pack_into("<I", s8, 0, sh.tag)
    with open(self._p("s%08x" % sh.tag), "rb") as f:
        for p in range(sh.np):
            f.seek(_file_off(p))
            got = f.readinto(buf)  # the whole buffer: what follows the page is not looked at
            k = p * PK
            n = pk[k + 7] | pk[k + 8] << 8
            end = PAGE_HDR + n * FREC
            if (got < end or n > page_cap(p) or buf[10] != pk[k + 7] or buf[11] != pk[k + 8]
                    or buf[8] != p & 0xFF or buf[9] != p >> 8 or not is_page(buf, 0)):
                raise OSError(5)
            struct.pack_into("<I", s8, 4, crc32(mv[PAGE_HDR:end]))
            if not (same4(buf, 4, s8, 0) and same4(buf, 12, pk, k + 9) and same4(buf, 12, s8, 4)):
                raise OSError(5)
    return sh


def end_snapshot(self):
    """Switch to the snapshot atomically; old shards and deltas go afterwards. BadData (rebuild
    untouched) when fewer records came than announced."""
    sn = self._snap
    if sn is None:
        raise BadData("no snapshot begun")
    if _received(sn) != sn["count"]:
        raise BadData("snapshot has %d records, announced %d" % (_received(sn), sn["count"]))
    st = sn["st"]
    try:
        if sn["w"] is not None:
            st.append(_read_back(self, sn["w"].close()))
            sn["w"] = None
        if not len(st):
            st.append(_ShardWriter(self._p, ZERO8, self._wbuf()).close())
        st.set_first(0, ZERO8)
        self._write_manifest(sn["version"], sn["count"], st, [])
    except BaseException as e:  # noqa: B036 - not switched: the store is at its old version
        abandon(self, e)
        if isinstance(e, OSError):
            self._storage_failed(e, (self._p("M.tmp"),))
        raise
    # Switched: RAM follows the manifest before anything else can fail. Until the index is
    # built the store answers no card (fail closed), and says so.
    self._snap = None
    old_st, old_d = self._st, self._dtags
    self._st = st
    self._dtags = []
    self._nlog = 0
    self._np = 0
    self._need = set()
    self.version = sn["version"]
    self.count = sn["count"]
    self.health = "corrupt: index not built after snapshot"
    self.need_resync = True
    try:
        _rm(self._p("S"))
        for i in range(len(old_st)):
            if not _names_entry(st, old_st, i):
                _rm(self._p("s%08x" % old_st.tag(i)))
        for d in old_d:
            _rm(self._p("d%08x" % d[0]))
    except MemoryError:
        pass  # what is left is garbage the next boot deletes
    old_st = old_d = None
    # every shard was read back as it was closed (_read_back): the index only has to find the
    # pages' blocks, not read 400 pages again in one step the gate loop would wait 100 ms for
    bad = self._build_index(verify=False, written=True)
    if bad:
        self.health = "corrupt: %d shard(s) after snapshot" % bad
    else:
        self.health = "ok"
        self.need_resync = False
