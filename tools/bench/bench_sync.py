"""Sync figures (issue 5), measured end to end: a MicroPython reader (unix port, -X heapsize=128k,
firmware precompiled to .mpy as a board runs it, real Allowlist and EventLog on the 2 MiB flash
stand-in, TLS with a pinned CA) against a real mosquitto and the host engine over paho.

- sync.rebuild_100k_wire_bytes_per_card: MQTT bytes both ways (PUBLISH/PUBACK framing, topics,
  envelopes, the reader's SYNCs) counted by the reader's client during a 100,000-card rebuild,
  per card; before TLS record framing (~29 B per message with AES-GCM, i.e. ~0.3 B per card).
  The chunks carry the store's 13-byte flash records; the figure for 16-byte records (SNAP_MAX a
  chunk) is computed for comparison.
- sync.reader_heap_peak_bytes: the highest live heap (gc.collect() then gc.mem_alloc(), right
  after every received message, its buffers still referenced) during that rebuild, TLS on. The
  reader process holds the allowlist, the event log, the sync engine, the MQTT client and a 5 ms
  lookup loop standing in for the gate. It runs with -X heapsize=256k because the .mpy bytecode
  of those modules alone fills most of 128k (sync.reader_heap_base_bytes: everything loaded and
  opened, before the network); sync.reader_heap_sync_working_bytes is what syncing adds on top.
  On a board the firmware is frozen (bytecode in flash), and ESP32's mbedtls buffers live in the
  IDF heap, not MicroPython's, so only the working set and the stores' RAM compete for ~100 KB.
- sync.catchup_1000_changes_flash_bytes: bytes written to flash while a reader that was offline
  through 1,000 single-card changes (on a 10,000-card list) catches up.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import host_sync  # noqa: F401
from gv.sync import protocol as P
from host_sync import wire
from host_sync.syncer import HostSync
from tests.broker import Broker
from tests.sync_support import (MemData, ReaderProc, compile_mpy, make_record, new_secret,
                                reader_config)
from tools.bench import metric

# the firmware's LittleFS read size, which the reader mounts its flash with (tools/sim/flashdev.py
# mounts through gv.fsmount.lfs, as boot.py remounts a board's partition): named in the figures
READ_SIZE = int(re.search(r"^READ_SIZE = (\d+)", (Path(__file__).resolve().parents[2] /
                          "firmware/gv/fsmount.py").read_text(), re.M).group(1))

SITE = "site-a"
N = 100_000
LOG_CHANGES = 500  # the 100k catch-up through the log (nothing in place)


def _raw_bytes_per_card(records: list[bytes], window: int = 8) -> float:
    topic = len(P.topic(SITE, "gate-01", "in"))
    total = 0
    chunks = 0
    for o in range(0, len(records), P.SNAP_MAX):
        n = min(P.SNAP_MAX, len(records) - o)
        body = P.snap_body(1, 1, len(records), o, n, b"".join(records[o:o + n]))
        n = P.HDR + len(body) + P.MAC_LEN + topic + 4
        total += 1 + (1 if n < 128 else 2) + n + 4  # + PUBACK
        chunks += 1
    total += (chunks // window + 1) * (P.HDR + 12 + P.MAC_LEN + topic + 8 + 4)  # SYNCs
    return total / len(records)


def _explain(what: str, s: dict) -> None:
    # what the run's worst gate-loop gaps held, and its longest store steps: time (us of its own)
    # and flash blocks read
    print("bench sync: %s: worst gap %d ms holding [reads, timed calls ms, message ms, "
          "messages, connects] %s; worst gap with flash reads %d ms holding %s" % (
              what, s["maxgap_own"], s["maxgap_in"], s["maxgap_flash"], s["maxgap_flash_in"]),
          file=sys.stderr)
    print("bench sync: %s: longest calls (us) %s, most blocks read %s" % (
        what, s["optime_us"], s["opreads"]), file=sys.stderr)
    if s.get("fscalls"):  # GV_SYNC_FSCALLS=1 in the environment: each LittleFS call measured
        print("bench sync: %s: worst LittleFS calls [blocks read, us]: %s" % (what, s["fscalls"]),
              file=sys.stderr)


def run() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="gv-bench-sync-"))
    # the flash images in RAM where the host has it: a disk's writeback stall inside a timed gap
    # would be the host's, not the reader's (as in bench_allowlist)
    shm = Path(tempfile.mkdtemp(prefix="gv-bench-sync-",
                                dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        mpy_dir = compile_mpy(tmp / "mpy")
        rng = random.Random(11)
        secret = new_secret()
        records = [make_record(rng) for _ in range(N)]
        with Broker(readers=[("gate-01", SITE)], tls=True) as b:
            data = MemData({"gate-01": (SITE, secret)})
            data.change(SITE, records)
            host = HostSync(data, "127.0.0.1", b.plain_port, b.host_user, b.host_password)
            host.start()
            cfg = reader_config("gate-01", SITE, b.reader_broker_config("gate-01"), secret)
            image = str(shm / "flash.img")
            r = ReaderProc(tmp / "r", cfg, heapsize="256k", mpy_dir=mpy_dir, image=image,
                           live_heap=True)
            try:
                t0 = time.monotonic()
                s = r.wait(lambda s: s["version"] == 1, timeout=600, what="100k rebuild")
                rebuild_s = time.monotonic() - t0
                maxgap = s["maxgap"]
                assert s["count"] == N, s
                wire_per_card = (s["rx_bytes"] + s["tx_bytes"]) / N
                heap_peak, heap_base = s["heap_peak"], s["heap_base"]
                r.ctl("quit")
                r.proc.wait(30)
            finally:
                r.close()
            # the same rebuild again with no heap sampling: the gate loop's worst gap as a reader
            # has it (its own collections, none forced by this bench after every message)
            r = ReaderProc(tmp / "rg", cfg, heapsize="256k", mpy_dir=mpy_dir,
                           image=str(shm / "flash-gap.img"))
            try:
                s = r.wait(lambda s: s["version"] == 1, timeout=600, what="100k rebuild (gap)")
                assert s["count"] == N, s
                maxgap_plain = s["maxgap"]
                maxgap_own = s["maxgap_own"]
                rebuild_flash = s["maxgap_flash"]
                _explain("rebuild", s)
                # then a compaction of every shard of the 100k store (the engine's compactor task)
                r.ctl("resetgap")
                r.ctl("compactall")
                time.sleep(1)
                s = r.wait(lambda s: not s["compact_due"] and s["optime_us"].get("compact_step"),
                           timeout=900, what="100k compaction")
                compact_own, compact_wall = s["maxgap_own"], s["maxgap"]
                compact_flash = s["maxgap_flash"]
                _explain("compaction", s)
                r.ctl("quit")
                r.proc.wait(30)
            finally:
                r.close()
            # the 100k store on a board with encrypted flash (nothing in place): 500 changes
            # while it was off go through the 256-record delta log, which fills; each time the
            # reader answers busy, its compactor folds the log (nearly every page at 100k) and
            # it asks again
            for i in range(LOG_CHANGES):
                data.change(SITE, [make_record(rng)] if i % 3 else
                            [bytes(records[i][:8]) + bytes([3]) + records[i][9:]])
            host.push(SITE)
            r = ReaderProc(tmp / "rl", cfg, heapsize="256k", mpy_dir=mpy_dir,
                           image=str(shm / "flash-gap.img"), in_place=False)
            try:
                t0 = time.monotonic()
                s = r.wait(lambda s: s["version"] == data.current_version(SITE), timeout=1200,
                           what="100k catch-up through the log")
                log_s = time.monotonic() - t0
                log_own, log_wall = s["maxgap_own"], s["maxgap"]
                log_busy = s["rejected"].get(str(P.E_BUSY), 0)
                assert s["rebuilds"] == 0 and log_busy, s
                _explain("catch-up through the log", s)
                r.ctl("quit")
                r.proc.wait(30)
            finally:
                r.close()
            # catch-up: 10,000 cards, reader offline through 1,000 changes
            data2 = MemData({"gate-01": (SITE, secret)})
            base = records[:10_000]
            data2.change(SITE, base)
            host.stop()
            host = HostSync(data2, "127.0.0.1", b.plain_port, b.host_user, b.host_password)
            host.start()
            image2 = str(shm / "flash2.img")
            r = ReaderProc(tmp / "r2", cfg, heapsize="256k", mpy_dir=mpy_dir, image=image2)
            try:
                r.wait(lambda s: s["version"] == 1, timeout=120, what="10k rebuild")
                r.ctl("quit")
                r.proc.wait(30)
            finally:
                r.close()
            for i in range(1000):
                data2.change(SITE, [make_record(rng)] if i % 4 else
                             [bytes(base[i][:8]) + bytes([3]) + base[i][9:]])
            r = ReaderProc(tmp / "r3", cfg, heapsize="256k", mpy_dir=mpy_dir, image=image2)
            try:
                s = r.wait(lambda s: s["version"] == data2.current_version(SITE), timeout=120,
                           what="catch-up")
                catchup_flash = s["flash_written"]
                catchup_deltas = s["deltas"]
                # and the compaction those deltas make due (the engine's compactor, 1 s idle)
                s = r.wait(lambda s: not s["compact_due"], timeout=180, what="compaction")
                catchup_gap = s["maxgap"]
                catchup_own = s["maxgap_own"]
                catchup_flash = s["maxgap_flash"]
                _explain("catch-up", s)
            finally:
                r.close()
            host.stop()
        raw = _raw_bytes_per_card(sorted(records))
        return {
            "sync.rebuild_100k_wire_bytes_per_card": metric(
                round(wire_per_card, 2), "bytes/card",
                "<= 16 (13-byte flash records, %d a chunk; 16-byte records would be %.2f)"
                % (wire.SNAP_RECORDS, raw)),
            "sync.rebuild_100k_wire_bytes_per_card_raw": metric(
                round(raw, 2), "bytes/card", "the same rebuild in 16-byte records, %d a chunk "
                "(computed)" % P.SNAP_MAX),
            "sync.reader_heap_peak_bytes": metric(
                heap_peak, "bytes", "whole reader process, live, during the 100k rebuild; "
                "128k target needs frozen firmware (see base)"),
            "sync.reader_heap_base_bytes": metric(
                heap_base, "bytes", "code (.mpy in RAM) + stores + engine, before connecting"),
            "sync.reader_heap_sync_working_bytes": metric(
                heap_peak - heap_base, "bytes", "what the link and a rebuild add (small)"),
            "sync.rebuild_100k_s": metric(
                round(rebuild_s, 1), "s (unix port, loopback, TLS)",
                "reader start to 100k cards installed; heap sampled after every message"),
            "sync.rebuild_100k_gate_loop_max_gap_ms": metric(
                maxgap_own, "ms", "<= 50: worst gap of the 5 ms lookup loop during a 100k "
                "rebuild, no heap sampling, less the time Linux kept the process off a CPU "
                "(schedstat run-queue wait: the bench machine is shared)"),
            "sync.rebuild_100k_gate_loop_max_gap_ms_wall": metric(
                maxgap_plain, "ms", "the same gap in wall time, run-queue waits included"),
            "sync.rebuild_100k_gate_loop_max_gap_ms_sampled": metric(
                maxgap, "ms", "wall gap in the heap-sampling run (this bench's gc.collect "
                "after every message is in it)"),
            "sync.compaction_100k_gate_loop_max_gap_ms": metric(
                compact_own, "ms", "<= 50: the same (less run-queue waits) while the engine's "
                "compactor rewrites every shard of the 100k store"),
            "sync.compaction_100k_gate_loop_max_gap_ms_wall": metric(
                compact_wall, "ms", "the same in wall time"),
            "sync.catchup_through_log_100k_gate_loop_max_gap_ms": metric(
                log_own, "ms", "<= 50: the same (less run-queue waits) while a 100k reader with "
                "nothing in place (encrypted flash) catches up %d changes through its delta log: "
                "%d times busy, the log folded step by step, %.0f s in all (unix port)"
                % (LOG_CHANGES, log_busy, log_s)),
            "sync.catchup_through_log_100k_gate_loop_max_gap_ms_wall": metric(
                log_wall, "ms", "the same in wall time"),
            "sync.catchup_gate_loop_max_gap_ms": metric(
                catchup_own, "ms", "<= 50: the same (less run-queue waits) through the "
                "1,000-change catch-up and the compaction it makes due"),
            "sync.catchup_gate_loop_max_gap_ms_wall": metric(
                catchup_gap, "ms", "the same in wall time"),
            "sync.rebuild_100k_gate_loop_max_flash_gap_ms": metric(
                rebuild_flash, "ms", "the worst of those gaps (less run-queue waits) that read "
                "the flash: what the store's steps and LittleFS cost the gate (READ_SIZE %d, "
                "gv/fsmount.py)" % READ_SIZE),
            "sync.compaction_100k_gate_loop_max_flash_gap_ms": metric(
                compact_flash, "ms", "the same during the 100k compaction"),
            "sync.catchup_gate_loop_max_flash_gap_ms": metric(
                catchup_flash, "ms", "the same through the catch-up and its compaction"),
            "sync.catchup_1000_changes_flash_bytes": metric(
                catchup_flash, "bytes",
                "1,000 changes in %d delta messages, 10k-card list" % catchup_deltas),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
