# A UID with leading zero bytes goes through every reader layer unchanged: the driver's buffer,
# the allowlist's keyed hash (length is part of the input), the event on flash, the log line.
# (The host record: tests/test_pn532_enroll.py registers 0004a1b2c3d400 through host-sync.)
from mpt import eq, tmpdir
from pn532_kit import rig
from gv.pn532.driver import ONE_CARD
from gv.pn532.uid import uid_hex, uid_hex_into
from gv.allowlist.record import Keyer
from gv import events

HEAPSIZE = "256k"  # the simulator and the allowlist codec side by side
UIDS = (b"\x00\x00\x0a\x1b", b"\x00\x00\x00\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01")


def test_leading_zero_uid_survives_driver_key_event_and_log():
    keyer = Keyer(bytes(range(16)), bytes(range(16, 32)))
    log = events.EventLog(tmpdir() + "/ev")
    for bus in ("i2c", "uart", "spi"):
        sim, pn = rig(bus)
        pn.begin()
        for uid in UIDS:
            sim.clear()
            sim.enter(uid)
            eq(pn.poll(), ONE_CARD)
            eq(bytes(pn.uid[:pn.uid_len]), uid)
            k1, k2, k3 = bytearray(8), bytearray(8), bytearray(8)
            keyer.uid_key(pn.uid, pn.uid_len, k1)
            keyer.uid_key(uid, len(uid), k2)
            eq(k1, k2)
            stripped = uid.lstrip(b"\x00")  # what int-based formatting would leave
            keyer.uid_key(stripped, len(stripped), k3)
            eq(k1 != k3, True)
            seq = log.append(events.K_DECISION, events.R_GRANT, events.OK, pn.uid, pn.uid_len, 1000)
            ev = [e for s, e in log.pending(1000) if s == seq][0]
            eq(events.unpack(ev)["uid"], uid)
            h = uid_hex(pn.uid, pn.uid_len)
            eq(len(h), 2 * len(uid))
            eq(bytes.fromhex(h), uid)
            eq(h in events.describe(ev), True)
            out = bytearray(20)
            eq(bytes(out[:uid_hex_into(pn.uid, pn.uid_len, out)]), h.encode())
