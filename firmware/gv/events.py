# The reader's access-event log: fixed-size binary events in a ring of segment files on
# LittleFS. An event is appended and synced before the door opens; it leaves the flash only
# after the host acknowledges it (pending/ack). Format: docs/events-format.md. The codec part
# (pack/unpack/constants) runs under CPython too, so the host decodes with this same module.
import os
import struct
from array import array

from gv.compat import const

try:
    from binascii import crc32
except ImportError:  # a port without binascii.crc32: same polynomial, bitwise
    def crc32(data, crc=0):
        crc ^= 0xFFFFFFFF
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
        return crc ^ 0xFFFFFFFF

SIZE = const(32)  # bytes per event
MAGIC = const(0xE1)  # format version 1
UID_MAX = const(10)
_FMT = "<BBBBIIBB10sI"  # magic kind result reason seq t flags uid_len uid aux (+ crc32 u32)

# kind: what happened
K_DECISION = const(1)  # a card decision (grant or refusal)
K_LOCKOUT = const(2)  # a card or the reader became locked
K_ALARM = const(3)  # duress PIN: the door opened, silent alarm
K_DROPPED = const(4)  # events were lost to overflow; aux = how many
K_BOOT = const(5)  # the reader started; aux = lockout seconds restored
K_CLEARED = const(6)  # the host cleared lockouts
K_FAULT = const(7)  # an error in the decision path (door kept shut)
K_REMOTE_OPEN = const(8)  # the host opened the door once
K_CLOCK = const(9)  # the clock was set: t = the new wall time, aux = what the clock read before

# result
R_INFO = const(0)
R_GRANT = const(1)
R_REFUSE = const(2)

# reason
OK = const(0)
UNKNOWN = const(1)  # not in the allowlist
INACTIVE = const(2)  # never activated
BLOCKED = const(3)
TERMINATED = const(4)
SUSPENDED = const(5)  # card fee unpaid
NOT_YET_VALID = const(6)
EXPIRED = const(7)
PIN_WRONG = const(8)
PIN_TIMEOUT = const(9)
LOCKED_CARD = const(10)  # this card is locked (wrong PINs)
LOCKED_READER = const(11)  # reader locked after a burst of refused cards
LOCKED_WAVE = const(12)  # reader locked after waving
MANY_CARDS = const(13)  # two or more cards in the field
DURESS = const(14)
ERROR = const(15)  # exception in the decision path
BAD_RECORD = const(16)  # record with an unknown status
PIN_CANCELLED = const(17)  # card taken away / keypad unusable during PIN entry
NO_PIN = const(18)  # PIN required but no PIN verifier in the record

F_CLOCK_SET = const(1)  # t is seconds since 2020-01-01 UTC; else seconds since boot
F_FLOOR = const(2)  # clock not set: t is a lower bound of wall time (saved bound + uptime)

REASONS = {
    OK: "ok", UNKNOWN: "unknown card", INACTIVE: "not activated", BLOCKED: "blocked",
    TERMINATED: "terminated", SUSPENDED: "suspended (fee unpaid)", NOT_YET_VALID: "not yet valid",
    EXPIRED: "expired", PIN_WRONG: "wrong PIN", PIN_TIMEOUT: "PIN timeout",
    LOCKED_CARD: "card locked (wrong PINs)", LOCKED_READER: "reader locked (refused cards)",
    LOCKED_WAVE: "reader locked (card waved)", MANY_CARDS: "more than one card",
    DURESS: "duress PIN", ERROR: "error", BAD_RECORD: "bad record", PIN_CANCELLED: "PIN cancelled",
    NO_PIN: "no PIN on record",
}
KINDS = {
    K_DECISION: "decision", K_LOCKOUT: "lockout", K_ALARM: "alarm", K_DROPPED: "events dropped",
    K_BOOT: "boot", K_CLEARED: "lockout cleared", K_FAULT: "fault", K_REMOTE_OPEN: "remote open",
    K_CLOCK: "clock set",
}
RESULTS = {R_INFO: "info", R_GRANT: "grant", R_REFUSE: "refuse"}


