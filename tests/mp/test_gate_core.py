# The gate state machine, table-driven over the card FAQ's situations, plus hold-to-read details,
# PIN entry, lockouts and a timeline across the ticks wrap-around. Each situation runs on the real
# Keyer, EventLog and Lockouts over the flash stand-in; the allowlist is a dict double here
# (test_gate_store.py uses the real store).
import gc
import mpt
import gate_kit
from gate_kit import Kit
from gv.allowlist import record as R
from gv import events as E
from gv.gate import core
from gv.gate import signals as S

TIMEOUT = 300
HEAPSIZE = "160k"  # this module's own source, compiled into the heap, left 128k at the edge (a 640-byte piece
# missing in one checkout folder and not another); the gate's heap is measured by heap32 on 32-bit
A = b"\x04\xa1\xb2\xc3"
B = b"\x00\x11\x22\x33\x44\x55\x66"  # a 7-byte UID with a leading zero byte
TODAY = R.days(2026, 11, 29)
G = (E.K_DECISION, E.R_GRANT, E.OK)


def _ref(reason):
    return (E.K_DECISION, E.R_REFUSE, reason)


def _ref_signal(kit, uid, ms=600):
    return kit.present(uid, ms)


# situation, record (status, flags, valid_from, valid_until, pin), config, hold ms, keys,
# expected signals, expected events
FAQ = [
    ("held steadily, active", (R.ACTIVE, 0, 0, R.NO_END, None), {}, 600, None, [S.S_GRANT], [G]),
    ("held too briefly", (R.ACTIVE, 0, 0, R.NO_END, None), {}, 300, None, [], []),
    ("not activated", (R.INACTIVE, 0, 0, R.NO_END, None), {}, 600, None, [S.S_INVALID], [_ref(E.INACTIVE)]),
    ("fee unpaid (suspended)", (R.SUSPENDED, 0, 0, R.NO_END, None), {}, 600, None, [S.S_INVALID],
     [_ref(E.SUSPENDED)]),
    ("blocked", (R.BLOCKED, 0, 0, R.NO_END, None), {}, 600, None, [S.S_DENY], [_ref(E.BLOCKED)]),
    ("terminated", (R.TERMINATED, 0, 0, R.NO_END, None), {}, 600, None, [S.S_DENY], [_ref(E.TERMINATED)]),
    ("expired", (R.ACTIVE, 0, 0, TODAY - 1, None), {}, 600, None, [S.S_INVALID], [_ref(E.EXPIRED)]),
    ("not yet valid", (R.ACTIVE, 0, TODAY + 1, R.NO_END, None), {}, 600, None, [S.S_INVALID],
     [_ref(E.NOT_YET_VALID)]),
    ("valid today (last day)", (R.ACTIVE, 0, TODAY, TODAY, None), {}, 600, None, [S.S_GRANT], [G]),
    ("PIN site, card asks, right PIN", (R.ACTIVE, R.F_PIN, 0, R.NO_END, "4711"), {"pin_policy": "card"},
     600, "4711#", [S.S_PIN_PROMPT, S.S_KEY, S.S_KEY, S.S_KEY, S.S_KEY, S.S_GRANT], [G]),
    ("PIN site, wrong PIN", (R.ACTIVE, R.F_PIN, 0, R.NO_END, "4711"), {"pin_policy": "card"},
     600, "4712#"[:3] + "9#", [S.S_PIN_PROMPT, S.S_KEY, S.S_KEY, S.S_KEY, S.S_KEY, S.S_PIN_WRONG],
     [_ref(E.PIN_WRONG)]),
    ("duress PIN (last digit +1)", (R.ACTIVE, R.F_PIN, 0, R.NO_END, "4711"), {"pin_policy": "card"},
     600, "4712#", [S.S_PIN_PROMPT, S.S_KEY, S.S_KEY, S.S_KEY, S.S_KEY, S.S_GRANT],
     [(E.K_ALARM, E.R_GRANT, E.DURESS)]),
    ("duress PIN, 9 wraps to 0", (R.ACTIVE, R.F_PIN, 0, R.NO_END, "123459"), {"pin_policy": "card"},
     600, "123450#", [S.S_PIN_PROMPT] + [S.S_KEY] * 6 + [S.S_GRANT], [(E.K_ALARM, E.R_GRANT, E.DURESS)]),
    ("* clears a typo", (R.ACTIVE, R.F_PIN, 0, R.NO_END, "4711"), {"pin_policy": "card"},
     600, "99*4711#", [S.S_PIN_PROMPT] + [S.S_KEY] * 7 + [S.S_GRANT], [G]),
    ("policy never ignores the flag", (R.ACTIVE, R.F_PIN, 0, R.NO_END, "4711"), {"pin_policy": "never"},
     600, None, [S.S_GRANT], [G]),
    ("policy always asks without the flag", (R.ACTIVE, 0, 0, R.NO_END, "4711"), {"pin_policy": "always"},
     600, "4711#", [S.S_PIN_PROMPT] + [S.S_KEY] * 4 + [S.S_GRANT], [G]),
    ("PIN too short counts as wrong", (R.ACTIVE, R.F_PIN, 0, R.NO_END, "4711"), {"pin_policy": "card"},
     600, "471#", [S.S_PIN_PROMPT] + [S.S_KEY] * 3 + [S.S_PIN_WRONG], [_ref(E.PIN_WRONG)]),
    ("4-digit PIN with 6 allowed rejects a 7th digit", (R.ACTIVE, R.F_PIN, 0, R.NO_END, "471100"),
     {"pin_policy": "card"}, 600, "4711009#", [S.S_PIN_PROMPT] + [S.S_KEY] * 7 + [S.S_GRANT], [G]),
]


