# Allowlist record codec, shared by the reader (MicroPython) and the host (CPython).
# Format and test vectors: docs/allowlist-format.md, docs/vectors/allowlist-record.json.
#
# A record is 16 bytes:
#   0..7   key8: AES-128-ECB(card_key, [DOM_UID, uid_len, uid, 0-pad])[:8]  (keeps UIDs off flash)
#   8      status (bits 0-2) | flags << 3 (bits 3-7; F_PIN = 1)
#   9..10  valid_from  days since 2020-01-01, big-endian (0 = no start)
#   11..12 valid_until days since 2020-01-01, big-endian (0xFFFF = no end)
#   13..15 PIN verifier: AES-128-ECB(pin_key, [DOM_PIN, uid_len, uid(10, 0-pad), pin_len, BCD PIN]),
#          its first PIN_VER_BITS bits, the rest zero (docs/pin-security.md: why so few)
# Records sort by key8 as unsigned big-endian bytes; the store relies on that order.
from gv.compat import const

try:
    import cryptolib

    def _ecb(key):
        return cryptolib.aes(key, 1)  # mode 1 = ECB

    def _encrypt(aes, inb, outb):
        aes.encrypt(inb, outb)  # alloc-free: writes into outb
except ImportError:  # CPython: the `cryptography` package, same bytes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    def _ecb(key):
        return Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

    def _encrypt(aes, inb, outb):
        outb[:] = aes.update(bytes(inb))

ACTIVE = const(1)
INACTIVE = const(2)
BLOCKED = const(3)
TERMINATED = const(4)
SUSPENDED = const(5)
STATUS_NAMES = {ACTIVE: "active", INACTIVE: "inactive", BLOCKED: "blocked",
                TERMINATED: "terminated", SUSPENDED: "suspended"}

F_PIN = const(1)  # the card asks for a PIN (pin_policy "card")

REC_SIZE = const(16)
KEY_SIZE = const(8)
PIN_VER_SIZE = const(3)
# Bits of the verifier a record carries and a reader compares: few enough that a dumped reader's
# flash leaves many candidate PINs per card (a 6-digit PIN: ~977), while the lockout bounds what
# guessing at the keypad can try (docs/pin-security.md has the numbers).
PIN_VER_BITS = const(10)
_VER_MASK1 = const(0xC0)  # what of byte 14 the 10 bits use (byte 13: all 8)
NO_START = const(0)
NO_END = const(0xFFFF)
MAX_UID = const(10)
MAX_PIN = const(6)  # digits; BCD in 3 bytes

# Domain bytes: the first byte of every AES input block, so no two uses ever share an input.
DOM_UID = const(0x01)  # key8 of a card UID (4, 7 or 10 bytes)
DOM_CRED = const(0x02)  # reserved: key8 of a credential id read from a secured card application
DOM_PIN = const(0x03)  # PIN verifier


def status(rec):
    return rec[8] & 7


def flags(rec):
    return rec[8] >> 3


def valid_from(rec):
    return (rec[9] << 8) | rec[10]


def valid_until(rec):
    return (rec[11] << 8) | rec[12]


STORED_DAY_MAX = const(0x3FFE)  # 2064-11-07: the last day a reader's flash keeps exactly


def as_stored(rec):
    """rec as a reader's store gives it back on a lookup: the flash keeps 20 bits of the PIN
    verifier (pin_ok compares those) and days up to STORED_DAY_MAX (a later start reads back as
    0xFFFF, not before 2199; a later end as NO_END). docs/allowlist-format.md."""
    r = bytearray(rec)
    r[15] &= 0xF0
    for o in (9, 11):
        if (r[o] << 8 | r[o + 1]) > STORED_DAY_MAX:
            r[o] = r[o + 1] = 0xFF
    return bytes(r)


def pack(key8, status, flags, valid_from, valid_until, pin_verifier=b"\x00\x00\x00"):
    """The 16-byte record (host side; raises ValueError on anything out of range)."""
    if len(key8) != KEY_SIZE:
        raise ValueError("key8 must be 8 bytes")
    if not 1 <= status <= 5:
        raise ValueError("bad status")
    if not 0 <= flags < 32:
        raise ValueError("bad flags")
    if not (0 <= valid_from <= 0xFFFF and 0 <= valid_until <= 0xFFFF):
        raise ValueError("date out of range")
    if pin_verifier is None:
        pin_verifier = b"\x00\x00\x00"
    if len(pin_verifier) != PIN_VER_SIZE:
        raise ValueError("pin verifier must be 3 bytes")
    r = bytearray(REC_SIZE)
    r[0:8] = key8
    r[8] = status | (flags << 3)
    r[9] = valid_from >> 8
    r[10] = valid_from & 0xFF
    r[11] = valid_until >> 8
    r[12] = valid_until & 0xFF
    r[13:16] = pin_verifier
    return bytes(r)


