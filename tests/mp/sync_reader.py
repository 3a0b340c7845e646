# A reader for the sync tests and bench, run in the unix port by tests/sync_support.py: the real
# Allowlist and EventLog on the flash stand-in, the real Sync engine and MQTT client, and a
# stand-in gate loop (an allowlist lookup every 5 ms, as card polling would) whose worst gap
# between iterations shows whether anything stalled it.
# env: GV_SYNC_DIR (config.json in it; ctl file for commands), GV_SYNC_EVENTS (events to log
# at start), GV_SYNC_IMAGE (flash image file, kept across restarts), GV_SYNC_STAT_MS,
# GV_SYNC_IN_PLACE.
# stdout: "STAT {json}" lines; "CMD name arg" for remote commands; "LOOKUP key rec|-".
import asyncio
import gc
import json
import os
import sys
import time

import flashdev
from gv.allowlist.store import Allowlist
gc.collect()
from gv.allowlist import update, snapshot  # noqa: F401 - loaded now, not mid-sync
gc.collect()
from gv.config import Config
from gv.events import EventLog, K_DECISION, R_GRANT, OK
gc.collect()
from gv.sync.engine import Sync
gc.collect()

DIR = os.getenv("GV_SYNC_DIR")
IMAGE = os.getenv("GV_SYNC_IMAGE")
CTL = DIR + "/ctl"

with open(DIR + "/config.json") as f:
    cfg = Config(json.load(f))

dev = flashdev.FlashDev(blocks=int(os.getenv("GV_SYNC_BLOCKS") or 512), path=IMAGE)
try:
    flashdev.mount(dev, "/flash")
except OSError:
    flashdev.format_and_mount(dev, "/flash")

# GV_SYNC_IN_PLACE=0: no in-place deltas, as on encrypted flash (every delta through the log)
al = Allowlist("/flash/al", dev, in_place=os.getenv("GV_SYNC_IN_PLACE") != "0").open()
log = EventLog("/flash/ev")
for i in range(int(os.getenv("GV_SYNC_EVENTS") or 0)):
    log.append(K_DECISION, R_GRANT, OK, b"\x04\x01\x02\x03", 4, i)

commands = []


def on_command(name, arg):
    print("CMD", name, arg)
    commands.append(name)
    return True


from gv.boot import BootCount
from gv.sync.rekey import Credentials
from gv.allowlist.record import Keyer
from gv.sync.sitekey import SiteKeys
# the site keys as app.Reader holds them: a rotation's pending keys once its rebuild is in
sitekeys = SiteKeys(cfg, DIR + "/config.json", "/flash/sitekey")
keyer = Keyer(sitekeys.card, sitekeys.pin)
sitekeys.applied(al.version, keyer)
if os.getenv("GV_SYNC_CUT") == "sitekey":  # a power cut just after the next keys are stored
    _store = sitekeys.store

    def _store_and_cut(v, card, pin):
        _store(v, card, pin)
        print("CUT after sitekey", v)
        sys.exit(9)

    sitekeys.store = _store_and_cut
sync = Sync(cfg, al, events=log, on_command=on_command, boot=BootCount("/flash/boot"),
            creds=Credentials(cfg, DIR + "/config.json", "/flash/rekey"),
            sitekeys=sitekeys, keyer=keyer)
gate = {"loops": 0, "maxgap": 0, "last": None, "found": 0, "heap": 0}
_handler = sync.client.on_message


LIVE = os.getenv("GV_SYNC_LIVE")


def sampled(topic, msg):
    # with GV_SYNC_LIVE (bench): the live heap right after each message (a collection first,
    # so garbage doesn't count), while the message and its buffers are still referenced
    _handler(topic, msg)
    if LIVE:
        gc.collect()
        a = gc.mem_alloc()
        if a > gate["heap"]:
            gate["heap"] = a


sync.client.on_message = sampled


def _runq_us():
    # nanoseconds this process has waited for a CPU (Linux schedstat), in microseconds: on a
    # machine shared with other work, a gap less that wait is what the reader itself spent
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) // 1000
    except (OSError, ValueError, IndexError):
        return 0


# the longest call of each store operation and of the whole message handler (microseconds): what
# a long gate-loop gap was spent in
optime = {}
opreads = {}  # and the most flash blocks each read (the block device's count)
win = [0, 0, 0]  # since the gate loop's last pass: other timed calls' own us, messages' own us, messages


