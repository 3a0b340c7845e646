"""Allowlist store figures (issue 8), measured in the unix port with -X heapsize=128k on the flash
stand-in: a 2 MiB LittleFS partition holding 256 KB of firmware files beside 100,000 cards, and a
6 MiB partition (8 MB board) with 250,000 cards. Times only ever appear as ratios to a plain
sequential file write of the same bytes on the same stand-in in the same run."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tools import mpy
from tools.bench import metric

# Runs inside micropython in two processes per size (install, then a reboot that runs the rest);
# each prints one JSON line.
MP_COMMON = r"""
import gc, json, os, struct, sys, time, micropython, random
from flashdev import FlashDev, format_and_mount, mount, umount
from gv.allowlist.store import Allowlist
from gv.allowlist import layout

N = int(os.getenv("AL_N"))
BLOCKS = int(os.getenv("AL_BLOCKS"))
FW = int(os.getenv("AL_FW"))
STREAM = int(os.getenv("AL_STREAM"))
random.seed(N)
CHUNK = 64  # records per snapshot chunk (about one MQTT message)


BIG = bytearray(1000 * 16)  # taken first, on a whole heap: snapshot chunks, then the 1000-card delta
IMG = os.getenv("AL_IMG")  # the flash image the install phase leaves for the run phase (a reboot)
EVERY = N // 800
NS = N // EVERY + 1


def used(dev):
    s = os.statvfs("/flash")
    return (s[2] - s[3]) * s[0]


def plain_write(nbytes):
    buf = bytearray(CHUNK * 16)
    t = time.ticks_us()
    with open("/flash/plain", "wb") as f:
        left = nbytes
        while left > 0:
            f.write(buf if left >= len(buf) else memoryview(buf)[:left])
            left -= len(buf)
    dt = time.ticks_diff(time.ticks_us(), t)
    os.remove("/flash/plain")
    return dt


def lo32(i):
    # card i's key is ((i << 32) // N, lo32(i)): any card's key can be made again, no table kept
    return (i * 2654435761 + 12345) & 0xFFFFFFFF


def rec_into(buf, o, hi, lo, i):
    # key8 as two 32-bit halves: small ints only, no bigint garbage per record
    struct.pack_into(">IIBHHBBB", buf, o, hi, lo, 1 + (i % 5 == 4) * 2, 0, 3000 + i % 700, i & 255, 1, 2)



