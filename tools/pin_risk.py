"""What a stolen reader's flash and a keypad give a PIN guesser, measured on the real code:
the offline search an attacker runs with a dumped reader's PIN key and verifiers, the wrong-PIN
acceptance rate of the reader's own check, and the tries the real lockout allows in a day.
docs/pin-security.md states the threat model; `make bench` (tools/bench/bench_security.py)
reports the figures and tests/test_pin_secrecy.py checks them."""
from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass

import host_sync  # noqa: F401 - puts firmware/ on sys.path
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gv.allowlist import record as R
from gv.gate import core
from gv.gate.lockout import HARD_MS, Lockouts

DAY_MS = 86_400_000
ENTRY_MS = 6_000  # a guess at the keypad: present the card, type 4-6 digits and '#'


def _blocks(uid: bytes, length: int) -> bytes:
    """The reader's PIN input block (record.Keyer._pin_block) for every PIN of `length` digits,
    in order 0..10^length-1, as one buffer for a single AES-ECB call."""
    head = bytes([R.DOM_PIN, len(uid)]) + uid + bytes(R.MAX_UID - len(uid)) + bytes([length])
    out = bytearray()
    for n in range(10 ** length):
        digits = str(n).zfill(length)
        bcd = bytearray(3)
        for i, ch in enumerate(digits):
            d = ord(ch) - 0x30
            bcd[i >> 1] |= d << 4 if not i & 1 else d
        out += head + bcd
    return bytes(out)


def offline_candidates(pin_key: bytes, uid: bytes, verifier: bytes, length: int) -> list[str]:
    """Every PIN of `length` digits that the verifier a reader's flash holds for this card
    accepts: what an attacker with the dump is left to try (the true PIN is one of them)."""
    enc = Cipher(algorithms.AES(pin_key), modes.ECB()).encryptor()
    out = enc.update(_blocks(uid, length)) + enc.finalize()
    v0, v1 = verifier[0], verifier[1] & 0xC0
    return [str(n).zfill(length) for n in range(10 ** length)
            if out[16 * n] == v0 and out[16 * n + 1] & 0xC0 == v1]


def _duress_undo(pin: str) -> str:
    # what the gate compares besides the PIN itself (gv.gate.core: the last digit + 1 is duress)
    return pin[:-1] + str((int(pin[-1]) - 1) % 10)


def false_accept_rate(keyer: R.Keyer, uid: bytes, pin: str, guesses: int, rng: random.Random) -> float:
    """The share of random wrong PINs of the same length that the reader's own check lets
    through (as the PIN or as its duress form): the online chance of one guess."""
    ver = keyer.pin_verifier(uid, len(uid), pin)
    rec = R.pack(bytes(8), R.ACTIVE, R.F_PIN, 0, R.NO_END, ver)
    hits = tried = 0
    while tried < guesses:
        g = "".join(rng.choice("0123456789") for _ in pin)
        if g == pin or _duress_undo(g) == pin:
            continue
        tried += 1
        d = _duress_undo(g)
        if (keyer.pin_ok(uid, len(uid), g.encode(), len(g), rec)
                or keyer.pin_ok(uid, len(uid), d.encode(), len(d), rec)):
            hits += 1
    return hits / tried


@dataclass
class Budget:
    tries: int  # PIN guesses the lockout allowed in the day at one reader
    locked_for_good: bool  # the card ended the day in a lock only the host clears


def tries_per_day(gate_cfg: dict | None = None, entry_ms: int = ENTRY_MS) -> Budget:
    """Run the real lockout (gv.gate.lockout, configured as gv.gate.core does it) through a day
    of a guesser who tries one wrong PIN whenever the card is not locked."""
    c = core.settings(gate_cfg or {})
    with tempfile.TemporaryDirectory() as d:
        lk = Lockouts(d + "/lockouts", tries=c["pin_tries"], card_lock_ms=c["card_lock_ms"],
                      cap_ms=c["lock_cap_ms"], hard_after=c["pin_hard_after"])
        key = bytes(range(8))
        now = tries = 0
        while now < DAY_MS:
            rem = lk.card_remaining(key, now)
            if rem >= HARD_MS:
                return Budget(tries, True)
            if rem:
                now += rem
                continue
            lk.pin_attempt(key, now)
            lk.pin_result(key, now, False)
            tries += 1
            now += entry_ms
        return Budget(tries, False)


def chance(per_guess: float, tries: int) -> float:
    return 1 - (1 - per_guess) ** tries
