# Deltas and cooperative compaction of the allowlist store (functions on an Allowlist).
import struct
from binascii import crc32
from gv.allowlist.layout import (
    APS, AP_C, AP_W, BLOCK, CR, CR_C, CR_D, CR_W, FREC, GAP, IX, LOW_ROOM, MAX_DELTA, MAGIC_PAGE, SCAN,
    MAX_DFILES, MAGIC_DELTA, MAX_VERSION, OVS, OV_W, PAGE_HDR, PK, REC, DHDR, BadData, LogFull,
    ShardTable,
    _cmpk, _merge_into, _ptr_bytes, _rm, _tag, entry_slots, page_n, trunc_key,
)
from gv.allowlist.pages import _ShardWriter, _sort_records, pack13, page_records
from gv.compat import const

# Records a compaction step merges at most (a page holds 264): about 1 ms of the unix port's
# time, so the gate loop never waits long for its turn.
STEP_RECS = const(64)


# ---------------------------------------------------------------- deltas
def _collect(records, cap):
    # The delta as one sorted bytearray of 16-byte records (a removal is key8 + 8 zero bytes).
    # records: packed bytes of such records, or an iterable of (key8, rec16 or None).
    # A bytearray is sorted in place (no second copy of a 16 KB delta on a small heap).
    if isinstance(records, (bytes, bytearray, memoryview)):
        if len(records) % REC:
            raise BadData("delta is not whole records")
        if len(records) // REC > cap:  # before the copy
            raise BadData("delta too large: send a snapshot")
        buf = records if isinstance(records, bytearray) else bytearray(records)
        n = len(buf) // REC
    else:
        sized = isinstance(records, (list, tuple))
        if sized and len(records) > cap:  # before the buffer for them
            raise BadData("delta too large: send a snapshot")
        buf = bytearray(REC * (len(records) if sized else 64))
        n = 0
        for k, r in records:
            if len(k) != 8:
                raise BadData("key must be 8 bytes")
            if r is not None and (len(r) != REC or _cmpk(r, 0, k, 0) != 0):
                raise BadData("bad record")
            if (n + 1) * REC > len(buf):  # grow by doubling, by hand (one copy per doubling)
                nb = bytearray(2 * len(buf))
                nb[0:len(buf)] = buf
                buf = nb
            o = n * REC
            buf[o:o + 8] = k
            if r is None:
                for i in range(o + 8, o + REC):
                    buf[i] = 0
            else:
                buf[o + 8:o + REC] = r[8:REC]
            n += 1
            if n > cap:
                raise BadData("delta too large: send a snapshot")
    if n > cap:
        raise BadData("delta too large: send a snapshot")
    for i in range(n):
        st = buf[i * REC + 8]
        if st and not 1 <= (st & 7) <= 5:
            raise BadData("bad record status")
        if st >> 4:
            raise BadData("record flag the store cannot keep")
        if not st:
            for j in range(i * REC + 9, i * REC + REC):  # by hand: no slice a removal
                if buf[j]:
                    raise BadData("bad removal")
        _as_stored(buf, i * REC)
    _sort_records(buf, n)
    for i in range(1, n):
        if _cmpk(buf, (i - 1) * REC, buf, i * REC) == 0:
            raise BadData("delta names a card twice (or two cards share a 52-bit key)")
    return buf if len(buf) == n * REC else buf[0:n * REC]


def _as_stored(buf, o):
    # what the pages keep of a record (record.as_stored), so the log answers exactly as they do:
    # the key cut to 52 bits, the verifier to 20, days past 0x3FFE read as 0xFFFF
    trunc_key(buf, o)
    buf[o + 15] &= 0xF0
    d = o + 9
    while d <= o + 11:  # the two dates (no tuple of offsets a record)
        if (buf[d] << 8 | buf[d + 1]) > 0x3FFE:
            buf[d] = buf[d + 1] = 0xFF
        d += 2


