# Runs inside the 32-bit WebAssembly MicroPython (tools/wasm32.py, bench_heap32): builds the
# reader as gv.app builds it (board file, config, Reader()) and drives its real code paths one
# step per runPython call. This port collects only between calls, so gc.mem_alloc() at the start
# of a call is the live heap, and what a call leaves allocated at its end is every byte it
# allocated (garbage included): the heap's high-water mark over that step with no collection.
# The store runs on flashfs: LittleFS's data layout on a RAM block device (the ESP32's 2 MiB
# "vfs" partition), found by the store as esp32.Partition, so every step takes the board's path.
import gc
import json
import os
import sys

import machine

R = {"steps": {}}  # results, printed as RESULT {json}
S = {}  # state across calls
MODULES = []  # every firmware module (load() is given them): the code baseline holds them all


def prepare(board, cfg, cache):
    """Board file and config on 'flash' (/), the PN532 simulator on the I2C bus (made now, so
    its own objects are in the baseline, not the reader's), and the LittleFS stand-in the store
    lives on: flashfs mounted at /flash over a 512-block RAM device, which esp32.Partition.find
    gives the store as the board's does (gv.app.AL_PATH is moved onto it at boot). cache: the
    bytes of one LittleFS file cache with fsmount.py's settings (added per file a step opens)."""
    with open("/board.json", "w") as f:
        json.dump(board, f)
    with open("/config.json", "w") as f:
        json.dump(cfg, f)
    import wasm_port  # noqa: F401 - os.urandom, binascii as on an ESP32
    import esp32
    import flashfs

    S["dev"], S["fs"] = flashfs.mount("/flash", "/flash.img", 512)
    esp32.PARTS.append(S["dev"])
    S["cache"] = cache
    # every key a step stores, made now (a new key inside a step would allocate)
    S["in_step"] = False
    S["dry"] = False
    S["base"] = 0
    S["a0"] = S["o0"] = S["h0"] = 0
    S["msg"] = S["nmsg"] = 0
    R["in_place"] = [0, 0]  # deltas programmed in place, deltas through the log (files)
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
    """main() up to asyncio.run: the config, the board file, Reader() (its store on /flash)."""
    from gv import app, config as C

    app.AL_PATH = AL_PATH
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


# ---- steps: each call is one step; its figure is recorded under R["steps"][kind] ----
# A step's figure: what it allocated (garbage included: nothing is freed inside a call), plus the
# live heap it started with beyond the phase's baseline (what earlier steps left alive: a
# rebuild's shard table, its open writer), plus one LittleFS file cache (fsmount.py's settings)
# for each file it opened and each file held open into it (a board's LittleFS takes each open
# file's cache from the GC heap and frees it with the file object, at a collection; this port
# has none). The baseline is taken by a dry run of the same stage code (arm(), then the stage's
# first repeat only reads the heap where a step would start): so the stage's own compiled code
# and the probe's set-up are in it, and a step's start heap minus it is what the steps carry.
AL_PATH = "/flash/al"
_OPEN = [0]
_REAL_OPEN = open


def _count_opens():
    import builtins

    real = builtins.open

    def counting_open(*a, **kw):
        _OPEN[0] += 1
        return real(*a, **kw)

    builtins.open = counting_open


def arm():
    """The next step call is a dry run that takes the phase's baseline."""
    S["dry"] = True


def _begin():
    """Start a step; False on a dry run (the baseline taken: the caller does nothing more)."""
    a0 = gc.mem_alloc()
    if S["dry"]:
        S["dry"] = False
        S["base"] = a0
        return False
    S["in_step"] = True
    S["o0"] = _OPEN[0]
    S["h0"] = S["fs"].nopen  # files held open into the step (a rebuild's shard writer)
    S["a0"] = a0
    return True