"""

MP_INSTALL = r"""
dev = FlashDev(blocks=BLOCKS, path=IMG)
format_and_mount(dev)
with open("/flash/firmware.bin", "wb") as f:  # the firmware files that share the partition
    blk = bytes(4096)
    for _ in range(FW // 4096):
        f.write(blk)
base_used = used(dev)

# --- snapshot install of N cards, against a plain write of the same bytes
t_plain_snap = plain_write(N * 16)
al = Allowlist("/flash/al", dev).open()
sample = bytearray(NS * 8)  # every EVERY-th key, in one allocation (no heap fragments)
buf = memoryview(BIG)[:CHUNK * 16]
gc.collect()
t = time.ticks_us()
dev.reset_counters()
al.begin_snapshot(1, N)
n = 0
i = 0
while i < N:
    rec_into(buf, n * 16, (i << 32) // N, lo32(i), i)  # sorted; the low half scrambled
    if i % EVERY == 0:
        sample[i // EVERY * 8:i // EVERY * 8 + 8] = buf[n * 16:n * 16 + 8]
    n += 1
    i += 1
    if n == CHUNK or i == N:
        al.snapshot_chunk(memoryview(buf)[:n * 16])
        n = 0
al.end_snapshot()
t_snap = time.ticks_diff(time.ticks_us(), t)
snap_written = dev.bytes_written
assert al.health == "ok" and al.count == N, al.health
store_used = used(dev) - base_used
free_after = os.statvfs("/flash")
free_bytes = free_after[3] * free_after[0]

al = None
umount()
dev.flush()
dev.close()
with open(IMG + ".sample", "wb") as f:
    f.write(sample)
print(json.dumps({"store_used": store_used, "free_after": free_bytes, "t_snap": t_snap,
                  "t_plain_snap": t_plain_snap, "snap_written": snap_written, "base_used": base_used}))
"""

MP_RUN = r"""# --- boot: a fresh store object on a fresh mount; heap of the index
# (a new process: the reader rebooted after the install, nothing of it left in the heap)
with open(IMG + ".sample", "rb") as f:
    sample = f.read()
dev = FlashDev(blocks=BLOCKS, path=IMG)
mount(dev)
base_used = 0
gc.collect()
h0 = gc.mem_alloc()
al = Allowlist("/flash/al", dev)
gc.collect()
h1 = gc.mem_alloc()
al.open()
gc.collect()
h2 = gc.mem_alloc()
index_bytes = len(al._ix)  # the page index: one bytearray

# --- lookups: blocks read, heap
out = bytearray(16)
NL = min(800, NS)
NM = 200
misses = bytearray(NM * 8)
for j in range(NM):
    struct.pack_into(">II", misses, j * 8, random.getrandbits(32), random.getrandbits(32))
kb = bytearray(8)
dev.reset_counters()
hits = 0
gc.collect()
m0 = gc.mem_alloc()
micropython.heap_lock()
try:
    for j in range(NL):
        for t in range(8):
            kb[t] = sample[j * 8 + t]
        if al.lookup(kb, out):
            hits += 1
    for j in range(NM):
        for t in range(8):
            kb[t] = misses[j * 8 + t]
        if al.lookup(kb, out):
            hits += 1
finally:
    micropython.heap_unlock()
m1 = gc.mem_alloc()
reads = dev.reads
assert hits == NL, hits

# --- a delta of 1000 cards against a plain write of 16,000 bytes
t_plain_d = plain_write(1000 * 16)


def big_delta():
    # A function, so that nothing of it outlives the call: module-level code keeps the last
    # values it computed in its frame, and the GC would keep the 16 KB delta alive through them.
    global BIG
    recs = BIG  # packed 16-byte records, as a delta message carries them (a removal is key8 + 8 zero bytes)
    BIG = None
    for j in range(600):
        rec_into(recs, j * 16, 0, 0, j * EVERY)
        recs[j * 16:j * 16 + 8] = sample[j * 8:j * 8 + 8]
        recs[j * 16 + 8] = 3  # blocked
    for j in range(600, 900):
        rec_into(recs, j * 16, random.getrandbits(32), random.getrandbits(32), j)
    for j in range(900, 1000):
        recs[j * 16:j * 16 + 8] = sample[(j - 300) * 8:(j - 300) * 8 + 8]
    gc.collect()
    dev.reset_counters()
    t = time.ticks_us()
    ok = al.apply_delta(1, 2, recs)
    t_delta = time.ticks_diff(time.ticks_us(), t)
    assert ok, al.health
    return t_delta, dev.bytes_written


t_delta, delta_written = big_delta()  # its 16 KB go back to the heap before compaction
# a full compaction (every shard rewritten, that delta's entries folded): worst single step
al.want_compaction()
gc.collect()
dev.reset_counters()
worst = 0
worst_reads = 0
over5 = 0  # steps longer than 5 ms
steps = 0
while True:
    r0 = dev.reads
    t = time.ticks_us()
    more = al.compact_step()
    dt = time.ticks_diff(time.ticks_us(), t)
    if al.health != "ok":
        print("compaction:", al.health, os.statvfs("/flash"))
    if dt > worst:
        worst = dt
        worst_reads = dev.reads - r0
    if dt > 5000:
        over5 += 1
    steps += 1
    if not more:
        break
compact_written = dev.bytes_written

# --- a long stream: deltas of 1..40 cards (3/4 status changes, 1/8 new cards, 1/8 removals, so
# the store stays near N cards), with compaction whenever it is due, as the reader's idle loop
# runs it; long enough that every shard is rewritten more than once (in-place entries fill their
# pages' erased room, then compaction folds them), so its writes are in the figure.
gc.collect()
dev.reset_counters()
v = 2
min_free = os.statvfs("/flash")[3]  # lowest free blocks seen while updates run (statvfs reads only)
changed = 0
nd = 0
fallback = 0  # deltas that did not fit their pages' room and went to a delta file instead
runs = 0  # compaction runs
compact_bytes = 0  # of the stream's flash bytes, those compaction wrote
steps_seen = 0
RING = 96
ring = bytearray(RING * 8)  # keys of cards the stream added: the ones it removes (people leave)
nring = 0
while changed < STREAM:
    m = 1 + random.getrandbits(6) % 40
    d = bytearray(m * 16)
    for j in range(m):
        o = j * 16
        sel = random.getrandbits(3)
        if sel < 6:  # a status change of any card of the first snapshot (its other fields kept)
            i = random.getrandbits(20) % N
            rec_into(d, o, (i << 32) // N, lo32(i), i)
            d[o + 8] = 1 + random.getrandbits(8) % 5
        elif sel == 6:
            rec_into(d, o, random.getrandbits(32), random.getrandbits(32), j)
            q = (nring % RING) * 8
            ring[q:q + 8] = d[o:o + 8]
            nring += 1
        else:
            if nring:
                q = (random.getrandbits(16) % min(nring, RING)) * 8
                d[o:o + 8] = ring[q:q + 8]
            else:
                rm = random.getrandbits(12) % NS
                d[o:o + 8] = sample[rm * 8:rm * 8 + 8]
            for t in range(8, 16):
                d[o + t] = 0
            # a card named twice in one delta is refused: keep keys unique
    for j in range(m):
        for k in range(j):
            if d[j * 16:j * 16 + 8] == d[k * 16:k * 16 + 8]:
                d[j * 16:j * 16 + 8] = struct.pack(">II", random.getrandbits(32), j)
    changed += m
    nd_log = al._nlog
    if not al.apply_delta(v, v + 1, d):
        print("stream: delta", nd, "changed", changed, al.health, "shards", len(al._st), "pages", al._np,
              "log", al._nlog, "deltas", len(al._dtags), os.statvfs("/flash"), used(dev) - base_used)
        print([e[0] for e in os.ilistdir("/flash/al")])
        raise SystemExit(1)
    v += 1
    nd += 1
    if al._nlog > nd_log:
        fallback += 1
    if not nd % 64:
        min_free = min(min_free, os.statvfs("/flash")[3])
    if al.compaction_due():
        runs += 1
        wb0 = dev.bytes_written
        while al.compact_step():
            if not steps_seen % 8:
                min_free = min(min_free, os.statvfs("/flash")[3])
            steps_seen += 1
        compact_bytes += dev.bytes_written - wb0
while al.compact_step():
    min_free = min(min_free, os.statvfs("/flash")[3])
stream_written = dev.bytes_written
used_end = used(dev)
stream_blocks = dev.writes
assert al.health == "ok", al.health

print(json.dumps({
    "n": N, "blocks": BLOCKS, "fw": FW,
    "index_bytes": index_bytes, "store_heap": h2 - h0, "buffers_heap": h1 - h0,
    "lookups": NL + NM, "lookup_reads": reads, "lookup_heap": m1 - m0,
    "t_delta": t_delta, "t_plain_d": t_plain_d, "delta_written": delta_written,
    "compact_written": compact_written, "compact_steps": steps, "compact_worst_us": worst,
    "compact_worst_reads": worst_reads, "compact_over5": over5,
    "stream_changed": changed, "stream_deltas": nd, "stream_written": stream_written,
    "stream_writes": stream_blocks, "min_free_blocks": min_free, "used_end": used_end,
    "stream_fallback": fallback, "stream_compactions": runs, "stream_compact_bytes": compact_bytes, "nor_violations": dev.nor_violations,
    "count_end": al.count, "pages": al._np, "shards": len(al._st),
    "shard_pages": layout.SHARD_PAGES, "mem_peak": micropython.mem_peak(),
}))
"""

FW_BYTES = 256 * 1024  # firmware files beside the store in the 2 MiB partition


def _compile(tmp: Path) -> None:
    """Precompiled .mpy, as a reader runs it: compiling source in the 128k heap would leave the
    bytecode scattered between compiler garbage and measure the compiler, not the store."""
    cross = mpy.mpy_cross_bin()
    srcs = {"al_install.py": None, "al_run.py": None, "flashdev.py": mpy.ROOT / "tools/sim/flashdev.py"}
    for f in ["gv/__init__.py", "gv/compat.py", "gv/fsmount.py", *[f"gv/allowlist/{p.name}" for p in
              sorted((mpy.FIRMWARE / "gv/allowlist").glob("*.py"))]]:
        srcs[f] = mpy.FIRMWARE / f
    (tmp / "al_install.py").write_text(MP_COMMON + MP_INSTALL)
    (tmp / "al_run.py").write_text(MP_COMMON + MP_RUN)
    for rel, src in srcs.items():
        out = tmp / "mpy" / rel.replace(".py", ".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([cross, "-o", str(out), str(src or tmp / rel)], check=True)


def _measure(n: int, blocks: int, stream: int) -> dict:
    # the flash image in RAM where the host has it: a disk's writeback stall inside one timed
    # compaction step would be the host's, not the store's
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        tmp = Path(d)
        _compile(tmp)
        env = {"MICROPYPATH": os.pathsep.join([".frozen", str(tmp / "mpy")]), "AL_N": str(n),
               "AL_BLOCKS": str(blocks), "AL_FW": str(FW_BYTES), "AL_STREAM": str(stream),
               "AL_IMG": str(tmp / "flash.img")}
        out = {"n": n, "blocks": blocks, "fw": FW_BYTES}
        for phase in ("al_install", "al_run"):
            p = mpy.run_mp(["-c", f"import {phase}"], heapsize="128k", timeout=300, env=env)
            if p.returncode != 0:
                raise RuntimeError(f"allowlist bench {phase} at {n} cards failed:\n{p.stdout}\n{p.stderr}")
            out.update(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


def run() -> dict:
    # streams long enough that compaction has rewritten every shard several times over
    a = _measure(100_000, 512, 120_000)  # ESP32 4 MB layout: 2 MiB LittleFS
    b = _measure(250_000, 1536, 120_000)  # 8 MB board: 6 MiB LittleFS
    out = {}
    for tag, r in (("100k", a), ("250k", b)):
        n = r["n"]
        out[f"allowlist.bytes_per_card_{tag}"] = metric(
            round(r["store_used"] / n, 2), "bytes",
            "<= 16 (13 B on a flash page; this is flash blocks used by the store incl. page headers, "
            "the pages' erased room for in-place deltas, manifest, LittleFS metadata)")
        out[f"allowlist.lookup_blocks_read_{tag}"] = metric(
            round(r["lookup_reads"] / r["lookups"], 3), "reads/lookup", "1 (hits and misses, after boot)")
        out[f"allowlist.index_heap_bytes_{tag}"] = metric(
            r["index_bytes"], "bytes", "a few KB for 100k (page index only)")
        out[f"allowlist.store_heap_bytes_{tag}"] = metric(
            r["store_heap"], "bytes", "whole open store: index, delta log, two 4 KB page buffers")
        out[f"allowlist.lookup_heap_bytes_{tag}"] = metric(
            r["lookup_heap"], "bytes", "0 (lookups ran under heap_lock)")
        out[f"allowlist.flash_bytes_per_changed_card_{tag}"] = metric(
            round(r["stream_written"] / r["stream_changed"], 1), "bytes",
            f"<= 64 (stream of {r['stream_deltas']} deltas of 1-40 cards, {r['stream_changed']} "
            f"changes: 3/4 status, 1/8 new, 1/8 removed; {r['stream_compactions']} compaction runs "
            f"included; {r['stream_fallback']} deltas did not fit in place)")
        out[f"allowlist.delta_1000_apply_ratio_{tag}"] = metric(
            round(r["t_delta"] / r["t_plain_d"], 2), "x plain write", "time / plain 16,000-byte write")
        out[f"allowlist.compact_step_worst_ms_{tag}"] = metric(
            round(r["compact_worst_us"] / 1000, 2), "ms (unix port)",
            f"a few ms per step ({r['compact_steps']} steps of at most 64 records or one page "
            f"write; {r['compact_over5']} over 5 ms; the worst read the flash {r['compact_worst_reads']} times)")
        out[f"allowlist.snapshot_install_ratio_{tag}"] = metric(
            round(r["t_snap"] / r["t_plain_snap"], 2), "x plain write",
            f"time / plain {n * 16}-byte write")
    out["allowlist.bytes_per_card"] = out["allowlist.bytes_per_card_100k"]
    out["allowlist.lookup_blocks_read"] = out["allowlist.lookup_blocks_read_100k"]
    out["allowlist.index_heap_bytes"] = out["allowlist.index_heap_bytes_100k"]
    out["allowlist.lookup_heap_bytes"] = out["allowlist.lookup_heap_bytes_100k"]
    out["allowlist.flash_bytes_per_changed_card"] = out["allowlist.flash_bytes_per_changed_card_100k"]
    out["allowlist.delta_1000_apply_ratio"] = out["allowlist.delta_1000_apply_ratio_100k"]
    out["allowlist.snapshot_100k_install_ratio"] = out["allowlist.snapshot_install_ratio_100k"]
    # Capacity: 100k cards were kept through the whole update stream (deltas, compactions, shard
    # splits) in the 2 MiB partition beside 256 KB of firmware; the lowest free space seen while
    # updates ran is what more cards could have used, at the flash bytes a card took at the end.
    per_card = (a["used_end"] - a["base_used"]) / a["count_end"]
    spare = max(0, a["min_free_blocks"] - 2) * 4096  # 2 blocks kept for LittleFS itself
    cap = a["count_end"] + int(spare / per_card)
    out["allowlist.capacity_cards_2mb"] = metric(
        cap, "cards", ">= 100,000 (2 MiB partition beside 256 KB of firmware files, updates still "
        "power-cut safe; a full-replacement snapshot needs the new copy beside the old)")
    out["allowlist.delta_1000_flash_bytes_per_card_100k"] = metric(
        round(a["delta_written"] / 1000, 1), "bytes", "a 1,000-card delta programmed in place")
    out["allowlist.nor_violations"] = metric(
        a["nor_violations"] + b["nor_violations"], "programs", "0: nothing ever programmed over unerased flash")
    out["allowlist.min_free_blocks_during_updates_100k"] = metric(
        a["min_free_blocks"], "blocks", "> 0: updates never ran the 2 MiB partition dry")
    out["allowlist.bytes_per_card_after_updates_100k"] = metric(
        round(per_card, 2), "bytes", "flash per card once shards have grown by a page")
    return out


if __name__ == "__main__":
    for k, v in run().items():
        print(k, v["value"], v["unit"])
