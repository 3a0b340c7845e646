# PIN entry's locks (moved out of test_gate_core.py, whose module alone nearly fills the 128k
# heap): wrong PINs lock a card, escalating and capped; timeouts are not guesses; and the lock only
# the host ends (gv.gate.lockout hard_after): after that many timed locks in a row a card stays
# locked through time and reboots until the host clears it; the lock file is not rewritten while
# it lasts, and its event says "until cleared" (aux 0).
import mpt
from gate_kit import Kit
from gv.allowlist import record as R
from gv import events as E
from gv.gate import signals as S
from gv.gate.lockout import HARD_MS

A = b"\x04\xa1\xb2\xc3"
B = b"\x00\x11\x22\x33\x44\x55\x66"
CFG = {"pin_policy": "card", "pin_tries": 3, "card_lock_ms": 30000, "lock_cap_ms": 60000,
       "pin_hard_after": 3}


def _ref(reason):
    return (E.K_DECISION, E.R_REFUSE, reason)


def _pin_card(cfg=None):
    kit = Kit(cfg or {"pin_policy": "card", "pin_tries": 3, "card_lock_ms": 30000, "lock_cap_ms": 100000})
    kit.add(A, R.ACTIVE, R.F_PIN, pin="4711")
    kit.add(B, R.ACTIVE, R.F_PIN, pin="1234")
    return kit


def test_third_lock_lasts_until_the_host_clears_it():
    kit = Kit(CFG)
    kit.add(A, R.ACTIVE, R.F_PIN, pin="4711")
    tries = 0
    for lock_ms in (30000, 60000):
        for _ in range(3):
            kit.try_pin(A, "0000")
            tries += 1
        mpt.eq(kit.gate.lock_ms, lock_ms)
        kit.wait(lock_ms)
    mpt.eq([kit.try_pin(A, "0000") for _ in range(3)][-1], S.S_CARD_LOCK)
    tries += 3
    mpt.eq((kit.gate.lock_ms, tries), (HARD_MS, 9))  # a guesser's whole budget at this reader
    ev = kit.events()[-1]
    mpt.eq((ev["kind"], ev["reason"], ev["aux"]), (E.K_LOCKOUT, E.LOCKED_CARD, 0))
    kit.wait(3600000, step=60000)  # an hour later: still locked, and the file was not rewritten
    saves = kit.lk.saves
    kit.wait(600000, step=60000)
    mpt.eq(kit.lk.saves, saves)
    mpt.eq(kit.try_pin(A, "4711"), S.S_LOCKED)
    kit.reboot()  # survives a power cycle
    mpt.eq(kit.lk.card_remaining(kit.key8(A), kit.now), HARD_MS)
    mpt.eq(kit.try_pin(A, "4711"), S.S_LOCKED)
    kit.lk.clear(kit.now, kit.key8(A))  # the host's clear-lockout command
    mpt.eq(kit.try_pin(A, "4711"), S.S_GRANT)


def test_a_full_table_never_gives_up_a_lock_without_an_end():
    from gv.gate.lockout import Lockouts

    Kit(CFG)  # a formatted flash
    lk = Lockouts("/flash/lk2", slots=4, tries=1, hard_after=2)
    victim = b"\x01" * 8
    for _ in range(2):
        lk.pin_attempt(victim, 0)
        ms = lk.pin_result(victim, 0, False)
    mpt.eq(ms, HARD_MS)
    for n in range(2, 40):  # a guesser cycles through many other cards (each one timed lock)
        k = bytes([n]) * 8
        lk.pin_attempt(k, n)
        assert lk.pin_result(k, n, False) < HARD_MS
    mpt.eq(lk.card_remaining(victim, 100), HARD_MS)


def test_wrong_pins_lock_the_card_escalating_and_capped():
    kit = _pin_card({"pin_policy": "card", "pin_tries": 3, "card_lock_ms": 30000, "lock_cap_ms": 100000,
                     "pin_hard_after": 5})  # the lock without an end: test_gate_pinlock.py
    for lock_ms in (30000, 60000, 100000, 100000):
        mpt.eq([kit.try_pin(A, "0000") for _ in range(3)], [S.S_PIN_WRONG, S.S_PIN_WRONG, S.S_CARD_LOCK])
        mpt.eq(kit.gate.lock_ms, lock_ms)
        ev = kit.events()[-1]
        mpt.eq((ev["kind"], ev["reason"], ev["aux"], ev["uid"]), (E.K_LOCKOUT, E.LOCKED_CARD, lock_ms // 1000, A))
        # locked: the right PIN doesn't even get asked for
        mpt.eq(kit.try_pin(A, "4711"), S.S_LOCKED)
        mpt.eq(kit.decisions()[-1], _ref(E.LOCKED_CARD))
        # the other card is not affected
        mpt.eq(kit.try_pin(B, "1234"), S.S_GRANT)
        kit.wait(lock_ms)
    mpt.eq(kit.try_pin(A, "4711"), S.S_GRANT)
    mpt.eq(kit.lk.fails(kit.key8(A)), 0)
    mpt.eq([kit.try_pin(A, "0000") for _ in range(3)][-1], S.S_CARD_LOCK)
    mpt.eq(kit.gate.lock_ms, 30000)  # a right PIN reset the escalation


def test_pin_timeouts():
    kit = _pin_card({"pin_policy": "card", "pin_first_ms": 10000, "pin_key_ms": 5000})
    mpt.eq(kit.present(A, 600), [S.S_PIN_PROMPT])
    mpt.eq(kit.wait(9500), [])
    mpt.eq(kit.wait(600), [S.S_PIN_WRONG])
    mpt.eq(kit.decisions()[-1], _ref(E.PIN_TIMEOUT))
    mpt.eq(kit.present(A, 600), [S.S_PIN_PROMPT])
    kit.keys("47")
    mpt.eq(kit.wait(4900), [])
    kit.keys("1", step=0)  # each key restarts the inter-key timeout
    mpt.eq(kit.wait(4900), [])
    mpt.eq(kit.wait(200), [S.S_PIN_WRONG])
    mpt.eq(kit.lk.fails(kit.key8(A)), 0)  # a timeout is not a guess


def test_keys_outside_pin_entry_do_nothing():
    kit = _pin_card()
    mpt.eq(kit.keys("4711#"), [])
    mpt.eq(kit.decisions(), [])
