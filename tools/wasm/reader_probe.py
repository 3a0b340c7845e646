# Runs inside the 32-bit WebAssembly MicroPython (tools/wasm32.py, bench_heap32): builds the
# reader as gv.app builds it (board file, config, Reader()) and drives its real code paths one
# step per runPython call. This port collects only between calls, so gc.mem_alloc() at the start
# of a call is the live heap, and what a call leaves allocated at its end is every byte it
# allocated (garbage included): the heap's high-water mark over that step with no collection.
import gc
import json
import os
import sys

import machine

R = {"steps": {}}  # results, printed as RESULT {json}
S = {}  # state across calls
MODULES = []  # every firmware module (load() is given them): the code baseline holds them all


def prepare(board, cfg):
    """Board file and config on 'flash' (/), the PN532 simulator on the I2C bus (made now, so
    its own objects are in the baseline, not the reader's)."""
    with open("/board.json", "w") as f:
        json.dump(board, f)
    with open("/config.json", "w") as f:
        json.dump(cfg, f)
    import wasm_port  # noqa: F401 - os.urandom, binascii as on an ESP32

    _count_opens()
    from pn532_sim import PN532Sim

    S["sim"] = PN532Sim()
    machine.BUS["i2c"] = S["sim"].i2c()


class _GC:
    """gc for the firmware's modules: a collect() asked for inside a measured step is skipped
    (this port would free garbage mid-call and the step's figure would drop below what it
    allocated), anywhere else it runs."""

    def collect(self):
        if not S.get("in_step"):
            gc.collect()

    def __getattr__(self, name):
        return getattr(gc, name)


def load(mods):
    MODULES[:] = mods
    shim = _GC()
    for m in mods:
        __import__(m)
        mod = sys.modules[m]
        if getattr(mod, "gc", None) is gc:
            mod.gc = shim
    # gv.memory's largest-block probe allocates up to the whole free heap (and frees it): on an
    # ESP32 that is its way to ask; here it would grow this port's heap and count as the step's
    # working set. It answers the free heap instead (what it reports is not measured here).
    sys.modules["gv.memory"].gc_largest = gc.mem_free


def _deep(n):
    a = b = c = d = None
    return _deep(n - 1) if n else 0


def scrub():
    """A call that overwrites the stack with Nones: the collection at the end of a call scans
    the stack conservatively, and a stale pointer left by the previous call would keep what it
    dropped alive. Run it between a drop and the measurement."""
    _deep(60)
    gc.collect()


def mark(name):
    R[name] = gc.mem_alloc()


def boot():
    """main() up to asyncio.run: the config, the board file, Reader()."""
    from gv import app, config as C

    board = C.load_board()
    cfg = C.load()
    S["reader"] = app.Reader(board, cfg)


def drop():
    S["reader"] = None


def check_modules():
    """Every gv module the reader loaded was in MODULES (so the code baseline holds them all)."""
    extra = [m for m in sys.modules if m.startswith("gv.") and m not in MODULES
             and not hasattr(sys.modules[m], "__path__")]
    R["unlisted_modules"] = extra


# ---- steps: each call is one step; its allocation is recorded under R["steps"][kind] ----
# An ESP32's LittleFS gives every open file a 2 KB cache from the GC heap (fsmount.py's 512-byte
# reads: 4 x 512); this port's files have none. So each step counts the files it opened, and
# whether a snapshot's shard file stays open across it, and the bench adds their caches.
_OPEN = [0]
LFS_FILE_CACHE = 2048


def _count_opens():
    import builtins

    real = builtins.open

    def counting_open(*a, **kw):
        _OPEN[0] += 1
        return real(*a, **kw)

    builtins.open = counting_open


def _writer_open():
    al = S["reader"].allowlist
    sn = al._snap
    return 1 if sn is not None and sn.get("w") is not None else 0


def _begin():
    S["in_step"] = True
    _OPEN[0] = 0
    S["w0"] = _writer_open()
    S["a0"] = gc.mem_alloc()


def _end(kind):
    d = gc.mem_alloc() - S["a0"]
    S["in_step"] = False
    if d < 0:  # a collection ran inside the step (the heap filled): its figure would be too low
        R.setdefault("spoilt", []).append((kind, d, S["a0"], gc.mem_alloc(), gc.mem_free()))
    files = (1 if _OPEN[0] else 0) + max(S["w0"], _writer_open())
    e = d + LFS_FILE_CACHE * files
    st = R["steps"].get(kind)
    if st is None:
        # steps, max bytes allocated, total bytes, worst step's index, max bytes with the ESP32's
        # file caches added, that step's open files
        st = R["steps"][kind] = [0, 0, 0, 0, 0, 0]
    if d > st[1]:
        st[1] = d
        st[3] = st[0]
    if e > st[4]:
        st[4] = e
        st[5] = files
    st[0] += 1
    st[2] += d


def session(nonce_hex):
    """A connected session as the sync engine has it after CONNACK (the nonce the host's
    messages were sealed for)."""
    sync = S["reader"].sync
    sync.nonce = bytes.fromhex(nonce_hex)
    sync._ctr = 0
    sync._seen = []
    S["msg"] = 0


