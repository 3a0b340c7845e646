# Shared by the allowlist store tests (no tests of its own): a deterministic card population whose
# expected content at every version is computed, not stored, so checks fit the 128 KB heap.
import gc
import struct
from gv.allowlist import record as R
from gv.allowlist.store import Allowlist
from flashdev import FlashDev, format_and_mount, mount, umount

ROOT = "/flash/al"
SP = 2  # shard pages: small shards, so a few thousand cards make many shards and splits
STEP = (1 << 64) // ((1 << 20) + 1)
ADD = 30  # cards added per delta


def key(i):
    return struct.pack(">Q", (i + 1) * STEP)  # increasing in i: sorted order is index order


def rec(i, gen):
    # the verifier's last nibble is 0: the store keeps 20 bits of it (docs/allowlist-format.md)
    return R.pack(key(i), 1 + (i + gen) % 5, (i + gen) & 1, gen, 3000 + i % 700,
                  bytes([i & 255, gen & 255, 0x70]))


def stored(r):
    """r as the store's ordered walk gives it back: the key cut to the 52 bits the store keeps."""
    b = bytearray(r)
    b[6] &= 0xF0
    b[7] = 0
    return bytes(b)


def touched(n, k):
    """Card indices that delta k (version k -> k+1) changes in a population of n."""
    out = set(range(k, n, 29))
    out.update(range(k + 3, n, 97))
    out.update(range(n + ADD * (k - 1), n + ADD * k))
    return sorted(out)


def state(n, i, v):
    """The record of card i at version v (v1 = the first snapshot), None when absent."""
    r = rec(i, 0) if i < n else None
    for k in range(1, v):
        if n + ADD * (k - 1) <= i < n + ADD * k:
            r = rec(i, k)
        if i < n and i >= k and (i - k) % 29 == 0:
            r = rec(i, k)
        if i < n and i >= k + 3 and (i - k - 3) % 97 == 0:
            r = None
    return r


def delta(n, k):
    for i in touched(n, k):
        yield key(i), state(n, i, k + 1)


def snapshot_chunks(n, v, skip=0, per=100):
    """The records of version v in order, per records a chunk, after the first skip records."""
    buf = bytearray(per * 16)
    k = 0
    j = 0
    for i in range(n + ADD * (v - 1)):
        r = state(n, i, v)
        if r is None:
            continue
        j += 1
        if j <= skip:
            continue
        buf[k * 16:k * 16 + 16] = r
        k += 1
        if k == per:
            yield buf
            k = 0
    if k:
        yield memoryview(buf)[:k * 16]


def count(n, v):
    c = 0
    for i in range(n + ADD * (v - 1)):
        if state(n, i, v) is not None:
            c += 1
    return c


def install(al, n, v):
    al.begin_snapshot(v, count(n, v))
    for c in snapshot_chunks(n, v):
        al.snapshot_chunk(c)
    al.end_snapshot()


def check(al, n, v):
    """Every record of version v, by lookup and by a full ordered walk; raises on any difference."""
    if al.version != v:
        raise AssertionError("version %d, expected %d" % (al.version, v))
    out = bytearray(16)
    top = n + ADD * (v - 1)
    it = al.items()
    seen = 0
    for i in range(top + 3):
        r = state(n, i, v) if i < top else None
        found = al.lookup(key(i), out)
        if r is None:
            if found:
                raise AssertionError("card %d present at v%d" % (i, v))
            continue
        if not found or out != r:
            raise AssertionError("card %d wrong at v%d" % (i, v))
        got = next(it)
        if got != stored(r):
            raise AssertionError("walk differs at card %d" % i)
        seen += 1
    for extra in it:
        raise AssertionError("extra record in walk")
    if al.count != seen:
        raise AssertionError("count %d, walked %d" % (al.count, seen))


def fresh(blocks=64):
    dev = FlashDev(blocks=blocks)
    format_and_mount(dev)
    return dev


def reopen(dev, **kw):
    gc.collect()
    umount()
    mount(dev)
    return Allowlist(ROOT, dev, SP, **kw).open()


def deltas_only(al, nd, per):
    """Deltas 0->1 .. (nd-1)->nd into an empty store that never had a snapshot (no shard files):
    delta k adds cards (k-1)*per .. k*per-1 as rec(i, k)."""
    for k in range(1, nd + 1):
        buf = bytearray(per * 16)
        for j in range(per):
            buf[j * 16:j * 16 + 16] = rec((k - 1) * per + j, k)
        if not al.apply_delta(k - 1, k, buf):
            raise AssertionError("delta %d refused: %s" % (k, al.health))


def check_deltas_only(al, nd, per):
    """Every card of deltas_only(nd, per), by lookup and by an ordered walk; raises on a difference."""
    if al.version != nd:
        raise AssertionError("version %d, expected %d" % (al.version, nd))
    out = bytearray(16)
    n = nd * per
    it = al.items()
    for i in range(n + 3):
        found = al.lookup(key(i), out)
        if i >= n:
            if found:
                raise AssertionError("card %d present" % i)
            continue
        r = rec(i, i // per + 1)
        if not found or out != r:
            raise AssertionError("card %d %s" % (i, "wrong" if found else "not found"))
        if next(it) != stored(r):
            raise AssertionError("walk differs at card %d" % i)
    for extra in it:
        raise AssertionError("extra record in walk")
    if al.count != n:
        raise AssertionError("count %d, expected %d" % (al.count, n))