def _end(kind):
    d = gc.mem_alloc() - S["a0"]
    S["in_step"] = False
    if d < 0:  # a collection ran inside the step (the heap filled): its figure would be too low
        R.setdefault("spoilt", []).append((kind, d, S["a0"], gc.mem_alloc(), gc.mem_free()))
    carried = S["a0"] - S["base"]
    if carried < 0:
        carried = 0
    files = _OPEN[0] - S["o0"] + S["h0"]
    e = carried + d + S["cache"] * files
    st = R["steps"].get(kind)
    if st is None:
        # steps, max bytes allocated, total bytes, worst step's index, max figure (carried +
        # allocated + file caches), that step's files, its carried heap, max carried
        st = R["steps"][kind] = [0, 0, 0, 0, 0, 0, 0, 0]
    if d > st[1]:
        st[1] = d
    if e > st[4]:
        st[4] = e
        st[5] = files
        st[6] = carried
        st[3] = st[0]
    if carried > st[7]:
        st[7] = carried
    st[0] += 1
    st[2] += d


def session(nonce_hex, nmsg=0):
    """A connected session as the sync engine has it after CONNACK (the nonce the host's
    messages were sealed for); nmsg: messages in the folder the steps will read."""
    sync = S["reader"].sync
    sync.nonce = bytes.fromhex(nonce_hex)
    sync._ctr = 0
    sync._seen = []
    S["msg"] = 0
    S["nmsg"] = nmsg


def message(folder, kind, last_kind=None):
    """One PUBLISH from the broker, as the MQTT client's receive task handles it: the packet
    body read into a fresh buffer (readexactly), parsed by _incoming, handed to the engine.
    The folder's last message is recorded as last_kind when given (a rebuild's end_snapshot).
    Opening the message's file stands in for the socket: done before the step starts."""
    i = S["msg"]
    f = _REAL_OPEN("%s/%05d" % (folder, i), "rb")
    if not _begin():
        f.close()
        return
    S["msg"] = i + 1
    body = f.read()
    f.close()
    c = S["reader"].sync.client
    coro = c._incoming(0x30, body)  # QoS 0 framing: the PUBACK (4 bytes) is not built here
    try:
        coro.send(None)
    except StopIteration:
        pass
    body = coro = None
    _end(last_kind if last_kind is not None and i == S["nmsg"] - 1 else kind)


def count_in_place():
    """Count the deltas the store programs in place (update._in_place True) and those it sends
    through the log (None: a delta file and a manifest written), and record the most the store's
    own calls allocated inside the steps (R["store_alloc"]: apply_delta, its in-place part,
    end_snapshot), so a step's figure can be split between the store and the rest."""
    from gv.allowlist import update
    from gv.allowlist.store import Allowlist

    real = update._in_place
    A = R["store_alloc"] = {"apply_delta": 0, "in_place": 0, "end_snapshot": 0,
                            "snapshot_chunk": 0}

    def counting(self, d, to_version, count):
        a = gc.mem_alloc()
        r = real(self, d, to_version, count)
        a = gc.mem_alloc() - a
        if a > A["in_place"]:
            A["in_place"] = a
        R["in_place"][0 if r else 1] += 1
        return r

    update._in_place = counting
    apply_delta = Allowlist.apply_delta
    end_snapshot = Allowlist.end_snapshot
    snapshot_chunk = Allowlist.snapshot_chunk

    def apply_delta_m(self, f, t, records):
        a = gc.mem_alloc()
        r = apply_delta(self, f, t, records)
        a = gc.mem_alloc() - a
        if a > A["apply_delta"]:
            A["apply_delta"] = a
        return r

    def end_snapshot_m(self):
        a = gc.mem_alloc()
        r = end_snapshot(self)
        a = gc.mem_alloc() - a
        if a > A["end_snapshot"]:
            A["end_snapshot"] = a
        return r

    def snapshot_chunk_m(self, b, size=16):
        a = gc.mem_alloc()
        r = snapshot_chunk(self, b, size)
        a = gc.mem_alloc() - a
        if a > A["snapshot_chunk"]:
            A["snapshot_chunk"] = a
        return r

    Allowlist.apply_delta = apply_delta_m
    Allowlist.end_snapshot = end_snapshot_m
    Allowlist.snapshot_chunk = snapshot_chunk_m


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
    if not _begin():
        return
    S["dec"] = i + 1
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


def through_log():
    """The store as a board with encrypted flash has it: nothing programmed in place (encrypted
    writes are whole 16-byte units), the log folded by the engine's compactor (Sync.run sets
    fold_inline False)."""
    al = S["reader"].allowlist
    al.in_place = False
    al.fold_inline = False
    R["in_place_catchup"] = list(R["in_place"])  # the first catch-up's, before this one counts
    R["log_run"] = {"messages": 0, "folds": 0, "fold_steps": 0, "left": 0}


