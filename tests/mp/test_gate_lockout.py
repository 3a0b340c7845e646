# Lockouts survive reboots and power cuts: a power cycle buys no extra guesses, a reboot never
# shortens a lock, the host can clear them, and a corrupt lockout file locks the reader.
import os
import mpt
from gate_kit import Kit
from flashdev import mount, umount
from gv.allowlist import record as R
from gv import events as E
from gv.gate import signals as S
from gv.gate.lockout import Lockouts, CHECKPOINT_MS

TIMEOUT = 300
A = b"\x04\xa1\xb2\xc3"
CFG = {"pin_policy": "card", "pin_tries": 3, "card_lock_ms": 60000, "lock_cap_ms": 600000,
       "burst_count": 3, "reader_lock_ms": 40000}


def _kit():
    kit = Kit(CFG)
    kit.add(A, R.ACTIVE, R.F_PIN, pin="4711")
    return kit


def _try(kit, pin):
    sigs = kit.present(A, 600)
    if sigs == [S.S_PIN_PROMPT]:
        sigs += kit.keys(pin + "#")
        kit.away()
    return sigs[-1]


def test_card_lock_survives_reboot_and_a_reboot_never_shortens_it():
    kit = _kit()
    for _ in range(3):
        _try(kit, "0000")
    k = kit.key8(A)
    mpt.eq(kit.lk.card_remaining(k, kit.now) > 59000, True)
    kit.wait(20000)  # 20 s in; no checkpoint yet: a reboot now resumes with the saved 60 s
    kit.reboot()
    kit.now += 123456  # the ticks origin after a reboot is arbitrary
    kit.boot()
    rem = kit.lk.card_remaining(k, kit.now)
    assert 59000 <= rem <= 60000, rem
    mpt.eq(_try(kit, "4711"), S.S_LOCKED)
    # checkpoints while locked bring the saved remainder down as time passes
    saves = kit.lk.saves
    for _ in range(40):
        kit.advance(1000)
        kit.lk.checkpoint(kit.now)
    assert kit.lk.saves == saves + 40000 // CHECKPOINT_MS, kit.lk.saves
    kit.reboot()
    rem2 = kit.lk.card_remaining(k, kit.now)
    assert rem - 40000 <= rem2 <= rem - 40000 + CHECKPOINT_MS, (rem, rem2)
    kit.wait(rem2)
    mpt.eq(_try(kit, "4711"), S.S_GRANT)
    kit.reboot()  # the lock's end was saved: nothing comes back after a reboot
    mpt.eq(kit.lk.card_remaining(k, kit.now), 0)


def test_wrong_pin_count_survives_reboot():
    kit = _kit()
    _try(kit, "0000")
    _try(kit, "0000")
    kit.reboot()
    mpt.eq(kit.lk.fails(kit.key8(A)), 2)
    mpt.eq(_try(kit, "0000"), S.S_CARD_LOCK)  # the third try after the reboot locks


def test_reader_lock_survives_reboot():
    kit = _kit()
    for i in range(3):
        kit.present(bytes([1, 2, 3, i]), 600)
    mpt.eq(kit.lk.reader_reason, E.LOCKED_READER)
    kit.reboot()
    assert kit.lk.reader_remaining(kit.now) > 39000
    mpt.eq(_try(kit, "4711"), S.S_LOCKED)
    mpt.eq(kit.decisions()[-1], (E.K_DECISION, E.R_REFUSE, E.LOCKED_READER))


def test_host_clears_one_card_or_everything():
    kit = _kit()
    for _ in range(3):
        _try(kit, "0000")
    kit.lk.clear(kit.now, kit.key8(A))
    kit.reboot()
    mpt.eq(kit.lk.card_remaining(kit.key8(A), kit.now), 0)
    mpt.eq(_try(kit, "4711"), S.S_GRANT)
    for i in range(3):
        kit.present(bytes([1, 2, 3, i]), 600)
    assert kit.lk.reader_remaining(kit.now)
    kit.lk.clear(kit.now)
    kit.reboot()
    mpt.eq(kit.lk.reader_remaining(kit.now), 0)
    mpt.eq(_try(kit, "4711"), S.S_GRANT)


