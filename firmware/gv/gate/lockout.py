# Lockouts that a reboot can't clear: per-card wrong-PIN counters with escalating locks, and the
# reader-wide lock (card bursts, waving). Kept in RAM in preallocated tables (looked up without
# heap in the card path) and saved to one small file, written as temp file + rename, so a power
# cut leaves the old or the new state, never a torn one.
#
# The uptime ticks restart at boot, so deadlines can't be stored. The file holds each lock's
# REMAINING milliseconds as of the last save; at boot every lock resumes with that remainder.
# The runner re-saves (checkpoints) every CHECKPOINT_MS while a lock runs, so a reboot can
# lengthen a lock by at most CHECKPOINT_MS plus the boot time, and never shorten it.
# A wrong-PIN try is counted and saved BEFORE the PIN is checked, so cutting the power after
# typing a PIN buys no extra guess. After `hard_after` timed locks in a row a card's lock has no
# end: only the host clears it (a PIN guesser gets tries*hard_after tries per reader, not a few
# hundred a day; docs/pin-security.md).
import os
import struct

from gv.compat import const, ticks_add, ticks_diff

try:
    from binascii import crc32
except ImportError:
    from gv.events import crc32

CHECKPOINT_MS = const(30000)
HARD_MS = const(0x3FFFFFFF)  # card_remaining() of a lock only the host clears (a small int on 32-bit)
_HARD_REM = 0xFFFFFFFF  # how the file says it
_MAGIC = b"GVL1"
_HDR = "<4sIBBB"  # magic, reader remaining ms, reader reason, reader level, card entries
_HDR_SIZE = const(11)
_ENT = "<8sBBI"  # key8, fails, level, remaining ms
_ENT_SIZE = const(14)


