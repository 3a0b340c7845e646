"""The reader's heap on 32-bit (issue 14 item 4): the reader's own .mpy modules in the 32-bit
MicroPython for WebAssembly (tools/wasm32.py), with stub machine/socket/ssl, built as gv.app's
main() builds it (board file, config, Reader(): store opened, event log, lockouts, outputs, keypad,
PN532 driver on a simulated chip, gate runner, Wi-Fi supervisor, sync engine with its MQTT client).

- esp32.reader_objects_heap_bytes_32: the live heap after boot with a 100,000-card store, less the
  heap the loaded modules take (their .mpy bytecode in RAM, which frozen firmware keeps in flash:
  reported apart as esp32.reader_code_mpy_heap_bytes_32).
- esp32.reader_working_peak_bytes_32: the most any one step allocated on top of that, garbage
  included (this port never collects inside a step, so it is the step's high-water mark with no
  collection at all): steps are one decision (a card held until the relay is on or it is refused,
  taken away, the door closed), one received message of a 100,000-card rebuild or of a
  1,000-change catch-up (packet buffer, MQTT parse, unseal, inflate, store), one compaction step.
  Every rebuild message carries 128 records whatever the card count, and the per-kind maxima are
  in bench.json so that independence is visible.
The store has no block device in this port (LittleFS is not in it): it keeps its shard pages as
files, which costs it a second 4 KB page buffer and a 1,024-page index instead of the 512 pages
of a 2 MiB partition. Those two differences are taken out of the objects figure (named in the
notes), so the figure is the ESP32's layout. The same lack puts two steps on the file-store path,
not the board's: the rebuild's last message (end_snapshot's index build reads every shard file)
and the catch-up's deltas (a board programs most of them in place). Their figures are reported
(esp32.step_peak_bytes_32.*_file_store) and left out of the working peak: measuring them on the
board's path needs LittleFS in the 32-bit port (not done).
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import host_sync  # noqa: F401 - puts the firmware (gv) on the path
from gv.allowlist import record
from gv.allowlist.layout import IX
from gv.sync import protocol as P
from host_sync import wire
from tools import wasm32
from tools.bench import metric

ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("GV_BENCH_HEAP32_CARDS", "100000"))
DECISIONS = 1000
CHANGES = 1000
SITE, RID = "site-a", "gate-01"
NONCE = bytes(range(1, 9))
TARGET = 40_000
PARTS = 14  # reader_probe.PARTS
# boot.py remounts the partition with fsmount.py's settings: a 2,048-byte read cache and prog
# cache (4 x 512) and a lookahead bitmap of 512 blocks, from the GC heap (this port has no LittleFS)
LFS_MOUNT = 2 * 2048 + 64
BLOCKS_2MIB = 512  # the ESP32_GENERIC 4 MB layout's LittleFS partition, in 4 KB blocks


def _modules() -> list[str]:
    """Every firmware module but the boot-time filesystem helper (boot.py's, gone by then)."""
    fw = ROOT / "firmware"
    mods = []
    for f in sorted((fw / "gv").rglob("*.py")):
        m = ".".join(f.relative_to(fw).with_suffix("").parts)
        m = m[:-len(".__init__")] if m.endswith(".__init__") else m
        if m not in ("gv.fsmount",):
            mods.append(m)
    return mods


def _config(secret: bytes) -> dict:
    fake_ca = base64.encodebytes(random.Random(5).randbytes(780)).decode()  # a site CA's size
    return {"reader_id": RID, "site": SITE, "secret": secret.hex(),
            "site_keys": {"card": "00" * 16, "pin": "11" * 16},
            "wifi": {"ssid": "site-wifi", "password": "x" * 16},
            "broker": {"host": "127.0.0.1", "port": 8883, "user": RID, "password": "p" * 24,
                       "tls": True, "server_name": "broker.site-a",
                       "ca": "-----BEGIN CERTIFICATE-----\n" + fake_ca + "-----END CERTIFICATE-----\n"},
            "gate": {"hold_ms": 500, "open_ms": 3000, "pin_policy": "card"}}


def _publish(topic: str, msg: bytes) -> bytes:
    """An MQTT PUBLISH body at QoS 0: topic length, topic, payload."""
    t = topic.encode()
    return len(t).to_bytes(2, "big") + t + msg


def _write_msgs(folder: Path, msgs: list[bytes]) -> None:
    folder.mkdir(parents=True)
    for i, m in enumerate(msgs):
        (folder / ("%05d" % i)).write_bytes(m)


def _make_data(tmp: Path, secret: bytes) -> tuple[list[str], int, int]:
    rng = random.Random(14)
    key = P.Key(secret, RID)
    keyer = record.Keyer(bytes(16), bytes([0x11]) * 16)
    topic = P.topic(SITE, RID, "in")
    ctr = [0]

    def seal(typ: int, body: bytes) -> bytes:
        ctr[0] += 1
        return _publish(topic, P.seal(key, P.DIR_HOST, typ, NONCE, ctr[0], body))

    # decision cards: 4- and 7-byte UIDs; 80% active, 10% blocked, 10% not on the list
    uids, recs = [], {}
    for i in range(DECISIONS):
        uid = bytes([0x04]) + rng.randbytes(3 if i % 2 else 6)
        uids.append(uid.hex())
        if i % 10 == 9:
            continue
        k = bytes(keyer.uid_key(uid, len(uid), bytearray(8)))
        st = record.BLOCKED if i % 10 == 8 else record.ACTIVE
        recs[k] = record.pack(k, st, 0, 0, record.NO_END)
    while len(recs) < N:
        k = rng.randbytes(8)
        recs[k] = record.pack(k, record.ACTIVE, 0, 0, record.NO_END)
    records = wire.records_sorted(recs.values())
    snaps = [seal(P.T_SNAP, wire.snap_body(1, 1, records, o, wire.SNAP_RECORDS,
                                           flags=P.F_ASK if (o // wire.SNAP_RECORDS) % 8 == 7 else 0))
             for o in range(0, N, wire.SNAP_RECORDS)]
    _write_msgs(tmp / "msgs" / "snap", snaps)
    # 1,000 changes while offline: status changes, new cards, removals; one version each
    keys = list(recs)
    changes = []
    for v in range(2, 2 + CHANGES):
        r = v % 4
        if r == 0:
            k = rng.randbytes(8)
            changes.append((v, k, record.pack(k, record.ACTIVE, 0, 0, record.NO_END)))
        elif r == 1:
            changes.append((v, keys[rng.randrange(DECISIONS, N)], None))
        else:
            k = keys[rng.randrange(DECISIONS, N)]
            changes.append((v, k, record.pack(k, record.SUSPENDED, 0, 0, record.NO_END)))
    head = 1 + CHANGES
    deltas = [seal(P.T_DELTA, body) for _, _, body in wire.delta_bodies(head, 1, changes)]
    _write_msgs(tmp / "msgs" / "delta", deltas)
    return uids, len(snaps), len(deltas)


def measure(tmp: Path) -> dict:
    """Run the probe; returns its RESULT dict (also used by nothing else: benches only)."""
    secret = bytes(range(32))
    fw = wasm32.compile_firmware(tmp / "fw", {
        "reader_probe.py": ROOT / "tools/wasm/reader_probe.py",
        "pn532_sim.py": ROOT / "tools/sim/pn532_sim.py",
        "machine.py": ROOT / "tools/wasm/stubs/machine.py",
        "wasm_port.py": ROOT / "tools/wasm/stubs/wasm_port.py",
        "socket.py": ROOT / "tools/wasm/stubs/socket.py",
        "ssl.py": ROOT / "tools/wasm/stubs/ssl.py",
        "cryptolib.py": ROOT / "tools/wasm/stubs/cryptolib.py",
    })
    uids, nsnap, ndelta = _make_data(tmp, secret)
    board = json.loads((ROOT / "boards/esp32-devkitc-i2c.json").read_text())
    cfg = _config(secret)
    stages = [
        "import gc\nimport reader_probe as P\nP.mark('empty')",
        "P.prepare(%r, %r)\nP.scrub()" % (board, cfg),
        "P.mark('before_code')",
        "P.load(%r)\nP.scrub()" % _modules(),
        "P.mark('code')",
        "P.boot()\nP.scrub()",
        "P.mark('objects_empty_store')\nP.check_modules()\nP.session(%r)" % NONCE.hex(),
        ("P.message('/msgs/snap', 'rebuild_message')", nsnap - 1),
        "P.message('/msgs/snap', 'rebuild_switch_file_store')",  # end_snapshot: see the notes
        "P.store_figures('rebuilt')\nP.drop()\nP.scrub()",
        "P.mark('after_drop')",
        "P.boot()\nP.scrub()",  # a reboot: the 100,000-card store opened from flash
        "P.mark('objects')\nP.store_figures()\nP.part_start()",
        ("P.part_drop()\nP.scrub()", PARTS + 1),
        "P.part_rest()\nP.drop()\nP.scrub()",
        "P.mark('after_all')",  # the Reader gone: code and module state only
        "P.boot()",
        "P.gate_setup(%r)" % uids,
        ("P.decide()", DECISIONS),
        "P.session(%r)\nP.S['msg'] = 0" % NONCE.hex(),
        ("P.message('/msgs/delta', 'catchup_message_file_store')", ndelta),
        ("P.compact()", 200),
        "P.store_figures()\nP.mark('end')\nP.report()",
    ]
    proc = wasm32.run(stages, copy=[(fw, "/fw"), (tmp / "msgs", "/msgs")], path=["/fw"],
                      timeout=1800)
    res = wasm32.results(proc)
    if res.get("spoilt"):
        raise RuntimeError("steps saw a collection inside them: %r" % res["spoilt"][:5])
    res["n_snap"], res["n_delta"] = nsnap, ndelta
    return res


def run() -> dict:
    why = wasm32.install()
    if why:
        return {"esp32.reader_heap_32_skipped": metric(0, "skipped", why)}
    tmp = Path(tempfile.mkdtemp(prefix="gv-bench-heap32-"))
    try:
        res = measure(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    st = res["store"]
    ix = IX  # index bytes a page
    # the file-backed store's extras over the ESP32's block-device store (see the docstring)
    extra = (st["rbuf"] if st["rbuf_separate"] else 0) + st["ix"] - BLOCKS_2MIB * ix
    # against the heap once the whole Reader is gone (the 'code' mark right after the imports can
    # hold an import's garbage that a stale pointer kept: it would be counted out of the objects)
    objects = res["objects"] - res["after_all"] - extra + LFS_MOUNT
    steps = res["steps"]
    # steps whose store work takes the file-store path here, not the block-device path of an
    # ESP32 (the last rebuild message's index build, deltas that a board programs in place):
    # reported, not in the working peak
    faithful = [k for k in steps if not k.endswith("_file_store")]
    peak_kind = max(faithful, key=lambda k: steps[k][4])
    peak = steps[peak_kind][4]
    parts = dict(res["parts"])
    parts["allowlist"] -= extra
    out = {
        "esp32.reader_objects_heap_bytes_32": metric(
            objects, "bytes", "objects + working peak <= %d (32-bit MicroPython 1.27 for wasm; "
            "100,000-card store, ESP32 layout: %d B of file-store buffers out, %d B of LittleFS "
            "mount caches in)" % (TARGET, extra, LFS_MOUNT)),
        "esp32.reader_working_peak_bytes_32": metric(
            peak, "bytes", "worst step: %s, with %d open file(s)' 2 KB LittleFS caches; "
            "objects + peak = %d (target <= %d); decisions and rebuild chunks" % (
                peak_kind, steps[peak_kind][5], objects + peak, TARGET)),
        "esp32.reader_objects_plus_peak_bytes_32": metric(
            objects + peak, "bytes", "<= %d" % TARGET),
        "esp32.reader_code_mpy_heap_bytes_32": metric(
            res["code"] - res["before_code"], "bytes",
            "all %d firmware modules' .mpy bytecode loaded into RAM (frozen firmware keeps it in "
            "flash; not in the figures above)" % len(_modules())),
        "esp32.reader_objects_empty_store_bytes_32": metric(
            res["objects_empty_store"] - res["after_all"] - extra + LFS_MOUNT, "bytes",
            "the same objects right after a first boot with an empty store"),
    }
    for name, b in parts.items():
        out["esp32.reader_objects_32.%s" % name] = metric(
            b, "bytes", "what this part of Reader() alone keeps (parts dropped in this order)")
    out["esp32.reader_objects_32.rest"] = metric(
        res["parts_rest"] + res["code"] - res["after_all"], "bytes",
        "the Reader instance, the watchdog, app globals")
    out["esp32.reader_objects_32.littlefs_mount"] = metric(
        LFS_MOUNT, "bytes", "boot.py's remount: read and prog caches (2 x 2,048) and lookahead")
    for kind, (n, mx, total, at, e, files) in sorted(steps.items()):
        out["esp32.step_peak_bytes_32.%s" % kind] = metric(
            e, "bytes", "max of %d steps with %d file cache(s) (allocated alone: max %d at step "
            "%d, mean %d)%s" % (n, files, mx, at, total // max(n, 1),
                                "; file-store path, not in the working peak"
                                if kind not in faithful else ""))
    out["esp32.rebuild_store_after_32"] = metric(
        st["count"], "cards", "store after the rebuild and catch-up (%s); %d decisions, %d granted"
        % (st["health"], DECISIONS, res["gate"]["grants"]))
    return out