def test_faq_table():
    kit = None
    for name, rec, cfg, ms, keys, want_sigs, want_events in FAQ:
        kit = None  # the last row's kit goes before the next is made (the module fills the heap)
        gc.collect()
        kit = Kit(cfg)
        kit.clock.set(TODAY * 86400 + 3600, kit.now)
        st, fl, vf, vu, pin = rec
        kit.add(A, st, fl, vf, vu, pin)
        sigs = kit.present(A, ms)
        if keys:
            sigs += kit.keys(keys)
        mpt.eq(sigs, want_sigs, name)
        mpt.eq(kit.decisions(), want_events, name)
        for d in kit.events():
            if d["kind"] != E.K_BOOT:
                mpt.eq(d["uid"], A, name)
                mpt.eq(d["clock_set"], True, name)


def test_unknown_card_and_leading_zero_uid():
    kit = Kit()
    mpt.eq(kit.present(B, 600), [S.S_DENY])
    ev = kit.events()[-1]
    mpt.eq((ev["reason"], ev["uid"]), (E.UNKNOWN, B))


def test_blocked_then_reactivated_and_suspended_then_paid():
    for bad in (R.BLOCKED, R.SUSPENDED):
        kit = Kit()
        kit.add(A, bad)
        assert kit.present(A, 600) != [S.S_GRANT]
        kit.add(A, R.ACTIVE)  # the host's delta lands
        mpt.eq(kit.present(A, 600), [S.S_GRANT])
    kit = Kit()
    kit.add(A, R.TERMINATED)  # terminated stays refused whatever is presented
    mpt.eq(kit.present(A, 600), [S.S_DENY])
    mpt.eq(kit.present(A, 600), [S.S_DENY])


def test_clock_not_set_grants_on_status_and_flags_the_event():
    kit = Kit()
    kit.add(A, R.ACTIVE, 0, 1, 2)  # long expired, but the reader doesn't know the date
    mpt.eq(kit.present(A, 600), [S.S_GRANT])
    mpt.eq(kit.events()[-1]["clock_set"], False)


