# The gate's decision state machine: pure logic, no drivers. Every input carries the caller's
# `now` (wrap-safe ticks_ms), so tests drive it with explicit times, across the ticks wrap too.
# Inputs: poll(now, status, uid, uid_len) per PN532 poll, key(now, ch) per key press, tick(now)
# each loop. Each returns a signal (gv.gate.signals) for the outputs; S_GRANT means "pulse the
# relay now": the decision's event is already on flash when it is returned.
# States: IDLE -> HOLD (same single UID until hold_ms) -> decision -> [PIN] -> LEAVE (the card
# must leave the field before anything is read again) -> IDLE.
from gv.allowlist import record as R
from gv import events as E
from gv.compat import const, ticks_add, ticks_diff
from gv.gate import signals as S
from gv.gate.lockout import HARD_MS
from gv.gate.window import Window

# PN532 poll results (same values as gv.pn532.driver; restated so this module imports no driver)
NO_CARD = const(0)
ONE_CARD = const(1)
MANY_CARDS = const(2)
ERROR = const(3)

IDLE = const(0)
HOLD = const(1)
PIN = const(2)
LEAVE = const(3)
STATE_NAMES = ("idle", "hold", "pin", "leave")

MISS_OK = const(1)  # polls a held card may be missed without ending the presentation
LEAVE_POLLS = const(2)  # consecutive empty polls that prove the card has left

DEFAULTS = {
    "hold_ms": 500, "open_ms": 3000, "pin_policy": "card",
    "pin_min": 4, "pin_max": 6, "pin_first_ms": 10000, "pin_key_ms": 5000,
    "wave_count": 3, "wave_window_ms": 10000, "wave_lock_ms": 10000,
    "burst_count": 5, "burst_window_ms": 30000, "reader_lock_ms": 30000,
    "pin_tries": 3, "card_lock_ms": 30000, "lock_cap_ms": 900000, "pin_hard_after": 4,
}


def settings(gate_cfg):
    """The gate config section with defaults filled in; raises ValueError on nonsense."""
    c = dict(DEFAULTS)
    c.update(gate_cfg or {})
    if c["pin_policy"] not in ("never", "card", "always"):
        raise ValueError("pin_policy must be never, card or always")
    if not 1 <= c["pin_min"] <= c["pin_max"] <= R.MAX_PIN:
        raise ValueError("PIN length must be within 1..6 digits")
    for k in ("hold_ms", "open_ms", "wave_count", "burst_count", "pin_tries"):
        if not isinstance(c[k], int) or c[k] < 0:
            raise ValueError("gate.%s must be a whole number" % k)
    if c["wave_count"] < 1 or c["burst_count"] < 1 or c["pin_tries"] < 1:
        raise ValueError("lockout thresholds must be at least 1")
    return c


_REFUSALS = {  # record status -> (reason, signal)
    R.INACTIVE: (E.INACTIVE, S.S_INVALID),
    R.BLOCKED: (E.BLOCKED, S.S_DENY),
    R.TERMINATED: (E.TERMINATED, S.S_DENY),
    R.SUSPENDED: (E.SUSPENDED, S.S_INVALID),
}