class EventError(ValueError):
    pass


def pack_into(buf, seq, kind, result, reason, uid, uid_len, t, flags=0, aux=0):
    """Encode one event into buf (32 bytes). uid is any buffer; only uid_len bytes are kept."""
    if uid_len < 0 or uid_len > UID_MAX:
        raise EventError("uid_len")
    struct.pack_into(_FMT, buf, 0, MAGIC, kind, result, reason, seq & 0xFFFFFFFF,
                     t & 0xFFFFFFFF, flags, uid_len, b"", aux & 0xFFFFFFFF)
    for i in range(uid_len):
        buf[14 + i] = uid[i]
    struct.pack_into("<I", buf, 28, crc32(memoryview(buf)[:28]) & 0xFFFFFFFF)


def pack(seq, kind, result, reason, uid, uid_len, t, flags=0, aux=0):
    buf = bytearray(SIZE)
    pack_into(buf, seq, kind, result, reason, uid, uid_len, t, flags, aux)
    return bytes(buf)


def valid(ev):
    return (len(ev) == SIZE and ev[0] == MAGIC
            and struct.unpack_from("<I", ev, 28)[0] == crc32(memoryview(ev)[:28]) & 0xFFFFFFFF)


def unpack(ev):
    """dict of an event's fields; raises EventError on a bad length, version or CRC."""
    if not valid(ev):
        raise EventError("bad event")
    _, kind, result, reason, seq, t, flags, uid_len, uid, aux = struct.unpack_from(_FMT, ev, 0)
    if uid_len > UID_MAX:
        raise EventError("uid_len")
    return {"seq": seq, "kind": kind, "result": result, "reason": reason, "t": t,
            "clock_set": bool(flags & F_CLOCK_SET), "floor": bool(flags & F_FLOOR),
            "uid": bytes(uid[:uid_len]), "aux": aux}


def describe(ev):
    """One line for logs and the CLI (no secrets in an event: the UID is the card's public id)."""
    d = unpack(ev)
    return "#%d %s %s: %s uid=%s t=%d%s aux=%d" % (
        d["seq"], KINDS.get(d["kind"], "kind%d" % d["kind"]), RESULTS.get(d["result"], "?"),
        REASONS.get(d["reason"], "reason%d" % d["reason"]), d["uid"].hex() if d["uid"] else "-",
        d["t"], "" if d["clock_set"] else (" (lower bound)" if d["floor"] else " (clock not set)"),
        d["aux"])


# ---- the flash ring ----
# 4 events = 128 bytes per segment: small enough that LittleFS keeps the file inline in its
# directory's metadata log, so an append is one small metadata commit (about 3 block programs
# and 0.1 erases per event measured) instead of copying a 4 KiB data block (17 programs and one
# erase per event with 128-event segments). See docs/events-format.md.
SEG_EVENTS = const(4)
MAX_SEGMENTS = const(512)  # 2048 events (64 KiB of payload) before the oldest are dropped
_ACK = "ack"


def _seg_name(first_seq):
    return "%08x.ev" % first_seq


def _seg_first(name):
    # the first sequence number a segment file's name gives, -1 for any other name
    if name.endswith(".ev") and len(name) == 11:
        try:
            return int(name[:8], 16)
        except ValueError:
            pass
    return -1


