# The gate deciding against the real gv.allowlist.store.Allowlist on the flash stand-in: the
# card FAQ's status changes arrive as deltas (blocked then reactivated, fee unpaid then paid,
# activated, terminated) and a PIN card checked against the stored verifier.
import mpt
from gate_kit import Kit
from gv.allowlist import record as R
from gv import events as E
from gv.gate import signals as S

HEAPSIZE = "256k"  # the store's buffers, the kit and the flash stand-in together
A = b"\x04\xa1\xb2\xc3"
P = b"\x04\x10\x20\x30\x40\x50\x60"


def test_status_changes_from_deltas():
    kit = Kit({"pin_policy": "card", "burst_count": 50})  # (5 refusals in 30 s would lock the reader)
    al = kit.real_allowlist([(A, R.INACTIVE, 0, None), (P, R.ACTIVE, R.F_PIN, "2580")])
    mpt.eq(kit.present(A, 600), [S.S_INVALID])  # not activated yet
    steps = [(R.ACTIVE, S.S_GRANT), (R.BLOCKED, S.S_DENY), (R.ACTIVE, S.S_GRANT),
             (R.SUSPENDED, S.S_INVALID), (R.ACTIVE, S.S_GRANT), (R.TERMINATED, S.S_DENY)]
    for status, sig in steps:
        assert al.apply_delta(al.version, al.version + 1, kit.records([(A, status, 0, None)]))
        mpt.eq(kit.present(A, 600), [sig], "status %d" % status)
    reasons = [d[2] for d in kit.decisions()]
    mpt.eq(reasons, [E.INACTIVE, E.OK, E.BLOCKED, E.OK, E.SUSPENDED, E.OK, E.TERMINATED])
    # removed from the allowlist: unknown
    assert al.apply_delta(al.version, al.version + 1, [(bytes(kit.key8(A)), None)])
    mpt.eq(kit.present(A, 600), [S.S_DENY])
    mpt.eq(kit.decisions()[-1][2], E.UNKNOWN)
    # the PIN card (7-byte UID) against its stored verifier, and its duress PIN
    mpt.eq(kit.present(P, 600), [S.S_PIN_PROMPT])
    mpt.eq(kit.keys("2580#")[-1], S.S_GRANT)
    kit.away()
    mpt.eq(kit.present(P, 600), [S.S_PIN_PROMPT])
    mpt.eq(kit.keys("2581#")[-1], S.S_GRANT)
    mpt.eq(kit.events()[-1]["kind"], E.K_ALARM)
    kit.away()
    mpt.eq(kit.present(P, 600), [S.S_PIN_PROMPT])
    mpt.eq(kit.keys("2582#")[-1], S.S_PIN_WRONG)