def log_step(folder):
    """One step of the catch-up through the log: the next message, or while a delta waits for
    the log to be folded one compaction step (fold_step); once folded, what the compactor and
    the host do: the reader SYNCs, the host sends the refused delta again (its counter is new to
    the window). Calls past the end do nothing."""
    sy = S["reader"].sync
    al = S["reader"].allowlist
    run = R["log_run"]
    if S["dry"]:
        _begin()
        return
    if sy._fold_wait:
        if al.compaction_due():
            _begin()
            more = al.compact_step()
            _end("fold_step")
            run["fold_steps"] += 1
            if more:
                return
        sy._fold_wait = False
        sy._want_sync = False
        S["msg"] -= 1
        sy._seen = []
        return
    if messages_done(folder):
        return
    busy = sy.rejected.get(9, 0)  # protocol.E_BUSY
    message(folder, "catchup_log_message")
    run["messages"] += 1
    if sy.rejected.get(9, 0) != busy:
        run["folds"] += 1
    run["left"] = 0 if messages_done(folder) and not sy._fold_wait else 1
    if not run["left"]:
        import __main__
        __main__.LOG_DONE = True  # the stage stops repeating (tools/wasm/run.mjs "until")


def compact():
    """One compaction step of the store (the sync engine's compactor runs them between passes)."""
    al = S["reader"].allowlist
    if S["dry"]:
        _begin()
        return False
    if not al.compaction_due():
        return False
    _begin()
    al.compact_step()
    _end("compaction_step")
    return True


def fs_costs():
    """What the LittleFS stand-in itself allocates (it runs inside the steps): each figure is
    one operation alone, measured in this one call (nothing is freed inside it)."""
    dev = S["dev"]
    page = bytearray(4096)
    mv = memoryview(page)[:4088]
    out = {}
    a = gc.mem_alloc()
    f = open("/flash/fs_cost", "wb")
    out["open"] = gc.mem_alloc() - a
    a = gc.mem_alloc()
    f.write(page)
    out["write_4096_new_block"] = gc.mem_alloc() - a
    a = gc.mem_alloc()
    f.write(mv)
    out["write_4088_new_block"] = gc.mem_alloc() - a
    s20 = mv[:20]
    s4080 = mv[:4080]
    f.write(s20)
    a = gc.mem_alloc()
    f.write(s4080)  # the rest of block 2, then block 3
    out["write_4080_across_blocks"] = gc.mem_alloc() - a
    a = gc.mem_alloc()
    f.close()
    out["close"] = gc.mem_alloc() - a
    f = open("/flash/fs_cost", "rb")
    a = gc.mem_alloc()
    f.seek(4096)
    f.readinto(mv)
    out["readinto_4088"] = gc.mem_alloc() - a
    a = gc.mem_alloc()
    f.seek(100)
    f.readinto(page)  # 3,996 bytes of block 0, 100 of block 1
    out["readinto_4096_across_blocks"] = gc.mem_alloc() - a
    a = gc.mem_alloc()
    f.seek(0)
    r = f.read(4096)
    out["read_4096"] = gc.mem_alloc() - a
    r = None
    f.close()
    a = gc.mem_alloc()
    dev.readblocks(3, page, 0)
    out["readblocks_4096"] = gc.mem_alloc() - a
    b1 = bytearray(1)
    b1[0] = 0xFE
    a = gc.mem_alloc()
    dev.writeblocks(511, b1, 100)
    out["program_1"] = gc.mem_alloc() - a
    a = gc.mem_alloc()
    os.stat("/flash/fs_cost")
    out["stat"] = gc.mem_alloc() - a
    os.remove("/flash/fs_cost")
    dev.ioctl(6, 511)
    R["fs_costs"] = out


def store_figures(name="store"):
    al = S["reader"].allowlist
    sy = S["reader"].sync
    dev = S["dev"]
    R[name + "_flash"] = {"files": S["fs"].files(), "free_blocks": S["fs"].free_blocks(),
                          "reads": dev.reads, "programs": dev.programs, "erases": dev.erases,
                          "nor_violations": dev.nor_violations, "open_now": S["fs"].nopen,
                          "dev_is_store_dev": al._dev is dev}
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
