# The runner on hardware doubles: the grant's event is on flash before the relay closes, refusals
# and PN532 errors never close it, an exception in the decision path leaves the door shut and the
# loop running, the watchdog is fed only by a healthy loop, the keypad drives PIN entry, and the
# grant path allocates nothing on the heap but the event write.
import gc
import micropython
import mpt
import gate_kit
from gate_kit import Kit
from gate_hw import FakePin, FakePN532, FakeWDT, Matrix
from gv.allowlist import record as R
from gv import events as E
from gv.drivers.keypad import Keypad
from gv.drivers.outputs import Buzzer, Leds, Relay, Blink
from gv.gate import signals as S
from gv.gate.runner import GateRunner

HEAPSIZE = "384k"  # the test doubles and kit come on top of the reader's own code (source, compiled in the heap: at 320k the grant-path test found no 4.6 KB piece once the event ring grew a few lines)
A = b"\x04\xa1\xb2\xc3"
B = b"\x04\x00\x00\x01"


class Rig:
    def __init__(self, cfg=None, pin_site=False, active_high=True):
        self.kit = Kit(cfg or {"hold_ms": 500, "open_ms": 3000})
        self.kit.add(A, R.ACTIVE, R.F_PIN if pin_site else 0, pin="4711")
        self.active = 1 if active_high else 0
        self.pn = FakePN532()
        self.relay_pin = FakePin(self._relay_changed)
        self.relay = Relay(self.relay_pin, active_high)
        self.g, self.r, self.b = FakePin(), FakePin(), FakePin()
        self.leds = Leds(self.g, self.r)
        self.buzzer = Buzzer(self.b)
        self.matrix = Matrix(4, 3)
        self.keypad = Keypad(self.matrix.rows, self.matrix.cols, "123456789*0#")
        self.wdt = FakeWDT()
        self.logs = []
        self.relay_closed_after_seq = []  # the last event seq on flash each time the relay closed
        k = self.kit
        self.runner = GateRunner(k.cfg, self.pn, k.al, k.keyer, k.ev, k.lk, self.relay, self.leds,
                                 self.buzzer, self.keypad, self.wdt, k.clock, log=self.logs.append)
        self.runner.boot(k.now)

    def _relay_changed(self, v):
        if v == self.active:
            self.relay_closed_after_seq.append(self.kit.ev.next_seq - 1)

    def run(self, ms, step=10):
        for _ in range(ms // step):
            self.kit.advance(step)
            self.runner.step(self.kit.now)

    def relay_on(self):
        return self.relay_pin.v == self.active

    def type(self, text):
        keys = "123456789*0#"
        for ch in text:
            i = keys.index(ch)
            self.matrix.press(i // 3, i % 3)
            self.run(80)
            self.matrix.release()
            self.run(80)


def test_grant_event_is_on_flash_before_the_relay_closes():
    for active_high in (True, False):
        rig = Rig(active_high=active_high)
        mpt.eq(rig.relay_on(), False)
        rig.pn.field = [A]
        rig.run(700)
        assert rig.relay_on()
        mpt.eq(rig.g.v, 1)
        ev = rig.kit.events()[-1]
        mpt.eq((ev["kind"], ev["result"], ev["seq"]), (E.K_DECISION, E.R_GRANT, rig.relay_closed_after_seq[0]))
        rig.run(3100)
        mpt.eq(rig.relay_on(), False)  # open_ms later it is shut again
        mpt.eq(len(rig.relay_closed_after_seq), 1)
        mpt.eq(rig.relay.pulses, 1)


def test_refused_and_errors_never_close_the_relay():
    rig = Rig()
    rig.pn.field = [B]  # unknown
    rig.run(1000)
    rig.pn.field = [A, B]
    rig.run(500)
    rig.pn.field = []
    rig.run(200)
    rig.pn.error = True  # PN532 dead: every poll ERROR
    rig.run(3000)
    mpt.eq(rig.relay_closed_after_seq, [])
    mpt.eq(rig.relay_pin.changes, 0)
    mpt.eq(rig.r.changes > 0, True)
    assert rig.wdt.feeds >= 400  # the loop stayed healthy while the reader is broken
    rig.pn.error = False
    rig.pn.field = [A]
    rig.run(800)
    assert rig.relay_on()


class _Broken:
    def __init__(self, al):
        self.al = al
        self.broken = True

    def lookup(self, key8, rec16):
        if self.broken:
            raise OSError(5)
        return self.al.lookup(key8, rec16)


def test_exception_in_the_decision_path_fails_secure():
    rig = Rig()
    broken = _Broken(rig.kit.al)
    rig.runner.gate.allowlist = broken
    rig.pn.field = [A]
    rig.run(1000)
    mpt.eq(rig.relay_on(), False)
    mpt.eq(rig.relay_closed_after_seq, [])
    mpt.eq(rig.runner.faults, 1)
    ev = rig.kit.events()[-1]
    mpt.eq((ev["kind"], ev["reason"]), (E.K_FAULT, E.ERROR))
    assert any("fault" in line for line in rig.logs)
    feeds = rig.wdt.feeds
    rig.pn.field = []
    rig.run(300)
    assert rig.wdt.feeds > feeds  # the loop goes on
    broken.broken = False
    rig.pn.field = [A]
    rig.run(700)
    assert rig.relay_on()


def test_fault_storm_starves_the_watchdog():
    rig = Rig()

    class Exploding(FakePN532):
        def poll(self):
            raise RuntimeError("bus wedged")

    rig.runner.pn = Exploding()
    rig.runner.poll_ms = 0
    rig.run(2000)
    mpt.eq(rig.relay_pin.changes, 0)
    assert rig.runner.faults >= 100
    fed = rig.wdt.feeds
    rig.run(500)
    mpt.eq(rig.wdt.feeds, fed)  # no more feeding: the watchdog will reboot the reader
    mpt.eq(len([1 for d in rig.kit.events() if d["kind"] == E.K_FAULT]), 3)  # no flash flood


def test_pin_entry_on_the_keypad_and_duress_looks_like_a_grant():
    rig = Rig({"pin_policy": "card"}, pin_site=True)
    rig.pn.field = [A]
    rig.run(700)
    mpt.eq(rig.relay_on(), False)
    rig.pn.field = []
    rig.type("4711#")
    assert rig.relay_on()
    mpt.eq(rig.kit.events()[-1]["kind"], E.K_DECISION)
    rig.run(4000)
    # duress: same outputs as a grant, the event is the alarm
    outs = []
    for pin in ("4711#", "4712#"):
        rig.pn.field = [A]
        rig.run(700)
        rig.pn.field = []
        rig.type(pin)
        outs.append((rig.relay_on(), rig.g.v, rig.r.v, rig.runner.buzzer._pat))
        rig.run(4000)
    mpt.eq(outs[0], outs[1])
    ev = rig.kit.events()[-1]
    mpt.eq((ev["kind"], ev["result"], ev["reason"]), (E.K_ALARM, E.R_GRANT, E.DURESS))


def test_lock_pattern_plays_until_recovery_and_after_reboot():
    rig = Rig({"wave_count": 3, "wave_lock_ms": 5000})
    for _ in range(3):
        rig.pn.field = [A]
        rig.run(150)
        rig.pn.field = []
        rig.run(300)
    assert rig.runner.lockouts.reader_remaining(rig.kit.now)
    rig.run(2000)
    assert rig.g.changes > 2 and rig.r.changes > 2  # alternating while locked
    rig.run(3500)
    mpt.eq(rig.runner.lockouts.reader_remaining(rig.kit.now), 0)
    rig.run(500)
    mpt.eq((rig.g.v, rig.r.v), (0, 0))
    rig.pn.field = [A]
    rig.run(700)
    assert rig.relay_on()


def test_host_commands_clear_and_open_once():
    rig = Rig({"burst_count": 2})
    for u in (b"\x01\x01\x01\x01", b"\x02\x02\x02\x02"):
        rig.pn.field = [u]
        rig.run(700)
        rig.pn.field = []
        rig.run(200)
    assert rig.runner.lockouts.reader_remaining(rig.kit.now)
    rig.runner.clear_lockouts(now=rig.kit.now)
    mpt.eq(rig.kit.events()[-1]["kind"], E.K_CLEARED)
    rig.pn.field = [A]
    rig.run(700)
    assert rig.relay_on()
    rig.run(3500)
    assert rig.runner.open_once(now=rig.kit.now)
    mpt.eq(rig.kit.events()[-1]["kind"], E.K_REMOTE_OPEN)
    assert rig.relay_on()
    st = rig.runner.status()
    mpt.eq(st["faults"], 0)


def test_keypad_debounce_and_chords():
    m = Matrix(4, 4)
    kp = Keypad(m.rows, m.cols, "123A456B789C*0#D", debounce_ms=30)
    got = []

    def run(ms, t=[0]):
        for _ in range(ms // 5):
            t[0] += 5
            k = kp.scan(t[0])
            if k is not None:
                got.append(k)

    m.press(0, 3)
    run(10)  # a bounce shorter than the debounce time
    m.release()
    run(50)
    mpt.eq(got, [])
    m.press(0, 3)
    run(200)  # held: one key
    m.release()
    run(50)
    mpt.eq(got, ["A"])
    m.press(3, 1)
    m.press(1, 1)
    run(100)  # two keys: nothing
    m.pressed = [(1, 1)]
    run(100)  # one let go: still nothing until all are released
    m.release()
    run(50)
    m.press(3, 2)
    run(60)
    mpt.eq(got, ["A", "#"])
    mpt.raises(ValueError, Keypad, m.rows, m.cols, "123")


def test_blink_patterns():
    p = FakePin()
    b = Blink(p)
    b.play(0, (100, 50, 100))
    mpt.eq(p.v, 1)
    b.update(99)
    mpt.eq(p.v, 1)
    b.update(100)
    mpt.eq(p.v, 0)
    b.update(150)
    mpt.eq(p.v, 1)
    b.update(250)
    mpt.eq((p.v, b.busy()), (0, False))
    b.play(0, (10, 10), repeat=True)
    b.update(1005)
    assert b.busy()
    b.stop()
    mpt.eq(p.v, 0)


class _CountingLog:
    """EventLog wrapper for the heap proof: the event write runs with the heap unlocked and its
    allocation is measured; everything else in the step runs with the heap locked."""

    def __init__(self, log):
        self.log = log
        self.write_bytes = 0
        self.writes = 0

    def append(self, kind, result, reason, uid, uid_len, t, clock_set=False, aux=0):
        micropython.heap_unlock()  # (*args here would itself allocate a tuple)
        before = gc.mem_alloc()
        try:
            return self.log.append(kind, result, reason, uid, uid_len, t, clock_set, aux)
        finally:
            self.write_bytes += gc.mem_alloc() - before
            self.writes += 1
            micropython.heap_lock()

    def __getattr__(self, name):
        return getattr(self.log, name)


def test_grant_path_allocates_nothing_but_the_event_write():
    # Every loop pass from the card's arrival until the relay is on runs with the heap locked
    # (an allocation would raise and show up as a fault); only the event write is let through.
    rig = Rig()
    # the real store (the dict double would allocate)
    rig.runner.gate.allowlist = rig.kit.real_allowlist([(A, R.ACTIVE, 0, None)])
    counting = _CountingLog(rig.kit.ev)
    rig.runner.gate.events = counting
    rig.pn.field = [A]
    gc.collect()
    gc.disable()
    total = 0
    passes = 0
    try:
        while not rig.relay_on() and passes < 100:
            rig.kit.advance(10)  # (the test's clock arithmetic is outside the measurement)
            before = gc.mem_alloc()
            micropython.heap_lock()
            try:
                rig.runner.step(rig.kit.now)
            finally:
                micropython.heap_unlock()
            total += gc.mem_alloc() - before
            passes += 1
    finally:
        gc.enable()
    assert rig.relay_on(), (passes, rig.runner.faults)
    mpt.eq(rig.runner.faults, 0)
    mpt.eq(counting.writes, 1)
    mpt.eq(total - counting.write_bytes, 0)
    assert 45 <= passes <= 56, passes  # decided at hold_ms (500 ms of 10 ms passes)


def test_async_run_entry_point():
    # The asyncio task the app starts: real ticks, real sleeps, a card held ~0.8 s opens the door.
    import asyncio

    rig = Rig({"hold_ms": 300, "open_ms": 500})
    rig.runner.clock = rig.kit.clock
    seen = []

    async def scenario():
        task = asyncio.create_task(rig.runner.run())
        await asyncio.sleep_ms(100)
        rig.pn.field = [A]
        for _ in range(80):
            await asyncio.sleep_ms(10)
            if rig.relay_on():
                seen.append("open")
                break
        rig.pn.field = []
        rig.runner.stopped = True
        await task

    asyncio.run(scenario())
    mpt.eq(seen, ["open"])
    mpt.eq(rig.relay_on(), False)  # run() ends with the door shut
    kinds = [d["kind"] for d in rig.kit.events()]
    mpt.eq(kinds.count(E.K_BOOT), 2)  # Rig's boot() and run()'s own
    assert rig.wdt.feeds > 10