def _timed(obj, name, label=None):
    f = getattr(obj, name)
    label = label or name

    def w(*a):
        q = _runq_us()
        r = dev.reads
        t = time.ticks_us()
        try:
            return f(*a)
        finally:
            d = time.ticks_diff(time.ticks_us(), t) - (_runq_us() - q)
            if d > optime.get(label, 0):
                optime[label] = d
            n = dev.reads - r
            if n > opreads.get(label, 0):
                opreads[label] = n
            if label == "message":
                win[1] += d
                win[2] += 1
            else:
                win[0] += d

    setattr(obj, name, w)


# With GV_SYNC_FSCALLS (bench): every LittleFS call the store and the event log make (open, each
# file method, rename, remove, stat, mkdir, listdir) is timed and its block reads counted, the
# worst per kind kept in fscalls as [reads, own us]. LittleFS compacts a directory's metadata log
# inside one such call. The wrappers allocate: for measuring, not for the heap figures.
fscalls = {}


def _fscall(label, fn, *a):
    q = _runq_us()
    r = dev.reads
    t = time.ticks_us()
    try:
        return fn(*a)
    finally:
        d = time.ticks_diff(time.ticks_us(), t) - (_runq_us() - q)
        n = dev.reads - r
        w = fscalls.get(label)
        if w is None:
            fscalls[label] = [n, d]
        else:
            if n > w[0]:
                w[0] = n
            if d > w[1]:
                w[1] = d


class _FsFile:
    def __init__(self, f):
        self._f = f

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def __iter__(self):
        return iter(self._f)

    def close(self):
        return _fscall("close", self._f.close)

    def write(self, *a):
        return _fscall("write", self._f.write, *a)

    def read(self, *a):
        return _fscall("read", self._f.read, *a)

    def readinto(self, *a):
        return _fscall("readinto", self._f.readinto, *a)

    def seek(self, *a):
        return _fscall("seek", self._f.seek, *a)

    def tell(self):
        return self._f.tell()

    def flush(self):
        return _fscall("flush", self._f.flush)


class _FsOs:
    def __getattr__(self, name):
        f = getattr(os, name)
        if name not in ("rename", "remove", "stat", "mkdir", "ilistdir", "listdir", "rmdir"):
            return f
        return lambda *a: _fscall(name, f, *a)


def _fs_open(*a):
    return _FsFile(_fscall("open", open, *a))


if os.getenv("GV_SYNC_FSCALLS"):
    import gv.allowlist.layout
    import gv.allowlist.pages
    import gv.events
    _fsos = _FsOs()
    for _m in (gv.allowlist.layout, gv.allowlist.pages, gv.allowlist.snapshot,
               gv.allowlist.store, gv.allowlist.update, gv.events):
        if hasattr(_m, "os"):
            _m.os = _fsos
        _m.open = _fs_open

for _n in ("begin_snapshot", "snapshot_chunk", "end_snapshot", "apply_delta", "compact_step"):
    _timed(al, _n)
_timed(sync.client, "on_message", "message")
_timed(sync, "_hello_body")
_timed(sync, "_health_body")
_timed(sync, "_seal")
gc.collect()
gate["base"] = gc.mem_alloc()  # code, stores and engine, before any network
_t = time.ticks_us()
gc.collect()
gate["gc_us"] = time.ticks_diff(time.ticks_us(), _t)  # what one collection of this heap takes
KEY = bytearray(8)
KEY2 = bytearray(8)
REC = bytearray(16)


