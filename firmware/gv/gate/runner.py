# The asyncio glue: polls the PN532, scans the keypad, feeds the gate state machine, drives the
# relay, LEDs and buzzer, checkpoints lockouts and feeds the watchdog. The app runs
#     runner = GateRunner(gate_cfg, pn532, allowlist, keyer, events, lockouts, relay, leds,
#                         buzzer, keypad, wdt=wdt, clock=clock)
#     asyncio.create_task(runner.run())
# (or `await run(...)` with the same arguments). The sync layer calls runner.clear_lockouts()
# and runner.open_once(). Fail-secure: an exception anywhere in a loop pass turns the relay off,
# is logged (and written as a fault event when the flash allows), and the loop goes on; the
# watchdog is fed only while passes complete, so a hung loop or a fault storm reboots the reader.
import asyncio

from gv import events as E
from gv.compat import ticks_add, ticks_diff, ticks_ms
from gv.gate import core
from gv.gate import signals as S
from gv.gate.lockout import HARD_MS
from gv.gate.clock import Clock

FAULT_STORM = 50  # consecutive failing passes after which the watchdog is left to bite


def _poll_statuses():
    # The PN532 driver's poll() codes mapped to the state machine's (which imports no driver).
    m = {core.NO_CARD: core.NO_CARD, core.ONE_CARD: core.ONE_CARD,
         core.MANY_CARDS: core.MANY_CARDS, core.ERROR: core.ERROR}
    try:
        from gv.pn532 import driver as d
    except ImportError:  # not on this path (unit tests with a double that uses the gate's codes)
        return m
    return {d.NO_CARD: core.NO_CARD, d.ONE_CARD: core.ONE_CARD, d.MANY_CARDS: core.MANY_CARDS,
            d.ERROR: core.ERROR}