def test_hold_exactly_hold_ms_and_one_missed_poll():
    kit = Kit({"hold_ms": 500})
    kit.add(A)
    # present at t=0..200, miss one poll at 250, seen again 300..500: one decision at 500
    for t in range(0, 250, 50):
        mpt.eq(kit.poll(core.ONE_CARD, A), S.S_NONE)
        kit.advance(50)
    mpt.eq(kit.poll(core.NO_CARD), S.S_NONE)  # the missed poll
    kit.advance(50)
    got = []
    for t in range(300, 550, 50):
        got.append(kit.poll(core.ONE_CARD, A))
        kit.advance(50)
    mpt.eq(got, [S.S_NONE, S.S_NONE, S.S_NONE, S.S_NONE, S.S_GRANT])  # at 500, not restarted
    # an ERROR poll is a missed poll too, never a card
    kit2 = Kit()
    kit2.add(A)
    kit2.poll(core.ONE_CARD, A)
    kit2.advance(250)
    kit2.poll(core.ERROR)
    kit2.advance(250)
    mpt.eq(kit2.poll(core.ONE_CARD, A), S.S_GRANT)


def test_two_missed_polls_end_the_presentation_and_count_once_as_a_wave():
    kit = Kit()
    kit.add(A)
    kit.poll(core.ONE_CARD, A)
    for _ in range(2):
        kit.advance(50)
        kit.poll(core.NO_CARD)
    mpt.eq(kit.gate.state, core.IDLE)
    mpt.eq(kit.gate.waves._n, 1)
    kit.advance(50)
    kit.poll(core.NO_CARD)
    mpt.eq(kit.gate.waves._n, 1)  # not double-counted


def test_card_must_leave_before_it_is_read_again():
    kit = Kit()
    kit.add(A)
    mpt.eq(kit.present(A, 5000, leave=False), [S.S_GRANT])  # held 5 s: one decision
    # one empty poll is not leaving
    kit.advance(50)
    kit.poll(core.NO_CARD)
    kit.advance(50)
    mpt.eq(kit.present(A, 1000, leave=True), [])
    mpt.eq(kit.present(A, 600), [S.S_GRANT])
    mpt.eq(len(kit.decisions()), 2)


def test_two_cards_refused_with_their_own_signal():
    kit = Kit()
    kit.add(A)
    kit.poll(core.ONE_CARD, A)
    kit.advance(50)
    mpt.eq(kit.poll(core.MANY_CARDS), S.S_MANY)
    mpt.eq(kit.decisions(), [_ref(E.MANY_CARDS)])
    mpt.eq(kit.events()[-1]["uid"], b"")
    # until the field is empty nothing else happens
    mpt.eq(kit.present(A, 1000, leave=True), [])
    mpt.eq(kit.present(A, 600), [S.S_GRANT])


def test_waving_locks_then_recovers():
    kit = Kit({"wave_count": 3, "wave_window_ms": 10000, "wave_lock_ms": 10000})
    kit.add(A)
    sigs = []
    for _ in range(3):
        sigs += kit.present(A, 150)
        kit.wait(500)
    mpt.eq(sigs, [S.S_WAVE_LOCK])
    lock = kit.events()[-1]
    mpt.eq((lock["kind"], lock["reason"], lock["aux"]), (E.K_LOCKOUT, E.LOCKED_WAVE, 10))
    # locked: even an active card held properly is refused, and the event says why
    mpt.eq(kit.present(A, 600), [S.S_LOCKED])
    mpt.eq(kit.decisions()[-1], _ref(E.LOCKED_WAVE))
    sigs = kit.wait(10000)
    mpt.eq(sigs, [S.S_READY])
    mpt.eq(kit.present(A, 600), [S.S_GRANT])


def test_slow_presentations_outside_the_window_do_not_lock():
    kit = Kit({"wave_count": 3, "wave_window_ms": 10000})
    kit.add(A)
    sigs = []
    for _ in range(6):
        sigs += kit.present(A, 150)
        kit.wait(6000)
    mpt.eq(sigs, [])


