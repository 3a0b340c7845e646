"""Host side of the wire protocol (docs/protocol.md): per-reader sessions that seal messages to a
reader and verify messages from it, and the builders that cut catch-up deltas and rebuild
snapshots into ~1 KiB messages. The byte format itself is gv.sync.protocol, shared with the
firmware."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import host_sync  # noqa: F401 - puts firmware/ on sys.path
from gv.allowlist.pages import pack13
from gv.sync import protocol as P
from gv.sync.protocol import ProtoError

TARGET_BYTES = 1024  # aim for messages near 1 KiB
SNAP_RECORDS = P.SNAP_MAX13  # records per rebuild chunk: 153 flash records (1,989 B), the most a message holds
DELTA_MAX_ENTRIES = (TARGET_BYTES - P.HDR - P.MAC_LEN - P.DELTA_HDR) // P.REC  # 61

Change = tuple[int, bytes, "bytes | None"]  # (version, key8, rec16 or None for a removal)


class CounterStore(Protocol):
    """Where host counters' high-water mark is kept (the registry: RegistryData)."""

    def counter_reserve(self, value: int) -> int: ...  # stored = max(stored, value); -> stored

    def counter_floor(self) -> int: ...  # the stored value (0 if none)


COUNTER_LEAD = 1_000_000 << 8  # one second of counters reserved ahead: at most a write a second