class Lockouts:
    def __init__(self, path, slots=32, tries=3, card_lock_ms=30000, cap_ms=900000,
                 reader_lock_ms=30000, hard_after=4):
        self.path = path
        self.slots = slots
        self.tries = tries
        self.card_lock_ms = card_lock_ms
        self.cap_ms = cap_ms
        self.reader_lock_ms = reader_lock_ms
        self.hard_after = hard_after  # timed card locks before one without an end (0: never)
        self._keys = bytearray(8 * slots)
        self._used = bytearray(slots)
        self._fails = bytearray(slots)
        self._level = bytearray(slots)
        self._locked = bytearray(slots)
        self._until = [0] * slots  # ticks deadline while locked
        self.reader_locked = False
        self.reader_until = 0
        self.reader_reason = 0
        self.reader_level = 0
        self.saves = 0
        self.health = "ok"
        self._last_save = 0

    # ---- persistence ----
    def load(self, now):
        """Restore from flash at boot (deadlines = now + saved remaining). A corrupt file locks the
        reader for reader_lock_ms (fail-secure) and is reported in .health."""
        self._last_save = now
        try:
            os.remove(self.path + ".tmp")
        except OSError:
            pass
        try:
            with open(self.path, "rb") as f:
                b = f.read()
        except OSError:
            return False  # never saved: nothing locked
        try:
            self._parse(b, now)
        except (ValueError, IndexError):
            self.health = "lockout file corrupt: reader locked"
            for i in range(self.slots):
                self._used[i] = 0
            self._lock_reader_ms(now, self.reader_lock_ms, 11)  # events.LOCKED_READER
            return True
        # A cut between saving the last counted try and saving its lock: lock it now.
        for i in range(self.slots):
            if self._used[i] and not self._locked[i] and self._fails[i] >= self.tries:
                self._lock_card(i, now)
                self.save(now)
        return True

    def _parse(self, b, now):
        if len(b) < _HDR_SIZE + 4 or struct.unpack_from("<I", b, len(b) - 4)[0] != crc32(b[:-4]) & 0xFFFFFFFF:
            raise ValueError("crc")
        magic, rem, reason, level, n = struct.unpack_from(_HDR, b, 0)
        if magic != _MAGIC or len(b) != _HDR_SIZE + n * _ENT_SIZE + 4:
            raise ValueError("format")
        self.reader_level = level
        if rem:
            self._lock_reader_ms(now, rem, reason)
        for j in range(min(n, self.slots)):
            key, fails, lvl, rem = struct.unpack_from(_ENT, b, _HDR_SIZE + j * _ENT_SIZE)
            i = j
            self._keys[8 * i:8 * i + 8] = key
            self._used[i] = 1
            self._fails[i] = fails
            self._level[i] = lvl
            self._locked[i] = 2 if rem == _HARD_REM else (1 if rem else 0)
            self._until[i] = ticks_add(now, rem) if rem != _HARD_REM else now

    def save(self, now):
        """Write the whole state (temp file + rename). Expired locks are dropped first."""
        self._expire(now)
        n = 0
        for i in range(self.slots):
            if self._used[i]:
                n += 1
        b = bytearray(_HDR_SIZE + n * _ENT_SIZE + 4)
        struct.pack_into(_HDR, b, 0, _MAGIC, self.reader_remaining(now), self.reader_reason,
                         self.reader_level, n)
        off = _HDR_SIZE
        for i in range(self.slots):
            if self._used[i]:
                lk = self._locked[i]
                rem = _HARD_REM if lk == 2 else (max(0, ticks_diff(self._until[i], now)) if lk else 0)
                struct.pack_into(_ENT, b, off, bytes(self._keys[8 * i:8 * i + 8]), self._fails[i],
                                 self._level[i], rem)
                off += _ENT_SIZE
        struct.pack_into("<I", b, off, crc32(memoryview(b)[:off]) & 0xFFFFFFFF)
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b)
        os.rename(tmp, self.path)
        self.saves += 1
        self._last_save = now

    def checkpoint(self, now):
        """Called by the runner each loop: re-save every CHECKPOINT_MS while any lock runs, so a
        reboot resumes close to the true remaining time. True when it wrote."""
        if ticks_diff(now, self._last_save) < CHECKPOINT_MS or not self.any_locked(now, True):
            return False
        self.save(now)
        return True

    # ---- queries (card path: no heap) ----
    def _find(self, key8):
        for i in range(self.slots):
            if self._used[i]:
                o = 8 * i
                k = self._keys
                j = 0
                while j < 8 and k[o + j] == key8[j]:
                    j += 1
                if j == 8:
                    return i
        return -1

    def reader_remaining(self, now):
        if not self.reader_locked:
            return 0
        r = ticks_diff(self.reader_until, now)
        return r if r > 0 else 0

    def card_remaining(self, key8, now):
        i = self._find(key8)
        if i < 0 or not self._locked[i]:
            return 0
        if self._locked[i] == 2:
            return HARD_MS
        r = ticks_diff(self._until[i], now)
        return r if r > 0 else 0

    def fails(self, key8):
        i = self._find(key8)
        return self._fails[i] if i >= 0 else 0

    def any_locked(self, now, timed_only=False):
        """A lock running now; timed_only: leave out locks only the host ends (nothing to
        checkpoint there)."""
        if self.reader_remaining(now):
            return True
        for i in range(self.slots):
            if self._used[i] and self._locked[i]:
                if self._locked[i] == 2:
                    if not timed_only:
                        return True
                elif ticks_diff(self._until[i], now) > 0:
                    return True
        return False

    def _expire(self, now):
        """Drop expired locks (and empty entries); True if the reader lock just ended."""
        ended = False
        if self.reader_locked and ticks_diff(self.reader_until, now) <= 0:
            self.reader_locked = False
            self.reader_reason = 0
            ended = True
        for i in range(self.slots):
            if self._used[i] and self._locked[i] == 1 and ticks_diff(self._until[i], now) <= 0:
                self._locked[i] = 0
            if self._used[i] and not self._locked[i] and not self._fails[i] and not self._level[i]:
                self._used[i] = 0
        return ended

    def reader_expired(self, now):
        """True once when the reader lock has run out (state saved so a reboot won't revive it)."""
        if self.reader_locked and ticks_diff(self.reader_until, now) <= 0:
            self.save(now)
            return True
        return False

    # ---- changes (each saved before it takes effect) ----
    def _lock_reader_ms(self, now, ms, reason):
        self.reader_locked = True
        self.reader_until = ticks_add(now, ms)
        self.reader_reason = reason

    def lock_reader(self, now, reason, ms=None, escalate=True):
        """Lock the whole reader; the burst lock doubles on each repeat (capped). Returns ms."""
        if ms is None:
            ms = min(self.reader_lock_ms << min(self.reader_level, 16), self.cap_ms)
            if escalate and self.reader_level < 255:
                self.reader_level += 1
        self._lock_reader_ms(now, ms, reason)
        self.save(now)
        return ms

    def reader_calm(self, now):
        """A card was granted: the next burst lock starts at the base length again."""
        if self.reader_level and not self.reader_locked:
            self.reader_level = 0
            self.save(now)

    def _slot(self, key8, now):
        i = self._find(key8)
        if i >= 0:
            return i
        for i in range(self.slots):
            if not self._used[i]:
                break
        else:  # full: reuse the entry that matters least (unlocked, fewest fails; else soonest to end)
            self._expire(now)
            best, score = 0, None
            for i in range(self.slots):
                if not self._used[i]:
                    best = i
                    break
                lk = self._locked[i]  # a lock only the host ends is never given up
                s = (HARD_MS if lk == 2 else ticks_diff(self._until[i], now) if lk
                     else -1000000 + 256 * self._level[i] + self._fails[i])
                if score is None or s < score:
                    best, score = i, s
            i = best
        self._keys[8 * i:8 * i + 8] = key8
        self._used[i] = 1
        self._fails[i] = 0
        self._level[i] = 0
        self._locked[i] = 0
        return i

    def pin_attempt(self, key8, now):
        """Count a PIN try as failed and save it, before the PIN is checked."""
        i = self._slot(key8, now)
        if self._fails[i] < 255:
            self._fails[i] += 1
        self.save(now)

    def pin_result(self, key8, now, ok):
        """After the check: a right PIN undoes the counted try and resets the card; a wrong one
        that reaches `tries` locks the card (doubling per lock, capped). Returns lock ms or 0."""
        i = self._slot(key8, now)
        if ok:
            self._fails[i] = 0
            self._level[i] = 0
            self.save(now)
            return 0
        if self._fails[i] < self.tries:
            return 0  # already counted and saved by pin_attempt
        ms = self._lock_card(i, now)
        self.save(now)
        return ms

    def _lock_card(self, i, now):
        self._fails[i] = 0
        if self._level[i] < 255:
            self._level[i] += 1
        if self.hard_after and self._level[i] >= self.hard_after:
            self._locked[i] = 2  # until the host clears it
            return HARD_MS
        ms = min(self.card_lock_ms << min(self._level[i] - 1, 16), self.cap_ms)
        self._locked[i] = 1
        self._until[i] = ticks_add(now, ms)
        return ms

    def clear(self, now, key8=None):
        """The host clears lockouts: one card's (key8), or every card's and the reader's."""
        if key8 is None:
            for i in range(self.slots):
                self._used[i] = 0
            self.reader_locked = False
            self.reader_reason = 0
            self.reader_level = 0
        else:
            i = self._find(key8)
            if i >= 0:
                self._used[i] = 0
        self.save(now)
