# Full snapshot install, resumable after a power cut (functions on an Allowlist).
import os
import struct
from binascii import crc32
from gv.allowlist.layout import (
    MAGIC_SNAP, REC, SHARD, SNAP_HDR, _ShardWriter, _cmp8,
    _rm, _wfile,
)


def _save_snap(self):
    v, c, shards = self._snap["version"], self._snap["count"], self._snap["shards"]
    rec = sum(s.nrec for s in shards)
    out = bytearray(struct.pack(SNAP_HDR, MAGIC_SNAP, v, c, rec, len(shards)))
    for s in shards:
        out += struct.pack(SHARD, s.first, s.tag, s.nrec, s.crc)
    out += struct.pack("<I", crc32(out))
    tmp = self._p("S.tmp")
    _wfile(tmp, out)
    os.rename(tmp, self._p("S"))


def snapshot_progress(self):
    """(version, count, records_received_durably) of an unfinished snapshot, else None. After a
    cut, call begin_snapshot(version, count) again and send from record index received."""
    if self._snap is not None:
        s = self._snap
        return (s["version"], s["count"], sum(x.nrec for x in s["shards"]))
    st = self._load_snap()
    return None if st is None else (st[0], st[1], st[2])


def begin_snapshot(self, version, count):
    """Start (or resume, same version and count) installing a full snapshot of count records,
    sent sorted by key through snapshot_chunk."""
    self._cgen = None
    st = self._load_snap()
    if self._snap is not None and self._snap["w"] is not None:
        self._snap["w"].abort()
    if st is not None and st[0] == version and st[1] == count:
        shards = st[3]
    else:
        if st is not None:
            for s in st[3]:
                _rm(self._p("s%08x" % s.tag))
        shards = []
    self._snap = {"version": version, "count": count, "shards": shards, "w": None,
                  "last": shards[-1].first if shards else None, "lastkey": None}
    try:
        _save_snap(self)
    except OSError as e:
        self._snap = None
        self._storage_failed(e, (self._p("S.tmp"),))
        raise
    return sum(s.nrec for s in shards)


def snapshot_chunk(self, records_bytes):
    """Add records (a multiple of 16 bytes, sorted by key, continuing the snapshot)."""
    sn = self._snap
    if sn is None:
        raise ValueError("no snapshot begun")
    mv = memoryview(records_bytes)
    if len(mv) % REC:
        raise ValueError("chunk is not whole records")
    try:
        for i in range(len(mv) // REC):
            r = mv[i * REC:i * REC + REC]
            if not 1 <= (r[8] & 7) <= 5:
                raise ValueError("bad record status")
            lk = sn["lastkey"]
            if lk is not None and _cmp8(r, 0, lk, 0) <= 0:
                raise ValueError("snapshot records not sorted")
            sn["lastkey"] = bytes(r[0:8])
            w = sn["w"]
            if w is None:
                w = sn["w"] = _ShardWriter(self.root, b"\x00" * 8 if not sn["shards"] else r[0:8], self._wbuf())
            w.add(r)
            if w.full():
                sn["shards"].append(w.close())
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
    try:
        if sn["w"] is not None:
            sn["shards"].append(sn["w"].close())
            sn["w"] = None
        shards = sn["shards"]
        if not shards:
            shards.append(_ShardWriter(self.root, b"\x00" * 8, self._wbuf()).close())
        total = sum(s.nrec for s in shards)
        if total != sn["count"]:
            raise ValueError("snapshot has %d records, announced %d" % (total, sn["count"]))
        shards[0].first = b"\x00" * 8
        old_s, old_d = self._shards, self._dtags
        self._write_manifest(sn["version"], total, shards, [])
    except OSError as e:
        self._storage_failed(e, (self._p("M.tmp"),))
        raise
    self._snap = None
    _rm(self._p("S"))
    for s in old_s:
        _rm(self._p("s%08x" % s.tag))
    for d in old_d:
        _rm(self._p("d%08x" % d[0]))
    self._shards = shards
    self._dtags = []
    self._log = bytearray(0)
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

