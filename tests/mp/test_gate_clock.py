# The clock's lower bound (gv.gate.clock): kept on flash through a power cut, it keeps validity
# dates checked without the network; events carry it, and the host's time when it comes is
# logged with what the clock read before, so the host can date the events made meanwhile.
import mpt
from gate_kit import Kit
from gv.allowlist import record as R
from gv import events as E
from gv.gate import signals as S

TIMEOUT = 120
HEAPSIZE = "192k"  # the gate kit and the runner module together (this test is not about heap)
A = b"\x04\xa1\xb2\xc3"
TODAY = R.days(2026, 11, 29)


def test_power_cut_keeps_a_lower_bound_of_the_clock():
    # The host set the clock, the reader saved the bound; power and network are cut. After the
    # reboot the clock is not set, but the bound still refuses a card whose validity starts in
    # 30 days (it was granted before this bound existed), refuses one that ended before the
    # bound, and grants a valid one; events carry the bound (flag F_FLOOR), and the host's time
    # arriving later is logged with what the clock read before (so the host can date them).
    from gv.gate import clock as CK
    from gv.gate.runner import GateRunner

    kit = Kit()
    kit.clock.set(TODAY * 86400 + 3600, kit.now)
    CK.save_bound("/flash/clock", kit.clock.bound(kit.now))
    kit.advance(5 * 60 * 1000)
    CK.save_bound("/flash/clock", kit.clock.bound(kit.now))  # the 10-minute save, moved forward
    mpt.eq(CK.save_bound("/flash/clock", 5), False)  # never back, except by the host's time
    kit.power_cycle()
    bound = CK.load_bound("/flash/clock")
    mpt.eq(bound, TODAY * 86400 + 3600 + 300)
    kit.clock.restore(bound, kit.now)
    mpt.eq((kit.clock.is_set(), kit.clock.flags(), kit.clock.floor_day(kit.now)), (False, CK.F_FLOOR, TODAY))
    future, past = b"\x04\x00\x00\x01", b"\x04\x00\x00\x02"
    kit.add(future, R.ACTIVE, 0, TODAY + 30, R.NO_END)
    kit.add(past, R.ACTIVE, 0, 1, TODAY - 1)
    kit.add(A, R.ACTIVE, 0, TODAY - 10, TODAY + 100)
    mpt.eq(kit.present(future, 600), [S.S_INVALID])
    mpt.eq(kit.present(past, 600), [S.S_INVALID])
    kit.advance(2000)
    mpt.eq(kit.present(A, 600), [S.S_GRANT])
    evs = [d for d in kit.events() if d["kind"] == E.K_DECISION]
    mpt.eq([d["reason"] for d in evs], [E.NOT_YET_VALID, E.EXPIRED, E.OK])
    for d in evs:
        mpt.eq((d["clock_set"], d["floor"]), (False, True))
        assert bound <= d["t"] < bound + 60, (d["t"], bound)
    granted_t = evs[-1]["t"]
    # the network is back: the host's time (12 minutes later than the bound says)
    r = GateRunner({}, None, kit.al, kit.keyer, kit.ev, kit.lk, _Out(), _Out(), _Out(), clock=kit.clock)
    before = kit.clock.seconds(kit.now)
    r.set_clock(before + 720, "/flash/clock", kit.now)
    clk = kit.events()[-1]
    mpt.eq((clk["kind"], clk["t"], clk["aux"], clk["clock_set"]), (E.K_CLOCK, before + 720, before, True))
    mpt.eq(CK.load_bound("/flash/clock"), before + 720)
    mpt.eq(granted_t + (clk["t"] - clk["aux"]) <= before + 720, True)  # the host's dating
    r.set_clock(before + 721, "/flash/clock", kit.now)  # a small correction: not logged
    mpt.eq(kit.events()[-1]["seq"], clk["seq"])
    r.set_clock(before + 100, "/flash/clock", kit.now)  # the host takes a wrong time back
    mpt.eq(CK.load_bound("/flash/clock"), before + 100)


class _Out:
    def off(self):
        pass

    def play(self, *a):
        pass


def test_clock_without_any_bound_checks_no_dates():
    from gv.gate import clock as CK

    c = CK.Clock(0)
    mpt.eq((c.flags(), c.floor_day(0), c.bound(0), c.seconds(3000)), (0, -1, 0, 3))
    c.restore(0, 3000)  # nothing saved: still nothing known
    mpt.eq(c.flags(), 0)
    c.restore(100 * 86400, 3000)
    mpt.eq((c.flags(), c.floor_day(3000), c.seconds(5000)), (CK.F_FLOOR, 100, 100 * 86400 + 2))
    c.set(200 * 86400, 5000)
    mpt.eq((c.flags(), c.day(5000)), (CK.F_CLOCK_SET, 200))
    c.restore(300 * 86400, 5000)  # a bound never overrides a set clock
    mpt.eq(c.day(5000), 200)
