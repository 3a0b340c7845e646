# The reader<->host wire codec, shared by the reader (MicroPython) and the host (CPython).
# Format, topics and test vectors: docs/protocol.md, docs/vectors/protocol.json.
#
# Every message (both directions) is one MQTT payload:
#   0      u8   protocol version (1)
#   1      u8   type (T_*)
#   2..9   8B   session nonce: random, chosen by the reader at each connect, announced in HELLO
#   10..17 u64  counter, big-endian: strictly increasing per sender within a session; a
#               reader's never goes backwards at all: boot number << 32 | messages this boot
#   18..   body (per type, below)
#   -16    16B  HMAC-SHA256(reader secret, dir || len(reader_id) || reader_id || msg[:-16])[:16]
# dir is b"H" for host->reader and b"R" for reader->host, so a message can never be reflected
# back to its sender; the reader's own id is in the MAC so a message for one reader never
# verifies at another even if two secrets were ever equal.
import struct

try:
    from hashlib import sha256
except ImportError:  # pragma: no cover
    from uhashlib import sha256

from gv.compat import const

VERSION = const(1)
HDR = const(18)
MAC_LEN = const(16)
NONCE_LEN = const(8)
MAX_MSG = const(2048)  # the reader drops anything longer before parsing it
REC = const(16)  # one allowlist record, exactly as gv.allowlist.record packs it

DIR_HOST = b"H"  # host -> reader
DIR_READER = b"R"  # reader -> host

# host -> reader (topic .../in)
T_DELTA = const(1)
T_SNAP = const(2)
T_EVACK = const(3)
T_CMD = const(4)
T_REKEY = const(5)  # a new secret and broker password for this reader (encrypted, below)
T_SITEKEY = const(6)  # the site's next card and PIN keys, from an allowlist version on (below)
# reader -> host (topics .../hello and .../out)
T_HELLO = const(0x10)
T_SYNC = const(0x11)
T_ACK = const(0x12)
T_EVENTS = const(0x13)
T_REJECT = const(0x14)
T_CMDRES = const(0x15)
T_HEALTH = const(0x16)

# flags in DELTA and SNAP
F_ASK = const(1)  # last message of an answer: ask again (SYNC) if still behind
# SNAP data as a zlib stream (flag 2) is retired: inflating took ~6 KB of a reader's heap (a
# 2.5 KB output buffer kept, a window and decoder state made per chunk) to save a third of
# the bytes on the site network. A reader refuses a chunk with this flag as malformed.
F_ZLIB = const(2)
# SNAP data as the store's own 13-byte flash records (gv.allowlist.pages.pack13: 52-bit key,
# status, PIN flag, dates, 20-bit verifier; docs/allowlist-format.md) instead of 16-byte ones:
# what the reader keeps of a card anyway, 13.5 bytes a card on the wire, nothing to inflate.
F_P13 = const(4)
P13 = const(13)  # bytes a flash record: gv.allowlist.layout.FREC (the store takes these as they are)

# remote commands (T_CMD)
C_OPEN = const(1)  # open the door once
C_CLEAR_LOCKOUT = const(2)
C_RESYNC = const(3)  # forget the allowlist version: ask for a full rebuild
C_SET_CLOCK = const(4)  # arg = seconds since 2020-01-01 UTC
C_REBOOT = const(5)
# the host does not hold this session (it missed its HELLO, or saw an older one replayed): send
# a HELLO again, with a boot number at least arg (0: keep yours). Handled by the sync engine.
C_HELLO = const(6)
COMMANDS = {C_OPEN: "open", C_CLEAR_LOCKOUT: "clear_lockout", C_RESYNC: "resync",
            C_SET_CLOCK: "set_clock", C_REBOOT: "reboot", C_HELLO: "hello"}
# in CMDRES only (not a command): the REKEY with this counter is stored on the reader's flash
C_REKEY = const(7)
# in CMDRES only: the SITEKEY with this counter is stored (pending until a rebuild brings its version)
C_SITEKEY = const(8)

# command results (T_CMDRES)
CR_OK = const(0)
CR_FAILED = const(1)
CR_UNSUPPORTED = const(2)