class _Ring:
    """First sequence numbers of the segments, oldest first, in one array allocated at start-up
    (a growing list would need ever larger contiguous blocks on a fragmented heap). Kept as
    16-bit offsets from a base (1 KB, not 2 KB, for 512 segments): the ring's numbers span at
    most its capacity in events, far below 2^16; a number out of that reach (a stray file) is
    refused with OverflowError."""

    def __init__(self, cap):
        self._a = array("H", bytes(2 * cap))
        self._cap = cap
        self._h = 0
        self._base = 0
        self.n = 0

    def get(self, i):
        return self._base + self._a[(self._h + i) % self._cap]

    def last(self):
        return self.get(self.n - 1)

    def _shift(self, d):
        # every offset minus d (d < 0: plus), the base plus d
        for i in range(self.n):
            j = (self._h + i) % self._cap
            self._a[j] = self._a[j] - d
        self._base += d

    def push(self, v):
        """Add v keeping the order (at the end unless a boot scan found files out of order)."""
        if not self.n:
            self._base = v
        elif v < self._base:
            if self.last() - v > 0xFFFF:
                raise OverflowError("segment %d out of the ring's reach" % v)
            self._shift(v - self._base)
        elif v - self._base > 0xFFFF:
            if v - self.get(0) > 0xFFFF:
                raise OverflowError("segment %d out of the ring's reach" % v)
            self._shift(self.get(0) - self._base)
        i = self.n
        self.n += 1
        a = self._a
        while i > 0 and self.get(i - 1) > v:
            a[(self._h + i) % self._cap] = a[(self._h + i - 1) % self._cap]
            i -= 1
        a[(self._h + i) % self._cap] = v - self._base

    def pop(self):
        v = self.get(0)
        self._h = (self._h + 1) % self._cap
        self.n -= 1
        return v