class Gate:
    def __init__(self, gate_cfg, allowlist, keyer, events, lockouts, clock):
        c = settings(gate_cfg)
        self.cfg = c
        self.hold_ms = c["hold_ms"]
        self.open_ms = c["open_ms"]
        self.policy = c["pin_policy"]
        self.pin_min = c["pin_min"]
        self.pin_max = c["pin_max"]
        self.pin_first_ms = c["pin_first_ms"]
        self.pin_key_ms = c["pin_key_ms"]
        self.wave_lock_ms = c["wave_lock_ms"]
        self.allowlist = allowlist
        self.keyer = keyer
        self.events = events
        self.lockouts = lockouts
        # the lockout lengths and tries come from the same gate config
        lockouts.tries = c["pin_tries"]
        lockouts.card_lock_ms = c["card_lock_ms"]
        lockouts.cap_ms = c["lock_cap_ms"]
        lockouts.hard_after = c["pin_hard_after"]
        lockouts.reader_lock_ms = c["reader_lock_ms"]
        self.clock = clock
        self.waves = Window(c["wave_count"], c["wave_window_ms"])
        self.burst = Window(c["burst_count"], c["burst_window_ms"])
        self.state = IDLE
        self._uid = bytearray(R.MAX_UID)
        self._uidmv = memoryview(self._uid)
        self._uid_len = 0
        self._t0 = 0
        self._seen = 0
        self._miss = 0
        self._gone = 0
        self._key8 = bytearray(R.KEY_SIZE)
        self._rec = bytearray(R.REC_SIZE)
        self._pin = bytearray(R.MAX_PIN)
        self._duress = bytearray(R.MAX_PIN)
        self._pin_len = 0
        self._deadline = 0
        self.reason = E.OK  # reason of the last decision (for logs and tests)
        self.last_seq = 0  # sequence number of the last event written
        self.lock_ms = 0  # length of the lock just started (S_WAVE_LOCK/READER_LOCK/CARD_LOCK)

    # ---- inputs ----
    def poll(self, now, status, uid, uid_len):
        st = self.state
        if st == PIN:
            return S.S_NONE  # cards are ignored while a PIN is typed
        if st == LEAVE:
            if status == NO_CARD:
                self._gone += 1
                if self._gone >= LEAVE_POLLS:
                    self.state = IDLE
            elif status != ERROR:
                self._gone = 0
            return S.S_NONE
        if status == ONE_CARD and 0 < uid_len <= R.MAX_UID:
            if st == HOLD and self._same(uid, uid_len):
                self._miss = 0
                self._seen = now
                if ticks_diff(now, self._t0) >= self.hold_ms:
                    return self._decide(now)
                return S.S_NONE
            sig = S.S_NONE
            if st == HOLD:  # another card replaced the held one before it counted
                sig = self._short(now)
            self._start(now, uid, uid_len)
            if self.hold_ms == 0:
                return self._decide(now)
            return sig
        if status == MANY_CARDS:
            self.state = LEAVE
            self._gone = 0
            self._log(now, E.K_DECISION, E.R_REFUSE, E.MANY_CARDS, 0, 0)
            return S.S_MANY
        # NO_CARD, ERROR or a UID we can't use: a held card may be missed once
        if st == HOLD:
            self._miss += 1
            if self._miss > MISS_OK:
                self.state = IDLE
                return self._short(now)
        return S.S_NONE

    def key(self, now, ch):
        if self.state != PIN:
            return S.S_NONE
        if "0" <= ch <= "9":
            if self._pin_len < self.pin_max:
                self._pin[self._pin_len] = ord(ch)
                self._pin_len += 1
            self._deadline = ticks_add(now, self.pin_key_ms)
            return S.S_KEY
        if ch == "*":
            self._wipe()
            self._deadline = ticks_add(now, self.pin_key_ms)
            return S.S_KEY
        if ch == "#":
            return self._submit(now)
        return S.S_NONE  # A-D on a 4x4 pad mean nothing here

    def tick(self, now):
        if self.state == PIN and ticks_diff(now, self._deadline) >= 0:
            self._wipe()
            self._leave()
            return self._refuse(now, E.PIN_TIMEOUT, S.S_PIN_WRONG, False)
        if self.lockouts.reader_expired(now):
            self.waves.clear()
            self.burst.clear()
            return S.S_READY
        return S.S_NONE

    def abort(self):
        """After an error: forget what was in progress; the card must leave first."""
        self._wipe()
        self._leave()

    # ---- hold-to-read ----
    def _same(self, uid, n):
        if n != self._uid_len:
            return False
        u = self._uid
        for i in range(n):
            if u[i] != uid[i]:
                return False
        return True

    def _start(self, now, uid, n):
        for i in range(n):
            self._uid[i] = uid[i]
        self._uid_len = n
        self._t0 = now
        self._seen = now
        self._miss = 0
        self.state = HOLD

    def _short(self, now):
        """A presentation ended before hold_ms: count it; too many in the window lock the reader."""
        if self.lockouts.reader_remaining(now):
            return S.S_NONE
        if not self.waves.add(now):
            return S.S_NONE
        self.waves.clear()
        self.lock_ms = self.lockouts.lock_reader(now, E.LOCKED_WAVE, self.wave_lock_ms)
        self._log(now, E.K_LOCKOUT, E.R_REFUSE, E.LOCKED_WAVE, 0, self.lock_ms // 1000)
        return S.S_WAVE_LOCK

    def _leave(self):
        self.state = LEAVE
        self._gone = 0

    # ---- the decision (no heap from here to the relay except the event write) ----
    def _decide(self, now):
        self._leave()
        self.keyer.uid_key(self._uidmv, self._uid_len, self._key8)
        lk = self.lockouts
        if lk.reader_remaining(now):
            return self._refuse(now, lk.reader_reason, S.S_LOCKED, False)
        if lk.card_remaining(self._key8, now):
            return self._refuse(now, E.LOCKED_CARD, S.S_LOCKED, False)
        rec = self._rec
        if not self.allowlist.lookup(self._key8, rec):
            return self._refuse(now, E.UNKNOWN, S.S_DENY, True)
        st = R.status(rec)
        if st != R.ACTIVE:
            r = _REFUSALS.get(st)
            if r is None:
                return self._refuse(now, E.BAD_RECORD, S.S_DENY, True)
            return self._refuse(now, r[0], r[1], True)
        # Dates against the clock, or without one against the lower bound it kept through a
        # power cut (docs/gate.md): a start the bound has not reached refuses (fail-secure); an
        # end refuses once the bound is past it (the real date can only be later). A reader
        # that has never known the time (no bound: provisioning writes one) checks no dates.
        day = self.clock.floor_day(now)
        if day >= 0:
            if day < R.valid_from(rec):
                return self._refuse(now, E.NOT_YET_VALID, S.S_INVALID, True)
            if day > R.valid_until(rec):
                return self._refuse(now, E.EXPIRED, S.S_INVALID, True)
        if self.policy == "always" or (self.policy == "card" and R.flags(rec) & R.F_PIN):
            self._wipe()
            self.state = PIN
            self._deadline = ticks_add(now, self.pin_first_ms)
            return S.S_PIN_PROMPT
        return self._grant(now, E.K_DECISION, E.OK)

    def _grant(self, now, kind, reason):
        self.reason = reason
        self._log(now, kind, E.R_GRANT, reason, self._uid_len, 0)
        if self.lockouts.reader_level:  # rare: a grant after a burst lock resets its escalation
            self.lockouts.reader_calm(now)
        return S.S_GRANT

    def _refuse(self, now, reason, sig, counts):
        self.reason = reason
        self._log(now, E.K_DECISION, E.R_REFUSE, reason, self._uid_len if reason != E.MANY_CARDS else 0, 0)
        if counts and not self.lockouts.reader_remaining(now) and self.burst.add(now):
            self.burst.clear()
            self.lock_ms = self.lockouts.lock_reader(now, E.LOCKED_READER)
            self._log(now, E.K_LOCKOUT, E.R_REFUSE, E.LOCKED_READER, 0, self.lock_ms // 1000)
            return S.S_READER_LOCK
        return sig

    def _log(self, now, kind, result, reason, uid_len, aux):
        c = self.clock
        self.last_seq = self.events.append(kind, result, reason, self._uidmv, uid_len,
                                           c.seconds(now), c.flags(), aux)

    # ---- PIN ----
    def _wipe(self):
        for i in range(R.MAX_PIN):
            self._pin[i] = 0
            self._duress[i] = 0
        self._pin_len = 0

    def _submit(self, now):
        n = self._pin_len
        self._leave()
        key8 = self._key8
        lk = self.lockouts
        lk.pin_attempt(key8, now)  # counted on flash before the check: a power cut buys nothing
        for i in range(n):
            self._duress[i] = self._pin[i]
        if n:  # duress PIN = the PIN with its last digit + 1 (9 wraps to 0): undo that, compare
            d = self._duress[n - 1] - 1
            self._duress[n - 1] = 0x39 if d < 0x30 else d
        long_enough = n >= self.pin_min
        ok = self.keyer.pin_ok(self._uidmv, self._uid_len, self._pin, n, self._rec)
        duress = self.keyer.pin_ok(self._uidmv, self._uid_len, self._duress, n, self._rec)
        self._wipe()
        if long_enough and (ok or duress):
            lk.pin_result(key8, now, True)
            if ok:
                return self._grant(now, E.K_DECISION, E.OK)
            return self._grant(now, E.K_ALARM, E.DURESS)
        ms = lk.pin_result(key8, now, False)
        sig = self._refuse(now, E.PIN_WRONG, S.S_PIN_WRONG, False)
        if ms:
            self.lock_ms = ms
            # aux: the lock's seconds, 0 for a lock only the host ends
            self._log(now, E.K_LOCKOUT, E.R_REFUSE, E.LOCKED_CARD, self._uid_len,
                      0 if ms >= HARD_MS else ms // 1000)
            return S.S_CARD_LOCK
        return sig