# rejection reasons (T_REJECT, and ProtoError.reason)
E_MALFORMED = const(1)  # too short, too long, bad body
E_PROTO = const(2)  # unknown protocol version
E_MAC = const(3)  # forged or tampered: MAC does not verify
E_SESSION = const(4)  # authentic but for an older session (replayed from a past connection)
E_REPLAY = const(5)  # counter not above the last accepted one
E_TYPE = const(6)  # unknown or wrong-direction type
E_ORDER = const(7)  # delta/chunk not following the reader's state (gap or out of order)
E_STORE = const(8)  # the allowlist refused it (flash error, bad record)
E_BUSY = const(9)  # resources (e.g. memory) short: try again later
E_FULL = const(10)  # the flash has no room for it: the reader backs off (HEALTH says how much)
ERRORS = {E_MALFORMED: "malformed", E_PROTO: "protocol version", E_MAC: "bad MAC",
          E_SESSION: "stale session", E_REPLAY: "replayed", E_TYPE: "bad type",
          E_ORDER: "out of order", E_STORE: "store error", E_BUSY: "busy", E_FULL: "flash full"}


class ProtoError(ValueError):
    def __init__(self, reason):
        super().__init__(ERRORS.get(reason, "error"))
        self.reason = reason


# ---- topics ----
def topic(site, reader_id, leaf):
    """gv/<site>/<reader>/<leaf>; leaf: in (host->reader), out (reader->host), hello (retained
    HELLO), status (retained b"online"/b"offline", the last will)."""
    return "gv/%s/%s/%s" % (site, reader_id, leaf)