class EventLog:
    """A ring of segment files in `path`, each named for the sequence number of its first event.
    Appends go to the newest segment (open, write 32 bytes, close: LittleFS commits it atomically);
    a full segment starts the next; past `max_segments` the oldest segment is deleted.
    `ack(upto)` persists the acknowledged sequence number (temp file + rename) and deletes
    segments that are wholly acknowledged. Sequence numbers start at 1 and never repeat.

    Loss accounting is exact and survives reboots without a write of its own: the ring is
    contiguous, so the unacknowledged events no longer on flash are exactly the numbers between
    the acknowledged one and the oldest segment; an ack folds that gap into a total kept in the
    ack file. `lost` is that total; an 'events dropped' event carries it (cumulative, not a
    per-segment count), written once per trip round the ring and when the link is back."""

    def __init__(self, path, seg_events=SEG_EVENTS, max_segments=MAX_SEGMENTS):
        if max_segments < 2 or seg_events < 1:
            raise ValueError("event ring too small")
        self.path = path
        self.seg_events = seg_events
        self.max_segments = max_segments
        self.capacity = seg_events * max_segments
        self._lost_base = 0  # lost events folded in by acks (persisted in the ack file)
        self._told = 0  # the lost total the host acknowledged in an 'events dropped' event
        self._drop_seq = 0  # seq and total of the newest 'events dropped' event written
        self._drop_aux = 0
        self.corrupt = 0  # records that failed their CRC when read (skipped)
        self._buf = bytearray(SIZE)
        self._rd = bytearray(SIZE)
        try:
            os.mkdir(path)
        except OSError:
            pass
        self.acked = self._load_ack()
        self._segs = _Ring(max_segments)  # first seq of each segment, oldest first
        self._scan()
        self.next_seq = max(self.acked + 1, self._recover_next())
        self._cur_count = self._count(self._segs.last()) if self._segs.n else 0

    # -- opening --
    def _p(self, name):
        return self.path + "/" + name

    def _load_ack(self):
        # 16 bytes: acked seq, lost events folded in at acks, lost events the host has been
        # told of, CRC-32 of the 12 (an 8-byte file from format 1 has the first and a CRC only)
        try:
            with open(self._p(_ACK), "rb") as f:
                b = f.read()
        except OSError:
            return 0
        n = len(b) - 4
        if n not in (4, 12) or struct.unpack_from("<I", b, n)[0] != crc32(b[:n]) & 0xFFFFFFFF:
            return 0  # unreadable: uploading again is safe (the host dedupes by seq)
        if n == 12:
            self._lost_base = struct.unpack_from("<I", b, 4)[0]
            self._told = struct.unpack_from("<I", b, 8)[0]
        return struct.unpack_from("<I", b, 0)[0]

    def _scan(self):
        segs = self._segs
        # Passes over the directory (iterators: no list of every name). The ring's numbers span
        # less than its 16-bit reach in a log whose numbers only ever follow on; should stray
        # files say otherwise, the larger of the groups within reach of the lowest and of the
        # highest number is kept and the rest removed.
        lo, hi = -1, -1
        for ent in os.ilistdir(self.path):
            first = _seg_first(ent[0])
            if first >= 0:
                lo = first if lo < 0 or first < lo else lo
                hi = first if first > hi else hi
        keep = lo
        if hi - lo > 0xFFFF:
            n_lo = n_hi = 0
            for ent in os.ilistdir(self.path):
                first = _seg_first(ent[0])
                if first >= 0:
                    n_lo += first - lo <= 0xFFFF
                    n_hi += hi - first <= 0xFFFF
            keep = lo if n_lo >= n_hi else hi - 0xFFFF
        for ent in os.ilistdir(self.path):
            name = ent[0]
            first = _seg_first(name)
            if first >= 0:
                if not keep <= first <= keep + 0xFFFF:
                    self._remove(first)
                    continue
                if segs.n >= self.max_segments:  # more files than the ring holds: drop the oldest
                    self._remove(segs.pop())
                segs.push(first)
            elif name.endswith(".tmp"):
                try:
                    os.remove(self._p(name))  # a temp file a power cut left behind
                except OSError:
                    pass
            elif name.endswith(".tmp"):
                try:
                    os.remove(self._p(name))  # a temp file a power cut left behind
                except OSError:
                    pass

    def _count(self, first):
        try:
            return os.stat(self._p(_seg_name(first)))[6] // SIZE
        except OSError:
            return 0

    def _recover_next(self):
        # The newest valid event in the newest segment gives the next sequence number.
        segs = self._segs
        for i in range(segs.n - 1, -1, -1):
            first = segs.get(i)
            n = self._count(first)
            if n:
                return first + n
        return segs.last() if segs.n else 1

    # -- loss accounting --
    def _oldest(self):
        return self._segs.get(0) if self._segs.n else self.next_seq

    @property
    def lost(self):
        """Events lost to overflow since this log began: sequence numbers never acknowledged
        that are no longer on flash (those of earlier acks, plus the gap below the oldest)."""
        return self._lost_base + max(0, self._oldest() - self.acked - 1)

    @property
    def dropped(self):
        """Lost events the host has not yet acknowledged hearing of (the health bit)."""
        return self.lost - self._told

    def note_lost(self):
        """Write an 'events dropped' event with the current total unless the newest one on flash
        already says it. The sync link calls this before it uploads, so the host learns the
        total as it stands, not as it stood when the ring first overflowed. The note is dated
        like the newest event (its time is not what it reports)."""
        n = self.lost
        if n > self._told and not (self._drop_pending() and self._drop_aux == n):
            self._put_drop(self._t, self._cs)

    def _drop_pending(self):
        return self._drop_seq > self.acked and self._drop_seq >= self._oldest()

    def _put_drop(self, t, clock_set):
        if self._cur_count >= self.seg_events:
            self._new_segment()
        n = self.lost  # after making room: that may have lost a segment more
        self._drop_seq = self._write(K_DROPPED, R_INFO, OK, b"", 0, t, clock_set, n)
        self._drop_aux = n

    # -- writing --
    def append(self, kind, result, reason, uid_mv, uid_len, t, clock_set=False, aux=0):
        """Write one event and sync it to flash; returns its sequence number. Raises OSError if
        the flash refuses it (the caller keeps the door shut). clock_set: a bool, or the clock's
        flags (F_CLOCK_SET, F_FLOOR or 0: gv.gate.clock.Clock.flags)."""
        before = self.lost
        if not self._segs.n or self._cur_count >= self.seg_events:
            self._new_segment()
        try:
            seq = self._write(kind, result, reason, uid_mv, uid_len, t, clock_set, aux)
        except OSError as e:
            if e.args[0] != 28 or self._segs.n < 2:  # only a full flash is worth a retry
                raise
            self._remove(self._segs.pop())  # ENOSPC: make room by giving up the oldest events
            if self._cur_count >= self.seg_events:
                self._new_segment()
            seq = self._write(kind, result, reason, uid_mv, uid_len, t, clock_set, aux)
        # One 'events dropped' event per trip round the ring: a new one only when the last is
        # gone (overwritten or acknowledged), so a long outage fills the ring with events, not
        # with drop notes (the total it carries is brought up to date by note_lost()).
        if self.lost > before and not self._drop_pending():
            try:
                self._put_drop(t, clock_set)
            except OSError:
                pass  # the event itself is on flash; note_lost() writes the note later
        return seq

    _t = 0  # the newest event's time, for a note written outside an append
    _cs = False

    def _write(self, kind, result, reason, uid, uid_len, t, clock_set, aux):
        seq = self.next_seq
        pack_into(self._buf, seq, kind, result, reason, uid, uid_len, t,
                  int(clock_set) & 3, aux)  # True/False, or the clock's flags
        with open(self._p(_seg_name(self._segs.last())), "ab") as f:
            f.write(self._buf)
        self.next_seq = seq + 1
        self._cur_count += 1
        self._t = t
        self._cs = clock_set
        return seq

    def _new_segment(self):
        segs = self._segs
        # full, or (never, in a log that only ever follows on) numbered out of the ring's reach
        while segs.n >= self.max_segments or (segs.n and self.next_seq - segs.get(0) > 0xFFFF):
            self._remove(segs.pop())  # counted by `lost`: the gap below the oldest grows
        segs.push(self.next_seq)
        self._cur_count = 0

    def _remove(self, first):
        try:
            os.remove(self._p(_seg_name(first)))
        except OSError:
            pass

    # -- reading and acknowledging --
    def pending(self, max_n):
        """Up to max_n (seq, event_bytes) not yet acknowledged, oldest first."""
        out = []
        for si in range(self._segs.n):
            first = self._segs.get(si)
            n = self._count(first)
            if first + n - 1 <= self.acked or n == 0:
                continue
            with open(self._p(_seg_name(first)), "rb") as f:
                skip = self.acked + 1 - first
                if skip > 0:
                    f.seek(skip * SIZE)
                while len(out) < max_n:
                    if f.readinto(self._rd) != SIZE:
                        break
                    if not valid(self._rd):
                        self.corrupt += 1
                        continue
                    seq = struct.unpack_from("<I", self._rd, 4)[0]
                    if seq > self.acked:
                        out.append((seq, bytes(self._rd)))
            if len(out) >= max_n:
                break
        return out

    def ack(self, upto_seq):
        """The host has every event up to and including upto_seq; they may leave the flash."""
        upto = min(upto_seq, self.next_seq - 1)
        if upto <= self.acked:
            return
        base = self._lost_base + max(0, min(upto + 1, self._oldest()) - self.acked - 1)
        told = self._drop_aux if self.acked < self._drop_seq <= upto else self._told
        b = bytearray(16)
        struct.pack_into("<III", b, 0, upto, base, told)
        struct.pack_into("<I", b, 12, crc32(memoryview(b)[:12]) & 0xFFFFFFFF)
        tmp = self._p(_ACK + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b)
        os.rename(tmp, self._p(_ACK))
        self.acked = upto
        self._lost_base = base
        self._told = told
        # Delete whole segments that are acknowledged; the newest stays to append to.
        segs = self._segs
        while segs.n > 1:
            first = segs.get(0)
            if first + self._count(first) - 1 > upto:
                break
            self._remove(segs.pop())

    def pending_count(self):
        """Events on flash not yet acknowledged."""
        oldest = self._segs.get(0) if self._segs.n else self.next_seq
        return self.next_seq - max(self.acked + 1, oldest)
