# Deltas and cooperative compaction of the allowlist store (functions on an Allowlist).
import os
import struct
from binascii import crc32
from gv.allowlist.layout import (
    BLOCK, SHARD_RECS, DELTA_MAX, LOG_HARD, LOG_SOFT, MAGIC_DELTA, PAGE_HDR,
    REC, DHDR, _ShardWriter, _cmp8, _merge, _ptr_bytes,
    _rm, _sort_unique, _tag, _wfile, page_cap,
)


# ---------------------------------------------------------------- deltas
def apply_delta(self, from_version, to_version, records):
    """Apply one delta (from_version -> to_version): records is an iterable of
    (key8, rec16) or (key8, None) to remove. Returns True when applied; False when the flash
    refused (full or failing: .health says so, the store stays at from_version). Raises
    ValueError on a delta that does not fit this store."""
    if from_version != self.version or to_version <= from_version:
        raise ValueError("delta %d->%d does not follow version %d" % (from_version, to_version, self.version))
    buf = bytearray()
    n = 0
    for k, r in records:
        if len(k) != 8:
            raise ValueError("key must be 8 bytes")
        if r is None:
            buf += k
            buf += b"\x00" * 8
        else:
            if len(r) != REC or bytes(r[0:8]) != bytes(k) or not 1 <= (r[8] & 7) <= 5:
                raise ValueError("bad record")
            buf += r
        n += 1
        if n > DELTA_MAX:
            raise ValueError("delta too large: send a snapshot")
    d = _sort_unique(buf)
    if self._nlog + len(d) // REC > LOG_HARD:
        while compact_step(self):
            pass
    count = _count_after(self, d)
    tag = _tag()
    path = self._p("d%08x" % tag)
    crc = crc32(d)
    dtags = self._dtags + [(tag, len(d) // REC, crc)]
    try:
        with open(path, "wb") as f:
            f.write(struct.pack(DHDR, MAGIC_DELTA, from_version, to_version, len(d) // REC, crc))
            f.write(d)
        self._write_manifest(to_version, count, self._shards, dtags)
    except OSError as e:
        self._storage_failed(e, (path, self._p("M.tmp")))
        return False
    self._dtags = dtags
    self._log = _merge(self._log, d)
    self._nlog = len(self._log) // REC
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
        self._cgen = None
        self._storage_failed(e, ())
        _reload_quiet(self)
        return False


def _reload_quiet(self):
    try:
        self._load_manifest()
        self._rebuild_log()
        self._build_index(verify=False)
    except (OSError, ValueError):
        pass


def _compact(self):
    ndel = len(self._dtags)  # deltas folded by this run; later ones stay in the log
    i = 0
    while i < len(self._shards):
        s = self._shards[i]
        hi = self._shards[i + 1].first if i + 1 < len(self._shards) else None
        lo_i, hi_i = _log_range(self, s.first, hi)
        if lo_i == hi_i:
            i += 1
            continue
        # An overflowing shard splits evenly, so each part has room to grow before it splits again.
        target = SHARD_RECS
        if s.nrec + (hi_i - lo_i) > SHARD_RECS:
            n = 0
            for _ in _merged_shard(self, i, lo_i, hi_i):
                n += 1
            parts = (n + SHARD_RECS * 3 // 4 - 1) // (SHARD_RECS * 3 // 4) if n > SHARD_RECS else 1
            target = (n + parts - 1) // parts
        news = []
        w = None
        for r in _merged_shard(self, i, lo_i, hi_i):
            if w is None:
                w = _ShardWriter(self.root, s.first if not news else r[0:8], self._wbuf())
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
            w = _ShardWriter(self.root, s.first, self._wbuf())
            news.append(w.close())
        news[0].first = s.first
        shards = self._shards[:i] + news + self._shards[i + 1:]
        self._write_manifest(self.version, self.count, shards, self._dtags)
        _rm(self._p("s%08x" % s.tag))
        self._shards = shards
        self._build_index(verify=False)
        i += len(news)
        yield
    # every folded delta is now in the shards: drop them from the manifest
    rest = self._dtags[ndel:]
    self._write_manifest(self.version, self.count, self._shards, rest)
    for d in self._dtags[:ndel]:
        _rm(self._p("d%08x" % d[0]))
    self._dtags = rest
    self._rebuild_log()


def _log_range(self, lo_key, hi_key):
    log = self._log
    a = 0
    while a < self._nlog and _cmp8(log, a * REC, lo_key, 0) < 0:
        a += 1
    b = a
    while b < self._nlog and (hi_key is None or _cmp8(log, b * REC, hi_key, 0) < 0):
        b += 1
    return a, b


def _merged_shard(self, i, lo_i, hi_i):
    # The shard's records with log[lo_i:hi_i] applied (later entries win; status 0 removes).
    log = self._log
    li = lo_i
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
    s = self._shards[i]
    if self._rbuf is None:
        self._rbuf = bytearray(BLOCK)
    buf = self._rbuf
    mv = memoryview(buf)
    with open(self._p("s%08x" % s.tag), "rb") as f:
        p = 0
        left = s.nrec
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

