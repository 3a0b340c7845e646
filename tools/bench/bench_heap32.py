"""The reader's heap on 32-bit (issue 14 item 4): the reader's own .mpy modules in the 32-bit
MicroPython for WebAssembly (tools/wasm32.py), with stub machine/socket/ssl, built as gv.app's
main() builds it (board file, config, Reader(): store opened, event log, lockouts, outputs, keypad,
PN532 driver on a simulated chip, gate runner, Wi-Fi supervisor, sync engine with its MQTT client).

- esp32.reader_objects_heap_bytes_32: the live heap after boot with a 100,000-card store, less the
  heap the loaded modules take (their .mpy bytecode in RAM, which frozen firmware keeps in flash:
  reported apart as esp32.reader_code_mpy_heap_bytes_32).
- esp32.reader_working_peak_bytes_32: the largest step figure on top of that (what the step
  carried in, what it allocated, garbage included: this port never collects inside a step, so it
  is the step's high-water mark with no collection at all, and its files' caches): steps are one
  decision (a card held until the relay is on or it is refused,
  taken away, the door closed), one received message of a 100,000-card rebuild (its last, the
  switch, apart) or of a 1,000-change catch-up (packet buffer, MQTT parse, unseal, inflate, store), one compaction step,
  and a second catch-up with nothing in place, as on encrypted flash: its messages through the
  delta log and the fold steps when the log fills (esp32.reader_catchup_through_log_32).
  Every rebuild message carries 128 records whatever the card count, and the per-kind maxima are
  in bench.json so that independence is visible.
This port has no LittleFS: the store runs on tools/wasm/stubs/flashfs.py, LittleFS's data layout
(data blocks with their CTZ pointers, blocks erased when allocated, atomic rename) on a RAM block
device of 512 x 4 KB (the ESP32_GENERIC 2 MiB partition), which the store finds as
esp32.Partition as on the board: its index is sized by those 512 blocks, it reads pages straight
from the device and programs small deltas into the pages' erased room (the catch-up; the share
that went in place is esp32.reader_catchup_in_place_32). A step's figure is the live heap it
carries beyond its phase's baseline (a rebuild's shard table and open writer), plus what it
allocated, plus one LittleFS file cache for each file it opens or holds open; the mount's two
caches and lookahead are added to the objects. Cache and lookahead sizes come from
firmware/gv/fsmount.py's settings (read from its source: it imports vfs, which CPython lacks).
What the stand-in itself allocates is reported (esp32.heap32_flashfs_cost.*): an open file's
object (standing in for LittleFS's own), nothing per read, write or block read.
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
BLOCKS_2MIB = 512  # the ESP32_GENERIC 4 MB layout's LittleFS partition, in 4 KB blocks
BLOCK = 4096
IN_PLACE_MIN = 0.8  # the catch-up's deltas programmed in place, at least (else the bench fails)
LOG_STEPS = 20_000  # calls of the catch-up through the log at most: its messages and fold steps
LOG_CHANGES = 500  # its changes: the 256-record log folded once or twice (at 100,000 cards a fold
# rewrites nearly every page, ~2,000 steps: every shard holds some of 256 random keys)


def lfs_settings(path: Path = ROOT / "firmware/gv/fsmount.py") -> dict:
    """fsmount.py's LittleFS settings and what they cost in the GC heap, read from its source
    (its module-level int constants and lookahead_bytes(); it imports vfs, absent on CPython).
    MicroPython's extmod/vfs_lfsx.c: cache_size = min(block, 4 * max(read_size, prog_size));
    the mount takes a read cache, a prog cache and the lookahead buffer; each open file a cache."""
    import ast

    tree = ast.parse(path.read_text())
    ns: dict = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, int)):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    ns[t.id] = node.value.value
        elif isinstance(node, ast.FunctionDef) and node.name == "lookahead_bytes":
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), ns)
    read, prog = ns["READ_SIZE"], ns["PROG_SIZE"]
    cache = min(BLOCK, 4 * max(read, prog))
    look = ns["lookahead_bytes"](BLOCKS_2MIB)
    return {"read_size": read, "prog_size": prog, "cache": cache, "lookahead": look,
            "mount": 2 * cache + look}


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


def _make_data(tmp: Path, secret: bytes) -> tuple[list[str], int, int, int]:
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
    # LOG_CHANGES more for the catch-up through the log (as on encrypted flash): status changes and
    # new cards (no removals: a key removed above is not removed twice)
    more = []
    for v in range(head + 1, head + 1 + LOG_CHANGES):
        if v % 3 == 0:
            k = rng.randbytes(8)
            more.append((v, k, record.pack(k, record.ACTIVE, 0, 0, record.NO_END)))
        else:
            k = keys[rng.randrange(DECISIONS, N)]
            more.append((v, k, record.pack(k, record.BLOCKED, 0, 0, record.NO_END)))
    logd = [seal(P.T_DELTA, body)
            for _, _, body in wire.delta_bodies(head + LOG_CHANGES, head, more)]
    _write_msgs(tmp / "msgs" / "delta_log", logd)
    return uids, len(snaps), len(deltas), len(logd)


def measure(tmp: Path, cache: int) -> dict:
    """Run the probe; returns its RESULT dict (also used by nothing else: benches only)."""
    secret = bytes(range(32))
    fw = wasm32.compile_firmware(tmp / "fw", {
        "reader_probe.py": ROOT / "tools/wasm/reader_probe.py",
        "pn532_sim.py": ROOT / "tools/sim/pn532_sim.py",
        "machine.py": ROOT / "tools/wasm/stubs/machine.py",
        "wasm_port.py": ROOT / "tools/wasm/stubs/wasm_port.py",
        "esp32.py": ROOT / "tools/wasm/stubs/esp32.py",
        "flashfs.py": ROOT / "tools/wasm/stubs/flashfs.py",
        "socket.py": ROOT / "tools/wasm/stubs/socket.py",
        "ssl.py": ROOT / "tools/wasm/stubs/ssl.py",
        "cryptolib.py": ROOT / "tools/wasm/stubs/cryptolib.py",
    })
    uids, nsnap, ndelta, nlogd = _make_data(tmp, secret)
    board = json.loads((ROOT / "boards/esp32-devkitc-i2c.json").read_text())
    cfg = _config(secret)
    msg = "P.message(%r, %r, %r)\nP.scrub()"  # a step, then the stack cleared for the next
    stages = [
        "import gc\nimport reader_probe as P\nP.mark('empty')",
        "P.prepare(%r, %r, %d)\nP.scrub()" % (board, cfg, cache),
        "P.fs_costs()\nP.scrub()",
        "P.mark('before_code')",
        "P.load(%r)\nP.count_in_place()\nP.scrub()" % _modules(),
        "P.mark('code')",
        "P.boot()\nP.scrub()",
        "P.mark('objects_empty_store')\nP.check_modules()\nP.session(%r, %d)\nP.arm()\nP.scrub()"
        % (NONCE.hex(), nsnap),
        # the first repeat is the dry run that takes the phase's baseline; the last message
        # (end_snapshot: the switch) is recorded as rebuild_switch
        (msg % ("/msgs/snap", "rebuild_message", "rebuild_switch"), nsnap + 1),
        "P.store_figures('rebuilt')\nP.drop()\nP.scrub()",
        "P.mark('after_drop')",
        "P.boot()\nP.scrub()",  # a reboot: the 100,000-card store opened from flash
        "P.mark('objects')\nP.store_figures()\nP.part_start()",
        ("P.part_drop()\nP.scrub()", PARTS + 1),
        "P.part_rest()\nP.drop()\nP.scrub()",
        "P.mark('after_all')",  # the Reader gone: code and module state only
        "P.boot()",
        "P.gate_setup(%r)\nP.arm()\nP.scrub()" % uids,
        ("P.decide()\nP.scrub()", DECISIONS + 1),
        "P.session(%r, %d)\nP.R['in_place'] = [0, 0]\nP.arm()\nP.scrub()" % (NONCE.hex(), ndelta),
        (msg % ("/msgs/delta", "catchup_message", None), ndelta + 1),
        "P.store_figures('caught_up')\nP.arm()\nP.scrub()",
        ("P.compact()\nP.scrub()", 201),
        "P.store_figures()",
        # the second catch-up through the log, as a board with encrypted flash takes every delta
        # (LogFull, the log folded a step at a time, the refused delta sent again)
        "P.through_log()\nP.session(%r, %d)\nP.arm()\nP.scrub()" % (NONCE.hex(), nlogd),
        ("P.log_step('/msgs/delta_log')\nP.scrub()", LOG_STEPS, "LOG_DONE"),
        "P.store_figures('through_log')\nP.mark('end')\nP.report()",
    ]
    proc = wasm32.run(stages, copy=[(fw, "/fw"), (tmp / "msgs", "/msgs")], path=["/fw"],
                      timeout=1800)
    res = wasm32.results(proc)
    print(proc.stdout[-2000:]) if os.environ.get("GV_BENCH_HEAP32_DEBUG") else None
    if res.get("spoilt"):
        raise RuntimeError("steps saw a collection inside them: %r" % res["spoilt"][:5])
    res["n_snap"], res["n_delta"], res["n_delta_log"] = nsnap, ndelta, nlogd
    return res


def run() -> dict:
    why = wasm32.install()
    if why:
        return {"esp32.reader_heap_32_skipped": metric(0, "skipped", why)}
    lfs = lfs_settings()
    tmp = Path(tempfile.mkdtemp(prefix="gv-bench-heap32-"))
    try:
        res = measure(tmp, lfs["cache"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    st = res["store"]
    for name in ("rebuilt", "caught_up", "store"):
        fl = res[name + "_flash"]
        if not fl["dev_is_store_dev"]:
            raise RuntimeError("the store did not take the RAM flash as its block device")
        if fl["nor_violations"]:
            raise RuntimeError("%s: %d programs set a 0 bit back to 1" % (name, fl["nor_violations"]))
    if res["rebuilt"]["count"] != N or res["rebuilt"]["health"] != "ok":
        raise RuntimeError("the rebuild did not land: %r %r" % (res["rebuilt"], res["rebuilt_sync"]))
    inp, logd = res["in_place_catchup"]
    if res["caught_up"]["version"] != 1 + CHANGES or inp < IN_PLACE_MIN * (inp + logd):
        raise RuntimeError("the catch-up did not go in place: %d in place, %d through the log, "
                           "store %r, sync %r" % (inp, logd, res["caught_up"], res["caught_up_sync"]))
    tl, lg = res["through_log"], res["log_run"]
    if tl["version"] != 1 + CHANGES + LOG_CHANGES or tl["health"] != "ok" or not lg["folds"] or lg["left"]:
        raise RuntimeError("the catch-up through the log did not land (or never folded): store %r, "
                           "run %r, sync %r" % (tl, lg, res["through_log_sync"]))
    # Against the heap with no Reader: the lower of the marks taken right before the reboot
    # (the first Reader dropped) and once the whole Reader is gone at the end. Any state the
    # probe or a dropped Reader leaves behind raises a baseline and would be counted out of the
    # objects, so the lower one is taken (the 'code' mark right after the imports can hold an
    # import's garbage that a stale pointer kept, and is not used).
    base = min(res["after_drop"], res["after_all"])
    objects = res["objects"] - base + lfs["mount"]
    steps = res["steps"]
    peak_kind = max(steps, key=lambda k: steps[k][4])
    peak = steps[peak_kind][4]
    parts = dict(res["parts"])
    out = {
        "esp32.reader_objects_heap_bytes_32": metric(
            objects, "bytes", "objects + working peak <= %d (32-bit MicroPython 1.27 for wasm; "
            "100,000-card store on a 512-block flash, %d B of LittleFS mount caches in)"
            % (TARGET, lfs["mount"])),
        "esp32.reader_working_peak_bytes_32": metric(
            peak, "bytes", "worst step: %s: %d B carried from earlier steps + %d file(s)' %d-B "
            "LittleFS caches + what it allocated; objects + peak = %d (target <= %d); decisions, "
            "rebuild messages and switch, catch-up messages (in place and through the log), "
            "compaction and fold steps" % (
                peak_kind, steps[peak_kind][6], steps[peak_kind][5], lfs["cache"],
                objects + peak, TARGET)),
        "esp32.reader_heap_baseline_spread_32": metric(
            res["after_all"] - res["after_drop"], "bytes", "the no-Reader heap at the end minus "
            "right before the reboot (the lower is the objects' baseline)"),
        "esp32.reader_objects_plus_peak_bytes_32": metric(
            objects + peak, "bytes", "<= %d" % TARGET),
        "esp32.reader_code_mpy_heap_bytes_32": metric(
            res["code"] - res["before_code"], "bytes",
            "all %d firmware modules' .mpy bytecode loaded into RAM (frozen firmware keeps it in "
            "flash; not in the figures above)" % len(_modules())),
        "esp32.reader_objects_empty_store_bytes_32": metric(
            res["objects_empty_store"] - base + lfs["mount"], "bytes",
            "the same objects right after a first boot with an empty store"),
        "esp32.reader_catchup_through_log_32": metric(
            lg["folds"], "folds", "a second catch-up (%d changes) with nothing in place (encrypted "
            "flash): %d messages handled (%d refused busy until the log was folded a step at a "
            "time, %d fold steps), store at version %d, %d cards, %s" % (
                LOG_CHANGES, lg["messages"], lg["folds"], lg["fold_steps"], tl["version"], tl["count"],
                tl["health"])),
        "esp32.reader_catchup_in_place_32": metric(
            inp, "deltas", "of %d catch-up deltas programmed in place (the rest through the log: "
            "a delta file and a manifest); store at version %d, %d cards, %s" % (
                inp + logd, res["caught_up"]["version"], res["caught_up"]["count"],
                res["caught_up"]["health"])),
    }
    for name, b in parts.items():
        out["esp32.reader_objects_32.%s" % name] = metric(
            b, "bytes", "what this part of Reader() alone keeps (parts dropped in this order)")
    out["esp32.reader_objects_32.rest"] = metric(
        res["parts_rest"] + res["code"] - res["after_all"], "bytes",
        "the Reader instance, the watchdog, app globals")
    out["esp32.reader_objects_32.littlefs_mount"] = metric(
        lfs["mount"], "bytes", "boot.py's remount with fsmount.py's settings (read %d, prog %d): "
        "read and prog caches (2 x %d) and lookahead (%d)" % (
            lfs["read_size"], lfs["prog_size"], lfs["cache"], lfs["lookahead"]))
    for kind, (n, mx, total, at, e, files, carried, mxc) in sorted(steps.items()):
        out["esp32.step_peak_bytes_32.%s" % kind] = metric(
            e, "bytes", "max of %d steps (at step %d): %d B carried + %d file cache(s) + %d B "
            "allocated; allocated alone: max %d, mean %d; carried: max %d" % (
                n, at, carried, files, e - carried - files * lfs["cache"], mx,
                total // max(n, 1), mxc))
    for call, b in sorted(res["store_alloc"].items()):
        out["esp32.store_call_alloc_bytes_32.%s" % call] = metric(
            b, "bytes", "the most one call of the store's %s allocated inside the steps (part of "
            "their figures)" % call)
    for op, b in sorted(res["fs_costs"].items()):
        out["esp32.heap32_flashfs_cost.%s" % op] = metric(
            b, "bytes", "what the LittleFS stand-in allocates for this alone (inside the steps)")
    fl = res["store_flash"]
    out["esp32.rebuild_store_after_32"] = metric(
        st["count"], "cards", "store after the rebuild and catch-up (%s); %d decisions, %d granted;"
        " flash: %d files, %d of %d blocks free" % (st["health"], DECISIONS, res["gate"]["grants"],
                                                   fl["files"], fl["free_blocks"], BLOCKS_2MIB))
    return out