def unpack(rec):
    """(key8, status, flags, valid_from, valid_until, pin_verifier)"""
    if len(rec) != REC_SIZE:
        raise ValueError("record must be 16 bytes")
    return (bytes(rec[0:8]), status(rec), flags(rec), valid_from(rec), valid_until(rec),
            bytes(rec[13:16]))


# -- dates: days since 2020-01-01 (proleptic Gregorian; no time module, whose epoch differs by port) --
_EPOCH = const(737730)  # _civil(2020, 1, 1)


def _civil(y, m, d):
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe


def days(y, m, d):
    """Day number of a date (2020-01-01 is 0)."""
    if not (1 <= m <= 12 and 1 <= d <= 31):
        raise ValueError("bad date")
    n = _civil(y, m, d) - _EPOCH
    if not 0 <= n <= 0xFFFF:
        raise ValueError("date out of range")
    return n


def ymd(n):
    """(year, month, day) of day number n."""
    z = n + _EPOCH
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return (y, m, d)


def valid_on(rec, day):
    """True when day lies within [valid_from, valid_until] (status is checked separately)."""
    return valid_from(rec) <= day <= valid_until(rec)


class Keyer:
    """Keyed hashing of card identifiers and PIN verifiers with the site keys. uid_key and pin_ok
    use only preallocated buffers, so the card-poll hot path never touches the heap."""

    def __init__(self, card_key16, pin_key16):
        self.set_keys(card_key16, pin_key16)
        self._in = bytearray(16)
        self._out = bytearray(16)

    def set_keys(self, card_key16, pin_key16):
        """New site keys, in place (a key rotation: gv.sync.sitekey)."""
        if len(card_key16) != 16 or len(pin_key16) != 16:
            raise ValueError("site keys must be 16 bytes")
        self._card = _ecb(card_key16)
        self._pin = _ecb(pin_key16)

    def _ident_block(self, dom, ident, n):
        b = self._in
        b[0] = dom
        b[1] = n
        for i in range(n):
            b[2 + i] = ident[i]
        for i in range(2 + n, 16):
            b[i] = 0

    def uid_key(self, uid_mv, uid_len, out8):
        """key8 of a card UID into out8 (bytearray/memoryview of 8). uid_len 1..10."""
        if not 0 < uid_len <= MAX_UID:
            raise ValueError("bad uid length")
        self._ident_block(DOM_UID, uid_mv, uid_len)
        _encrypt(self._card, self._in, self._out)
        o = self._out
        for i in range(8):
            out8[i] = o[i]
        return out8

    def cred_key(self, cred, cred_len, out8):
        """Reserved for credential ids from a secured card application (up to 14 bytes)."""
        if not 0 < cred_len <= 14:
            raise ValueError("bad credential length")
        self._ident_block(DOM_CRED, cred, cred_len)
        _encrypt(self._card, self._in, self._out)
        o = self._out
        for i in range(8):
            out8[i] = o[i]
        return out8

    def _pin_block(self, uid, uid_len, pin, pin_len):
        # Returns False (block unusable) on a non-digit or bad length; digits may be ASCII or 0..9.
        b = self._in
        ok = 0 < uid_len <= MAX_UID and 0 < pin_len <= MAX_PIN
        b[0] = DOM_PIN
        b[1] = uid_len
        for i in range(MAX_UID):
            b[2 + i] = uid[i] if ok and i < uid_len else 0
        b[12] = pin_len
        b[13] = 0
        b[14] = 0
        b[15] = 0
        if not ok:
            return False
        for i in range(pin_len):
            c = pin[i]
            if c >= 0x30:
                c -= 0x30
            if c > 9:
                ok = False
                c = 0
            if i & 1:
                b[13 + (i >> 1)] |= c
            else:
                b[13 + (i >> 1)] = c << 4
        return ok

    def pin_verifier(self, uid, uid_len, pin_digits_str):
        """3-byte verifier of a PIN of 1..6 digits for this card (host side, allocates)."""
        pin = pin_digits_str.encode() if isinstance(pin_digits_str, str) else bytes(pin_digits_str)
        if not 0 < len(pin) <= MAX_PIN:
            raise ValueError("PIN must have 1..6 digits")
        if not 0 < uid_len <= MAX_UID:
            raise ValueError("bad uid length")
        if not self._pin_block(uid, uid_len, pin, len(pin)):
            raise ValueError("PIN must be digits")
        _encrypt(self._pin, self._in, self._out)
        return bytes((self._out[0], self._out[1] & _VER_MASK1, 0))

    def pin_ok(self, uid_mv, uid_len, pin_buf, pin_len, rec):
        """True when pin_buf[:pin_len] matches rec's verifier; the compare is constant-time, no heap.
        PIN_VER_BITS bits are compared: a wrong PIN passes with a chance of 2^-10, which the
        lockout keeps to a few tries (docs/pin-security.md)."""
        good = self._pin_block(uid_mv, uid_len, pin_buf, pin_len)
        _encrypt(self._pin, self._in, self._out)
        o = self._out
        diff = (o[0] ^ rec[13]) | ((o[1] ^ rec[14]) & _VER_MASK1)
        return good and diff == 0