class Counter:
    """Host message counters: (wall-clock microseconds << 8) | a random per-instance byte, always
    above the last one. With a `store` (the registry) they also never go backwards across
    restarts or between instances: no counter is issued above the reservation the store holds
    (it is raised, a second ahead, before one would be), a new instance starts above the stored
    reservation whatever its clock says, and `sync()` (serve, every second) lifts an instance
    whose clock is behind to where the others are. The reader's anti-replay window then takes
    the instances' interleaving (docs/protocol.md, "Envelope")."""

    def __init__(self, store: CounterStore | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self._salt = os.urandom(1)[0]
        self._clock = clock
        self._store = store
        self._lock = threading.Lock()
        self._floor = store.counter_floor() if store is not None else 0
        self._last = self._floor
        self._reserved = self._floor

    def next(self) -> int:
        with self._lock:
            now = (self._clock() // 1000) << 8 | self._salt
            c = max(self._last + 256, now, self._floor)
            c = (c & ~0xFF) | self._salt
            if c <= self._last:
                c += 256
            if self._store is not None and c > self._reserved:
                self._reserved = self._store.counter_reserve(c + COUNTER_LEAD)
            self._last = c
            return c

    def sync(self) -> None:
        """Catch up with the other instances: the highest reservation in the store, less its
        lead, is a counter some instance has already issued."""
        if self._store is None:
            return
        stored = self._store.counter_floor()
        with self._lock:
            self._floor = max(self._floor, stored - COUNTER_LEAD)


# A reader's boot number (the top half of its counters) persists on its flash and rises by one
# per boot, so a counter whose boot number is far above the highest this host has seen is not
# a reader that rebooted: it is a copy of the reader's secret, and taking it as the floor would
# refuse every later real HELLO as stale (a lockout until revoke). 2**16 boots since the last
# message seen is more than a reader rebooting every 10 s for a week (a boot loop while the host
# was down) and still leaves 65,535 such jumps before a boot number runs out.
BOOT_JUMP_MAX = 1 << 16
# With no counter seen yet (a host that just started: the floor is in memory only) there is
# nothing to compare with: a boot number in the top half would leave the real reader little or
# no room above it (the host lifts a reader to floor boot + 1, at most 2**32 - 1), and no
# reader boots two billion times.
BOOT_FIRST_MAX = (1 << 31) - 1
BOOT_LAST = 0xFFFFFFFF  # a u32 (CMD 6's arg): there is no boot number above this one


class BootRefused(ProtoError):
    """An authentic message whose boot number cannot be a reboot of the real reader: refused
    (counted and reported like every refusal) and the floor does not move. `reason` is a
    short constant (what refusals are throttled by), str() names the numbers."""

    def __init__(self, text: str):
        super().__init__(P.E_SESSION)
        self.args = (text,)
        self.kind = "boot number jumped"


def boot_refusal(floor: int, counter: int) -> str | None:
    """Why `counter` may not raise a reader's floor (its boot number is implausible), or None."""
    boot = counter >> 32
    hint = ": a copy of this reader's secret may be in use; see docs/security.md, readers revoke"
    if floor == 0:
        if boot > BOOT_FIRST_MAX:
            return "boot number %d in a first message is implausibly high%s" % (boot, hint)
        return None
    have = floor >> 32
    if boot - have > BOOT_JUMP_MAX:
        return "boot number jumped from %d to %d%s" % (have, boot, hint)
    return None


@dataclass
class ReaderSession:
    """What the host knows about one reader's link: its key and its current session."""
    reader_id: str
    site: str
    key: P.Key
    nonce: bytes | None = None  # from the reader's latest HELLO
    rx_counter: int = 0  # highest reader counter accepted in this session
    counter: Counter = field(default_factory=Counter)
    # the highest reader counter ever accepted: reader counters never go backwards (its boot
    # number is the top half), so a HELLO at or below this is an old one replayed
    floor: int = 0
    stale: bytes | None = None  # the nonce of the last stale HELLO (set by open)

    @classmethod
    def new(cls, reader_id: str, site: str, secret: bytes, counter: Counter | None = None
            ) -> "ReaderSession":
        return cls(reader_id, site, P.Key(secret, reader_id), counter=counter or Counter())

    def seal(self, typ: int, body: bytes) -> bytes:
        """A host->reader message for the reader's current session."""
        if self.nonce is None:
            raise ProtoError(P.E_SESSION)
        return self.seal_for(self.nonce, typ, body)

    def seal_rekey(self, secret: bytes, password: str) -> tuple[int, bytes]:
        """(counter, REKEY message): the new pair encrypted under the current key."""
        if self.nonce is None:
            raise ProtoError(P.E_SESSION)
        ctr = self.counter.next()
        body = P.rekey_body(self.key, self.nonce, ctr, secret, password)
        return ctr, P.seal(self.key, P.DIR_HOST, P.T_REKEY, self.nonce, ctr, body)

    def seal_sitekey(self, from_version: int, card_key: bytes, pin_key: bytes) -> tuple[int, bytes]:
        """(counter, SITEKEY message): the site's next keys encrypted under the current key."""
        if self.nonce is None:
            raise ProtoError(P.E_SESSION)
        ctr = self.counter.next()
        body = P.sitekey_body(self.key, self.nonce, ctr, from_version, card_key, pin_key)
        return ctr, P.seal(self.key, P.DIR_HOST, P.T_SITEKEY, self.nonce, ctr, body)

    def seal_for(self, nonce: bytes, typ: int, body: bytes) -> bytes:
        return P.seal(self.key, P.DIR_HOST, typ, nonce, self.counter.next(), body)

    def open(self, msg: bytes) -> tuple[int, int, memoryview]:
        """Verify a reader->host message; (type, counter, body). A valid HELLO above every
        counter seen from this reader starts a new session; anything else must belong to the
        current one with a higher counter. A replayed HELLO raises E_REPLAY (this session's
        own, e.g. the retained one again) or E_SESSION (an older session's: see .stale). A
        counter whose boot number is implausible (boot_refusal) raises BootRefused and changes
        nothing."""
        typ, nonce, counter, body = P.unseal(self.key, P.DIR_READER, msg)
        if counter > self.floor:  # only a counter that would raise the floor is judged
            why = boot_refusal(self.floor, counter)
            if why is not None:
                raise BootRefused(why)
        if typ == P.T_HELLO:
            if nonce == self.nonce and counter <= self.rx_counter:
                raise ProtoError(P.E_REPLAY)
            if counter <= self.floor:
                self.stale = nonce
                raise ProtoError(P.E_SESSION)
            self.nonce, self.rx_counter, self.floor = nonce, counter, counter
            return typ, counter, body
        if nonce != self.nonce:
            raise ProtoError(P.E_SESSION)
        if counter <= self.rx_counter:
            raise ProtoError(P.E_REPLAY)
        self.rx_counter = counter
        self.floor = max(self.floor, counter)
        return typ, counter, body


def delta_bodies(head: int, from_version: int, changes: Sequence[Change],
                 max_entries: int = DELTA_MAX_ENTRIES) -> list[tuple[int, int, bytes]]:
    """Cut changes (sorted by version, all versions complete) into DELTA bodies of at most
    max_entries entries, merging whole versions and never splitting one (a version bigger than
    max_entries gets a message of its own, up to MAX_MSG). Returns [(from, to, body)]."""
    groups: list[tuple[int, list[tuple[bytes, bytes | None]]]] = []
    for version, key, rec in changes:
        if groups and groups[-1][0] == version:
            groups[-1][1].append((key, rec))
        else:
            groups.append((version, [(key, rec)]))
    out: list[tuple[int, int, bytes]] = []
    frm = from_version
    cur: dict[bytes, bytes | None] = {}

    def body(frm: int, to: int) -> bytes:
        # entries sorted by key, as the reader's store keeps them: its sort then moves nothing
        return P.delta_body(head, frm, to, sorted(cur.items()))
    to = frm
    limit_big = (P.MAX_MSG - P.HDR - P.MAC_LEN - P.DELTA_HDR) // P.REC
    for version, entries in groups:
        if cur and len(cur) + len(entries) > max_entries:
            out.append((frm, to, body(frm, to)))
            frm, cur = to, {}
        if len(entries) > limit_big:
            raise ValueError(f"version {version} has {len(entries)} changes: too many for one "
                             "message, the reader needs a rebuild")
        for key, rec in entries:
            cur.pop(bytes(key), None)
            cur[bytes(key)] = rec  # the latest change of a key wins
        to = version
    if cur:
        out.append((frm, to, body(frm, to)))
    return out


def set_flags(body: bytes, flags: int) -> bytes:
    """DELTA and SNAP bodies start with their flags byte."""
    return bytes([body[0] | flags]) + body[1:]


def snap_body(head: int, version: int, records: Sequence[bytes], offset: int,
              n: int = SNAP_RECORDS, flags: int = 0) -> bytes:
    """One SNAP chunk: records[offset:offset+n] of snapshot `version`, as the reader's 13-byte
    flash records (F_P13, docs/protocol.md: what the store keeps of a card; readers refuse the
    retired zlib chunks, whose inflating cost them ~6 KB of heap)."""
    count = len(records)
    n = max(0, min(n, count - offset, P.SNAP_MAX13))
    data = bytearray(n * P.P13)
    for i in range(n):
        pack13(records[offset + i], 0, data, i * P.P13)
    return P.snap_body(head, version, count, offset, n, data, flags | P.F_P13)


def snap_bodies(head: int, version: int, records: Sequence[bytes], offset: int, window: int,
                n: int = SNAP_RECORDS) -> Iterator[bytes]:
    """Up to `window` chunks from offset; the last one carries F_ASK (the reader asks again if
    still behind). An empty snapshot is one empty chunk."""
    n = max(1, min(n, P.SNAP_MAX13))
    count = len(records)
    if count == 0:
        yield snap_body(head, version, records, 0, 0, P.F_ASK)
        return
    for i in range(window):
        o = offset + i * n
        if o >= count:
            return
        last = i == window - 1 or o + n >= count
        yield snap_body(head, version, records, o, n, P.F_ASK if last else 0)


def records_sorted(records: Iterable[bytes]) -> list[bytes]:
    recs = [bytes(r) for r in records]
    for r in recs:
        if len(r) != P.REC:
            raise ValueError("records are 16 bytes")
    recs.sort()  # by key8 first: the order the reader's store keeps
    return recs