def test_burst_of_refused_cards_locks_the_reader_escalating():
    kit = Kit({"burst_count": 5, "burst_window_ms": 30000, "reader_lock_ms": 30000, "lock_cap_ms": 100000})
    kit.add(A)
    for n, want_ms in ((1, 30000), (2, 60000), (3, 100000)):
        sigs = []
        for i in range(5):
            sigs += kit.present(bytes([9, 9, 9, n * 10 + i]), 600)
        mpt.eq(sigs, [S.S_DENY] * 4 + [S.S_READER_LOCK], "burst %d" % n)
        mpt.eq(kit.gate.lock_ms, want_ms)
        mpt.eq(kit.present(A, 600), [S.S_LOCKED])
        mpt.eq(kit.decisions()[-1], _ref(E.LOCKED_READER))
        kit.wait(want_ms - 2000)
        mpt.eq(kit.present(A, 600), [S.S_LOCKED])
        mpt.eq(kit.wait(3000), [S.S_READY])
    mpt.eq(kit.present(A, 600), [S.S_GRANT])
    mpt.eq(kit.lk.reader_level, 0)  # a grant resets the escalation


def _pin_card(cfg=None):
    kit = Kit(cfg or {"pin_policy": "card", "pin_tries": 3, "card_lock_ms": 30000, "lock_cap_ms": 100000})
    kit.add(A, R.ACTIVE, R.F_PIN, pin="4711")
    kit.add(B, R.ACTIVE, R.F_PIN, pin="1234")
    return kit


def test_timeline_across_the_esp32_ticks_wrap():
    # The ESP32's ticks wrap at 2**30 ms (12.4 days); the unix port's at 2**62.
    gate_kit.use_ticks_period(gate_kit.ESP32_PERIOD)
    _timeline(gate_kit.ESP32_PERIOD)


def test_timeline_across_the_native_ticks_wrap():
    _timeline(gate_kit.NATIVE_PERIOD)


def _timeline(PERIOD):
    # Each timeline straddles the wrap: a hold, a waving lock, a card lock.
    kit = Kit(now=PERIOD - 300)
    kit.add(A)
    mpt.eq(kit.present(A, 600), [S.S_GRANT])  # hold starts before the wrap, completes after
    assert kit.now < 1000, kit.now
    kit = Kit({"wave_count": 3, "wave_window_ms": 10000, "wave_lock_ms": 10000}, now=PERIOD - 1500)
    kit.add(A)
    sigs = []
    for _ in range(3):
        sigs += kit.present(A, 150)
        kit.wait(300)
    mpt.eq(sigs, [S.S_WAVE_LOCK])
    assert kit.now < 2000, kit.now  # the lock started around the wrap
    mpt.eq(kit.present(A, 600), [S.S_LOCKED])
    mpt.eq(kit.wait(9000), [S.S_READY])
    mpt.eq(kit.present(A, 600), [S.S_GRANT])
    kit = _pin_card()
    kit.now = PERIOD - 10000
    kit.lk.load(kit.now)  # (a boot at that tick)
    for _ in range(3):
        kit.try_pin(A, "0000")
    rem = kit.lk.card_remaining(kit.key8(A), kit.now)
    assert kit.now > PERIOD - 5000 and 29000 < rem <= 30000, (kit.now, rem)  # locked just before the wrap
    kit.wait(rem - 2000)
    assert kit.now < 30000, kit.now
    mpt.eq(kit.try_pin(A, "4711"), S.S_LOCKED)
    kit.wait(2000)
    mpt.eq(kit.try_pin(A, "4711"), S.S_GRANT)


def test_bad_record_status_is_refused():
    kit = Kit()
    k = kit.add(A)
    r = bytearray(kit.al.recs[k])
    r[8] = 7  # a status no codec version defines
    kit.al.recs[k] = bytes(r)
    mpt.eq(kit.present(A, 600), [S.S_DENY])
    mpt.eq(kit.decisions(), [_ref(E.BAD_RECORD)])


def test_settings_validation():
    mpt.raises(ValueError, core.settings, {"pin_policy": "sometimes"})
    mpt.raises(ValueError, core.settings, {"pin_min": 7})
    mpt.raises(ValueError, core.settings, {"hold_ms": -1})
    mpt.eq(core.settings(None)["hold_ms"], 500)
