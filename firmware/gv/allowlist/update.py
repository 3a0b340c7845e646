# Deltas and cooperative compaction of the allowlist store (functions on an Allowlist).
import os
import struct
from binascii import crc32
from gv.allowlist.layout import (
    BLOCK, IX, MAGIC_PAGE, SCAN, MAX_DFILES, MAGIC_DELTA, PAGE_HDR,
    REC, DHDR, ShardTable, _ShardWriter, _cmp8, _merge_into, _ptr_bytes,
    _rm, _sort_records, _tag, page_cap,
)


# ---------------------------------------------------------------- deltas
def _collect(records, cap):
    # The delta as one sorted bytearray of 16-byte records (a removal is key8 + 8 zero bytes).
    # records: packed bytes of such records, or an iterable of (key8, rec16 or None).
    # A bytearray is sorted in place (no second copy of a 16 KB delta on a small heap).
    if isinstance(records, (bytes, bytearray, memoryview)):
        if len(records) % REC:
            raise ValueError("delta is not whole records")
        buf = records if isinstance(records, bytearray) else bytearray(records)
        n = len(buf) // REC
    else:
        buf = bytearray(REC * (len(records) if isinstance(records, (list, tuple)) else 64))
        n = 0
        for k, r in records:
            if len(k) != 8:
                raise ValueError("key must be 8 bytes")
            if r is not None and (len(r) != REC or _cmp8(r, 0, k, 0) != 0):
                raise ValueError("bad record")
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
                raise ValueError("delta too large: send a snapshot")
    if n > cap:
        raise ValueError("delta too large: send a snapshot")
    for i in range(n):
        st = buf[i * REC + 8]
        if st and not 1 <= (st & 7) <= 5:
            raise ValueError("bad record status")
        if not st and any(buf[i * REC + 9:i * REC + REC]):
            raise ValueError("bad removal")
    _sort_records(buf, n)
    for i in range(1, n):
        if _cmp8(buf, (i - 1) * REC, buf, i * REC) == 0:
            raise ValueError("delta names a card twice")
    return buf if len(buf) == n * REC else buf[0:n * REC]


def apply_delta(self, from_version, to_version, records):
    """Apply one delta (from_version -> to_version): records is an iterable of
    (key8, rec16) or (key8, None) to remove. Returns True when applied; False when the flash
    refused (full or failing: .health says so, the store stays at from_version). Raises
    ValueError on a delta that does not fit this store."""
    if from_version != self.version or to_version <= from_version:
        raise ValueError("delta %d->%d does not follow version %d" % (from_version, to_version, self.version))
    d = _collect(records, self._logcap)
    if self._nlog + len(d) // REC > self._logcap:
        while compact_step(self):
            pass
    count = _count_after(self, d)
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


def _count_after(self, d):
    # Cards after applying d: +1 per new key, -1 per removal of a present key.
    count = self.count
    tmp = bytearray(REC)
    for i in range(len(d) // REC):
        o = i * REC
        had = self.lookup(memoryview(d)[o:o + 8], tmp)
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
    if self._snap is not None:
        return False  # a snapshot in progress replaces everything; its writer owns the page buffer
    if self._cgen is None:
        if self._nlog == 0 and not self._dtags:
            return False
        self._cgen = _compact(self)
    try:
        next(self._cgen)
        return True
    except StopIteration:
        self._cgen = None
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
        if lo_i == hi_i:
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
                if not n & 255:
                    yield  # about one page read
            parts = (n + self._srecs - 1) // self._srecs if n > self._mrecs else 1
            target = (n + parts - 1) // parts
        news = []
        w = None
        for r in _merged_shard(self, i, part, npart):
            if w is None:
                w = _ShardWriter(self.root, first if not news else r[0:8], self._wbuf(), self._mp)
            pno = w.pno
            w.add(r)
            if w.nrec == target or w.full():
                news.append(w.close())
                w = None
                yield
            elif w.pno != pno:
                yield  # one page written: let the gate run
        if w is not None:
            news.append(w.close())
        if not news:  # shard emptied: keep an empty one so key ranges stay contiguous
            w = _ShardWriter(self.root, first, self._wbuf())
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
        blks = [bytearray(2 * len(n.pages)) for n in news]
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
                    if k is not None and pno < len(news[k].pages) and _ptr_bytes(pno) == o:
                        struct.pack_into("<H", blks[k], 2 * pno, b)
                        found += 1
                    break
            if b & 63 == 63:
                yield
        if not _splice_index(self, p0, old, news, blks, found):
            self._build_index(verify=False)
        _rm(self._p("s%08x" % tag))
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
    w = _ShardWriter(self.root, b"\x00" * 8, self._wbuf())
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
        k += len(n.pages)
    if p0 is None or found != k or (self._np - old + k) * IX > len(self._ix):
        return False
    ix = self._ix
    mv = memoryview(ix)
    tail = (p0 + old) * IX
    mv[(p0 + k) * IX:(self._np - old + k) * IX] = mv[tail:self._np * IX]  # memmove
    e = p0 * IX
    for j in range(len(news)):
        pages = news[j].pages
        for pno in range(len(pages)):
            first, n = pages[pno]
            ix[e:e + 8] = first
            ix[e + 8] = blks[j][2 * pno]
            ix[e + 9] = blks[j][2 * pno + 1]
            ix[e + 10] = n
            ix[e + 11] = _ptr_bytes(pno)
            e += IX
    self._np += k - old
    return True


def _log_range(self, lo_key, hi_key):
    log = self._log
    a = 0
    while a < self._nlog and _cmp8(log, a * REC, lo_key, 0) < 0:
        a += 1
    b = a
    while b < self._nlog and (hi_key is None or _cmp8(log, b * REC, hi_key, 0) < 0):
        b += 1
    return a, b


def _merged_shard(self, i, log, hi_i):
    # The shard's records with its log entries applied (log wins; status 0 removes).
    li = 0
    for r in _shard_records(self, i):
        while li < hi_i and _cmp8(log, li * REC, r, 0) < 0:
            if log[li * REC + 8]:
                yield bytes(log[li * REC:li * REC + REC])
            li += 1
        if li < hi_i and _cmp8(log, li * REC, r, 0) == 0:
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
    # Page by page into one buffer of its own (lookups between steps use the store's buffer).
    buf = self._rbuf
    mv = memoryview(buf)
    with open(self._p("s%08x" % self._st.tag(i)), "rb") as f:
        p = 0
        left = self._st.nrec(i)
        while left > 0:
            n = min(left, page_cap(p))
            size = BLOCK - _ptr_bytes(p) if left > n else PAGE_HDR + n * REC
            if f.readinto(mv[:size]) != size:
                raise OSError(5)
            for j in range(n):
                o = PAGE_HDR + j * REC
                yield bytes(buf[o:o + REC])
            left -= n
            p += 1

