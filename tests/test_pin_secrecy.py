"""PIN secrecy against a stolen reader (docs/pin-security.md), on the real verifier and lockout:
a dumped reader's verifier leaves many candidate PINs per card, the reader's check lets a wrong
PIN through at about the rate its 10 bits say, and the lockout caps a day's guesses per card and
reader at pin_tries x pin_hard_after. (make bench reports the measured figures.)"""
import random

from gv.allowlist import record as R
from tools import pin_risk as P

PIN_KEY = bytes(range(16, 32))


def test_a_dumped_verifier_leaves_many_candidates_and_the_true_pin_among_them():
    rng = random.Random(7)
    keyer = R.Keyer(bytes(16), PIN_KEY)
    counts = []
    for _ in range(12):
        uid = bytes([0x04]) + rng.randbytes(6)
        pin = "".join(rng.choice("0123456789") for _ in range(5))
        found = P.offline_candidates(PIN_KEY, uid, keyer.pin_verifier(uid, len(uid), pin), 5)
        assert pin in found
        counts.append(len(found))
    mean = sum(counts) / len(counts)
    assert 60 < mean < 140, counts  # 10^5 / 2^10 = 97.7 expected
    assert min(counts) > 30


def test_the_reader_keeps_ten_bits_of_a_verifier():
    keyer = R.Keyer(bytes(16), PIN_KEY)
    v = keyer.pin_verifier(b"\x04\x01\x02\x03", 4, "123456")
    assert v[1] & 0x3F == 0 and v[2] == 0 and R.PIN_VER_BITS == 10


def test_a_wrong_pin_passes_at_the_rate_ten_bits_give():
    keyer = R.Keyer(bytes(16), PIN_KEY)
    p = P.false_accept_rate(keyer, bytes.fromhex("04a1b2c3d4e5f6"), "4711", 40_000, random.Random(3))
    assert 0.0008 < p < 0.0045  # 2 / 1024 (as the PIN or as its duress form) = 0.00195


def test_the_lockout_caps_a_days_guesses_per_card_and_reader():
    b = P.tries_per_day()
    assert b == P.Budget(tries=3 * 4, locked_for_good=True)  # the defaults: 3 tries, 4 locks
    assert P.tries_per_day({"pin_tries": 5, "pin_hard_after": 2}).tries == 10
    unbounded = P.tries_per_day({"pin_hard_after": 0})
    assert not unbounded.locked_for_good and unbounded.tries > 200  # why the last lock has no end