async def gate_loop():
    t = asyncio.ticks()
    tu = time.ticks_us()
    w0 = _runq_us()
    gate["maxgap_own"] = 0
    gate["maxgap_flash"] = 0
    r0 = dev.reads
    while True:
        await asyncio.sleep_ms(5)
        now = asyncio.ticks()
        gap = asyncio.ticks_diff(now, t)
        t = now
        if gap > gate["maxgap"]:
            gate["maxgap"] = gap
        nu = time.ticks_us()
        w1 = _runq_us()
        own = (time.ticks_diff(nu, tu) - (w1 - w0)) // 1000
        tu = nu
        w0 = w1
        r = dev.reads
        if own > gate["maxgap_own"]:
            gate["maxgap_own"] = own
            # what the worst gap held: flash blocks read, the own time (ms) of the timed calls
            # (store steps, HELLO and health bodies) and of messages, messages, and the MQTT
            # client's connects so far (a TLS handshake is CPU work)
            gate["maxgap_in"] = [r - r0, win[0] // 1000, win[1] // 1000, win[2],
                                 sync.client.connects]
        if r != r0 and own > gate["maxgap_flash"]:  # the worst gap that read the flash
            gate["maxgap_flash"] = own
            gate["maxgap_flash_in"] = [r - r0, win[0] // 1000, win[1] // 1000, win[2],
                                       sync.client.connects]
        win[0] = win[1] = win[2] = 0
        if al.lookup(KEY, REC):
            gate["found"] += 1
        gate["loops"] += 1
        r0 = dev.reads  # the lookup's own read is not the gap's


def stat():
    c = sync.client
    p = al.snapshot_progress()
    return {"version": al.version, "count": al.count, "progress": list(p) if p else None,
            "health": al.health, "connected": c.connected, "connects": c.connects,
            "deltas": sync.deltas, "chunks": sync.chunks, "rebuilds": sync.rebuilds,
            "commands": commands, "rejected": dict((str(k), v) for k, v in sync.rejected.items()),
            "acked": log.acked, "next_seq": log.next_seq, "events_sent": sync.events_sent,
            "maxgap": gate["maxgap"], "loops": gate["loops"], "head": sync.head,
            "compact_due": al.compaction_due(), "optime_us": optime, "opreads": opreads,
            "fscalls": fscalls,
            "maxgap_own": gate.get("maxgap_own", 0), "maxgap_in": gate.get("maxgap_in"),
            "maxgap_flash": gate.get("maxgap_flash", 0), "maxgap_flash_in": gate.get("maxgap_flash_in"),
            "gc_us": gate["gc_us"],
            "heap_peak": gate["heap"], "heap_base": gate["base"], "mem_free": gc.mem_free(), "mem_alloc": gc.mem_alloc(),
            "rx_bytes": c.rx_bytes, "tx_bytes": c.tx_bytes,
            "flash_written": dev.bytes_written, "error": c.last_error,
            "sync_error": sync.last_error, "boot": sync.boot.n,
            "rekeyed": sync.creds.promoted, "rekey_pending": sync.creds.next is not None,
            "sitekeys_switched": sitekeys.switched, "sitekey_pending": sitekeys.next is not None}


async def control():
    while True:
        await asyncio.sleep_ms(int(os.getenv("GV_SYNC_STAT_MS") or 100))
        try:
            with open(CTL) as f:
                lines = f.read().split("\n")
            os.remove(CTL)
        except OSError:
            lines = []
        for line in lines:
            w = line.split()
            if not w:
                continue
            if w[0] == "lookup":
                k = bytes.fromhex(w[1])
                ok = al.lookup(k, REC)
                print("LOOKUP", w[1], bytes(REC).hex() if ok else "-")
            elif w[0] == "card":  # what the gate would find for this UID, with the keys in effect
                u = bytes.fromhex(w[1])
                keyer.uid_key(u, len(u), KEY2)
                ok = al.lookup(KEY2, REC)
                print("LOOKUP", w[1], bytes(REC).hex() if ok else "-")
            elif w[0] == "event":
                for i in range(int(w[1]) if len(w) > 1 else 1):
                    log.append(K_DECISION, R_GRANT, OK, b"\x04\x01\x02\x03", 4, i)
            elif w[0] == "resetgap":
                gate["maxgap"] = 0
                gate["maxgap_own"] = 0
                gate["maxgap_flash"] = 0
            elif w[0] == "compactall":
                al.want_compaction()  # the engine's compactor rewrites every shard, step by step
            elif w[0] == "resetflash":
                dev.reset_counters()
            elif w[0] == "resetnet":
                sync.client.rx_bytes = sync.client.tx_bytes = 0
                gc.collect()
                gate["heap"] = gc.mem_alloc()
            elif w[0] == "quit":
                print("STAT", json.dumps(stat()))
                sys.exit(0)
        print("STAT", json.dumps(stat()))


async def main():
    asyncio.create_task(gate_loop())
    asyncio.create_task(control())
    await sync.run()


asyncio.run(main())
