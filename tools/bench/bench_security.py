"""PIN secrecy against a stolen reader, measured on the real code (tools/pin_risk.py): the
candidates an offline search over a dumped reader leaves per card, and the chance that guessing at
the keypad within the lockout schedule finds a PIN in a day (docs/pin-security.md)."""
from __future__ import annotations

import random
import statistics

from tools import pin_risk as P  # first: it puts firmware/ on sys.path
from gv.allowlist import record as R  # noqa: E402


def run() -> dict:
    rng = random.Random(2026)
    pin_key = bytes(rng.getrandbits(8) for _ in range(16))
    keyer = R.Keyer(bytes(rng.getrandbits(8) for _ in range(16)), pin_key)
    out: dict = {}
    for length, cards in ((4, 60), (6, 3)):
        counts = []
        for _ in range(cards):
            uid = bytes([0x04]) + bytes(rng.getrandbits(8) for _ in range(6))
            pin = "".join(rng.choice("0123456789") for _ in range(length))
            found = P.offline_candidates(pin_key, uid, keyer.pin_verifier(uid, len(uid), pin), length)
            assert pin in found
            counts.append(len(found))
        key = "security.pin_offline_candidates_per_card" + ("" if length == 4 else "_6digit")
        out[key] = {"value": round(statistics.mean(counts), 1), "unit": "PINs",
                    "target": "many (%d-digit PINs, %d cards)" % (length, cards)}
    budget = P.tries_per_day()
    rates = []
    for _ in range(20):  # the rate is the card's share of accepted PINs: average over cards
        uid = bytes([0x04]) + bytes(rng.getrandbits(8) for _ in range(6))
        pin = "".join(rng.choice("0123456789") for _ in range(4))
        rates.append(P.false_accept_rate(keyer, uid, pin, 5_000, rng))
    p = statistics.mean(rates)
    c4 = out["security.pin_offline_candidates_per_card"]["value"]
    c6 = out["security.pin_offline_candidates_per_card_6digit"]["value"]
    out["security.pin_online_tries_per_day"] = {"value": budget.tries, "unit": "guesses",
                                                "target": "per card and reader, then locked until cleared"}
    out["security.pin_false_accept_per_10k_guesses"] = {"value": round(p * 1e4, 1), "unit": "guesses",
                                                       "target": "2 x 10^4 / 2^10 = 19.5"}
    out["security.pin_online_guess_chance_per_day"] = {
        "value": round(P.chance(p, budget.tries), 4), "unit": "share", "target": "small (no dump)"}
    out["security.pin_online_guess_chance_per_day_with_dump_6digit"] = {
        "value": round(min(1.0, budget.tries / c6), 4), "unit": "share"}
    out["security.pin_online_guess_chance_per_day_with_dump_4digit"] = {
        "value": round(min(1.0, budget.tries / c4), 4), "unit": "share", "target": "use 6 digits"}
    nohard = P.tries_per_day({"pin_hard_after": 0})
    out["security.pin_online_tries_per_day_without_hard_lock"] = {"value": nohard.tries, "unit": "guesses"}
    return out