def apply_delta(self, from_version, to_version, records):
    """Apply one delta (from_version -> to_version): records is an iterable of
    (key8, rec16) or (key8, None) to remove. Returns True when applied; False when the flash
    refused (full or failing: .health says so, the store stays at from_version). Raises
    ValueError on a delta that does not fit this store."""
    if not 0 <= from_version < to_version <= MAX_VERSION:
        raise BadData("delta %d->%d: versions out of range" % (from_version, to_version))
    if from_version != self.version:
        raise ValueError("delta %d->%d does not follow version %d" % (from_version, to_version, self.version))
    if self._dirty:
        self.health = "write failed: reboot to recover"
        return False
    d = _collect(records, MAX_DELTA)
    count = _count_after(self, d)
    r = _in_place(self, d, to_version, count)
    if r is not None:
        return r
    if len(d) // REC > self._logcap:
        raise ValueError("delta too large for the log: send a snapshot")
    if self._nlog + len(d) // REC > self._logcap:
        if not self.fold_inline:
            # hundreds of page writes on a big store: not here, between two decisions
            self._fold = True
            raise LogFull("delta log full: folding it into the shards first")
        while compact_step(self):
            pass
    # merged in place now; if the flash refuses, the log is read back from the delta files
    nlog = _merge_into(self._log, self._nlog, d, len(d) // REC)
    # Every delta file takes a whole flash block however small it is: past MAX_DFILES files the
    # new file holds the whole merged log and replaces them all (not while a compaction runs,
    # which counts on the files it started with).
    whole = len(self._dtags) >= MAX_DFILES and self._cgen is None
    body = memoryview(self._log)[:nlog * REC] if whole else d
    tag = _tag()
    path = self._p("d%08x" % tag)
    crc = crc32(body)
    dtags = ([] if whole else self._dtags) + [(tag, len(body) // REC, crc)]
    try:
        with open(path, "wb") as f:
            f.write(struct.pack(DHDR, MAGIC_DELTA, from_version, to_version, len(body) // REC, crc))
            f.write(body)
        self._write_manifest(to_version, count, self._st, dtags)
    except OSError as e:
        self._storage_failed(e, (path, self._p("M.tmp")))
        try:
            self._rebuild_log()
        except (OSError, ValueError):
            self._nlog = 0
            self.health = "corrupt: delta log unreadable"
        return False
    if whole:
        for t in self._dtags:
            _rm(self._p("d%08x" % t[0]))
    self._dtags = dtags
    self._nlog = nlog
    self.version = to_version
    self.count = count
    if self.health == "empty" or self.health.startswith("full"):
        self.health = "ok"
        self.need_resync = False
    return True


# ---------------------------------------------------------------- in place
# A delta whose cards all have room in their pages is programmed into the erased end of those
# pages, no erase, no file written. Power-cut safe in four steps, each a program:
#   1. an intent record (version) in the manifest block's erased end (data, then its W mark);
#   2. every entry (data, then its W mark); a lookup ignores an entry until its C mark is set;
#   3. the record's C mark: the delta is committed, the store is at the new version;
#   4. every entry's C mark, then the record's D mark.
# A cut before 3 leaves entries without C: boot marks them dead. A cut after 3 leaves some without
# C: boot programs them (the manifest says the delta committed). Either way old or new, exactly.

def _in_place(self, d, to_version, count):
    """Apply d in place; None when it cannot be (the caller writes a delta file instead). Pages
    are read once per pass (the delta is sorted, so a page's cards are together) and nothing is
    kept per card: a 1,000-card delta needs no more heap than a one-card delta."""
    dev = self._dev
    n = len(d) // REC
    if dev is None or not n or not self.in_place or self._cgen is not None or self._snap is not None:
        return None
    for i in range(n):  # the log overrides the pages: a card in it stays there until compaction
        if self._log_at(d, i * REC) >= 0 or self._page_at(d, i * REC) < 0:
            return None
    if not _place(self, d, n, False):  # pass 1: does every card have room?
        return None
    if self._crn + CR > BLOCK:
        # the manifest block's record slots are used up: a new manifest at the same version and
        # count (every earlier in-place delta is done, its entries committed on their pages)
        try:
            self._write_manifest(self.version, self.count, self._st, self._dtags)
        except OSError:
            return None  # the delta-file path reports the flash's refusal
    if self._find_mblk() is None:
        return None
    mblk = self._mblk
    c = self._crn
    step = 0
    try:
        e = bytearray(CR)
        struct.pack_into("<II", e, 0, to_version, count)
        x = crc32(memoryview(e)[0:8])
        e[8] = x & 0xFF
        e[9] = (x >> 8) & 0xFF
        e[10] = (x >> 16) & 0xFF
        e[11] = 0xFF
        dev.writeblocks(mblk, e, c)
        self._crn = c + CR
        self._mark(mblk, c + CR - 1, CR_W)
        step = 1
        _place(self, d, n, True)  # pass 2: every entry, data then W
        self._mark(mblk, c + CR - 1, CR_W | CR_C)
        step = 2
        self.version = to_version
        self.count = count
        # pass 3: every entry's C mark, page by page (the entries without C on the pages this
        # delta touched are exactly its own: boot does the same after a cut)
        page = self._rbuf
        cur = -1
        for i in range(n):
            p = self._page_at(d, i * REC)
            if p != cur:
                cur = p
                blk = self._ix[p * IX + 7] | self._ix[p * IX + 8] << 8
                dev.readblocks(blk, page, 0)
                at = self._ix[p * IX + 9]
                n = page_n(page, at)
                if n < 0:
                    raise OSError(5)  # the index no longer names one of our pages
                self._fix_entries(blk, page, at + PAGE_HDR, n, 2)
        self._mark(mblk, c + CR - 1, CR_W | CR_C | CR_D)
        self._crlast = c
    except OSError as e:
        # Not committed (step < 2): entries without C are ignored by lookups and boot marks them
        # dead; a later delta must not commit them as its own, so nothing more is updated until
        # a reboot has cleaned up. Committed: the store is at the new version, boot finishes.
        self._dirty = True
        self._storage_failed(e, ())
        return step == 2
    if self.health == "empty" or self.health.startswith("full"):
        self.health = "ok"
        self.need_resync = False
    return True


def _place(self, d, n, write):
    """Pass over the sorted delta page by page: without write, True when every card has room in
    its page (and pages left nearly full ask for compaction); with write, program each card's
    entry (data, then its W mark)."""
    dev = self._dev
    page = self._rbuf
    tmp = bytearray(APS)
    t13 = memoryview(tmp)[:FREC]
    two = bytearray(OVS)
    cur = -1
    ov = ap = room = base = nrec = no = na = blk = 0
    for i in range(n):
        o = i * REC
        p = self._page_at(d, o)
        if p != cur:
            if cur >= 0 and room < LOW_ROOM and not write:
                self._need.add(_shard_tag_of(self, cur))
            cur = p
            blk = self._ix[p * IX + 7] | self._ix[p * IX + 8] << 8
            dev.readblocks(blk, page, 0)
            base = self._ix[p * IX + 9] + PAGE_HDR
            nrec = page_n(page, base - PAGE_HDR)
            if nrec < 0:
                return False
            s = entry_slots(page, base, nrec)
            no, na = s & 0xFFF, s >> 12
            ov = base + nrec * FREC + no * OVS  # next override slot
            ap = BLOCK - (na + 1) * APS  # next append slot
            room = ap + APS - ov
        kind = _entry_kind(page, base, nrec, na, d, o, tmp)
        idx = kind >> 2
        kind &= 3
        if kind == 0:
            continue  # removing a card that is not there
        need = OVS if kind == 1 else APS
        if room < need + GAP:
            self._need.add(_shard_tag_of(self, p))
            return False
        room -= need
        if not write:
            continue
        if kind == 1:
            two[0] = idx & 0xFF
            two[1] = 0xF0 | (d[o + 8] & 7) << 1 | idx >> 8
            dev.writeblocks(blk, two, ov)
            self._mark(blk, ov + 1, OV_W)
            ov += OVS
        else:
            pack13(d, o, tmp, 0)
            dev.writeblocks(blk, t13, ap)
            self._mark(blk, ap + FREC, AP_W)
            ap -= APS
    if cur >= 0 and room < LOW_ROOM and not write:
        self._need.add(_shard_tag_of(self, cur))
    return True


def _shard_tag_of(self, p):
    # the shard holding index page p (pages of shard i follow those of shards before it)
    k = 0
    for i in range(len(self._st)):
        k += self._pages_of(self._st.nrec(i))
        if p < k:
            return self._st.tag(i)
    return 0


def _entry_kind(page, base, n, na, d, o, tmp):
    """How the card d[o:] goes into this page (n records from base, na appended entries), as one
    small int (no tuple a card): 0 nothing to do (removing an absent card), 1 | idx << 2 a
    status override of record idx, 2 an appended record."""
    for k in range(na):
        a = BLOCK - (k + 1) * APS
        m = page[a + FREC]
        if not m & (AP_W | AP_C) and m & 4 and _cmpk(page, a, d, o) == 0:
            return 2  # the card already has an appended record: append again
    lo = 0
    hi = n - 1
    while lo <= hi:
        mid = (lo + hi) >> 1
        c = _cmpk(page, base + mid * FREC, d, o)
        if c == 0:
            # a status override when nothing but the status changes (or it is removed)
            if d[o + 8] == 0:
                return 1 | mid << 2
            pack13(d, o, tmp, 0)
            q = base + mid * FREC
            if tmp[6] & 1 == page[q + 6] & 1:
                for j in range(7, FREC):
                    if tmp[j] != page[q + j]:
                        return 2
                return 1 | mid << 2
            return 2
        if c < 0:
            lo = mid + 1
        else:
            hi = mid - 1
    return 2 if d[o + 8] else 0


def _count_after(self, d):
    # Cards after applying d: +1 per new key, -1 per removal of a present key.
    count = self.count
    tmp = bytearray(REC)
    k = bytearray(8)  # each key copied in: a memoryview slice a card would be heap
    for i in range(len(d) // REC):
        o = i * REC
        for j in range(8):
            k[j] = d[o + j]
        had = self.lookup(k, tmp)
        if d[o + 8]:
            count += 0 if had else 1
        elif had:
            count -= 1
    return count


# ---------------------------------------------------------------- compaction
def compact_step(self):
    """Fold the delta log into the shards, at most one page write (or one manifest switch) per
    call. True while more to do; False when the log is empty (store.compaction_due() says when a
    run is worth its writes)."""
    if self._snap is not None or self._dirty:
        return False  # a snapshot in progress replaces everything; its writer owns the page buffer
    if self._cgen is None:
        if self._nlog == 0 and not self._dtags and not self._need:
            self._fold = False
            return False
        self._cblk = None
        self._cgen = _compact(self)
    try:
        if self._cblk is not None:
            # the page being merged, back into the buffer lookups have used since the last step
            self._dev.readblocks(self._cblk, self._rbuf, 0)
        next(self._cgen)
        return True
    except StopIteration:
        self._cgen = None
        self._fold = False
        return False
    except OSError as e:
        # RAM follows the manifest only after each switch, so it still matches the flash
        self._cgen = None
        self._storage_failed(e, (self._p("M.tmp"),))
        return False


def _compact(self):
    ndel = len(self._dtags)  # deltas folded by this run; later ones stay in the log
    if not len(self._st):
        yield from _first_shard(self)
    i = 0
    while i < len(self._st):
        st = self._st
        first = st.first(i)
        tag = st.tag(i)
        hi = st.first(i + 1) if i + 1 < len(st) else None
        lo_i, hi_i = _log_range(self, first, hi)
        if lo_i == hi_i and tag not in self._need:
            i += 1
            continue
        # a private copy of this shard's log entries: deltas applied between steps merge into
        # the log in place and must not shift what this merge is reading
        part = bytes(memoryview(self._log)[lo_i * REC:hi_i * REC])
        npart = hi_i - lo_i
        # A shard grows page by page; past 1.5x its written size it splits evenly.
        target = self._mrecs
        if st.nrec(i) + npart > self._mrecs:
            n = 0
            for _ in _merged_shard(self, i, part, npart):
                n += 1
                if not n % STEP_RECS:
                    yield
            parts = (n + self._srecs - 1) // self._srecs if n > self._mrecs else 1
            target = (n + parts - 1) // parts
        news = []
        w = None
        n = 0
        for r in _merged_shard(self, i, part, npart):
            if w is None:
                w = _ShardWriter(self._p, first if not news else r[0:8], self._wbuf(), self._mp)
            pno = w.pno
            w.add(r)
            n += 1
            if w.nrec == target or w.full():
                news.append(w.close())
                w = None
                yield
            elif w.pno != pno or not n % STEP_RECS:
                yield  # a page written, or STEP_RECS records merged: let the gate run
        if w is not None:
            news.append(w.close())
        if not news:  # shard emptied: keep an empty one so key ranges stay contiguous
            w = _ShardWriter(self._p, first, self._wbuf())
            news.append(w.close())
        news[0].first = first
        try:
            self._write_manifest(self.version, self.count, st, self._dtags, i, news)
        except OSError:
            for n in news:
                _rm(self._p("s%08x" % n.tag))
            raise
        p0 = _first_page(self, i)
        old = self._pages_of(st.nrec(i))
        st.splice(i, news)  # RAM follows the manifest only once it is switched
        yield
        # Find the new pages on flash a slice of the device per step; meanwhile lookups keep
        # using the old shard file, which is deleted only once the index points at the new one.
        want = {}
        for k in range(len(news)):
            want[news[k].tag] = k
        blks = [bytearray(2 * n.np) for n in news]
        found = 0
        hdr = bytearray(SCAN)
        dev = self._dev
        nb = dev.ioctl(4, 0) if dev is not None else 0
        for b in range(nb):
            dev.readblocks(b, hdr, 0)
            for o in range(0, SCAN - PAGE_HDR + 1, 4):
                if hdr[o] == 0x47 and hdr[o + 1] == 0x56 and hdr[o:o + 4] == MAGIC_PAGE:
                    t, pno = struct.unpack_from("<IH", hdr, o + 4)
                    k = want.get(t)
                    if k is not None and pno < news[k].np and _ptr_bytes(pno) == o:
                        struct.pack_into("<H", blks[k], 2 * pno, b)
                        found += 1
                    break
            if b & 63 == 63:
                yield
        if not _splice_index(self, p0, old, news, blks, found):
            self._build_index(verify=False)
        _rm(self._p("s%08x" % tag))
        self._need.discard(tag)
        i += len(news)
        yield
    # every folded delta is now in the shards: drop them from the manifest
    rest = self._dtags[ndel:]
    self._write_manifest(self.version, self.count, self._st, rest)
    for d in self._dtags[:ndel]:
        _rm(self._p("d%08x" % d[0]))
    self._dtags = rest
    self._rebuild_log()


def _first_shard(self):
    # A store that never had a snapshot (every card came by delta) has no shard for the log to
    # be folded into: name one empty shard covering every key first. The log overrides the
    # shards, so this manifest describes exactly the same cards; the loop then merges the log
    # into it like into any other shard (a cut leaves the store as it was, or with the empty
    # shard named: both are complete).
    w = _ShardWriter(self._p, b"\x00" * 8, self._wbuf())
    s = w.close()
    st = ShardTable(1)
    st.append(s)
    try:
        self._write_manifest(self.version, self.count, st, self._dtags)
    except OSError:
        _rm(self._p("s%08x" % s.tag))
        raise
    self._st = st
    yield


def _first_page(self, i):
    # Index position of shard i's first page, or None when the index is not complete (a bad
    # shard was dropped at boot): then the index is rebuilt whole instead of spliced.
    p = 0
    total = 0
    for j in range(len(self._st)):
        n = self._pages_of(self._st.nrec(j))
        if j < i:
            p += n
        total += n
    return p if total == self._np else None


def _splice_index(self, p0, old, news, blks, found):
    """Replace the old pages of a shard in the index by the new shards' pages (in place)."""
    k = 0
    for n in news:
        k += n.np
    if p0 is None or found != k or (self._np - old + k) * IX > len(self._ix):
        return False
    ix = self._ix
    mv = memoryview(ix)
    tail = (p0 + old) * IX
    mv[(p0 + k) * IX:(self._np - old + k) * IX] = mv[tail:self._np * IX]  # memmove
    e = p0 * IX
    for j in range(len(news)):
        pk = news[j].pk
        for pno in range(news[j].np):
            q = pno * PK
            for i in range(7):
                ix[e + i] = pk[q + i]
            ix[e + 7] = blks[j][2 * pno]
            ix[e + 8] = blks[j][2 * pno + 1]
            ix[e + 9] = _ptr_bytes(pno)
            e += IX
    self._np += k - old
    return True


def _log_range(self, lo_key, hi_key):
    log = self._log
    a = 0
    while a < self._nlog and _cmpk(log, a * REC, lo_key, 0) < 0:
        a += 1
    b = a
    while b < self._nlog and (hi_key is None or _cmpk(log, b * REC, hi_key, 0) < 0):
        b += 1
    return a, b


def _merged_shard(self, i, log, hi_i):
    # The shard's records with its log entries applied (log wins; status 0 removes).
    li = 0
    for r in _shard_records(self, i):
        while li < hi_i and _cmpk(log, li * REC, r, 0) < 0:
            if log[li * REC + 8]:
                yield bytes(log[li * REC:li * REC + REC])
            li += 1
        if li < hi_i and _cmpk(log, li * REC, r, 0) == 0:
            if log[li * REC + 8]:
                yield bytes(log[li * REC:li * REC + REC])
            li += 1
        else:
            yield r
    while li < hi_i:
        if log[li * REC + 8]:
            yield bytes(log[li * REC:li * REC + REC])
        li += 1


def _shard_records(self, i):
    # The shard's live records, page by page, in-place entries applied. Straight from the block
    # device when the index holds the shard (LittleFS's read cache knows nothing of in-place
    # programs); through the file otherwise (no block device: then there are no such entries).
    p0 = _first_page(self, i)
    np = self._pages_of(self._st.nrec(i))
    buf = self._rbuf
    mv = memoryview(buf)
    if self._dev is not None and p0 is not None:
        ix = self._ix
        for p in range(p0, p0 + np):
            e = p * IX
            blk = ix[e + 7] | ix[e + 8] << 8
            self._dev.readblocks(blk, buf, 0)
            self._cblk = blk  # compact_step reads it again before every resume
            o = ix[e + 9]
            n = page_n(buf, o)
            if n < 0:
                raise OSError(5)
            for r in page_records(buf, o, n):
                yield r
        self._cblk = None
        return
    with open(self._p("s%08x" % self._st.tag(i)), "rb") as f:
        for p in range(np):
            o = _ptr_bytes(p)
            if f.readinto(mv[o:BLOCK]) != BLOCK - o or buf[o:o + 4] != MAGIC_PAGE:
                raise OSError(5)
            for r in page_records(buf, o, buf[o + 10] | buf[o + 11] << 8):
                yield r