def test_corrupt_lockout_file_locks_the_reader():
    kit = _kit()
    _try(kit, "0000")
    with open("/flash/lock", "r+b") as f:
        f.seek(5)
        f.write(b"\x55")
    kit.reboot()
    assert kit.lk.reader_remaining(kit.now) > 0
    assert kit.lk.health != "ok"
    mpt.eq(_try(kit, "4711"), S.S_LOCKED)


def _attempt(kit):
    """One wrong PIN entry that locks the card (the third); returns after the PIN submit."""
    kit.present(A, 600)
    kit.keys("0000#")


def test_power_cut_at_every_write_of_the_lockout_saves():
    # The third wrong PIN: pin_attempt saves the try, pin_result saves the lock, events are
    # written. Cut the power at every block write of that and reboot: the card has either two
    # counted tries and no lock, or three counted/locked, never fewer (no guess is bought).
    kit = _kit()
    _try(kit, "0000")
    _try(kit, "0000")
    umount()
    image = "%s/lock.img" % mpt.tmpdir()
    kit.dev.save(image)
    mount(kit.dev)
    kit.boot()
    start = kit.dev.writes
    _attempt(kit)
    total = kit.dev.writes - start
    assert total >= 4, total
    outcomes = {}
    for n in range(total + 1):
        kit.dev.restore()
        umount()
        kit.dev.load(image)
        mount(kit.dev)
        kit.boot()
        kit.dev.cut_power_after(n)
        checked = False
        try:
            _attempt(kit)
            checked = True
        except OSError:
            pass
        kit.power_cycle()
        k = kit.key8(A)
        fails, locked = kit.lk.fails(k), kit.lk.card_remaining(k, kit.now) > 0
        assert (fails == 2 and not locked) or (fails == 0 and locked), (n, fails, locked)
        outcomes[(fails, locked)] = outcomes.get((fails, locked), 0) + 1
        if checked:
            assert locked, n
        # whatever state came back, the right PIN is still refused or the next wrong one locks
        if not locked:
            mpt.eq(_try(kit, "0000"), S.S_CARD_LOCK)
        else:
            mpt.eq(_try(kit, "4711"), S.S_LOCKED)
    assert (0, True) in outcomes, outcomes  # the cut sequence reached the saved lock
    assert (2, False) in outcomes, outcomes  # and cut before the try was saved


def test_lockouts_table_is_bounded():
    kit = _kit()
    lk = Lockouts("/flash/l2", slots=4, tries=2, card_lock_ms=1000)
    lk.load(0)
    for i in range(10):
        k = bytes([i]) * 8
        lk.pin_attempt(k, 0)
        lk.pin_result(k, 0, False)
    with open("/flash/l2", "rb") as f:
        assert len(f.read()) == 11 + 4 * 14 + 4
    mpt.eq(sorted(os.listdir("/flash")).count("l2.tmp"), 0)


def test_fuzzed_lockout_files_never_crash_and_fail_secure():
    # Seeded garbage, truncations and bit flips of a real lockout file: load() never raises; a
    # file that fails its CRC/format locks the reader (it can't be trusted to say "unlocked").
    import random

    kit = _kit()
    _try(kit, "0000")
    with open("/flash/lock", "rb") as f:
        good = f.read()
    random.seed(4)
    for i in range(300):
        b = bytearray(good)
        how = i % 3
        if how == 0:
            b = bytearray(random.getrandbits(8) for _ in range(random.getrandbits(6)))
        elif how == 1:
            b = b[:random.getrandbits(5) % len(b)]
        else:
            j = random.getrandbits(8) % len(b)
            b[j] ^= 1 << (random.getrandbits(3))
        with open("/flash/lock", "wb") as f:
            f.write(b)
        lk = Lockouts("/flash/lock")
        lk.load(1000)
        if bytes(b) != good:
            assert lk.reader_remaining(1000) > 0 and lk.health != "ok", (i, how)