class GateRunner:
    def __init__(self, gate_cfg, pn532, allowlist, keyer, events, lockouts, relay, leds, buzzer,
                 keypad=None, wdt=None, clock=None, poll_ms=50, scan_ms=10, log=print):
        self.clock = clock or Clock()
        self.gate = core.Gate(gate_cfg, allowlist, keyer, events, lockouts, self.clock)
        self.pn = pn532
        self.events = events
        self.lockouts = lockouts
        self.relay = relay
        self.leds = leds
        self.buzzer = buzzer
        self.keypad = keypad
        self.wdt = wdt
        self.poll_ms = poll_ms
        self.scan_ms = scan_ms
        self.log = log
        self.faults = 0  # all faults since boot
        self.fault_run = 0  # consecutive failing passes
        self.last_fault = None
        self.passes = 0
        self.stopped = False
        self._next_poll = 0
        self._fault_uid = bytearray(1)
        self._status = _poll_statuses()
        relay.off()

    # ---- start-up ----
    def boot(self, now=None):
        """Restore lockouts from flash and log the boot (aux = seconds of reader lock restored).
        Called by run(); call it yourself to step the runner by hand."""
        now = ticks_ms() if now is None else now
        self.lockouts.load(now)
        if self.lockouts.health != "ok":
            self.log("gate: " + self.lockouts.health)
        rem = self.lockouts.reader_remaining(now)
        self._event(now, E.K_BOOT, E.R_INFO, E.OK, rem // 1000)
        self._next_poll = now

    # ---- one pass of the loop (no sleeping; run() sleeps between passes) ----
    def step(self, now):
        g = self.gate
        try:
            if ticks_diff(now, self._next_poll) >= 0:
                self._next_poll = ticks_add(now, self.poll_ms)
                pn = self.pn
                st = self._status.get(pn.poll(), core.ERROR)  # the driver's codes -> the gate's
                if st == core.ONE_CARD:
                    self._act(now, g.poll(now, st, pn.uid, pn.uid_len))
                else:
                    self._act(now, g.poll(now, st, None, 0))
            if self.keypad is not None:
                k = self.keypad.scan(now)
                if k is not None:
                    self._act(now, g.key(now, k))
            self._act(now, g.tick(now))
            self.lockouts.checkpoint(now)
            self._show_lock(now)
            self.fault_run = 0
        except Exception as e:  # fail-secure: door shut, note it, carry on
            self._fault(now, e)
        self.relay.update(now)
        self.leds.update(now)
        self.buzzer.update(now)
        self.passes += 1
        if self.wdt is not None and self.fault_run < FAULT_STORM:
            self.wdt.feed()

    async def run(self):
        self.boot()
        while not self.stopped:
            self.step(ticks_ms())
            await asyncio.sleep_ms(self.scan_ms)
        self.relay.off()

    # ---- outputs ----
    def _act(self, now, sig):
        if sig == S.S_NONE:
            return
        if sig == S.S_GRANT:  # the event is on flash already (Gate._grant)
            self.relay.pulse(now, self.gate.open_ms)
            self.leds.red.stop()
            self.leds.green.hold(now, self.gate.open_ms)
            self.buzzer.play(now, S.PATTERNS[S.S_GRANT][2])
            return
        if sig == S.S_READY:
            self.leds.off()
        p = S.PATTERNS[sig]
        self.leds.play(now, p[0], p[1], p[3])
        self.buzzer.play(now, p[2], p[3])
        if sig == S.S_WAVE_LOCK or sig == S.S_READER_LOCK or sig == S.S_CARD_LOCK:
            ms = self.gate.lock_ms
            self.log("gate: locked (%s) %s" % (
                E.REASONS.get(E.LOCKED_CARD if sig == S.S_CARD_LOCK else self.lockouts.reader_reason, "?"),
                "until the host clears it" if ms >= HARD_MS else "for %d s" % (ms // 1000)))

    def _show_lock(self, now):
        # While the reader is locked (also after a reboot) its pattern plays whenever nothing else does.
        if self.relay.is_on or self.leds.red.busy() or self.leds.green.busy() or self.buzzer.busy():
            return
        if self.lockouts.reader_remaining(now):
            sig = S.S_WAVE_LOCK if self.lockouts.reader_reason == E.LOCKED_WAVE else S.S_READER_LOCK
            p = S.PATTERNS[sig]
            self.leds.play(now, p[0], p[1], True)
            self.buzzer.play(now, p[2], True)

    def _fault(self, now, e):
        self.relay.off()
        self.faults += 1
        self.fault_run += 1
        if isinstance(e, MemoryError):  # counted across the reboot, reported in HEALTH
            from gv import memory

            memory.note_error("gate", self.fault_run <= 3)
        self.last_fault = repr(e)
        try:
            self.gate.abort()
        except Exception:
            pass
        if self.fault_run <= 3:  # don't flood the log or the flash in a fault storm
            self.log("gate: fault, door kept shut: %r" % (e,))
            self._event(now, E.K_FAULT, E.R_REFUSE, E.ERROR, self.faults)
            try:
                p = S.PATTERNS[S.S_FAULT]
                self.leds.play(now, p[0], p[1])
                self.buzzer.play(now, p[2])
            except Exception:
                pass

    def _event(self, now, kind, result, reason, aux, uid=None, uid_len=0):
        try:
            c = self.clock
            return self.events.append(kind, result, reason, uid or self._fault_uid, uid_len,
                                      c.seconds(now), c.flags(), aux)
        except Exception as e:
            self.log("gate: event not written: %r" % (e,))
            return 0

    # ---- commands from the host (gv.sync calls these after authenticating them) ----
    def set_clock(self, seconds, bound_path=None, now=None):
        """The host's time: set, logged and saved as the clock's lower bound. The event (t = the
        new time, aux = what the clock read before: uptime or the bound) lets the host date this
        boot's events made without a clock; a correction under 2 s is not logged."""
        now = ticks_ms() if now is None else now
        c = self.clock
        was, before = c.is_set(), c.seconds(now)
        c.set(seconds, now)
        d = seconds - before
        if not was or d > 1 or d < -1:
            self._event(now, E.K_CLOCK, E.R_INFO, E.OK, before)
        if bound_path:
            from gv.gate import clock as CK

            try:
                CK.save_bound(bound_path, seconds, True)
            except OSError as e:  # the live clock is right; the bound stays older (safe)
                self.log("gate: clock bound not saved: %r" % (e,))
        return True

    def clear_lockouts(self, key8=None, now=None):
        """Clear one card's lockout (key8 = its allowlist key) or all lockouts and the reader's."""
        now = ticks_ms() if now is None else now
        self.lockouts.clear(now, key8)
        self.gate.waves.clear()
        self.gate.burst.clear()
        self._event(now, E.K_CLEARED, E.R_INFO, E.OK, 0 if key8 is None else 1)
        if key8 is None:
            self._act(now, S.S_READY)

    def open_once(self, now=None):
        """The host opens the door once: logged first, then the relay pulses (never while faulting)."""
        now = ticks_ms() if now is None else now
        if self._event(now, E.K_REMOTE_OPEN, E.R_GRANT, E.OK, 0):
            self._act(now, S.S_GRANT)
            return True
        return False

    def status(self):
        """Health for the sync layer's announce."""
        return {"state": core.STATE_NAMES[self.gate.state], "faults": self.faults,
                "last_fault": self.last_fault, "reader_locked_ms": self.lockouts.reader_remaining(ticks_ms()),
                "lockouts": self.lockouts.health, "events_pending": self.events.pending_count(),
                "events_dropped": self.events.dropped}


async def run(gate_cfg, pn532, allowlist, keyer, events, lockouts, relay, leds, buzzer, keypad=None,
              wdt=None, clock=None):
    """Run the gate forever (see GateRunner)."""
    await GateRunner(gate_cfg, pn532, allowlist, keyer, events, lockouts, relay, leds, buzzer,
                     keypad, wdt, clock).run()