def valid_name(s):
    """Site and reader ids: 1..32 of [A-Za-z0-9_-] (no MQTT wildcards or separators)."""
    if not isinstance(s, str) or not 0 < len(s) <= 32:
        return False
    for c in s:
        if not (("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c in "_-"):
            return False
    return True


# ---- HMAC-SHA256 on hashlib.sha256 (MicroPython has no hmac module) ----
class Key:
    """One reader's MAC key: the secret's HMAC pads, precomputed once."""

    def __init__(self, secret, reader_id):
        secret = bytes(secret)
        if len(secret) > 64:
            secret = sha256(secret).digest()
        secret = secret + bytes(64 - len(secret))
        self._ipad = bytes(b ^ 0x36 for b in secret)
        self._opad = bytes(b ^ 0x5C for b in secret)
        rid = reader_id.encode() if isinstance(reader_id, str) else bytes(reader_id)
        self._ctx = bytes([len(rid)]) + rid

    def mac(self, direction, data):
        h = sha256(self._ipad)
        h.update(direction)
        h.update(self._ctx)
        h.update(data)
        o = sha256(self._opad)
        o.update(h.digest())
        return o.digest()[:MAC_LEN]


def hmac_sha256(key, data):
    """Plain HMAC-SHA256 (for the test vectors against RFC 4231)."""
    key = bytes(key)
    if len(key) > 64:
        key = sha256(key).digest()
    key = key + bytes(64 - len(key))
    h = sha256(bytes(b ^ 0x36 for b in key))
    h.update(data)
    o = sha256(bytes(b ^ 0x5C for b in key))
    o.update(h.digest())
    return o.digest()


def _ct_eq(a, b):
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


def seal(key, direction, typ, nonce, counter, body):
    """The complete authenticated message (bytes)."""
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce")
    m = bytearray(HDR + len(body) + MAC_LEN)
    m[0] = VERSION
    m[1] = typ
    m[2:10] = nonce
    struct.pack_into(">Q", m, 10, counter)
    m[HDR:HDR + len(body)] = body
    mv = memoryview(m)
    m[-MAC_LEN:] = key.mac(direction, mv[:-MAC_LEN])
    return bytes(m)


def peek(msg):
    """(type, nonce, counter) without checking the MAC; raises ProtoError if malformed."""
    if len(msg) < HDR + MAC_LEN or len(msg) > MAX_MSG:
        raise ProtoError(E_MALFORMED)
    if msg[0] != VERSION:
        raise ProtoError(E_PROTO)
    return msg[1], bytes(msg[2:10]), struct.unpack_from(">Q", msg, 10)[0]


def unseal(key, direction, msg):
    """Verify a message; (type, nonce, counter, body memoryview) or raises ProtoError.
    Session and counter checks are the caller's (it knows the session)."""
    typ, nonce, counter = peek(msg)
    mv = memoryview(msg)
    if not _ct_eq(key.mac(direction, mv[:-MAC_LEN]), mv[-MAC_LEN:]):
        raise ProtoError(E_MAC)
    return typ, nonce, counter, mv[HDR:-MAC_LEN]


# ---- bodies ----
# DELTA: flags u8, head u32, from u32, to u32, n u16, n x 16-byte entries.
#   An entry is a record as gv.allowlist.record packs it; a removal is key8 + 8 zero bytes
#   (status 0 is never a valid status). Applies atomically: from -> to.
_DELTA = ">BIIIH"
DELTA_HDR = const(15)
# SNAP: flags u8, head u32, version u32, count u32, offset u32, n u16, data.
#   Records [offset, offset+n) of the snapshot `version` (count records in all, sorted by key8),
#   n*16 bytes of records, or with F_P13 n*13 bytes of flash records (F_ZLIB is refused). n is
#   at most what a MAX_MSG message holds: SNAP_MAX, SNAP_MAX13.
_SNAP = ">BIIIIH"
SNAP_HDR = const(19)
SNAP_MAX = const(124)  # (MAX_MSG - HDR - MAC_LEN - SNAP_HDR) // REC
SNAP_MAX13 = const(153)  # (MAX_MSG - HDR - MAC_LEN - SNAP_HDR) // P13


def delta_body(head, frm, to, entries, flags=0):
    """entries: list of 16-byte records, or (key8, None) pairs / 8-byte keys for removals."""
    out = bytearray(struct.pack(_DELTA, flags, head, frm, to, len(entries)))
    for e in entries:
        if isinstance(e, tuple):
            key, rec = e
            e = rec if rec is not None else bytes(key) + bytes(8)
        elif len(e) == 8:
            e = bytes(e) + bytes(8)
        if len(e) != REC:
            raise ValueError("record must be 16 bytes")
        out += e
    return bytes(out)


def parse_delta(body):
    """(flags, head, from, to, n); entries via delta_entries(body, n)."""
    if len(body) < DELTA_HDR:
        raise ProtoError(E_MALFORMED)
    flags, head, frm, to, n = struct.unpack_from(_DELTA, body, 0)
    if len(body) != DELTA_HDR + n * REC or to < frm or (to == frm and n):
        raise ProtoError(E_MALFORMED)
    return flags, head, frm, to, n


def delta_entries(body, n):
    """Yields (key8, rec16 or None for a removal) as memoryviews into body. ProtoError for a
    removal (status 0) that carries anything but zeros."""
    mv = memoryview(body)
    for i in range(n):
        o = DELTA_HDR + i * REC
        rec = mv[o:o + REC]
        if rec[8] == 0:
            for j in range(9, REC):
                if rec[j]:
                    raise ProtoError(E_MALFORMED)
            yield rec[:8], None
        else:
            yield rec[:8], rec


def snap_body(head, version, count, offset, n, data, flags=0):
    return struct.pack(_SNAP, flags, head, version, count, offset, n) + bytes(data)


def parse_snap(body):
    """(flags, head, version, count, offset, n, data memoryview)."""
    if len(body) < SNAP_HDR:
        raise ProtoError(E_MALFORMED)
    flags, head, version, count, offset, n = struct.unpack_from(_SNAP, body, 0)
    data = memoryview(body)[SNAP_HDR:]
    if flags & F_P13:
        size, most = P13, SNAP_MAX13
    else:
        size, most = REC, SNAP_MAX
    if offset + n > count or flags & F_ZLIB or n > most or len(data) != n * size:
        raise ProtoError(E_MALFORMED)
    return flags, head, version, count, offset, n, data


# EVACK: upto u32 (the host has stored every event up to and including this sequence number)
def evack_body(upto):
    return struct.pack(">I", upto)


def parse_evack(body):
    if len(body) != 4:
        raise ProtoError(E_MALFORMED)
    return struct.unpack_from(">I", body, 0)[0]


# CMD: cmd u8, arg u32. The message counter identifies the command in its CMDRES.
def cmd_body(cmd, arg=0):
    return struct.pack(">BI", cmd, arg)


def parse_cmd(body):
    if len(body) != 5:
        raise ProtoError(E_MALFORMED)
    return struct.unpack_from(">BI", body, 0)


# HELLO: al_version u32, snap_version u32, snap_offset u32, free_flash u32, free_heap u32,
#        health u16, events_pending u32, fw_len u8, fw (utf-8)
_HELLO = ">IIIIIHIB"
HELLO_HDR = const(27)
H_ALLOWLIST = const(1)  # health bits: the allowlist reported corruption
H_PN532 = const(2)  # the NFC module is failing
H_FLASH = const(4)  # a flash write failed
H_EVENTS = const(8)  # events were dropped (ring overflow)
H_CLOCK = const(16)  # clock not set
H_FULL = const(32)  # the flash refused an update for want of room (backing off)
H_MEMORY = const(64)  # a MemoryError since the last boot, or too little heap for a TLS handshake
HEALTH = {H_ALLOWLIST: "allowlist", H_PN532: "pn532", H_FLASH: "flash", H_EVENTS: "events",
          H_CLOCK: "clock", H_FULL: "flash full", H_MEMORY: "memory"}


def hello_body(al_version, snap_version, snap_offset, free_flash, free_heap, health,
               events_pending, fw):
    fw = fw.encode()[:255] if isinstance(fw, str) else bytes(fw)[:255]
    return struct.pack(_HELLO, al_version, snap_version, snap_offset, free_flash, free_heap,
                       health, events_pending, len(fw)) + fw


def parse_hello(body):
    if len(body) < HELLO_HDR:
        raise ProtoError(E_MALFORMED)
    v = struct.unpack_from(_HELLO, body, 0)
    if len(body) != HELLO_HDR + v[7]:
        raise ProtoError(E_MALFORMED)
    try:
        fw = bytes(body[HELLO_HDR:]).decode()
    except ValueError:  # UnicodeError is a ValueError on both ports
        raise ProtoError(E_MALFORMED)
    return {"al_version": v[0], "snap_version": v[1], "snap_offset": v[2], "free_flash": v[3],
            "free_heap": v[4], "health": v[5], "events_pending": v[6], "fw": fw}


# SYNC (catch-up request) and ACK (applied): al_version u32, snap_version u32, snap_offset u32.
#   snap_version 0 = no rebuild in progress; else the rebuild to resume at snap_offset.
def sync_body(al_version, snap_version=0, snap_offset=0):
    return struct.pack(">III", al_version, snap_version, snap_offset)


def parse_sync(body):
    if len(body) != 12:
        raise ProtoError(E_MALFORMED)
    return struct.unpack_from(">III", body, 0)


ack_body = sync_body
parse_ack = parse_sync


# EVENTS: n u8, n x event (gv.events, 32 bytes each, carrying its own sequence number)
def events_body(events, size=32):
    out = bytearray([len(events)])
    for e in events:
        if len(e) != size:
            raise ValueError("event size")
        out += e
    return bytes(out)


def parse_events(body, size=32):
    """List of event byte strings (validity of each is checked by gv.events)."""
    if len(body) < 1 or len(body) != 1 + body[0] * size:
        raise ProtoError(E_MALFORMED)
    return [bytes(body[1 + i * size:1 + (i + 1) * size]) for i in range(body[0])]


# REJECT: reason u8, type u8 (of the rejected message, 0 if unknown), count u32 (rejections
#   of this reason since the last report: reports are rate-limited), counter u64 (of the last)
def reject_body(reason, typ, count, counter):
    return struct.pack(">BBIQ", reason, typ, count, counter)


def parse_reject(body):
    if len(body) != 14:
        raise ProtoError(E_MALFORMED)
    return struct.unpack_from(">BBIQ", body, 0)


# CMDRES: counter u64 (of the CMD), cmd u8, result u8
def cmdres_body(counter, cmd, result):
    return struct.pack(">QBB", counter, cmd, result)


def parse_cmdres(body):
    if len(body) != 10:
        raise ProtoError(E_MALFORMED)
    return struct.unpack_from(">QBB", body, 0)


# HEALTH (0x16, on out): health u16, al_version u32, free_flash u32, flash_size u32,
#   need_flash u32, events_pending u32, mem_errors u16, tls_deferred u16, uptime_s u32,
#   retry_s u16, n u8, n x (stage u8, gc_free u32, gc_largest u32, idf_free u32, idf_largest u32)
# Sent when the health bits or the back-off change, and every HEALTH_S seconds. need_flash: bytes
# the update the flash refused still needs (0: none refused); retry_s: seconds until the reader
# asks again (0: not backing off). mem_errors: MemoryErrors since provisioning (kept across
# reboots); tls_deferred: TLS connects put off this boot for want of ESP-IDF heap. A figure the
# reader cannot know (the ESP-IDF heap on the unix port) is UNKNOWN.
HEALTH_S = const(300)
UNKNOWN = 0xFFFFFFFF
M_NOW = const(1)  # when the report was made
M_BOOT = const(2)  # after the reader's objects were built
M_WIFI = const(3)  # after Wi-Fi joined
M_TLS = const(4)  # after the TLS link to the broker was up
M_REBUILD = const(5)  # the lowest GC free seen during a rebuild
STAGES = {M_NOW: "now", M_BOOT: "boot", M_WIFI: "wifi", M_TLS: "tls", M_REBUILD: "rebuild"}
_HEALTH = ">HIIIIIHHIHB"
HEALTH_HDR = const(33)
_MEM = ">BIIII"
MEM_N = const(17)


def health_body(health, al_version, free_flash, flash_size, need_flash, events_pending,
                mem_errors, tls_deferred, uptime_s, retry_s, mem):
    """mem: list of (stage, gc_free, gc_largest, idf_free, idf_largest)."""
    out = bytearray(struct.pack(_HEALTH, health, al_version, free_flash, flash_size, need_flash,
                                events_pending, min(mem_errors, 0xFFFF),
                                min(tls_deferred, 0xFFFF), uptime_s, min(retry_s, 0xFFFF),
                                len(mem)))
    for m in mem:
        out += struct.pack(_MEM, *m)
    return bytes(out)


def parse_health(body):
    if len(body) < HEALTH_HDR:
        raise ProtoError(E_MALFORMED)
    v = struct.unpack_from(_HEALTH, body, 0)
    if len(body) != HEALTH_HDR + v[10] * MEM_N:
        raise ProtoError(E_MALFORMED)
    mem = {}
    for i in range(v[10]):
        m = struct.unpack_from(_MEM, body, HEALTH_HDR + i * MEM_N)
        name = STAGES.get(m[0])
        if name is None:
            raise ProtoError(E_MALFORMED)
        mem[name] = list(m[1:])
    return {"health": v[0], "al_version": v[1], "free_flash": v[2], "flash_size": v[3],
            "need_flash": v[4], "events_pending": v[5], "mem_errors": v[6],
            "tls_deferred": v[7], "uptime_s": v[8], "retry_s": v[9], "mem": mem}


# REKEY: secret 32 B, pw_len u8, password (pw_len B, utf-8, at most 64), all XORed with a
#   keystream from the reader's current key: block i = MAC("K", nonce || counter u64 || i u8)
#   (16 B each; "K" is neither direction, so no message MAC is ever a keystream block). The
#   message's own MAC covers the ciphertext, its nonce and counter make the keystream unique.
REKEY_PW_MAX = const(64)


def _keystream(key, nonce, counter, n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += key.mac(b"K", bytes(nonce) + struct.pack(">QB", counter, i))
        i += 1
    return out


def rekey_body(key, nonce, counter, secret, password):
    pw = password.encode() if isinstance(password, str) else bytes(password)
    if len(secret) != 32 or not 0 < len(pw) <= REKEY_PW_MAX:
        raise ValueError("rekey: 32-byte secret, 1..64-byte password")
    plain = bytes(secret) + bytes([len(pw)]) + pw
    ks = _keystream(key, nonce, counter, len(plain))
    return bytes(plain[i] ^ ks[i] for i in range(len(plain)))


def parse_rekey(key, nonce, counter, body):
    """(secret bytes, password str) from a REKEY body (already authenticated by unseal)."""
    if not 34 <= len(body) <= 33 + REKEY_PW_MAX:
        raise ProtoError(E_MALFORMED)
    ks = _keystream(key, nonce, counter, len(body))
    plain = bytes(body[i] ^ ks[i] for i in range(len(body)))
    n = plain[32]
    if len(plain) != 33 + n or not n:
        raise ProtoError(E_MALFORMED)
    try:
        return plain[:32], plain[33:].decode()
    except ValueError:
        raise ProtoError(E_MALFORMED)


# SITEKEY: from_version u32, card_key 16 B, pin_key 16 B (36 B), XORed with the REKEY keystream.
# The keys decide from allowlist version from_version on: the host sends that version only as a
# full rebuild (SNAP), and only after this reader answered CMDRES(C_SITEKEY, ok).
def sitekey_body(key, nonce, counter, from_version, card_key, pin_key):
    if len(card_key) != 16 or len(pin_key) != 16 or not 0 < from_version < 1 << 32:
        raise ValueError("sitekey: 16-byte keys, version 1..2^32-1")
    plain = struct.pack(">I", from_version) + bytes(card_key) + bytes(pin_key)
    ks = _keystream(key, nonce, counter, 36)
    return bytes(plain[i] ^ ks[i] for i in range(36))


def parse_sitekey(key, nonce, counter, body):
    """(from_version, card_key, pin_key) from a SITEKEY body (already authenticated by unseal)."""
    if len(body) != 36:
        raise ProtoError(E_MALFORMED)
    ks = _keystream(key, nonce, counter, 36)
    plain = bytes(body[i] ^ ks[i] for i in range(36))
    v = struct.unpack_from(">I", plain, 0)[0]
    if not v:
        raise ProtoError(E_MALFORMED)
    return v, plain[4:20], plain[20:36]
