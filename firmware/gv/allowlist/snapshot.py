# Full snapshot install, resumable after a power cut (functions on an Allowlist).
# New shard files are written beside the live ones; a small state file S (temp + rename after
# every finished shard) records them, so a cut loses at most the shard being written. The
# manifest switch in end_snapshot is the single moment the reader moves to the new version.
import os
import struct
from binascii import crc32
from gv.allowlist.layout import MAGIC_SNAP, REC, SNAP_HDR, ShardTable, _cmpk, _rm, trunc_key
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


def snapshot_progress(self):
    """(version, count, records_received_durably) of an unfinished snapshot, else None. After a
    cut, call begin_snapshot(version, count) again and send from record index received."""
    if self._snap is not None:
        s = self._snap
        return (s["version"], s["count"], s["st"].total())
    st = self._load_snap()
    return None if st is None else (st[0], st[1], st[2])


def begin_snapshot(self, version, count):
    """Start (or resume, same version and count) installing a full snapshot of count records,
    sent sorted by key through snapshot_chunk. Returns the records already durably received."""
    self._cgen = None
    prev = self._load_snap()
    if self._snap is not None and self._snap["w"] is not None:
        self._snap["w"].abort()
    if prev is not None and prev[0] == version and prev[1] == count:
        st = prev[3]
    else:
        if prev is not None:
            for i in range(len(prev[3])):
                _rm(self._p("s%08x" % prev[3].tag(i)))
        st = ShardTable(count // self._srecs + 2)  # one allocation for the whole install
    self._snap = {"version": version, "count": count, "st": st, "w": None,
                  "lk": bytearray(8), "has_lk": False}
    try:
        _save_snap(self)
    except OSError as e:
        self._snap = None
        self._storage_failed(e, (self._p("S.tmp"),))
        raise
    return st.total()


def snapshot_chunk(self, records_bytes):
    """Add records (a multiple of 16 bytes, sorted by key, continuing the snapshot)."""
    sn = self._snap
    if sn is None:
        raise ValueError("no snapshot begun")
    mv = memoryview(records_bytes)
    if len(mv) % REC:
        raise ValueError("chunk is not whole records")
    lk = sn["lk"]
    try:
        for i in range(len(mv) // REC):
            o = i * REC
            if not 1 <= (mv[o + 8] & 7) <= 5:
                raise ValueError("bad record status")
            if mv[o + 8] >> 4:
                raise ValueError("record flag the store cannot keep")
            if sn["has_lk"] and _cmpk(mv, o, lk, 0) <= 0:
                raise ValueError("snapshot records not sorted (or two cards share a 52-bit key)")
            lk[0:8] = mv[o:o + 8]
            trunc_key(lk, 0)
            sn["has_lk"] = True
            w = sn["w"]
            if w is None:
                w = sn["w"] = _ShardWriter(self._p, ZERO8 if not len(sn["st"]) else lk, self._wbuf(), self._sp)
            w.add(mv[o:o + REC])
            if w.full():
                sn["st"].append(w.close())
                sn["w"] = None
                _save_snap(self)
    except OSError as e:
        self._storage_failed(e, (self._p("S.tmp"),))
        raise


def end_snapshot(self):
    """Switch to the snapshot atomically; old shards and deltas go afterwards."""
    sn = self._snap
    if sn is None:
        raise ValueError("no snapshot begun")
    st = sn["st"]
    try:
        if sn["w"] is not None:
            st.append(sn["w"].close())
            sn["w"] = None
        if not len(st):
            st.append(_ShardWriter(self._p, ZERO8, self._wbuf()).close())
        total = st.total()
        if total != sn["count"]:
            raise ValueError("snapshot has %d records, announced %d" % (total, sn["count"]))
        st.set_first(0, ZERO8)
        old_st, old_d = self._st, self._dtags
        self._write_manifest(sn["version"], total, st, [])
    except OSError as e:
        self._storage_failed(e, (self._p("M.tmp"),))
        raise
    self._snap = None
    _rm(self._p("S"))
    for i in range(len(old_st)):
        _rm(self._p("s%08x" % old_st.tag(i)))
    for d in old_d:
        _rm(self._p("d%08x" % d[0]))
    old_st = None
    self._st = st
    self._dtags = []
    self._nlog = 0
    self.version = sn["version"]
    self.count = total
    bad = self._build_index(verify=True)
    if bad:
        self.health = "corrupt: %d shard(s) after snapshot" % bad
        self.need_resync = True
    else:
        self.health = "ok"
        self.need_resync = False