def message(folder, kind):
    """One PUBLISH from the broker, as the MQTT client's receive task handles it: the packet
    body read into a fresh buffer (readexactly), parsed by _incoming, handed to the engine."""
    _begin()
    i = S["msg"]
    S["msg"] = i + 1
    with open("%s/%05d" % (folder, i), "rb") as f:
        body = f.read()
    c = S["reader"].sync.client
    coro = c._incoming(0x30, body)  # QoS 0 framing: the PUBACK (4 bytes) is not built here
    try:
        coro.send(None)
    except StopIteration:
        pass
    body = coro = None
    _end(kind)


def messages_done(folder):
    try:
        os.stat("%s/%05d" % (folder, S["msg"]))
        return False
    except OSError:
        return True


class _Field:
    """A PN532 stand-in that allocates nothing (the real driver's poll() is proven heap-free on
    its own, tests/test_heap32.py): the gate loop's own allocations are what is measured."""

    def __init__(self, pn):
        from gv.pn532.driver import NO_CARD, ONE_CARD

        self._buf = bytearray(10)
        self.uid = memoryview(self._buf)
        self.uid_len = 0
        self.card = None
        self.failures = 0
        self.NO, self.ONE = NO_CARD, ONE_CARD

    def poll(self):
        u = self.card
        if u is None:
            return self.NO
        for i in range(len(u)):
            self._buf[i] = u[i]
        self.uid_len = len(u)
        return self.ONE


def gate_setup(uids_hex):
    r = S["reader"]
    S["uids"] = [bytes.fromhex(u) for u in uids_hex]
    S["field"] = f = _Field(r.pn532)
    r.gate.pn = f
    S["now"] = 0
    S["dec"] = 0
    r.gate.boot(0)
    r.gate.clock.set(7 * 365 * 86400, 0)  # late 2026, seconds since 2020
    R["gate"] = {"grants": 0, "passes": 0}


def decide():
    """One card: held until the gate decides (relay on for a grant), then taken away and the
    door left to close. Every pass of the gate loop for it is in this one step."""
    r = S["reader"]
    g = r.gate
    f = S["field"]
    i = S["dec"]
    S["dec"] = i + 1
    _begin()
    seq = r.events.next_seq
    f.card = S["uids"][i % len(S["uids"])]
    now = S["now"]
    n = 0
    while r.events.next_seq == seq and n < 300:
        now += 10
        g.step(now)
        n += 1
    if r.relay.is_on:
        R["gate"]["grants"] += 1
    f.card = None
    for _ in range(400):  # 4 s away: the door closes, any waving lock runs out
        now += 10
        g.step(now)
        n += 1
    S["now"] = now
    R["gate"]["passes"] += n
    _end("decision")


def compact():
    """One compaction step of the store (the sync engine's compactor runs them between passes)."""
    al = S["reader"].allowlist
    if not al.compaction_due():
        return False
    _begin()
    al.compact_step()
    _end("compaction_step")
    return True


def store_figures(name="store"):
    al = S["reader"].allowlist
    sy = S["reader"].sync
    R[name + "_sync"] = {"rejected": dict((str(k), v) for k, v in sy.rejected.items()),
                 "last_error": sy.last_error, "client_error": sy.client.last_error,
                 "chunks": sy.chunks, "deltas": sy.deltas}
    R[name] = {"version": al.version, "count": al.count, "health": al.health,
                  "page": len(al._page), "wb": len(al._wb), "rbuf_separate": al._rbuf is not al._page,
                  "rbuf": len(al._rbuf), "ix": len(al._ix), "log": len(al._log)}


def report():
    print("RESULT " + json.dumps(R))


# ---- where the objects' bytes go: the reader's parts dropped one at a time, each in its own
# call, the live heap measured between (exact: what each part alone keeps alive, in this order)
PARTS = ("sync", "wifi", "gate", "events", "lockouts", "allowlist", "keyer", "pn532", "keypad",
         "buzzer", "leds", "relay", "cfg", "board")


def part_start():
    R["parts"] = []
    S["part_prev"] = gc.mem_alloc()
    S["part_i"] = 0


def part_drop():
    """Record what the previous drop freed, then drop the next part."""
    a = gc.mem_alloc()
    i = S["part_i"]
    if i:
        R["parts"].append((PARTS[i - 1], S["part_prev"] - a))
    S["part_prev"] = a
    if i < len(PARTS):
        r = S["reader"]
        if PARTS[i] == "allowlist":
            al = r.allowlist
            R["store_buffers"] = {"page": len(al._page), "wb": len(al._wb), "log": len(al._log),
                                  "ix": len(al._ix), "rbuf_separate": al._rbuf is not al._page,
                                  "shard_table": len(al._st.buf) if hasattr(al._st, "buf") else 0}
        if PARTS[i] == "sync":
            R["sync_buffers"] = {"zbuf": len(getattr(r.sync, "_zbuf", b""))}
        setattr(r, PARTS[i], None)
    S["part_i"] = i + 1


def part_rest():
    """What is left once every part is gone: the Reader instance, app globals (the watchdog)."""
    R["parts_rest"] = gc.mem_alloc() - R["code"]
